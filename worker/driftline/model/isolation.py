"""Score a batch the model raises on: find the rows it cannot score, score the rest.

A model may raise on some inputs only: a ``OneHotEncoder(handle_unknown="error")`` on a
category it never saw, a strict validation step on a value outside its domain.  Scoring
a micro-batch is one call, so one such row used to fail the whole batch: the worker
stopped, and after every restart the same batch came again (a crash loop that stopped
its partitions).

``score_isolating`` first scores the batch as usual: while the model scores it, that is
the whole cost (no copy, no extra call).  Only when it raises are the rows bisected:
each failing half is split again until single rows remain; a half that scores is done.
With ``k`` offending rows among ``n`` that is at most ``2 k log2(n) + 1`` calls, and a
row is an offender only when scoring it *alone* raises, so rows that merely shared a
batch with one are all scored.  The offenders go to the dead-letter topic with reason
``model_error`` and the exception's text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, Self, TypeVar

import numpy as np


class Rows(Protocol):
    """What can be bisected: a batch with a length that can give a subset of its rows."""

    def __len__(self) -> int: ...

    def take(self, rows: np.ndarray) -> Self: ...


B = TypeVar("B", bound=Rows)


@dataclass(slots=True)
class Isolated:
    """The outcome of scoring a batch that may hold rows the model raises on."""

    #: One score per row; NaN for the offenders.
    scores: np.ndarray
    #: Rows (positions in the batch) the model raised on when scored alone, ascending.
    offenders: np.ndarray
    #: The exception each offender raised, in the order of ``offenders``.
    errors: list[BaseException] = field(default_factory=list)
    #: Scorer calls beyond the first (0 when the batch scored).
    extra_calls: int = 0


def score_isolating(score: Callable[[B], np.ndarray], batch: B) -> Isolated:
    """Score ``batch``; if the model raises, isolate the rows it raises on (bisection).

    ``score`` maps a batch to one float per row.  ``Exception`` is caught (not
    ``BaseException``: an interrupt still stops the worker).  A failure that is not about
    rows, a model that raises on every row, ends with every row an offender, after ``2n``
    calls at most; the caller dead-letters them, as it would any row the model refused.
    """
    n = len(batch)
    try:
        return Isolated(np.asarray(score(batch), dtype=np.float64), np.empty(0, np.intp))
    except Exception as error:
        if n == 0:
            raise
        if n == 1:  # it was scored alone already
            return Isolated(np.full(1, np.nan), np.zeros(1, np.intp), [error])
    scores = np.full(n, np.nan)
    offenders: list[tuple[int, BaseException]] = []
    calls = 0
    # Depth-first over ranges known to hold at least one offender: split, score halves.
    stack: list[tuple[int, int]] = [(0, n)]
    while stack:
        start, stop = stack.pop()
        mid = (start + stop) // 2
        for lo, hi in ((mid, stop), (start, mid)):
            rows = np.arange(lo, hi)
            calls += 1
            try:
                scores[lo:hi] = score(batch.take(rows))
            except Exception as error:
                if hi - lo == 1:
                    offenders.append((lo, error))
                else:
                    stack.append((lo, hi))
    offenders.sort(key=lambda pair: pair[0])
    return Isolated(
        scores,
        np.array([i for i, _ in offenders], dtype=np.intp),
        [e for _, e in offenders],
        calls,
    )


def describe(error: BaseException) -> str:
    """``ClassName: message``, one line, for a dead letter's error message."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
