"""Output contracts: the prediction record and the dead-letter record's headers.

Like the input event, these structs are the source of the JSON Schemas in ``schemas/``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
EpochMillis = Annotated[int, msgspec.Meta(ge=0)]

#: What made the worker score: an input event, or a scheduled event-time tick
#: (``core.ticks``: every customer in state re-scored as of the boundary).
TRIGGER_EVENT = "event"
TRIGGER_TICK = "tick"
Trigger = Literal["event", "tick"]


def tick_event_id(boundary_ms: int) -> str:
    """The ``event_id`` of a tick prediction: the tick, not an input event (with the
    customer id, the deduplication key of a tick prediction)."""
    return f"tick-{boundary_ms}"


class Reason(msgspec.Struct, forbid_unknown_fields=False):
    """One feature's contribution to a prediction (``driftline.model.explain``): in units
    of the forest's raw probability, with the customer's input value of the feature."""

    feature: str
    contribution: float
    value: float | str | None


class Prediction(msgspec.Struct, forbid_unknown_fields=False):
    """One scored event or tick, keyed by customer id on the predictions topic.

    ``score`` is the model's churn probability for the customer as of this event (features
    from the customer's events up to and including it) or, for ``trigger == "tick"``, as
    of the tick's boundary ``event_time``; ``decision`` is ``score >= threshold``.
    ``source_partition``/``source_offset`` locate the input record (for a tick: the one
    whose arrival fired it), so a consumer can deduplicate redeliveries (at-least-once) by
    ``event_id`` (and ``customer_id`` for ticks).  ``trigger`` defaults to ``"event"`` so
    that records written before it existed still decode.

    ``reasons``/``reasons_base``/``reasons_rest`` only with ``--explain K`` (reason codes,
    ``driftline.model.explain``); ``UNSET`` otherwise, so they are left out of the JSON and
    the default record stays byte for byte what it was.
    """

    event_id: Id
    customer_id: Id
    score: Annotated[float, msgspec.Meta(ge=0, le=1)]
    decision: bool
    threshold: Annotated[float, msgspec.Meta(ge=0, le=1)]
    model_name: Id
    model_version: Id
    event_time: EpochMillis
    processed_at: EpochMillis
    source_partition: Annotated[int, msgspec.Meta(ge=0)]
    source_offset: Annotated[int, msgspec.Meta(ge=0)]
    trigger: Trigger = "event"
    reasons: list[Reason] | msgspec.UnsetType = msgspec.UNSET
    reasons_base: float | msgspec.UnsetType = msgspec.UNSET
    reasons_rest: float | msgspec.UnsetType = msgspec.UNSET


#: Headers every dead-letter record carries; the value is the original bytes, unchanged,
#: and the key the original key, so the record can be fixed and re-driven as it was.
#: The original record's own headers follow these ones.
DLQ_SOURCE_TOPIC = "driftline.source.topic"
DLQ_SOURCE_PARTITION = "driftline.source.partition"
DLQ_SOURCE_OFFSET = "driftline.source.offset"
DLQ_SOURCE_TIMESTAMP = "driftline.source.timestamp"
DLQ_REASON = "driftline.error.reason"
DLQ_ERROR_CLASS = "driftline.error.class"
DLQ_ERROR_MESSAGE = "driftline.error.message"
DLQ_FAILED_AT = "driftline.failed_at"
DLQ_WORKER = "driftline.worker"
#: Only on a dead letter cut to fit the dead-letter topic (``engine.kafka.dead_letters``):
#: the value (or key) it carries is the original's first bytes; these say how long the
#: original was and its SHA-256 (hex), so the full record can be found and matched.
DLQ_VALUE_BYTES = "driftline.value.original_bytes"
DLQ_VALUE_SHA256 = "driftline.value.sha256"
DLQ_KEY_BYTES = "driftline.key.original_bytes"
DLQ_KEY_SHA256 = "driftline.key.sha256"
#: How many of the original record's own headers were left off to make it fit.
DLQ_HEADERS_DROPPED = "driftline.source.headers_dropped"


class DeadLetterHeaders(
    msgspec.Struct,
    rename={
        "source_topic": DLQ_SOURCE_TOPIC,
        "source_partition": DLQ_SOURCE_PARTITION,
        "source_offset": DLQ_SOURCE_OFFSET,
        "source_timestamp": DLQ_SOURCE_TIMESTAMP,
        "reason": DLQ_REASON,
        "error_class": DLQ_ERROR_CLASS,
        "error_message": DLQ_ERROR_MESSAGE,
        "failed_at": DLQ_FAILED_AT,
        "worker": DLQ_WORKER,
        "value_original_bytes": DLQ_VALUE_BYTES,
        "value_sha256": DLQ_VALUE_SHA256,
        "key_original_bytes": DLQ_KEY_BYTES,
        "key_sha256": DLQ_KEY_SHA256,
        "headers_dropped": DLQ_HEADERS_DROPPED,
    },
    forbid_unknown_fields=False,
):
    """The Driftline headers of a dead-letter record, as a JSON object of UTF-8 strings.

    Kafka headers are bytes; Driftline writes each as UTF-8 text (numbers in decimal).
    ``reason`` is one of a closed set (``DLQ_REASONS``); ``error_class`` names the check
    that failed; ``error_message`` is for people.  The ``*_original_bytes``/``*_sha256``
    pairs are only there when the value (or key) was cut to fit the dead-letter topic.
    """

    source_topic: str
    source_partition: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")]
    source_offset: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")]
    reason: str
    error_class: str
    error_message: Annotated[str, msgspec.Meta(max_length=1024)]
    failed_at: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")]
    worker: str
    source_timestamp: Annotated[str, msgspec.Meta(pattern=r"^-?[0-9]+$")] | None = None
    value_original_bytes: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")] | None = None
    value_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    key_original_bytes: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")] | None = None
    key_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    headers_dropped: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")] | None = None
