"""The public JSON Schemas in ``schemas/``, generated from the msgspec structs.

Other teams validate against ``schemas/*.schema.json`` without reading Python, so those
files must say exactly what the decoder does.  Rather than keep a second, hand-written copy
that drifts, each file is generated here from the struct the worker itself decodes or
encodes with (``msgspec.json.schema``), then decorated with what a type cannot say: prose
for people, examples, and the rules enforced in code (the ``event_time`` range on RFC 3339
strings).  ``driftline schemas --check`` and ``tests/unit/test_contracts.py`` fail when the
committed files differ from what this module generates.

Every file is standalone (``$defs`` inlined): consumers load one URL or one file and need
no resolver.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from driftline.core.drift.trigger import RetrainRequest
from driftline.core.events import (
    DECODE_REASONS,
    DEFAULT_MAX_EVENT_BYTES,
    DLQ_REASONS,
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    CustomerEvent,
)
from driftline.core.labels.records import CustomerOutcome, PredictionOutcome
from driftline.core.predictions import DeadLetterHeaders, Prediction
from driftline.core.retrain import Decision

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URL = "https://driftline.dev/schemas/"
SCHEMA_SUFFIX = ".schema.json"


@dataclass(frozen=True)
class Contract:
    """One schema file: the struct it is generated from, plus the prose a type lacks."""

    name: str  # file stem, also the last segment of ``$id``
    struct: type[msgspec.Struct]
    title: str
    description: str
    #: JSON property name -> description.  Every key must be a property of the struct
    #: (checked at generation), so a renamed field cannot silently lose its doc.
    fields: Mapping[str, str]
    examples: tuple[Mapping[str, Any], ...] = field(default=())
    #: Property whose value is a struct (or an array of them) -> its own property docs,
    #: checked like ``fields``; the nested struct's docstring is dropped (it is for Python
    #: readers, the property's description speaks for it).
    nested: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return self.name + SCHEMA_SUFFIX


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

RETRAIN_REQUEST = Contract(
    name="retrain-request",
    struct=RetrainRequest,
    title="Retrain request",
    description=(
        "A request to retrain a model whose input or predictions drifted: the value of a "
        "record on the Driftline retrain-requests topic, UTF-8 JSON, keyed by incident_id "
        "(UTF-8). A worker's retrain trigger sends one when drift persisted past its "
        "policy (persistence, cooldown, weekly cap, one request in flight), and at most "
        "one per incident; an Alertmanager RetrainRequired alert posted to the worker's "
        "/alerts endpoint joins the same incident (reason alert) instead of adding one. "
        "Each worker watches its own partitions, so several workers may each send a "
        "request for the same incident: they carry the same incident_id (deduplicate by "
        "it, and still apply a cooldown of your own: workers whose incident starts "
        "straddle a persistence-period boundary get different ids). Delivery is "
        "at-least-once. Unknown extra properties may be added in later versions; ignore "
        "them."
    ),
    fields={
        "request_id": "Unique id of this request (32 hex digits); differs between workers.",
        "incident_id": (
            "Deterministic id of the incident (sha256, 64 hex digits) of model name, "
            "model version, reference_hash, the sorted drifted features and the incident "
            "start bucketed to the persistence period: every worker that sees the same "
            "incident derives the same id. Also the record key. The deduplication key."
        ),
        "model_name": "Registry name of the model that drifted.",
        "model_version": 'Registry version of the model that drifted, e.g. "v0003".',
        "reference_hash": (
            "sha256 of the reference profile the drift was measured against (stored in "
            "the model version's metadata)."
        ),
        "reason": (
            "prediction_drift: the score distribution left the reference; feature_drift: "
            "the importance-weighted share of drifted input features reached the policy's "
            "drifted_share; alert: an Alertmanager RetrainRequired alert reached this "
            "worker while it saw the drift too but before the drift had persisted long "
            "enough for its own trigger (same incident_id as the trigger would give). "
            "quality: Alertmanager's ModelPerformanceDegraded (the realised ROC AUC of the "
            "champion fell in a window, docs/model-quality.md) reached driftline retrain's "
            "POST /alerts, which sent this request (worker_id driftline-retrain/alerts): one "
            "incident per degraded window, no drifted features, reference_hash empty, "
            "window_start_ms = window_end_ms = the window's start."
        ),
        "drifted_features": (
            "What drifted, one entry per (feature, detector) that explains it: the "
            'drifted input features, or "__score__" for prediction drift.'
        ),
        "drifted_share": "Importance-weighted share of input features in drift, 0..1.",
        "window_start_ms": (
            "Event time (epoch ms, UTC) of the incident's start (its first drifting batch "
            "on this worker). Retrain on data from here on."
        ),
        "window_end_ms": (
            "Event time (epoch ms, UTC) of the latest event seen when it fired: the "
            "request's event time. Persistence, cooldown and weekly cap are measured in "
            "event time, so a replay fires as the live stream did; the cooldown and weekly "
            "cap compare these."
        ),
        "worker_id": "The worker instance that sent it.",
        "report": (
            "Optional: path or URL of the drift report (reference vs live histograms of "
            "the drifted features and the score, with the detector readings) that an "
            "operator can open. Absent from what the worker sends; `driftline report "
            "drift --request FILE --json` draws the report and prints the request with it "
            "filled, for a retrain service to forward."
        ),
        "created_at": (
            "When it was sent, worker wall clock, epoch seconds (with fraction); only the "
            "wait for an answer (in-flight timeout) is measured on it."
        ),
    },
    nested={
        "drifted_features": {
            "feature": 'Feature name from the feature spec, or "__score__" (the model score).',
            "detector": (
                "The monitor's test that explains the drift, e.g. mean, variance, missing, "
                "unseen or category_mix."
            ),
            "statistic": "The detector's statistic when the request was made.",
            "threshold": "Its alarm threshold (from the false-alarm budget).",
            "psi": (
                "PSI of the feature's latest completed event window against the reference "
                "bins; null before a window completed."
            ),
        },
    },
    examples=(
        {
            "request_id": "5b0c3f9e8d2a4c61b7e0f1a2d3c4b5a6",
            "incident_id": "9f2c1e6b3a8d4f70c5e2b19a7d6c3e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "model_name": "churn",
            "model_version": "v0003",
            "reference_hash": "4e1d2c3b4a5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "reason": "feature_drift",
            "drifted_features": [
                {
                    "feature": "spend_30d",
                    "detector": "mean",
                    "statistic": 41.7,
                    "threshold": 17.2,
                    "psi": 0.62,
                },
                {
                    "feature": "plan_type",
                    "detector": "unseen",
                    "statistic": 25.3,
                    "threshold": 9.8,
                    "psi": None,
                },
            ],
            "drifted_share": 0.41,
            "window_start_ms": 1714566600000,
            "window_end_ms": 1714567320000,
            "worker_id": "worker-1",
            "created_at": 1714567321.25,
        },
    ),
)

# The outcome join's records (``driftline outcomes``, docs/labels.md).
PREDICTION_OUTCOME = Contract(
    name="prediction-outcome",
    struct=PredictionOutcome,
    title="Prediction outcome",
    description=(
        "One live prediction whose label became known: the value of a record on the "
        "Driftline prediction-outcomes topic, UTF-8 JSON, keyed by customer_id (UTF-8), "
        "written by driftline outcomes. The label is the feature spec's [label] (e.g. "
        "churned = no purchase within 90 days): a prediction at prediction_time resolves "
        "when a target event of the customer follows within (prediction_time, "
        "prediction_time + horizon_ms], when the input partition's event-time watermark "
        "passes prediction_time + horizon_ms with none, or when an external outcome "
        "(customer-outcomes) dated within that horizon arrives, whichever comes first. "
        "Predictions are sampled (the first of each customer per sampling bucket, default "
        "7 days), so not every prediction gets an outcome. Written exactly once per "
        "prediction kept (transactions; read with isolation.level=read_committed). Unknown "
        "extra properties may be added in later versions; ignore them."
    ),
    fields={
        "event_id": (
            'The prediction\'s event_id (for a tick "tick-" and its time); with '
            "customer_id, the prediction's key."
        ),
        "customer_id": "The customer; also the record key.",
        "prediction_time": "The prediction's event_time, epoch milliseconds (UTC).",
        "score": "The prediction's score, 0..1.",
        "decision": "The prediction's decision (score >= threshold).",
        "threshold": "The decision threshold of the model version that scored, 0..1.",
        "model_name": "Registry name of the model that scored.",
        "model_version": "Registry version of the model that scored.",
        "trigger": 'What was scored: "event" or "tick" (as on the prediction).',
        "label": (
            "1: the label's positive happened (e.g. churned: no target event within the "
            "horizon, for a label of kind silence; a target event within it, for kind "
            "occurrence); 0: it did not."
        ),
        "label_source": (
            '"events": decided by the input events (a target event, or the watermark '
            'passing the horizon); "external": by a customer-outcomes record.'
        ),
        "resolved_at": (
            "Event time (epoch ms, UTC) at which the label became known: the resolving "
            "target event's time, prediction_time + horizon_ms for a horizon that passed "
            "in silence, or the external outcome's event_time."
        ),
        "horizon_ms": "The label's horizon, milliseconds.",
    },
    examples=(
        {
            "event_id": "tick-1714608000000",
            "customer_id": "cust-0042",
            "prediction_time": 1714608000000,
            "score": 0.8731,
            "decision": True,
            "threshold": 0.5,
            "model_name": "churn",
            "model_version": "v0003",
            "trigger": "tick",
            "label": 1,
            "label_source": "events",
            "resolved_at": 1722384000000,
            "horizon_ms": 7776000000,
        },
        {
            "event_id": "evt-000001",
            "customer_id": "cust-0042",
            "prediction_time": 1714566600000,
            "score": 0.8125,
            "decision": True,
            "threshold": 0.5,
            "model_name": "churn",
            "model_version": "v0003",
            "trigger": "event",
            "label": 0,
            "label_source": "events",
            "resolved_at": 1715000000000,
            "horizon_ms": 7776000000,
        },
    ),
)

MODEL_DECISION = Contract(
    name="model-decision",
    struct=Decision,
    title="Model decision",
    description=(
        "What `driftline retrain` decided after one retrain: the value of a record on the "
        "model-decisions topic, UTF-8 JSON, keyed by model_name (UTF-8). One record per "
        "retrain that ran (requests skipped as duplicates or within the cooldown are only "
        "logged and counted). The champion and the challenger are scored on the same rows: "
        "the latest labelled cutoff of the history, held out of the challenger's training "
        "(docs/retraining.md). Unknown extra properties may be added in later versions; "
        "ignore them."
    ),
    fields={
        "decision_id": "Unique id of this decision (32 hex digits).",
        "model_name": "Registry name of the model.",
        "outcome": (
            "promoted: the challenger is the champion now (workers switch at their next "
            "model poll); rejected: it stays a candidate, reasons say which rule of the "
            "policy failed; failed: no challenger was trained (the history could not give "
            "a training set, or the input topic could not be read), reasons say why."
        ),
        "trigger": "request: a retrain request; schedule: the --every schedule or --once.",
        "incident_id": "The request's incident_id; null for a scheduled retrain.",
        "request_id": "The request's request_id; null for a scheduled retrain.",
        "champion_version": "The champion when the retrain started; null if there was none.",
        "challenger_version": "The version registered for the challenger; null if failed.",
        "reasons": "One sentence per rule applied (or the failure), for people.",
        "policy": (
            "The promotion policy in force: min_auc_gain, max_calibration_loss, min_rows, "
            "min_per_class."
        ),
        "evaluation": (
            "The evaluation window (cutoff_ms, horizon_ms, n_rows, n_positive) and, per "
            "model (champion, challenger), its roc_auc, calibration_error (expected "
            "calibration error, 10 equal-width bins) and brier on it; seconds: the "
            "retrain's duration. Empty when the retrain failed before training."
        ),
        "training_window_ms": (
            "Event times (epoch ms) of the first and the last event used for training; "
            "empty when the retrain failed before reading them."
        ),
        "decided_at": "Wall clock when it was decided, epoch seconds (with fraction).",
    },
    examples=(
        {
            "decision_id": "0c7e1f3a9b2d4e5f8a6b7c8d9e0f1a2b",
            "model_name": "churn",
            "outcome": "promoted",
            "trigger": "request",
            "incident_id": "9f2c1e6b3a8d4f70c5e2b19a7d6c3e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "request_id": "5b0c3f9e8d2a4c61b7e0f1a2d3c4b5a6",
            "champion_version": "v0003",
            "challenger_version": "v0004",
            "reasons": [
                "ROC AUC 0.9677 vs champion 0.8641: +0.1036 >= 0.02",
                "calibration error 0.0264 vs champion 0.0481: not worse by more than 0.02",
            ],
            "policy": {
                "min_auc_gain": 0.02,
                "max_calibration_loss": 0.02,
                "min_rows": 200,
                "min_per_class": 20,
            },
            "evaluation": {
                "cutoff_ms": 1764115200000,
                "horizon_ms": 2592000000,
                "n_rows": 482,
                "n_positive": 91,
                "challenger": {"roc_auc": 0.9677, "calibration_error": 0.0264, "brier": 0.0508},
                "champion": {"roc_auc": 0.8641, "calibration_error": 0.0481, "brier": 0.0888},
                "seconds": 2.9,
            },
            "training_window_ms": [1751241600000, 1766793600000],
            "decided_at": 1766793612.5,
        },
    ),
)

CUSTOMER_OUTCOME = Contract(
    name="customer-outcome",
    struct=CustomerOutcome,
    title="Customer outcome",
    description=(
        "An outcome known outside the event stream (a CRM's cancellation, a renewal): the "
        "value of a record on the customer-outcomes topic, UTF-8 JSON, keyed by "
        "customer_id (UTF-8), read by driftline outcomes. It resolves the customer's "
        "pending predictions whose horizon holds its event_time (prediction_time < "
        "event_time <= prediction_time + horizon) with its label, and those of the next "
        "ones still to come likewise, unless the events resolved them first. The topic must "
        "have as many partitions as the input topic, keyed the same way. Unknown extra "
        "properties are ignored."
    ),
    fields={
        "customer_id": "The customer; also the record key.",
        "event_time": "When the outcome happened, epoch milliseconds (UTC).",
        "label": "1: the label's positive (e.g. churned) happened; 0: it did not.",
        "source": "Optional: which system said so (for people; not used).",
    },
    examples=(
        {"customer_id": "cust-0042", "event_time": 1716000000000, "label": 1, "source": "crm"},
    ),
)

CONTRACTS: tuple[Contract, ...] = (
    CUSTOMER_EVENT,
    PREDICTION,
    DEAD_LETTER_HEADERS,
    RETRAIN_REQUEST,
    PREDICTION_OUTCOME,
    CUSTOMER_OUTCOME,
    MODEL_DECISION,
)


def schema_for(contract: Contract) -> dict[str, Any]:
    """The standalone JSON Schema of one contract (see the module docstring)."""
    generated = msgspec.json.schema(contract.struct)
    definitions = generated.pop("$defs", {})
    body = _inline(generated, definitions, ())
    properties: dict[str, Any] = body.get("properties", {})
    unknown = sorted(set(contract.fields) - set(properties))
    if unknown:
        raise ValueError(f"{contract.name}: documented fields not in the struct: {unknown}")
    for name, doc in contract.fields.items():
        properties[name] = {"description": doc, **properties[name]}
    for name, docs in contract.nested.items():
        value = properties[name]
        nested = value["items"] if value.get("type") == "array" else value
        nested.pop("title", None)
        nested.pop("description", None)
        inner: dict[str, Any] = nested.get("properties", {})
        unknown = sorted(set(docs) - set(inner))
        if unknown:
            raise ValueError(f"{contract.name}.{name}: documented fields not in it: {unknown}")
        for key, doc in docs.items():
            inner[key] = {"description": doc, **inner[key]}
    body.pop("title", None)
    body.pop("description", None)  # the struct docstring is for Python readers
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": SCHEMA_BASE_URL + contract.file_name,
        "title": contract.title,
        "description": contract.description,
        **body,
    }
    if contract.examples:
        schema["examples"] = [dict(example) for example in contract.examples]
    return schema


def _inline(node: Any, definitions: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    """Replace every ``{"$ref": "#/$defs/X"}`` by a copy of ``X``, recursively."""
    if isinstance(node, list):
        return [_inline(item, definitions, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in seen:  # a recursive type cannot be inlined; none of ours is
            raise ValueError(f"recursive schema reference {' -> '.join((*seen, name))}")
        target = _inline(copy.deepcopy(definitions[name]), definitions, (*seen, name))
        siblings = {k: _inline(v, definitions, seen) for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}
    return {key: _inline(value, definitions, seen) for key, value in node.items()}


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every public contract."""
    return {contract.file_name: schema_for(contract) for contract in CONTRACTS}


def render(schema: Mapping[str, Any]) -> str:
    """The exact text written to disk: stable key order, 2-space indent, final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: str | Path) -> list[Path]:
    """Write every schema file into ``directory`` (created if missing); return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, schema in all_schemas().items():
        path = out / file_name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def check_schemas(directory: str | Path) -> list[str]:
    """Differences between the schema files in ``directory`` and the code; empty if none.

    A stray ``*.schema.json`` no contract generates is reported too: a published schema
    nobody maintains is worse than none.
    """
    root = Path(directory)
    expected = all_schemas()
    problems: list[str] = []
    for file_name, schema in expected.items():
        path = root / file_name
        want = render(schema)
        try:
            have = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        if have != want:
            problems.append(f"{path}: differs from the code: {_first_difference(have, want)}")
    if root.is_dir():
        for path in sorted(root.glob("*" + SCHEMA_SUFFIX)):
            if path.name not in expected:
                problems.append(f"{path}: not generated by any contract (stale?)")
    return problems


def _first_difference(have: str, want: str) -> str:
    """A one-line hint of where the file and the code part ways."""
    for line in difflib.unified_diff(
        have.splitlines(), want.splitlines(), "file", "code", n=0, lineterm=""
    ):
        if line[:1] in "+-" and not line.startswith(("+++", "---")):
            return f"first change {line[:160]!r}"
    return "whitespace or line endings"
