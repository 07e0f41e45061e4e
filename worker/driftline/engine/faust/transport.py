"""Faust's aiokafka transport with the two changes the Faust engine's guarantees need.

Producer: idempotence on, as the Kafka engine's producer has.  Faust turns it on only for
its exactly-once mode; without it a send retried after a lost answer can write a
prediction twice.

Consumer: offsets are committed by the engine, never by Faust.  Faust commits "acked"
offsets on a timer, and around a rebalance it acks and commits offsets of events that no
agent processed:

- a stream acks every event it reads while the flow is suspended or from an older
  generation (``Stream._py_aiter`` skips them *and acks them*);
- offset gaps it sees in a fetch are counted as acked (``Consumer._add_gap``), and a
  stale read offset left by the fetcher after a revocation makes such gaps out of events
  that were merely dropped;
- after a revocation it forgets the committed offset, so the check that the acked run
  starts at the committed offset is off until the next seek.

Each can commit past an event that was never scored; the next owner of the partition
starts after it, and it never gets a prediction.  So ``ack`` here records nothing,
Faust's own ``commit`` does nothing, and the worker commits with ``commit_processed``
the offsets it delivered, in order, itself (``engine.faust.cursors``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message


class IdempotentProducer(faust_aiokafka.Producer):
    """Faust's aiokafka producer with idempotence on (``acks=all``)."""

    def _settings_extra(self) -> dict[str, Any]:
        return {"acks": "all", "enable_idempotence": True}


class EngineCommittedConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose offsets only the engine commits."""

    def ack(self, message: Message) -> bool:
        """Mark the message acked (Faust's streams expect it); record no offset."""
        if message.acked:
            return False
        message.acked = True
        return True

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Faust's own commits (timer, shutdown, rebalance, errors): none."""
        return False

    async def commit_processed(self, offsets: Mapping[TP, int]) -> bool:
        """Commit ``offsets`` (the next offset to read, per partition) now.

        False when the group rebalanced meanwhile (the partitions' next owner then
        scores those events again, and skips what the changelog shows as applied).
        """
        if not offsets:
            return False
        return await self._commit(offsets)


class EngineTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the engine's producer and consumer."""

    Producer = IdempotentProducer
    Consumer = EngineCommittedConsumer
