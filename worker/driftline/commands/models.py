"""``driftline models list|promote|rollback``: the registry's stages, by hand.

Workers serve the champion (``--model-version champion``, the default) and pick a change
up at their next model poll, as they pick up a new version.  See docs/retraining.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from driftline import config
from driftline.commands._errors import CommandError
from driftline.model.registry import METADATA_FILE, ModelRegistry
from driftline.model.stages import CHAMPION, StageError

HELP = """List a model's versions with their stage and lineage; promote or roll back.

  driftline models list                       version, stage, created, test AUC, parent, incident
  driftline models promote v0004 --reason ... v0004 becomes champion, the old one retired
  driftline models rollback --reason ...      the champion before the current one returns

Stages live in <registry>/<name>/stages.json (version directories are never rewritten).
A registry without a recorded champion serves its latest version until the first
promotion; `driftline train` registers champions, `driftline retrain` candidates.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="versions, stages and lineage as a table")
    listing.add_argument("--json", action="store_true", help="one JSON object per version")
    promote = sub.add_parser("promote", help="make a version the champion")
    promote.add_argument("version", help="the version to promote, e.g. v0004")
    rollback = sub.add_parser("rollback", help="return to the previous champion")
    rollback.add_argument(
        "--to", default=None, metavar="VERSION", help="a given version instead of the previous"
    )
    for command in (listing, promote, rollback):
        command.add_argument(
            "--registry",
            default=config.DEFAULT_REGISTRY,
            help="model registry directory (default: %(default)s)",
        )
        command.add_argument(
            "--model-name",
            default=config.DEFAULT_MODEL_NAME,
            help="model name (default: %(default)s)",
        )
    for command in (promote, rollback):
        command.add_argument(
            "--reason", required=True, help="why (kept in the stage history with who and when)"
        )
        command.add_argument("--by", default=None, help="who (default: user@host)")


def run(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.registry)
    name = args.model_name
    try:
        versions = registry.versions(name)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if not versions:
        raise CommandError(f"no versions of model {name!r} in {registry.root}")
    try:
        if args.models_command == "list":
            rows = version_rows(registry, name)
            if args.json:
                for row in rows:
                    print(json.dumps(row, allow_nan=False))
            else:
                print(format_table(rows))
                champion = registry.champion(name)
                if champion.source == "latest":
                    print(
                        f"\nno champion recorded: workers serve the latest version "
                        f"without a stage ({champion.version}) until the first promotion"
                    )
                elif champion.source == "none":
                    print("\nno champion: workers have nothing to serve (promote a version)")
            return 0
        if args.models_command == "promote":
            if args.version not in versions:
                raise CommandError(
                    f"model {name!r} has no version {args.version!r} "
                    f"(versions: {', '.join(versions)})"
                )
            if registry.stages(name).champion == args.version:
                raise CommandError(f"{name} {args.version} is already the champion")
            entry = registry.set_stage(name, args.version, CHAMPION, reason=args.reason, by=args.by)
            replaced = entry.get("replaced")
            print(
                f"{name} {args.version} is champion"
                + (f"; {replaced} retired" if replaced else "")
                + " (workers switch at their next model poll)"
            )
            return 0
        entry = registry.rollback(name, reason=args.reason, by=args.by, to=args.to)
        print(
            f"{name} rolled back: {entry['version']} is champion, {entry['replaced']} retired "
            "(workers switch at their next model poll)"
        )
        return 0
    except StageError as error:
        raise CommandError(str(error)) from None


def version_rows(registry: ModelRegistry, name: str) -> list[dict[str, Any]]:
    """One row per version, oldest first: what ``list`` prints."""
    book = registry.stages(name)
    champion = registry.champion(name)
    rows = []
    for version in registry.versions(name):
        metadata = _metadata(registry, name, version)
        lineage = metadata.get("lineage") or {}
        test = (metadata.get("metrics") or {}).get("test") or {}
        stage = book.stages.get(version)
        serving = version == champion.version
        rows.append(
            {
                "version": version,
                "stage": stage if stage is not None else "-",
                "serving": serving,
                "created": metadata.get("created_at", "?"),
                "test_auc": test.get("roc_auc"),
                "parent": lineage.get("parent_version"),
                "incident": lineage.get("incident_id"),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("VERSION", "STAGE", "CREATED", "TEST AUC", "PARENT", "INCIDENT")
    lines = [header]
    for row in rows:
        auc = row["test_auc"]
        stage = row["stage"] + (" *" if row["serving"] else "")
        lines.append(
            (
                row["version"],
                stage,
                str(row["created"]),
                "-" if auc is None else f"{auc:.3f}",
                row["parent"] or "-",
                (row["incident"] or "-")[:12],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    return "\n".join(text) + "\n(* = served by workers)"


def _metadata(registry: ModelRegistry, name: str, version: str) -> dict[str, Any]:
    try:
        data = json.loads((registry.path(name, version) / METADATA_FILE).read_text("utf-8"))
    except (OSError, ValueError) as error:
        print(f"driftline models: {name} {version}: unreadable metadata: {error}", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}
