"""The records of the outcome join: what it writes, what it reads besides predictions, and
what it keeps in its changelog.

``PredictionOutcome`` (topic ``prediction-outcomes``) and ``CustomerOutcome`` (topic
``customer-outcomes``) are public contracts: ``driftline.contracts`` generates
``schemas/prediction-outcome.schema.json`` and ``schemas/customer-outcome.schema.json``
from them.  ``CustomerSnapshot`` and ``PartitionSnapshot`` are the service's own
changelog values, private to it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from driftline.core.predictions import EpochMillis, Id, Prediction, Trigger

LABEL_SOURCE_EVENTS = "events"
LABEL_SOURCE_EXTERNAL = "external"
LabelSource = Literal["events", "external"]
Label = Annotated[int, msgspec.Meta(ge=0, le=1)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]


class PredictionOutcome(msgspec.Struct, forbid_unknown_fields=False):
    """One live prediction whose label became known, keyed by customer id.

    The prediction's own fields (``event_id`` .. ``trigger``; ``prediction_time`` is its
    ``event_time``), then the label (``1`` = the label's positive, e.g. churned),
    where it came from, the event time at which it became known and the horizon.
    """

    event_id: Id
    customer_id: Id
    prediction_time: EpochMillis
    score: Probability
    decision: bool
    threshold: Probability
    model_name: Id
    model_version: Id
    trigger: Trigger
    label: Label
    label_source: LabelSource
    resolved_at: EpochMillis
    horizon_ms: Annotated[int, msgspec.Meta(gt=0)]


class CustomerOutcome(msgspec.Struct, forbid_unknown_fields=False):
    """An outcome known outside the event stream (a CRM's cancellation, a collections
    system's write-off), keyed by customer id: the customer's label was ``label`` at
    ``event_time``."""

    customer_id: Id
    event_time: EpochMillis
    label: Label
    source: Annotated[str, msgspec.Meta(max_length=128)] | None = None


class CustomerSnapshot(msgspec.Struct, array_like=True):
    """One customer's part of a partition's pending state (changelog value).

    ``pending``: admitted predictions not yet resolved; ``targets``: target-event times
    kept for predictions still to come; ``external``: (time, label) of external outcomes
    kept likewise; ``last_bucket``: the latest sampling bucket admitted (None: none kept).
    """

    pending: list[Prediction]
    targets: list[int]
    external: list[tuple[int, int]]
    last_bucket: int | None


class PartitionSnapshot(msgspec.Struct, array_like=True):
    """A partition's clocks (changelog value under ``PARTITION_KEY``)."""

    max_event_time_ms: int
    max_prediction_time_ms: int


#: The changelog key of a partition's ``PartitionSnapshot``: not a valid customer id
#: (ids are 1..128 characters of text; this starts with a NUL byte).
PARTITION_KEY = b"\x00partition"
