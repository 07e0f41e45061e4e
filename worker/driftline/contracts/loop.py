"""The closed loop's contracts: retrain requests, outcomes (resolved predictions and
external labels) and model decisions."""

from __future__ import annotations

from driftline.contracts.contract import Contract
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.labels.records import CustomerOutcome, PredictionOutcome
from driftline.core.retrain import Decision

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
