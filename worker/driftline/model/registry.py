"""A model registry on a plain directory: ``<root>/<name>/<version>/{model.joblib,metadata.json}``.

Why a directory: the worker, the trainer and the demo share a disk, and a directory is
something an operator can list, copy, diff and roll back by hand.

Safety rules, in the order :meth:`ModelRegistry.load` applies them:

1. **metadata first** — it is JSON (safe to parse) and says what the model expects, so a
   model trained for another feature list or spec is refused without touching the pickle.
2. **checksum before unpickling** — ``model.joblib`` is a pickle, and unpickling runs
   code.  The file is read once, its sha256 is compared with the one recorded at save time,
   and only those same bytes are handed to ``joblib.load`` (no second read that could see a
   different file).  This catches truncation, corruption and a swapped file.  It is not a
   signature: whoever can write the directory can rewrite both files, so the registry
   directory must be writable only by the trainer.
3. **after loading** — the object must have ``predict_proba``, a positive class (1/True),
   and its recorded input columns (``feature_names_in_``) must equal the metadata's.

Any failure raises :class:`ModelRefused` whose ``reason`` is one of :data:`REFUSAL_REASONS`
(a closed set, safe as a metric label) and whose message says what differs.

Writes are atomic: a version is assembled in a hidden temporary directory and renamed into
place, so a reader never sees half a version; two concurrent writers that pick the same
number cannot both win the rename (the loser retries with the next number).

Versions are immutable; their stage (candidate, champion, retired) is kept apart in
``<root>/<name>/stages.json`` (:mod:`driftline.model.stages`), and ``load(name,
"champion")`` serves the recorded champion, or the latest version while none is recorded.
A version's lineage (parent version, incident, training window, data hash) is written into
its metadata at save time (``metadata["lineage"]``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import joblib
import numpy as np
import pandas as pd
import sklearn

from driftline.model import stages as stage_book
from driftline.model.stages import Champion, StageBook, StageError

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
METADATA_FORMAT = 1
FEATURE_TYPES = ("numeric", "categorical")

REASON_MISSING = "missing"
REASON_CHECKSUM = "checksum_mismatch"
REASON_FEATURES = "feature_mismatch"
REASON_SPEC = "spec_mismatch"
REASON_CORRUPT = "corrupt"
REASON_METADATA = "metadata_invalid"
REFUSAL_REASONS = (
    REASON_MISSING,
    REASON_CHECKSUM,
    REASON_FEATURES,
    REASON_SPEC,
    REASON_CORRUPT,
    REASON_METADATA,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^v(\d{4,})$")
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "version": str,
    "created_at": str,
    "data_hash": str,
    "feature_names": list,
    "feature_types": dict,
    "spec_digest": (str, type(None)),
    "metrics": dict,
    "libraries": dict,
    "sha256": str,
    "threshold": (int, float),
    "reference_profile": dict,
}
_SAVE_ATTEMPTS = 20


class ModelRefused(Exception):
    """A model version cannot be served; ``reason`` is a short token from REFUSAL_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """Where :meth:`ModelRegistry.save` put a model."""

    name: str
    version: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class LoadedModel:
    """A verified, unpickled model and what the registry knows about it."""

    name: str
    version: str
    pipeline: Any
    metadata: dict[str, Any]
    feature_names: list[str]
    threshold: float
    sha256: str


def library_versions() -> dict[str, str]:
    """Versions that decide whether a pickle loads and predicts the same way."""
    return {
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "joblib": joblib.__version__,
    }


class ModelRegistry:
    """Save, list and load versioned models under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- queries ----------------------------------------------------------------------------

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest first (empty if there are none)."""
        folder = self.root / _check_name(name)
        if not folder.is_dir():
            return []
        found = [
            (int(match.group(1)), entry.name)
            for entry in folder.iterdir()
            if (match := _VERSION.match(entry.name)) and entry.is_dir()
        ]
        return [version for _, version in sorted(found)]

    def latest(self, name: str) -> str | None:
        """The newest version of ``name``, or None."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def champion(self, name: str) -> Champion:
        """The version workers serve: the recorded champion, else the latest version."""
        _check_name(name)
        return stage_book.resolve_champion(self.root, name, self.versions(name))

    def resolve(self, name: str, version: str) -> str | None:
        """``latest`` and ``champion`` to a version (None when there is none); others as is."""
        if version == "latest":
            return self.latest(name)
        if version == "champion":
            return self.champion(name).version
        return version

    def stages(self, name: str) -> StageBook:
        """The recorded stages and their history (empty for a registry without stages)."""
        return stage_book.read_book(self.root, _check_name(name))

    def set_stage(
        self,
        name: str,
        version: str,
        stage: str,
        *,
        reason: str,
        by: str | None = None,
        **details: Any,
    ) -> dict[str, Any]:
        """Move ``version`` to ``stage`` (champion: the previous one is retired); the entry."""
        if version not in self.versions(name):
            raise StageError(f"model {name!r} has no version {version!r} in {self.root}")
        with stage_book.editing(self.root, name) as book:
            entry = stage_book.transition(book, version, stage, reason=reason, by=by, **details)
        log.info("model %s %s: stage %s -> %s (%s)", name, version, entry["from"], stage, reason)
        return entry

    def rollback(
        self, name: str, *, reason: str, by: str | None = None, to: str | None = None
    ) -> dict[str, Any]:
        """Retire the champion (rolled back) and make the previous champion (or ``to``) it."""
        versions = self.versions(name)
        with stage_book.editing(self.root, name) as book:
            current = book.champion
            if current is None:
                raise StageError(
                    f"model {name!r} has no recorded champion to roll back "
                    "(the latest version is served until the first promotion)"
                )
            target = to if to is not None else stage_book.rollback_target(book)
            if target is None:
                raise StageError(f"model {name!r}: no earlier champion to roll back to")
            if target not in versions:
                raise StageError(f"model {name!r} has no version {target!r} in {self.root}")
            if target == current:
                raise StageError(f"model {name!r}: {target} is already the champion")
            entry = stage_book.transition(
                book, target, stage_book.CHAMPION, reason=f"rollback: {reason}", by=by
            )
            # transition() appended the current champion's retirement just before ``entry``
            book.history[-2]["rolled_back"] = True
        log.warning("model %s: rolled back %s -> %s (%s)", name, current, target, reason)
        return entry

    def path(self, name: str, version: str) -> Path:
        """Directory of one version (which may not exist)."""
        if not _VERSION.match(version):
            raise ValueError(f"bad version {version!r}: expected like 'v0001'")
        return self.root / _check_name(name) / version

    # --- save ----------------------------------------------------------------------------------

    def save(
        self,
        name: str,
        pipeline: Any,
        *,
        feature_names: list[str],
        feature_types: dict[str, str],
        spec_digest: str | None,
        metrics: dict[str, Any],
        data_hash: str,
        reference_profile: dict[str, Any],
        threshold: float,
        extra: dict[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        lineage: dict[str, Any] | None = None,
        stage: str | None = None,
        stage_reason: str = "registered",
    ) -> ModelVersion:
        """Write a new version atomically and return where it went.

        ``files`` are extra files written into the version with the model (e.g. the
        held-out arrays reports are drawn from): same atomic rename, their sha256 and size
        recorded under the metadata's ``files``; the loader never reads them.
        ``lineage`` (parent version, incident id, training window...) is stored in the
        metadata; ``stage`` (``candidate``/``champion``), when given, is recorded in
        ``stages.json`` once the version is in place (None: no stage, the old behaviour).

        Refuses (``ValueError``) a model the loader would refuse anyway: no
        ``predict_proba``, input columns that differ from ``feature_names``, types that do not
        cover the features, a threshold outside [0, 1], or metadata that is not strict JSON.
        """
        _check_name(name)
        feature_names = [str(f) for f in feature_names]
        _check_model(pipeline, feature_names, exception=ValueError)
        if set(feature_types) != set(feature_names) or any(
            t not in FEATURE_TYPES for t in feature_types.values()
        ):
            raise ValueError(
                f"feature_types must map every feature to one of {FEATURE_TYPES}, "
                f"got {feature_types}"
            )
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        files = dict(files or {})
        for file_name in files:
            _check_file_name(file_name)
        if stage is not None and stage not in (stage_book.CANDIDATE, stage_book.CHAMPION):
            raise ValueError(f"a new version's stage is candidate or champion, not {stage!r}")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        if stage == stage_book.CANDIDATE:
            self._record_implicit_champion(name)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the worker may be another user
        try:
            model_path = staging / MODEL_FILE
            joblib.dump(pipeline, model_path, compress=3)
            _fsync(model_path)
            digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
            recorded_files = {}
            for file_name, payload in files.items():
                (staging / file_name).write_bytes(payload)
                _fsync(staging / file_name)
                recorded_files[file_name] = {
                    "sha256": hashlib.sha256(payload).hexdigest(),
                    "bytes": len(payload),
                }
            base_metadata = {
                "format": METADATA_FORMAT,
                "name": name,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "data_hash": data_hash,
                "feature_names": feature_names,
                "feature_types": {f: feature_types[f] for f in feature_names},
                "spec_digest": spec_digest,
                "metrics": metrics,
                "libraries": library_versions(),
                "sha256": digest,
                "threshold": float(threshold),
                "reference_profile": reference_profile,
                "extra": extra or {},
                **({"files": recorded_files} if recorded_files else {}),
                "lineage": {"data_hash": data_hash, **(lineage or {})},
            }
            for _ in range(_SAVE_ATTEMPTS):
                version = self._next_version(name)
                metadata = {**base_metadata, "version": version}
                _write_json(staging / METADATA_FILE, metadata)
                try:
                    # rename() of a directory onto an existing non-empty one fails: that is
                    # the lock.  A concurrent writer that took this number makes us retry.
                    os.rename(staging, folder / version)
                except OSError:
                    if (folder / version).exists():
                        continue
                    raise
                _fsync_dir(folder)
                log.info("saved model %s %s (sha256 %s)", name, version, digest[:12])
                if stage is not None:
                    self.set_stage(name, version, stage, reason=stage_reason)
                return ModelVersion(name, version, folder / version, digest)
            raise RuntimeError(f"could not allocate a version for {name!r} (concurrent saves?)")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _record_implicit_champion(self, name: str) -> None:
        """Before a candidate lands in a registry with no recorded champion: record the
        version served so far (the latest without a stage) as champion, so the new version
        is never served in the moment between its rename and its stage."""
        with stage_book.editing(self.root, name) as book:
            implicit = stage_book.implicit_champion(book, self.versions(name))
            if implicit.source == "latest" and implicit.version is not None:
                stage_book.transition(
                    book,
                    implicit.version,
                    stage_book.CHAMPION,
                    reason="served as the latest version; recorded before registering a candidate",
                )

    def _next_version(self, name: str) -> str:
        latest = self.latest(name)
        number = int(latest[1:]) + 1 if latest else 1
        return f"v{number:04d}"

    # --- load ---------------------------------------------------------------------------------

    def load(
        self,
        name: str,
        version: str = "latest",
        *,
        expected_features: list[str] | None = None,
        expected_spec_digest: str | None = None,
    ) -> LoadedModel:
        """Verify and load one version; raises :class:`ModelRefused` if it must not be served.

        ``expected_features`` (order matters: the worker builds frames in spec order) and
        ``expected_spec_digest`` are checked against the metadata before the pickle is read.
        """
        try:
            _check_name(name)
        except ValueError as error:
            raise ModelRefused(REASON_MISSING, str(error)) from None
        if version in ("latest", "champion"):
            try:
                resolved = self.resolve(name, version)
            except StageError as error:
                raise ModelRefused(REASON_METADATA, str(error)) from None
            if resolved is None and version == "champion" and self.versions(name):
                raise ModelRefused(
                    REASON_MISSING,
                    f"model {name!r} has no champion in {self.root} (only candidates or "
                    "retired versions): `driftline models promote VERSION`",
                )
            if resolved is None:
                raise ModelRefused(REASON_MISSING, f"no versions of model {name!r} in {self.root}")
            version = resolved
            if not _VERSION.match(version):
                raise ModelRefused(REASON_MISSING, f"bad champion version {version!r}")
        elif not _VERSION.match(version):
            raise ModelRefused(REASON_MISSING, f"bad version {version!r}: expected like 'v0001'")
        folder = self.root / name / version
        where = f"{name} {version}"
        if not folder.is_dir():
            raise ModelRefused(REASON_MISSING, f"model {where} not found in {self.root}")

        metadata = _read_metadata(folder / METADATA_FILE, name, version)
        feature_names: list[str] = metadata["feature_names"]
        if expected_features is not None:
            problem = describe_feature_difference(list(expected_features), feature_names)
            if problem:
                raise ModelRefused(REASON_FEATURES, f"model {where}: {problem}")
        if expected_spec_digest is not None and metadata["spec_digest"] != expected_spec_digest:
            raise ModelRefused(
                REASON_SPEC,
                f"model {where} was trained with feature spec "
                f"{_short(metadata['spec_digest'])}, the worker runs "
                f"{_short(expected_spec_digest)}: retrain, or run the matching spec",
            )
        current = library_versions()
        stale = {k: v for k, v in metadata["libraries"].items() if current.get(k) not in (None, v)}
        if stale:
            log.warning("model %s was saved with %s; running %s", where, stale, current)

        try:
            payload = (folder / MODEL_FILE).read_bytes()
        except FileNotFoundError:
            raise ModelRefused(REASON_MISSING, f"model {where}: {MODEL_FILE} is missing") from None
        digest = hashlib.sha256(payload).hexdigest()
        if digest != metadata["sha256"]:
            raise ModelRefused(
                REASON_CHECKSUM,
                f"model {where}: {MODEL_FILE} sha256 {digest[:12]}… does not match the "
                f"recorded {metadata['sha256'][:12]}…; not unpickling it",
            )
        try:
            pipeline = joblib.load(io.BytesIO(payload))  # exactly the bytes just verified
        except Exception as error:
            raise ModelRefused(
                REASON_CORRUPT,
                f"model {where}: cannot unpickle {MODEL_FILE}: {type(error).__name__}: {error}",
            ) from error
        _check_model(pipeline, feature_names, exception=ModelRefused, where=where)
        return LoadedModel(
            name=name,
            version=version,
            pipeline=pipeline,
            metadata=metadata,
            feature_names=list(feature_names),
            threshold=float(metadata["threshold"]),
            sha256=digest,
        )


def describe_feature_difference(expected: list[str], actual: list[str]) -> str | None:
    """Why ``actual`` (the model's features) is not ``expected``, or None if they are equal."""
    if expected == actual:
        return None
    missing = [f for f in expected if f not in actual]
    extra = [f for f in actual if f not in expected]
    parts = []
    if missing:
        parts.append(f"the model lacks expected feature(s) {missing}")
    if extra:
        parts.append(f"the model has unexpected feature(s) {extra}")
    if not parts:
        if len(expected) != len(actual):
            parts.append("a feature is listed twice")
        else:
            at = next(i for i, (a, b) in enumerate(zip(expected, actual, strict=True)) if a != b)
            parts.append(
                f"same features in a different order: position {at} is {actual[at]!r} in the "
                f"model but {expected[at]!r} expected"
            )
    return "; ".join(parts)


# --- helpers ---------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    """Model names become directory names: no separators, no dot-dot, bounded length."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"bad model name {name!r}: use letters, digits, '.', '_', '-'")
    return name


_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check_file_name(file_name: str) -> str:
    """An extra file of a version: a plain name, not one of the registry's own."""
    if not _FILE_NAME.match(file_name) or file_name in (MODEL_FILE, METADATA_FILE):
        raise ValueError(f"bad extra file name {file_name!r}")
    return file_name


def _check_model(
    model: Any,
    feature_names: list[str],
    *,
    exception: type[Exception],
    where: str = "model",
) -> None:
    """The checks shared by save (ValueError) and load (ModelRefused)."""

    def fail(reason: str, message: str) -> NoReturn:
        if exception is ModelRefused:
            raise ModelRefused(reason, f"model {where}: {message}")
        raise exception(message)

    if not callable(getattr(model, "predict_proba", None)):
        fail(REASON_CORRUPT, f"{type(model).__name__} has no predict_proba")
    classes = getattr(model, "classes_", None)
    if classes is None or 1 not in list(classes):  # True == 1
        fail(REASON_CORRUPT, f"no positive class 1/True among classes {classes!r}")
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is not None:
        problem = describe_feature_difference(feature_names, [str(f) for f in fitted])
        if problem:
            fail(REASON_FEATURES, f"recorded feature names vs the fitted model: {problem}")


def _read_metadata(path: Path, name: str, version: str) -> dict[str, Any]:
    where = f"{name} {version}"
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelRefused(REASON_MISSING, f"model {where}: {METADATA_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelRefused(
            REASON_METADATA, f"model {where}: {METADATA_FILE} unreadable: {error}"
        ) from None
    if not isinstance(metadata, dict):
        raise ModelRefused(REASON_METADATA, f"model {where}: {METADATA_FILE} is not an object")
    wrong = [
        key
        for key, kind in _REQUIRED.items()
        if key not in metadata or not isinstance(metadata[key], kind)
    ]
    if wrong:
        raise ModelRefused(REASON_METADATA, f"model {where}: missing or mistyped keys {wrong}")
    if metadata["name"] != name or metadata["version"] != version:
        raise ModelRefused(
            REASON_METADATA,
            f"model {where}: metadata says {metadata['name']} {metadata['version']} "
            "(copied from another version?)",
        )
    features = metadata["feature_names"]
    if not features or not all(isinstance(f, str) for f in features):
        raise ModelRefused(REASON_METADATA, f"model {where}: feature_names must be strings")
    if not re.fullmatch(r"[0-9a-f]{64}", metadata["sha256"]):
        raise ModelRefused(REASON_METADATA, f"model {where}: sha256 is not a sha256 hex digest")
    return metadata


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata is not strict JSON (NaN, numpy types?): {error}") from None
    path.write_text(text + "\n", encoding="utf-8")
    _fsync(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _short(digest: str | None) -> str:
    return "(none)" if digest is None else digest[:12]
