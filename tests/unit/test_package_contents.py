"""The installed package holds what its commands run, and no test harness.

Every module under ``driftline`` must be reachable through imports (at module level or
inside a function) from ``driftline.cli`` and the command modules it loads by name
(``driftline.cli.COMMANDS``).  A module nothing reaches is code no command uses: a test
helper belongs in ``tests/support/``, not in the wheel.
"""

from __future__ import annotations

import ast
from pathlib import Path

import driftline
from driftline.cli import COMMANDS

#: ``driftline`` is a namespace package (no ``__init__``): its one directory.
PACKAGE = Path(next(iter(driftline.__path__))).resolve()


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``name`` imports (``from a.b import c`` may name module c)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)
    found: set[str] = set()
    for module in named:
        while module:  # importing a.b.c imports a and a.b too
            if module in modules:
                found.add(module)
            module = module.rpartition(".")[0]
    return found


def test_every_module_in_the_package_is_used_by_a_command() -> None:
    modules = _modules()
    todo = ["driftline.cli", *(f"driftline.commands.{c}" for c in COMMANDS)]
    reached: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(_imported(name, modules[name], modules))
    assert sorted(set(modules) - reached) == []


def test_no_test_harness_ships() -> None:
    names = {path.stem for path in PACKAGE.rglob("*.py")} | {
        path.name for path in PACKAGE.rglob("*") if path.is_dir()
    }
    assert not {n for n in names if n in {"testing", "tests", "conftest"} or n.startswith("test_")}
