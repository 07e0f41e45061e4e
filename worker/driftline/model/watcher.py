"""Hot reload: notice a new or replaced model while the worker runs, swap only verified ones.

The worker owns one :class:`ModelWatcher` and calls :meth:`ModelWatcher.poll` from its own
loop, *between* batches, when :meth:`ModelWatcher.due` says the interval has elapsed.  No
thread: a swap between batches means every batch is scored by exactly one model, and the
processor never sees its scorer change under it.

What a poll does:

1. **fingerprint** — resolve the version to serve (``champion`` — the registry's recorded
   champion, see :mod:`driftline.model.stages` — and ``latest`` are re-resolved every poll,
   so a promotion or a rollback is picked up like a new version; a pinned version is
   fixed) and ``stat`` its ``model.joblib`` and ``metadata.json`` (inode, size, mtime,
   ctime); ``champion`` also reads the small ``stages.json``.  Otherwise stat calls only:
   nothing is read or hashed while nothing changed, so a poll is cheap enough to run every
   few seconds.
2. **same fingerprint as the serving model** → ``unchanged``.
3. **same fingerprint as the last refused one** → ``unchanged`` as well: a refused model is
   not re-verified (and re-counted, re-logged) every poll, only when its files change again.
4. **anything else** (a new version was registered, the latest was deleted — a rollback —,
   or the files of the serving version were replaced) → :meth:`ModelRegistry.load` of the
   resolved version, which verifies metadata, feature list, spec digest and sha256 *before*
   unpickling (unverified bytes are never unpickled).  Success → ``loaded``: the caller
   swaps its scorer.  :class:`ModelRefused` → ``refused``: the caller counts it in
   ``driftline_model_load_failures_total{reason}`` (which the ModelLoadFailed alert
   watches) and **the previous model keeps serving** — a bad file on disk never takes a
   working worker down.  A successful load whose content is identical to the serving model
   (say, a tampered file restored) is reported ``unchanged`` and clears the failure.

Atomicity.  :meth:`ModelRegistry.save` assembles a version in a hidden directory and
renames it into place, so a poll never sees half a version.  An operator overwriting
``model.joblib`` in place is another matter: a poll may read it half-written.  That is
safe, because the partial file fails its checksum and is refused (the previous model keeps
serving); when the write completes the file's size/mtime change again, so the next poll
retries and loads it.  The price is one ``checksum_mismatch`` counted per torn read (and
one more if ``metadata.json`` is rewritten after ``model.joblib``): register models with
``driftline train`` / ``ModelRegistry.save`` rather than by hand.

Coarse timestamps ("racy" files).  File mtimes tick at the kernel's clock granularity (a
few milliseconds; seconds on some file systems), so a same-size rewrite within one tick of
the stat would keep the fingerprint equal.  As git does for its index, a fingerprint whose
files were modified less than ``racy_window_s`` ago also carries a sha256 of their
content, and the next poll hashes again to compare.  Hashing thus only happens in the
seconds after a file changed, never in the steady state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from driftline.model.registry import (
    METADATA_FILE,
    MODEL_FILE,
    REASON_MISSING,
    LoadedModel,
    ModelRefused,
    ModelRegistry,
)

log = logging.getLogger(__name__)

WatchKind = Literal["unchanged", "loaded", "refused"]

_FileKey = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


@dataclass(frozen=True, slots=True)
class WatchResult:
    """What one :meth:`ModelWatcher.poll` found.

    ``loaded``: ``model`` is a verified new model to swap in.  ``refused``: ``reason`` (one
    of ``REFUSAL_REASONS``, a safe metric label) and ``message`` say why; the previous model
    stays.  ``unchanged``: nothing to do.  ``version`` is the version that was looked at.
    """

    kind: WatchKind
    model: LoadedModel | None = None
    version: str | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """The cheap identity of what is on disk for the version to serve.

    ``digest`` is only set while the files are "racy" (modified very recently, see the
    module docstring); ``error`` when the registry could not even be inspected.
    """

    version: str | None
    model: _FileKey | None
    metadata: _FileKey | None
    digest: str | None = None
    error: str | None = None
    racy: bool = False

    def same_as(self, other: Fingerprint | None) -> bool:
        if other is None:
            return False
        if (self.version, self.model, self.metadata, self.error) != (
            other.version,
            other.model,
            other.metadata,
            other.error,
        ):
            return False
        # Equal stats: trust them unless both sides hashed (the racy case), then compare.
        return self.digest is None or other.digest is None or self.digest == other.digest

    def to_keep(self) -> Fingerprint:
        """The reference to remember: without a digest once the files are not racy.

        A later write then gets a later mtime, so the stats alone will show it; keeping the
        digest would make every following poll hash the files again.
        """
        return self if self.racy or self.digest is None else replace(self, digest=None)


class ModelWatcher:
    """Follows one model in a registry; the worker calls it between batches (no thread).

    ``version`` is ``"champion"`` (follow promotions and rollbacks; a registry without a
    recorded champion serves its latest version until the first promotion), ``"latest"``
    (follow new registrations; deleting the newest version rolls back to the previous one)
    or a pinned version like ``"v0003"`` (then only a replacement
    of that version's files is noticed — and refused unless it verifies).
    ``expected_features`` and ``expected_spec_digest`` are passed to every
    :meth:`ModelRegistry.load`, so a model for another feature list or spec is refused.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        name: str,
        version: str = "champion",
        expected_features: Sequence[str] | None = None,
        expected_spec_digest: str | None = None,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        racy_window_s: float = 2.0,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        if racy_window_s < 0:
            raise ValueError(f"racy_window_s must be >= 0, got {racy_window_s}")
        self.registry = registry
        self.name = name
        self.version = version
        self.expected_features = list(expected_features) if expected_features is not None else None
        self.expected_spec_digest = expected_spec_digest
        self.interval_s = float(interval_s)
        self.clock = clock
        self.racy_window_ns = int(racy_window_s * 1e9)
        #: The model being served (set by :meth:`load`, replaced by a ``loaded`` poll).
        self.current: LoadedModel | None = None
        #: The last refusal, until a later load succeeds or the files are restored.
        self.last_failure: WatchResult | None = None
        self.polls = 0
        self.loads = 0  # calls to ModelRegistry.load (verifications), for tests and logs
        self._current_fp: Fingerprint | None = None
        self._failed_fp: Fingerprint | None = None
        self._last_poll: float | None = None
        self._champion_source: str | None = None

    # ------------------------------------------------------------------ public
    def load(self) -> LoadedModel:
        """The initial load, at worker start: raises :class:`ModelRefused` if refused.

        A worker with no verified model must not start, so unlike :meth:`poll` this raises.
        The fingerprint is taken *before* loading: a change racing with the load is then
        seen by the next poll (at worst one extra verification), never missed.
        """
        fingerprint = self._fingerprint()
        self._last_poll = self.clock()
        try:
            model = self._load(fingerprint)
        except ModelRefused as refused:
            self._failed_fp = fingerprint.to_keep()
            self.last_failure = _refusal(refused, fingerprint.version)
            raise
        self._adopt(model, fingerprint)
        return model

    def due(self) -> bool:
        """Whether ``interval_s`` has elapsed since the last poll (or load)."""
        return self._last_poll is None or self.clock() - self._last_poll >= self.interval_s

    def poll(self) -> WatchResult:
        """Check the registry once; see the module docstring.  Never raises ModelRefused."""
        self.polls += 1
        self._last_poll = self.clock()
        fingerprint = self._fingerprint()
        if fingerprint.same_as(self._current_fp):
            self._current_fp = fingerprint.to_keep()
            if self.last_failure is not None:
                log.info("model %s: files restored to the serving version", self.name)
                self.last_failure = None
                self._failed_fp = None
            return WatchResult("unchanged", version=fingerprint.version)
        if fingerprint.same_as(self._failed_fp):
            self._failed_fp = fingerprint.to_keep()
            return WatchResult("unchanged", version=fingerprint.version)

        try:
            model = self._load(fingerprint)
        except ModelRefused as refused:
            self._failed_fp = fingerprint.to_keep()
            self.last_failure = result = _refusal(refused, fingerprint.version)
            serving = self.current.version if self.current else "none"
            # "model refused (reason)": the line the ModelLoadFailed runbook points to.
            log.error(
                "model refused (%s): %s; model %s %s keeps serving",
                refused.reason,
                refused.message,
                self.name,
                serving,
            )
            return result

        previous = self.current
        self._adopt(model, fingerprint)
        if previous is not None and _same_model(previous, model):
            log.info(
                "model %s %s: files changed but the verified content is identical; "
                "keeping the loaded model",
                model.name,
                model.version,
            )
            self.current = previous  # the caller's scorer wraps this object: keep it
            return WatchResult("unchanged", version=model.version)
        log.info(
            "model %s %s verified (sha256 %s), replacing %s",
            model.name,
            model.version,
            model.sha256[:12],
            previous.version if previous else "none",
        )
        return WatchResult("loaded", model=model, version=model.version)

    # ------------------------------------------------------------------ internals
    def _adopt(self, model: LoadedModel, fingerprint: Fingerprint) -> None:
        self.current = model
        self._current_fp = fingerprint.to_keep()
        self._failed_fp = None
        self.last_failure = None

    def _load(self, fingerprint: Fingerprint) -> LoadedModel:
        if fingerprint.error is not None:
            raise ModelRefused(REASON_MISSING, fingerprint.error)
        if fingerprint.version is None:
            if self.version == "champion" and self.registry.versions(self.name):
                raise ModelRefused(
                    REASON_MISSING,
                    f"model {self.name!r} has no champion in {self.registry.root} (only "
                    "candidates or retired versions): `driftline models promote VERSION`",
                )
            raise ModelRefused(
                REASON_MISSING, f"no versions of model {self.name!r} in {self.registry.root}"
            )
        self.loads += 1
        try:
            # The resolved version, not "latest": what is loaded is what was fingerprinted.
            return self.registry.load(
                self.name,
                fingerprint.version,
                expected_features=self.expected_features,
                expected_spec_digest=self.expected_spec_digest,
            )
        except OSError as error:  # e.g. model.joblib unreadable (permissions, I/O error)
            raise ModelRefused(
                REASON_MISSING,
                f"model {self.name} {fingerprint.version}: cannot read: {error}",
            ) from error

    def _fingerprint(self) -> Fingerprint:
        try:
            version = self._resolve()
            if version is None:
                return Fingerprint(None, None, None)
            folder = self.registry.path(self.name, version)
            paths = (folder / MODEL_FILE, folder / METADATA_FILE)
            model_key, metadata_key = (_file_key(path) for path in paths)
            now = time.time_ns()
            racy = any(
                key is not None and now - key[2] < self.racy_window_ns
                for key in (model_key, metadata_key)
            )
            # Hash when the files are racy now, or when a reference with the same stats was
            # taken while they were racy (a same-tick write since then must not be missed).
            stats = (version, model_key, metadata_key, None)
            hashed_reference = any(
                fp is not None
                and fp.digest is not None
                and (fp.version, fp.model, fp.metadata, fp.error) == stats
                for fp in (self._current_fp, self._failed_fp)
            )
            digest = _content_digest(paths) if racy or hashed_reference else None
        except (OSError, ValueError) as error:
            return Fingerprint(None, None, None, error=f"cannot inspect the registry: {error}")
        return Fingerprint(version, model_key, metadata_key, digest=digest, racy=racy)

    def _resolve(self) -> str | None:
        if self.version == "latest":
            return self.registry.latest(self.name)
        if self.version == "champion":
            champion = self.registry.champion(self.name)
            if champion.source != self._champion_source:
                self._champion_source = champion.source
                if champion.source == "latest":
                    log.info(
                        "model %s: no champion recorded in %s; serving the latest version "
                        "(%s) until the first promotion",
                        self.name,
                        self.registry.root,
                        champion.version,
                    )
            return champion.version
        return self.version


def _file_key(path: Path) -> _FileKey | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _content_digest(paths: Sequence[Path]) -> str:
    """sha256 over the files' contents (missing files hash as absent): racy fingerprints."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            digest.update(b"\x00absent")
            continue
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def _same_model(a: LoadedModel, b: LoadedModel) -> bool:
    return (a.name, a.version, a.sha256) == (b.name, b.version, b.sha256) and (
        a.metadata == b.metadata
    )


def _refusal(refused: ModelRefused, version: str | None) -> WatchResult:
    return WatchResult("refused", version=version, reason=refused.reason, message=refused.message)
