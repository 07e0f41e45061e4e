"""Scoring in a child process while the loop prepares the next batch.

With ``scoring_process`` and a backlog, batch N's feature block goes to the child
(``driftline.model.runtimes.process``) and stays *pending* here while the loop consumes,
decodes and updates the state of batch N+1; N is finished (scores taken, published) only
then.  Nothing of a pending batch is published or committed until it is finished, so
dropping one (a rewind) only needs the state restored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message

from driftline.model.runtimes.process import ScoringProcess, ScoringRaised
from driftline.model.runtimes.sklearn import Scorer
from driftline.processor import PreparedBatch, ScoringProcessor

log = logging.getLogger(__name__)

_NO_SCORES = np.empty(0)


@dataclass
class Prepared:
    """A batch prepared (decoded, state updated) and not finished yet: with a scoring
    process, the batch whose scores the child is computing while the next is prepared."""

    prepared: PreparedBatch
    records: list[Message]
    started: float
    #: Its block was sent to the scoring process (a batch of rejects only has none).
    submitted: bool = False


class ScoringOverlap:
    """The child scoring the batches (if any), and the batch it is on."""

    def __init__(self) -> None:
        self.process: ScoringProcess | None = None
        self.pending: Prepared | None = None
        #: Batches sent to the scoring process (the others were scored in the loop).
        self.batches_sent = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def use(self, scorer: Scorer, native_threads: int) -> None:
        """A child per model: the old one is done (its batch was finished before)."""
        started = ScoringProcess(scorer, native_threads)
        if self.process is not None:
            self.process.close()
        self.process = started
        log.info("scoring in process %s", started.pid)

    def submit(self, prepared: Prepared) -> Prepared | None:
        """Send a batch's block to the child; returns the batch pending before it."""
        assert self.process is not None
        block = prepared.prepared.block
        if block is not None:
            self.process.submit(block)
            prepared.submitted = True
            self.batches_sent += 1
        previous, self.pending = self.pending, prepared
        return previous

    def take(self) -> Prepared | None:
        """The pending batch, no longer pending (the caller finishes it)."""
        pending, self.pending = self.pending, None
        return pending

    def scores_of(self, prepared: Prepared, processor: ScoringProcessor) -> np.ndarray:
        """A pending batch's scores from the scoring process ("predict": the wait)."""
        if not prepared.submitted:
            return _NO_SCORES
        assert self.process is not None
        t0 = time.perf_counter()
        try:
            scores = self.process.result()
        except ScoringRaised as raised:
            # The model raised on the block, the child is fine: isolate the rows here,
            # with the loop's identical copy of the model (model.isolation).
            log.warning("the scoring process could not score a batch: %s", raised.summary)
            scores = processor.score(prepared.prepared)
        prepared.prepared.stage_seconds["predict"] = time.perf_counter() - t0
        return scores

    def drop(self) -> None:
        """Forget the pending batch (a rewind restores the state it updated)."""
        if self.pending is not None:
            log.info(
                "dropping the batch prepared after it (%d records): it comes again",
                len(self.pending.records),
            )
        self.pending = None
        if self.process is not None:
            self.process.discard()

    def close(self) -> None:
        """At shutdown: the pending batch is not published, not committed (it comes again)."""
        self.pending = None
        if self.process is not None:
            self.process.close()
            self.process = None
