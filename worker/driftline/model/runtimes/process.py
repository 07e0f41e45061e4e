"""A child process that scores feature blocks, so the model runs beside the worker's loop.

Python runs one thread at a time, and a scikit-learn forest holds the GIL for most of
``predict_proba`` (a second thread gains nothing, nor does ``n_jobs``).  A RandomForest(100)
also pays ~12 ms per call whatever the batch (joblib's dispatch and a Python call per tree),
so splitting one batch between two processes saves little either.  What does pay is
scoring whole batches in another process while the loop decodes and updates the state of
the next one: the loop's work and the model's then overlap, and the worker runs at the
pace of the slower of the two instead of their sum.

The child holds a copy of the parent's scorer (pickled at start) and answers blocks in the
order they were sent.  It knows nothing of Kafka: any engine can pipeline with it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import queue
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any, cast

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

import numpy as np

from driftline.core.state import FeatureBlock
from driftline.model.runtimes.sklearn import Scorer

#: How long the child may take to start and load the model.
START_TIMEOUT_S = 120.0


class ScoringProcessFailed(RuntimeError):
    """The scoring process died or could not score a block: the batch has no scores."""


class ScoringRaised(ScoringProcessFailed):
    """The model raised on a block; the child is alive and serves the next one.

    The worker then isolates the rows the model raises on itself (``model.isolation``),
    with its own copy of the model: the scores are the same, and a row-level failure is a
    dead letter, not a stopped worker.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"scoring failed in the scoring process: {detail}")
        #: The exception's last line (``ValueError: ...``), for the log.
        self.summary = (detail.strip().splitlines() or ["?"])[-1]


def _serve(
    inbound: Connection, outbound: Connection, scorer_bytes: bytes, native_threads: int
) -> None:
    """The child: load the scorer, say ready, then score each block sent, in order."""
    try:
        from driftline.model.runtimes.sklearn import limit_native_threads

        limit_native_threads(native_threads)
        scorer: Scorer = pickle.loads(scorer_bytes)
    except BaseException:  # reported to the parent, which raises it
        outbound.send(("error", traceback.format_exc()))
        return
    # A reader thread takes blocks off the pipe as they come: a block is larger than the
    # pipe's buffer, so without it the parent's send would wait for the block in progress.
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def read() -> None:
        while True:
            try:
                message = inbound.recv()
            except (EOFError, OSError):  # the parent closed its end or died
                message = None
            inbox.put(message)
            if message is None:
                return

    threading.Thread(target=read, name="driftline-scoring-reader", daemon=True).start()
    outbound.send(("ready", None))
    while True:
        message = inbox.get()
        if message is None:
            return
        layout, numeric, categorical = message
        try:
            scores = scorer.score_block(FeatureBlock(layout, numeric, categorical))
        except Exception:  # a bad block fails its batch, not the child
            outbound.send(("error", traceback.format_exc()))
            continue
        outbound.send(("scores", scores))


class ScoringProcess:
    """Scores blocks in a child process; ``submit`` then ``result``, first in, first out.

    ``scorer`` stays the parent's: it names the model, holds the threshold and decides.
    The child scores with an exact copy, so its scores equal the parent's own.
    """

    def __init__(self, scorer: Scorer, native_threads: int = 1) -> None:
        self.scorer = scorer
        context = multiprocessing.get_context("spawn")  # never fork librdkafka's threads
        # One pipe each way; the outbound one large enough for the blocks in flight, so a
        # send never waits for the child to read (it reads between two predict calls).
        child_in, self._send_end = context.Pipe(duplex=False)
        self._conn, child_out = context.Pipe(duplex=False)
        _enlarge_pipe(self._send_end)
        self._process = context.Process(
            target=_serve,
            args=(
                child_in,
                child_out,
                pickle.dumps(scorer, pickle.HIGHEST_PROTOCOL),
                native_threads,
            ),
            name=f"driftline-scoring-{scorer.name}-{scorer.version}",
            daemon=True,
        )
        self._process.start()
        child_in.close()
        child_out.close()
        self._outstanding = 0
        kind, detail = self._receive(START_TIMEOUT_S)
        if kind != "ready":
            self.close()
            raise ScoringProcessFailed(f"scoring process did not start: {detail}")

    @property
    def outstanding(self) -> int:
        """Blocks sent whose scores were not taken yet."""
        return self._outstanding

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def submit(self, block: FeatureBlock) -> None:
        try:
            self._send_end.send((block.layout, block.numeric, block.categorical))
        except (OSError, ValueError) as error:
            raise ScoringProcessFailed(f"scoring process unreachable: {error}") from error
        self._outstanding += 1

    def result(self, timeout_s: float | None = None) -> np.ndarray:
        """The scores of the oldest block submitted and not taken yet."""
        if self._outstanding == 0:
            raise RuntimeError("no block was submitted")
        self._outstanding -= 1
        kind, detail = self._receive(timeout_s)
        if kind == "error":
            raise ScoringRaised(str(detail))
        if kind != "scores":
            raise ScoringProcessFailed(f"scoring failed in the scoring process: {detail}")
        return cast(np.ndarray, detail)  # the child sends ("scores", ndarray)

    def discard(self) -> None:
        """Take and drop every outstanding result (the batches were abandoned)."""
        while self._outstanding:
            with contextlib.suppress(ScoringProcessFailed):
                self.result()

    def close(self) -> None:
        """Stop the child (it finishes the block it is on) and reap it."""
        with contextlib.suppress(OSError, ValueError):
            self._send_end.send(None)
        self._send_end.close()
        self._conn.close()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)

    def __enter__(self) -> ScoringProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _receive(self, timeout_s: float | None) -> tuple[str, Any]:
        """The child's next message; a dead child or a silent one is a failure."""
        conn = self._conn
        waited = 0.0
        step = 1.0
        while not conn.poll(step):
            waited += step
            if not self._process.is_alive():
                code = self._process.exitcode
                raise ScoringProcessFailed(f"scoring process exited (exit code {code})")
            if timeout_s is not None and waited >= timeout_s:
                raise ScoringProcessFailed(f"scoring process silent for {waited:.0f} s")
        try:
            kind, detail = conn.recv()
        except (EOFError, OSError) as error:
            raise ScoringProcessFailed(f"scoring process gone: {error}") from error
        return kind, detail


#: Pipe buffer asked for (Linux's default ceiling, /proc/sys/fs/pipe-max-size): room for
#: about three 2,000-row blocks of the default spec (~340 KB each).
PIPE_BYTES = 1 << 20


def _enlarge_pipe(end: Connection) -> None:
    """Grow a pipe's buffer where the OS allows it (Linux); elsewhere sends may wait."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(end.fileno(), set_size, PIPE_BYTES)
