"""Why a Kafka worker stops or rewinds: the failures its parts raise to the loop.

Kept apart from the parts that raise them so that delivery, transactions, restore and the
loop can all name them without importing each other.
"""

from __future__ import annotations


class DeliveryFailed(RuntimeError):
    """The producer could not deliver part of a batch: its offsets must not be committed."""


class TransactionFailed(RuntimeError):
    """A batch's transaction was aborted or fenced: nothing of it is visible (unless
    ``fenced_batch``: then the broker may have committed it).

    ``recoverable``: the producer is not done for (its records timed out, a broker did not
    answer in time), so the worker replaces it, rewinds to the last committed batch and
    carries on.  Otherwise (fenced, a fatal producer error) it stops.

    ``fenced_batch``: the commit of a batch (its end offsets by partition) was answered
    fenced after the transaction had been open for its whole timeout: whether it landed
    is the broker's to say (``ExactlyOnce.rewind`` asks before it rewinds anything).
    """

    def __init__(
        self,
        message: str,
        *,
        recoverable: bool = False,
        fenced_batch: dict[int, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.recoverable = recoverable
        self.fenced_batch = fenced_batch


class RestoreFailed(RuntimeError):
    """A partition's state could not be restored: processing it would give wrong scores."""
