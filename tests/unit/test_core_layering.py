"""``driftline.core`` is the pure domain: it must not depend on the layers built on it.

The model layer (``driftline.model``), the engines (``driftline.engine``: Kafka, Faust),
the metrics (``driftline.observability``), the command line (``driftline.commands``) and
the Kafka clients (``confluent_kafka``, ``faust``) all import core, never the other way
round: core stays testable without a broker or a trained model, and a second engine can
reuse it whole.  This reads every module of ``worker/driftline/core`` (imports inside
functions included, since a lazy import is a dependency too) without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parents[2] / "worker"
CORE = WORKER / "driftline" / "core"
#: Packages core must never import (a prefix matches the package and its modules).
FORBIDDEN = (
    "driftline.model",
    "driftline.engine",
    "driftline.commands",
    "driftline.observability",
    "confluent_kafka",
    "faust",
)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module (and ``module.name`` of every imported name) that ``source`` imports,
    relative imports resolved as if it were ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _module_of(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(WORKER).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def core_imports() -> dict[str, set[str]]:
    """Source file (relative to ``worker``) -> the modules it imports, for all of core."""
    out: dict[str, set[str]] = {}
    for path in sorted(CORE.rglob("*.py")):
        module, is_package = _module_of(path)
        out[str(path.relative_to(WORKER))] = imported_modules(
            path.read_text(), module, is_package=is_package
        )
    return out


def test_the_scan_reads_core() -> None:
    """Guards the test itself: a wrong path would find nothing and pass vacuously."""
    imports = core_imports()
    assert len(imports) >= 15
    assert "driftline.core.events" in imports["driftline/core/offline.py"]


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from driftline.model.profile import OTHER\n", "driftline.model.profile"),
        ("def f():\n    import confluent_kafka\n", "confluent_kafka"),
        ("from ...engine.kafka import worker\n", "driftline.engine.kafka"),
        ("from ... import commands\n", "driftline.commands"),
        ("import faust.types\n", "faust.types"),
    ],
)
def test_the_scan_catches_every_import_form(source: str, module: str) -> None:
    found = imported_modules(source, "driftline.core.drift.probe")
    assert module in found
    assert forbidden(module)


def test_core_imports_no_model_engine_command_or_kafka_client() -> None:
    offenders = sorted(
        f"{path}: {module}"
        for path, modules in core_imports().items()
        for module in modules
        if forbidden(module)
    )
    assert not offenders, "core depends on outer layers:\n" + "\n".join(offenders)
