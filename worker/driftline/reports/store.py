"""Where reports go: ``<registry>/<name>/<version>/reports/``, written atomically.

A version's own files (``model.joblib``, ``metadata.json``, ``evaluation.npz``) are written
once, by the registry's atomic rename, and never change: the loader verifies them by
checksum.  Reports are derived from them and can be drawn again at any time, so they live
in a ``reports/`` subdirectory that the registry neither lists nor reads.  Each report is
written to a temporary file in that directory, flushed, then renamed over its final name
(``os.replace``: atomic on POSIX), so an operator or a browser never opens half a page, and
drawing the same report again replaces it whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from driftline.model.evaluation_arrays import EVALUATION_FILE, from_bytes
from driftline.model.registry import METADATA_FILE, ModelRegistry

REPORTS_DIR = "reports"


class ReportError(Exception):
    """A report cannot be drawn: the message says why (missing version, bad file...)."""


def resolve_version(registry: ModelRegistry, name: str, version: str) -> str:
    """``champion`` (the version workers serve) or ``latest`` to a version; else the version,
    which must exist."""
    if version in ("latest", "champion"):
        resolved = registry.resolve(name, version)
        if resolved is None:
            raise ReportError(f"no versions of model {name!r} in {registry.root}")
        return resolved
    try:
        folder = registry.path(name, version)
    except ValueError as error:
        raise ReportError(str(error)) from None
    if not folder.is_dir():
        raise ReportError(f"model {name} {version} not found in {registry.root}")
    return version


def read_metadata(registry: ModelRegistry, name: str, version: str) -> dict[str, Any]:
    """The version's ``metadata.json`` (JSON only: no pickle is read for a model report)."""
    path = registry.path(name, version) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: unreadable: {error}") from None
    if not isinstance(metadata, dict):
        raise ReportError(f"{path}: not a JSON object")
    return metadata


def read_evaluation(
    registry: ModelRegistry, name: str, version: str, metadata: dict[str, Any]
) -> dict[str, Any] | None:
    """The held-out arrays saved with the version, checked against the recorded sha256;
    None for a version saved without them (trained before reports existed)."""
    recorded = (metadata.get("files") or {}).get(EVALUATION_FILE)
    path = registry.path(name, version) / EVALUATION_FILE
    if recorded is None or not path.is_file():
        return None
    payload = path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != recorded.get("sha256"):
        raise ReportError(f"{path}: sha256 differs from the one recorded at save time")
    return from_bytes(payload)


def write_report(folder: Path, file_name: str, text: str) -> Path:
    """Write ``text`` to ``folder/reports/file_name`` atomically; return the path."""
    target_dir = folder / REPORTS_DIR
    target_dir.mkdir(exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=target_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        target = target_dir / file_name
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
