"""Registry stages: which version of a model is the champion, which are candidates or retired.

Version directories stay immutable (their sha256 is checked before unpickling, so
rewriting ``metadata.json`` to change a stage is not an option).  The one mutable fact, the
stage of each version, lives in one small file per model name,
``<root>/<name>/stages.json``::

    {"format": 1,
     "champion": "v0003",
     "stages": {"v0001": "retired", "v0002": "candidate", "v0003": "champion"},
     "history": [{"at": "...", "by": "...", "version": "v0003", "from": "candidate",
                  "to": "champion", "reason": "...", "replaced": "v0001"}, ...]}

Rules:

* It is written atomically (temporary file, fsync, rename) under an exclusive ``flock`` of
  ``<name>/.stages.lock``, so two concurrent promotions serialize and a reader (a worker's
  poll) sees either the old or the new file, never half of one.
* **No stages file, or no champion recorded** (a registry from before stages existed):
  the latest version *without a stage* is served, as before stages existed; a candidate or
  a retired version never is.  :func:`resolve_champion` says so with its ``source``.  The
  first promotion writes the file and from then on the recorded champion is served,
  whatever is registered after it.  Registering a candidate into such a registry first
  records the version served so far as champion (:meth:`ModelRegistry.save`), so that the
  moment between the new version's rename and its stage never serves it.
* A version that is not in ``stages`` has no stage (registered before stages existed, or
  saved by :meth:`ModelRegistry.save` directly): ``driftline models list`` shows ``-``.
* ``promote`` makes one version champion; the champion it replaces becomes ``retired``.
  ``rollback`` retires the current champion (marked ``rolled_back``) and makes champion
  again the most recent earlier champion that was not itself rolled back.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

STAGES_FILE = "stages.json"
LOCK_FILE = ".stages.lock"
STAGES_FORMAT = 1
CANDIDATE = "candidate"
CHAMPION = "champion"
RETIRED = "retired"
STAGES = (CANDIDATE, CHAMPION, RETIRED)

ChampionSource = Literal["recorded", "latest", "none"]


class StageError(ValueError):
    """A stage change that cannot be made (unknown version, nothing to roll back to...)."""


@dataclass
class StageBook:
    """The content of ``stages.json`` for one model name."""

    champion: str | None = None
    stages: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STAGES_FORMAT,
            "champion": self.champion,
            "stages": dict(sorted(self.stages.items())),
            "history": self.history,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path) -> StageBook:
        if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
            raise StageError(f"{where}: not a stages file (expected an object with 'stages')")
        champion = data.get("champion")
        stages = {str(k): str(v) for k, v in data.get("stages", {}).items()}
        history = data.get("history", [])
        if champion is not None and not isinstance(champion, str):
            raise StageError(f"{where}: 'champion' must be a version string or null")
        if not isinstance(history, list):
            raise StageError(f"{where}: 'history' must be a list")
        return cls(champion=champion, stages=stages, history=history)


@dataclass(frozen=True, slots=True)
class Champion:
    """The version to serve and where that answer came from.

    ``source``: ``recorded`` (stages.json names it), ``latest`` (no champion recorded: the
    newest version is served until the first promotion), ``none`` (no versions at all).
    """

    version: str | None
    source: ChampionSource


def stages_path(root: Path, name: str) -> Path:
    return root / name / STAGES_FILE


def read_book(root: Path, name: str) -> StageBook:
    """The stages of ``name`` (an empty book when no file exists yet)."""
    path = stages_path(root, name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return StageBook()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise StageError(f"{path}: unreadable: {error}") from None
    return StageBook.from_json(data, path)


def resolve_champion(root: Path, name: str, versions: list[str]) -> Champion:
    """The version workers serve: the recorded champion, else the latest version without a
    stage (never a candidate or a retired one; see the module docstring)."""
    return implicit_champion(read_book(root, name), versions)


def implicit_champion(book: StageBook, versions: list[str]) -> Champion:
    if book.champion is not None:
        return Champion(book.champion, "recorded")
    unstaged = [v for v in versions if v not in book.stages]
    return Champion(unstaged[-1], "latest") if unstaged else Champion(None, "none")


def stage_of(book: StageBook, version: str) -> str | None:
    return book.stages.get(version)


@contextmanager
def editing(root: Path, name: str) -> Iterator[StageBook]:
    """Read-modify-write ``stages.json`` under an exclusive lock; written back atomically."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            book = read_book(root, name)
            yield book
            _write_atomic(stages_path(root, name), book.to_json())
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def transition(
    book: StageBook,
    version: str,
    to: str,
    *,
    reason: str,
    by: str | None = None,
    **details: Any,
) -> dict[str, Any]:
    """Record ``version`` moving to stage ``to`` (in memory); returns the history entry.

    Making a version champion retires the champion it replaces (a second entry).
    """
    if to not in STAGES:
        raise StageError(f"unknown stage {to!r}; known: {', '.join(STAGES)}")
    entry: dict[str, Any] = {
        "at": _now(),
        "by": by or actor(),
        "version": version,
        "from": book.stages.get(version),
        "to": to,
        "reason": reason,
        **details,
    }
    if to == CHAMPION:
        previous = book.champion
        entry["replaced"] = previous
        if previous is not None and previous != version:
            book.history.append(
                {
                    "at": entry["at"],
                    "by": entry["by"],
                    "version": previous,
                    "from": book.stages.get(previous),
                    "to": RETIRED,
                    "reason": f"replaced by {version}: {reason}",
                }
            )
            book.stages[previous] = RETIRED
        book.champion = version
    elif book.champion == version:
        book.champion = None  # demoting the champion leaves the latest-version rule
    book.stages[version] = to
    book.history.append(entry)
    return entry


def rollback_target(book: StageBook) -> str | None:
    """The most recent earlier champion that was not itself rolled back, or None."""
    rolled_back = {e["version"] for e in book.history if e.get("rolled_back")}
    for entry in reversed(book.history):
        version = entry.get("version")
        if entry.get("to") == CHAMPION and version != book.champion and version not in rolled_back:
            return str(version)
    return None


def actor() -> str:
    """Who made a change: ``user@host`` (best effort; never fails)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
