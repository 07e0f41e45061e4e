"""The serving API's contracts: the feature row ``POST /predict`` takes, its result, and
the customer view ``GET /customers/{id}`` answers with (``driftline serve``).

The feature row is generated from a feature spec: the files in ``schemas/`` are for the
spec shipped with Driftline, and a service run with ``--features`` embeds the row of its
own spec in its OpenAPI document (``driftline.serving.app``), built by the same
function, so the document and the file agree whenever the specs do.
"""

from __future__ import annotations

from driftline.contracts.contract import Contract
from driftline.core.spec import (
    AggregateFeature,
    Feature,
    FeatureSpec,
    ProfileFeature,
    RatioFeature,
    TenureFeature,
    load_default_spec,
)
from driftline.serving.schema import (
    MAX_BATCH_ROWS,
    CustomerAnswer,
    PredictResult,
    feature_row_struct,
)

_DAY_MS = 86_400_000


def _window(ms: int | None) -> str:
    if ms is None:
        return "over the customer's retained history"
    if ms % _DAY_MS == 0:
        return f"over the last {ms // _DAY_MS} days"
    return f"over the last {ms / 3_600_000:g} hours"


def describe_feature(feature: Feature) -> str:
    """One line a caller can read: what the worker computes for this feature."""
    if isinstance(feature, ProfileFeature):
        kind = "string" if feature.categorical else "number"
        return f"The customer's latest {feature.source} ({kind}); null: not known."
    if isinstance(feature, TenureFeature):
        return "Months of the customer's current activity streak (at least its floor)."
    if isinstance(feature, RatioFeature):
        return f"{feature.numerator} / {feature.denominator}; null when not defined."
    assert isinstance(feature, AggregateFeature)
    of = ", ".join(feature.event_types) if feature.event_types else "all"
    what = {
        "count": f"Number of {of} events",
        "sum": f"Sum of {feature.field} of {of} events",
        "mean": f"Mean {feature.field} of {of} events",
        "min": f"Smallest {feature.field} of {of} events",
        "max": f"Largest {feature.field} of {of} events",
        "last": f"{feature.field} of the latest {of} event",
        "time_since_last": f"Days since the latest {of} event",
    }[feature.agg]
    window = "" if feature.agg in ("last", "time_since_last") else " " + _window(feature.window_ms)
    return f"{what}{window}; null: missing."


def feature_row_contract(spec: FeatureSpec) -> Contract:
    """The ``POST /predict`` row of ``spec``."""
    return Contract(
        name="feature-row",
        struct=feature_row_struct(spec),
        title="Feature row",
        description=(
            "One customer's features, as the worker computes them from its events: the "
            "body of POST /predict is one such object, or an array of 1.."
            f"{MAX_BATCH_ROWS} of them (scored as one batch; the answer is then an array "
            "of results in the same order). Every feature is optional: absent or null is "
            "a missing value, as in the worker's own rows. A property that is not a "
            "feature is refused (422), so that a misspelt name cannot score as missing. "
            "Generated from the feature spec (features.toml) that drives the worker's "
            "state and the training set."
        ),
        fields={f.name: describe_feature(f) for f in spec.features},
        examples=(
            {
                "purchases_30d": 3,
                "spend_30d": 149.7,
                "days_since_last_purchase": 4.5,
                "plan_type": "premium",
                "region": None,
            },
        ),
    )


FEATURE_ROW = feature_row_contract(load_default_spec())

PREDICT_RESULT = Contract(
    name="predict-result",
    struct=PredictResult,
    title="Prediction of a feature row",
    description=(
        "What POST /predict answers for one feature row: the score of the model the "
        "workers serve (the registry's champion) and its decision. A batch request is "
        "answered with an array of these, in row order."
    ),
    fields={
        "score": "Churn probability for the row, 0..1.",
        "decision": "score >= threshold.",
        "threshold": "Decision threshold of the model version that scored, 0..1.",
        "model_name": "Registry name of the model that scored.",
        "model_version": 'Registry version of the model that scored, e.g. "v0003".',
    },
    examples=(
        {
            "score": 0.8125,
            "decision": True,
            "threshold": 0.5,
            "model_name": "churn",
            "model_version": "v0003",
        },
    ),
)

CUSTOMER_VIEW = Contract(
    name="customer-view",
    struct=CustomerAnswer,
    title="Customer's live state",
    description=(
        "What GET /customers/{customer_id} answers: the customer's features as of its "
        "latest event and its latest prediction, from a read replica of the workers' "
        "state changelog and predictions topic (docs/serving.md says how stale it can be)."
    ),
    fields={
        "customer_id": "The customer.",
        "partition": "Input partition whose worker holds the customer.",
        "as_of": "The customer's latest event time (epoch ms): the features are as of it.",
        "state_offset": "Input offset of the latest event the served state holds.",
        "features": "Feature name -> value (number, string, or null: missing), spec order.",
        "prediction": (
            "The customer's latest prediction as the worker published it (the prediction "
            "of its latest input record), or null when none has been read yet."
        ),
        "consistent": (
            "True when the prediction scored the very event the state ends at "
            "(prediction.source_offset == state_offset): features and score are of the "
            "same moment. False for a moment while one topic is read ahead of the other, "
            "or when the latest prediction is a tick's."
        ),
    },
    nested={
        "prediction": {
            "event_id": "The scored input event's event_id (a tick's: tick-<time>).",
            "score": "Churn probability as of that event, 0..1.",
            "decision": "score >= threshold.",
            "threshold": "Decision threshold of the model version that scored, 0..1.",
            "model_name": "Registry name of the model that scored.",
            "model_version": "Registry version of the model that scored.",
            "event_time": "The scored event's event_time (epoch ms).",
            "processed_at": "When the worker scored it (epoch ms).",
            "source_partition": "Input partition of the scored record.",
            "source_offset": "Input offset of the scored record.",
            "trigger": 'What was scored: "event" or "tick".',
            "reasons": (
                "With a worker run with --explain K: the K features that moved the score "
                "most (prediction.schema.json); null otherwise."
            ),
        },
        "prediction.reasons": {
            "feature": "Input feature name.",
            "contribution": "How much it moved the raw probability (positive: churn).",
            "value": "The customer's value of the feature (null: missing).",
        },
    },
    examples=(
        {
            "customer_id": "cust-0042",
            "partition": 3,
            "as_of": 1714566600000,
            "state_offset": 18231,
            "features": {"purchases_30d": 3.0, "plan_type": "premium", "region": None},
            "prediction": {
                "event_id": "evt-000001",
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
                "reasons": None,
            },
            "consistent": True,
        },
    ),
)

SERVING_CONTRACTS: tuple[Contract, ...] = (FEATURE_ROW, PREDICT_RESULT, CUSTOMER_VIEW)
