"""The API's bodies as msgspec structs: the same kind of contract as the stream's.

A feature row is generated from the feature spec (``features.toml``), the file that
drives the worker's state and the training set, so ``POST /predict`` accepts exactly the
columns the model reads, typed as the worker computes them: a number (float) or null for
a numeric feature, a string or null for a categorical one.  Unknown properties are
refused (a misspelt feature would otherwise score as missing).  The request, response
and customer-view schemas in ``schemas/`` are generated from these structs for the
default spec (``driftline.contracts.serving``), and the service's OpenAPI document embeds
the same schemas for the spec it runs with, so both say what the decoder does.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from driftline.core.predictions import Id, Reason
from driftline.core.spec import FeatureSpec

#: Rows one ``POST /predict`` may carry (a bigger batch is refused with 422).
MAX_BATCH_ROWS = 1000

#: The longest categorical value accepted (the input events' profile fields' limit).
MAX_CATEGORY_CHARS = 64

Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Category = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CATEGORY_CHARS)]


def feature_row_struct(spec: FeatureSpec) -> type[msgspec.Struct]:
    """The struct of one feature row for ``spec``: every feature optional (absent or
    null: missing, as in the worker's frames), unknown properties refused."""
    categorical = set(spec.categorical_features)
    fields: list[tuple[str, Any, Any]] = []
    for name in spec.feature_names:
        kind: Any = Category | None if name in categorical else float | None
        fields.append((name, kind, None))
    return msgspec.defstruct(
        "FeatureRow",
        fields,
        forbid_unknown_fields=True,
        module=__name__,
    )


def predict_request_type(row: type[msgspec.Struct]) -> Any:
    """The ``POST /predict`` body: one row (an object) or a batch (an array of rows)."""
    batch = Annotated[list[row], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ROWS)]  # type: ignore[valid-type]  # a struct built at run time
    return row | batch


class PredictResult(msgspec.Struct, forbid_unknown_fields=False):
    """One scored row: the champion's score and decision."""

    score: Probability
    decision: bool
    threshold: Probability
    model_name: Id
    model_version: Id


class LatestPrediction(msgspec.Struct, forbid_unknown_fields=False):
    """The customer's latest prediction, as the worker published it."""

    event_id: Id
    score: Probability
    decision: bool
    threshold: Probability
    model_name: Id
    model_version: Id
    event_time: Annotated[int, msgspec.Meta(ge=0)]
    processed_at: Annotated[int, msgspec.Meta(ge=0)]
    source_partition: Annotated[int, msgspec.Meta(ge=0)]
    source_offset: Annotated[int, msgspec.Meta(ge=0)]
    trigger: str
    reasons: list[Reason] | None = None


class CustomerAnswer(msgspec.Struct, forbid_unknown_fields=False):
    """``GET /customers/{id}``: the customer's live features and latest prediction."""

    customer_id: Id
    partition: Annotated[int, msgspec.Meta(ge=0)]
    as_of: Annotated[int, msgspec.Meta(ge=0)]
    state_offset: int
    features: dict[str, float | str | None]
    prediction: LatestPrediction | None
    consistent: bool


class ErrorDetail(msgspec.Struct):
    """What a refused request gets (422, 404, 503): one sentence."""

    detail: str
