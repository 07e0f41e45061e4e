"""The two inputs of live quality, decoded into columns for the windows.

* a **prediction** (topic ``predictions``, :class:`driftline.core.predictions.Prediction`):
  its score feeds the label-free estimate and its event time counts it towards label
  coverage;
* a **resolved outcome** (topic ``prediction-outcomes``, written by ``driftline outcomes``):
  the same prediction with its label, for the realised figures.

Both are deduplicated by ``(customer_id, event_id)``: delivery is at-least-once, and a tick
prediction's ``event_id`` ("tick-<ms>") is shared by every customer scored at that tick.
The key is hashed to 64 bits (pandas' SipHash of the two strings, vectorised, and the same
in every process and run), which is what the windows store: a collision of two distinct
predictions in one window (probability about n^2 / 2^65, 1e-8 for 500 000) would drop one.

Decoding is per record (JSON), everything after it is per batch.  A record that does not
decode is returned with its reason rather than raised: one bad record must not stop the
service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd

from driftline.core.predictions import EpochMillis, Id, Prediction

Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]

#: Fixed SipHash key (16 ASCII bytes): the same record hashes the same everywhere.
_HASH_KEY = "driftline-qualit"


class PredictionOutcome(msgspec.Struct, forbid_unknown_fields=False):
    """One resolved prediction on ``prediction-outcomes`` (the fields this reader needs;
    the closed-loop contract lists them, ``schemas/prediction-outcome.schema.json`` owns
    them)."""

    event_id: Id
    customer_id: Id
    prediction_time: EpochMillis
    score: Probability
    threshold: Probability
    model_name: Id
    model_version: Id
    label: Literal[0, 1]
    resolved_at: EpochMillis
    decision: bool | None = None
    trigger: Literal["event", "tick"] = "event"
    label_source: str | None = None
    horizon_ms: EpochMillis | None = None


_T = TypeVar("_T")

_PREDICTION = msgspec.json.Decoder(Prediction)
_OUTCOME = msgspec.json.Decoder(PredictionOutcome)


def record_keys(customer_ids: Sequence[str], event_ids: Sequence[str]) -> npt.NDArray[np.uint64]:
    """64-bit deduplication keys of ``(customer_id, event_id)`` pairs, vectorised.

    The unit separator cannot occur in a valid id's meaning, so ``("a", "b\\x1fc")`` and
    ``("a\\x1fb", "c")`` are the only way to collide by construction, and neither is a
    real pair of ids."""
    if len(customer_ids) == 0:
        return np.empty(0, dtype=np.uint64)
    joined = np.asarray(customer_ids, dtype=object) + "\x1f" + np.asarray(event_ids, dtype=object)
    hashed: npt.NDArray[np.uint64] = pd.util.hash_array(joined, hash_key=_HASH_KEY)
    return hashed


@dataclass(frozen=True)
class Columns:
    """A batch of one kind of record for the windows, one entry per record in stream order.

    ``time`` is the prediction's event time (the window it belongs to); ``clock`` the event
    time the record proves has passed (a prediction's own time, an outcome's
    ``resolved_at``), which moves the watermark.  ``labels`` is -1 for predictions.
    """

    models: npt.NDArray[np.object_]  # "name" and "version" joined by \x1f
    keys: npt.NDArray[np.uint64]
    time: npt.NDArray[np.int64]
    clock: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    thresholds: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return int(self.keys.size)

    def take(self, index: npt.NDArray[np.intp] | slice) -> Columns:
        return Columns(
            models=self.models[index],
            keys=self.keys[index],
            time=self.time[index],
            clock=self.clock[index],
            scores=self.scores[index],
            thresholds=self.thresholds[index],
            labels=self.labels[index],
        )


def model_key(model_name: str, model_version: str) -> str:
    return f"{model_name}\x1f{model_version}"


def split_model_key(key: str) -> tuple[str, str]:
    name, _, version = key.partition("\x1f")
    return name, version


def prediction_columns(predictions: Sequence[Prediction]) -> Columns:
    """Columns of decoded predictions."""
    return Columns(
        models=np.array([model_key(p.model_name, p.model_version) for p in predictions], object),
        keys=record_keys([p.customer_id for p in predictions], [p.event_id for p in predictions]),
        time=np.array([p.event_time for p in predictions], dtype=np.int64),
        clock=np.array([p.event_time for p in predictions], dtype=np.int64),
        scores=np.array([p.score for p in predictions], dtype=np.float64),
        thresholds=np.array([p.threshold for p in predictions], dtype=np.float64),
        labels=np.full(len(predictions), -1, dtype=np.int8),
    )


def outcome_columns(outcomes: Sequence[PredictionOutcome]) -> Columns:
    """Columns of decoded resolved outcomes."""
    return Columns(
        models=np.array([model_key(o.model_name, o.model_version) for o in outcomes], object),
        keys=record_keys([o.customer_id for o in outcomes], [o.event_id for o in outcomes]),
        time=np.array([o.prediction_time for o in outcomes], dtype=np.int64),
        clock=np.array([o.resolved_at for o in outcomes], dtype=np.int64),
        scores=np.array([o.score for o in outcomes], dtype=np.float64),
        thresholds=np.array([o.threshold for o in outcomes], dtype=np.float64),
        labels=np.array([o.label for o in outcomes], dtype=np.int8),
    )


def decode_predictions(values: Sequence[bytes]) -> tuple[list[Prediction], list[str]]:
    """Decoded predictions, and one reason per record that did not decode."""
    return _decode(values, _PREDICTION)


def decode_outcomes(values: Sequence[bytes]) -> tuple[list[PredictionOutcome], list[str]]:
    """Decoded outcomes, and one reason per record that did not decode."""
    return _decode(values, _OUTCOME)


def _decode(
    values: Sequence[bytes], decoder: msgspec.json.Decoder[_T]
) -> tuple[list[_T], list[str]]:
    good: list[_T] = []
    bad: list[str] = []
    for value in values:
        try:
            good.append(decoder.decode(value))
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            bad.append(str(error))
    return good, bad
