"""Decoding the outcome service's three inputs, one partition's micro-batch at a time.

* input events: the worker's own decoder (``core.events.decode_batch``).  A record it
  refuses is skipped and counted, not dead-lettered again: the worker already sent it to
  its dead-letter topic with the reason.
* predictions and external outcomes: a record that is not the contract (not JSON, a
  missing or invalid field, a key that is not its customer id) goes to the service's
  dead-letter topic with the reason, as the worker does for events; nothing else of the
  batch is affected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import Message

from driftline.core.events import (
    REASON_KEY_MISMATCH,
    REASON_MALFORMED,
    REASON_SCHEMA,
    EventBatch,
    decode_batch,
)
from driftline.core.labels.records import CustomerOutcome
from driftline.core.predictions import Prediction
from driftline.processor import Rejected

ERROR_CLASS = "decode"

_decode_prediction = msgspec.json.Decoder(Prediction).decode
_decode_outcome = msgspec.json.Decoder(CustomerOutcome).decode


@dataclass
class PartitionInputs:
    """One partition's records of one poll, decoded; ``rejected`` index ``records``."""

    events: EventBatch | None = None
    skipped_events: int = 0
    predictions: list[Prediction] = field(default_factory=list)
    external: list[tuple[str, int, int]] = field(default_factory=list)
    records: list[Message] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    rejected_topics: list[str] = field(default_factory=list)


def decode_events(into: PartitionInputs, messages: Sequence[Message]) -> None:
    """The partition's input events (the worker's decoder; refused ones skipped)."""
    if not messages:
        return
    batch, rejections = decode_batch([m.value() for m in messages], [m.key() for m in messages])
    into.events = batch
    into.skipped_events += len(rejections)


def decode_contract(
    into: PartitionInputs, topic: str, messages: Sequence[Message], external: bool
) -> None:
    """Predictions (``external=False``) or customer outcomes, in offset order; records
    that break the contract are queued as dead letters."""
    decode: Any = _decode_outcome if external else _decode_prediction
    for message in messages:
        value = message.value()
        try:
            if value is None:
                raise msgspec.ValidationError("empty value (null)")
            record = decode(value)
        except msgspec.ValidationError as error:
            _reject(into, topic, message, REASON_SCHEMA, str(error))
            continue
        except msgspec.DecodeError as error:
            _reject(into, topic, message, REASON_MALFORMED, str(error))
            continue
        key = message.key()
        if key is not None and key != record.customer_id.encode():
            _reject(
                into, topic, message, REASON_KEY_MISMATCH,
                f"record key {key[:128]!r} is not the customer_id {record.customer_id!r}",
            )  # fmt: skip
            continue
        if external:
            into.external.append((record.customer_id, record.event_time, record.label))
        else:
            into.predictions.append(record)


def _reject(into: PartitionInputs, topic: str, message: Message, reason: str, text: str) -> None:
    into.rejected.append(Rejected(len(into.records), reason, ERROR_CLASS, text))
    into.records.append(message)
    into.rejected_topics.append(topic)
