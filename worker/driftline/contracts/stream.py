"""The stream's contracts: the input events, the predictions and the dead letters' headers."""

from __future__ import annotations

from driftline.contracts.contract import Contract
from driftline.core.events import (
    DECODE_REASONS,
    DEFAULT_MAX_EVENT_BYTES,
    DLQ_REASONS,
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    CustomerEvent,
)
from driftline.core.predictions import DeadLetterHeaders, Prediction

_EVENT_TIME_DOC = (
    "When the event happened, in one of two forms: an RFC 3339 date-time WITH a zone "
    '("2024-05-01T12:30:00Z", "2024-05-01T14:30:00.250+02:00"; a naive time without zone '
    "is rejected), or an integer of epoch milliseconds (not seconds; written without "
    "fraction or exponent: 1714566600000.0 and 1.7145666e12 are refused although JSON "
    "Schema counts them as integers). Either way it must lie within "
    f"2000-01-01T00:00:00Z ({MIN_EPOCH_MS}) .. 2100-01-01T00:00:00Z ({MAX_EPOCH_MS}) "
    "inclusive: outside that a number is far more likely seconds, microseconds or a "
    "default value than a real time. For strings the range is checked by the worker, not "
    "by this schema. Sub-millisecond digits are dropped. The worker's windows and "
    "lateness use this time, not the Kafka timestamp."
)

_PROFILE_DOC = (
    " Profile attribute: absent or null means 'not known on this event' (it does not clear "
    "an earlier value); the worker uses the value of the customer's latest event (by "
    "event_time) that carries one."
)

CUSTOMER_EVENT = Contract(
    name="customer-event",
    struct=CustomerEvent,
    title="Customer event",
    description=(
        "One thing a customer did: the value of a record on the Driftline input topic, "
        "strict UTF-8 JSON (a value with bytes that are not UTF-8 anywhere, even in an "
        "ignored property, is refused as invalid_encoding), at most "
        f"{DEFAULT_MAX_EVENT_BYTES} bytes (the worker's default limit). The record key "
        "must be the event's customer_id (or null). Unknown extra properties are ignored, "
        "so producers may add fields without coordinating (forward compatible), and "
        "may repeat; a property of this schema named twice is refused (schema_violation), "
        "since readers disagree on which of the two counts. A record that does not match "
        "is not scored: it goes to the dead-letter topic unchanged, with a reason header "
        "(one of "
        f"{', '.join(DECODE_REASONS)}; see dead-letter-headers.schema.json). Delivery is "
        "at-least-once: the same event may be scored more than once, so consumers of "
        "predictions deduplicate by event_id. An event_time accepted here may still be "
        "refused by the worker as future (further ahead than its clock-skew allowance) "
        "or late (older than its partition's watermark)."
    ),
    fields={
        "event_id": (
            "Producer-assigned id, unique per event (1..128 characters). Used to deduplicate "
            "redeliveries: a producer retrying a send must reuse it."
        ),
        "customer_id": (
            "The customer (1..128 characters). Also the Kafka record key on the input "
            "topic: the topic is partitioned by customer, and a record whose non-null key "
            "differs from this value is dead-lettered (key_mismatch)."
        ),
        "event_time": _EVENT_TIME_DOC,
        "event_type": (
            "What happened. Any other value is dead-lettered (unknown_event_type); new "
            "types are added to this list first, then produced."
        ),
        "amount": (
            "Money involved (e.g. purchase, refund), in the account currency, >= 0 (a "
            "refund is a positive amount with event_type refund). Absent or null when not "
            "applicable."
        ),
        "quantity": "Items involved (purchase), >= 0. Absent or null when not applicable.",
        "age": "Customer age in years, 0..150." + _PROFILE_DOC,
        "income": "Customer yearly income, in the account currency, >= 0." + _PROFILE_DOC,
        "tenure_months": "Months since the customer signed up, 0..1200." + _PROFILE_DOC,
        "plan_type": 'Subscription plan, e.g. "basic", "premium" (1..64 characters).'
        + _PROFILE_DOC,
        "region": 'Customer region, e.g. "north" (1..64 characters).' + _PROFILE_DOC,
    },
    examples=(
        {
            "event_id": "evt-000001",
            "customer_id": "cust-0042",
            "event_time": 1714566600000,
            "event_type": "purchase",
            "amount": 49.9,
            "quantity": 2,
        },
        {
            "event_id": "evt-000002",
            "customer_id": "cust-0042",
            "event_time": "2024-05-01T14:30:00.250+02:00",
            "event_type": "login",
            "age": 37,
            "income": 52000,
            "tenure_months": 14,
            "plan_type": "premium",
            "region": "north",
        },
    ),
)

PREDICTION = Contract(
    name="prediction",
    struct=Prediction,
    title="Churn prediction",
    description=(
        "One scored event, or one customer re-scored at a tick: the value of a record on "
        "the Driftline predictions topic, UTF-8 JSON. The record key is the customer_id "
        "(UTF-8), so a customer's predictions stay in order on one partition. trigger says "
        'which: "event" (an input event was scored) or "tick" (at an event-time tick, '
        "default daily at 00:00 UTC, every customer in the worker's state is scored again "
        "with its features as of the tick, so customers who went quiet get fresh "
        "predictions). Delivery is at-least-once: after a worker restart or rebalance the "
        "same input event (or tick) can be scored again, so deduplicate by event_id, and "
        "for ticks by (customer_id, event_id) (source_partition/source_offset locate the "
        "input record). Unknown extra properties may be added in later versions; ignore them."
    ),
    fields={
        "event_id": (
            "The scored input event's event_id; the deduplication key. For a tick: "
            '"tick-" and the tick\'s event_time (deduplicate ticks by customer_id and '
            "event_id)."
        ),
        "customer_id": "The customer; also the record key.",
        "score": (
            "Churn probability for the customer as of this event (features from the "
            "customer's events up to and including it), or as of the tick's event_time "
            "(windows ending then, time since the last event measured to it), 0..1."
        ),
        "decision": "score >= threshold.",
        "threshold": "Decision threshold of the model version that scored, 0..1.",
        "model_name": "Registry name of the model that scored.",
        "model_version": 'Registry version of the model that scored, e.g. "v0003".',
        "event_time": (
            "The input event's event_time, as epoch milliseconds (UTC); for a tick, the "
            "tick's boundary (e.g. 00:00 UTC of a day)."
        ),
        "processed_at": "When the worker scored it, epoch milliseconds (UTC).",
        "source_partition": "Input topic partition of the scored record.",
        "source_offset": (
            "Input topic offset of the scored record; for a tick, of the first event of "
            "the partition dated after the tick, whose arrival fired it."
        ),
        "trigger": (
            'What was scored: "event" (an input event) or "tick" (a scheduled event-time '
            "re-scoring of every customer in state). Absent in records written before it "
            'existed: read that as "event".'
        ),
        "reasons": (
            "Only from a worker run with --explain K (absent otherwise): the K features "
            "that moved this prediction most, largest |contribution| first. Contributions "
            "are path-based (Saabas) attributions of the forest's raw probability: "
            "reasons_base + the reasons' contributions + reasons_rest is the raw "
            "probability, and the model's calibration map of it is score. Not on tick "
            "predictions."
        ),
        "reasons_base": (
            "With reasons: the model's base value, the mean over its trees of the training "
            "class-1 fraction (the raw probability before any feature is seen)."
        ),
        "reasons_rest": ("With reasons: the sum of the contributions of the features not listed."),
    },
    nested={
        "reasons": {
            "feature": "Input feature name (one-hot and missing-indicator columns summed "
            "back into it).",
            "contribution": (
                "How much this feature moved the raw probability from reasons_base "
                "(positive: towards churn)."
            ),
            "value": "The customer's value of the feature (null: missing).",
        }
    },
    examples=(
        {
            "event_id": "evt-000001",
            "customer_id": "cust-0042",
            "score": 0.8125,
            "decision": True,
            "threshold": 0.5,
            "model_name": "churn",
            "model_version": "v0003",
            "event_time": 1714566600000,
            "processed_at": 1714566600412,
            "source_partition": 3,
            "source_offset": 18231,
            "trigger": "event",
        },
        {
            "event_id": "tick-1714608000000",
            "customer_id": "cust-0042",
            "score": 0.8731,
            "decision": True,
            "threshold": 0.5,
            "model_name": "churn",
            "model_version": "v0003",
            "event_time": 1714608000000,
            "processed_at": 1714608012950,
            "source_partition": 3,
            "source_offset": 18904,
            "trigger": "tick",
        },
    ),
)

DEAD_LETTER_HEADERS = Contract(
    name="dead-letter-headers",
    struct=DeadLetterHeaders,
    title="Dead-letter record headers",
    description=(
        "The Driftline headers of a record on the dead-letter topic, shown as a JSON object "
        "of header name -> value. In Kafka each is a record header whose value is UTF-8 "
        "text (numbers in decimal). The dead-letter record's value is the original value, "
        "byte for byte (it may not be JSON at all), and its key the original key, so a "
        "fixed record can be re-produced to the input topic as it was. The original "
        "record's own headers follow these ones, unchanged. A record larger than the "
        "dead-letter topic accepts is cut to fit: its value (or key) is then the original's "
        "first bytes, and driftline.value.original_bytes and driftline.value.sha256 (or the "
        "driftline.key.* pair) describe the original. driftline.error.reason is one "
        f"of a closed set: {', '.join(DLQ_REASONS)}."
    ),
    fields={
        "driftline.source.topic": "Topic the rejected record was read from.",
        "driftline.source.partition": "Its partition, decimal.",
        "driftline.source.offset": "Its offset, decimal.",
        "driftline.source.timestamp": (
            "Its Kafka timestamp, epoch milliseconds, decimal; absent when it had none."
        ),
        "driftline.error.reason": (
            "Why it was rejected, from a closed set (safe to group and alert on): "
            + ", ".join(DLQ_REASONS)
            + "."
        ),
        "driftline.error.class": (
            'Which stage rejected it: "decode" (value or key), "clock" (future), "watermark" '
            '(late) or "model" '
            "(model_error: the model raised on the event's features; the message names the "
            "exception and its text)."
        ),
        "driftline.error.message": "Human-readable detail, at most 1024 characters.",
        "driftline.failed_at": "When the worker rejected it, epoch milliseconds, decimal.",
        "driftline.worker": "Id of the worker instance that rejected it (default host-pid).",
        "driftline.value.original_bytes": (
            "Only when the value was cut to fit the dead-letter topic: the original value's "
            "length in bytes, decimal (the record carries its first bytes)."
        ),
        "driftline.value.sha256": "With the above: SHA-256 of the original value, hex.",
        "driftline.key.original_bytes": (
            "Only when the key was cut to fit: the original key's length in bytes, decimal."
        ),
        "driftline.key.sha256": "With the above: SHA-256 of the original key, hex.",
        "driftline.source.headers_dropped": (
            "Only when the original record's own headers did not fit: how many were left off."
        ),
    },
    examples=(
        {
            "driftline.source.topic": "customer-events",
            "driftline.source.partition": "3",
            "driftline.source.offset": "18232",
            "driftline.source.timestamp": "1714566600100",
            "driftline.error.reason": "unknown_event_type",
            "driftline.error.class": "decode",
            "driftline.error.message": "Invalid enum value 'signup' - at `$.event_type`",
            "driftline.failed_at": "1714566600415",
            "driftline.worker": "worker-host-1-4711",
        },
    ),
)
