"""The held-out arrays a model's report is drawn from, saved with the model version.

Why a file: the metrics in ``metadata.json`` are numbers (an ROC AUC, a confusion matrix),
but a curve, a calibration plot or a feature histogram needs the scores and labels
themselves.  A report drawn later must not retrain or re-split (it would not be the same
test set), so ``driftline train`` saves what it needs at save time, inside the version
directory that the registry writes atomically and never changes afterwards.

What (``EVALUATION_FILE``, a compressed ``.npz``, read with ``allow_pickle=False``: no code
runs on load):

* ``test_y``, ``test_score``: labels and calibrated scores of the test rows (customers the
  model never saw); ``test_recency`` the recency baseline's score on them (event logs);
* ``oot_y``, ``oot_score``, ``oot_recency``: the same for the out-of-time rows, if any;
* ``train__<feature>`` / ``test__<feature>``: a sample of the feature's values in the
  training and test parts (numeric: float64 with NaN missing; categorical: strings, with
  ``missing__`` masks beside them).

Bounded: at most ``MAX_SCORED_ROWS`` scored rows and ``MAX_FEATURE_ROWS`` feature rows per
part (seeded random samples, in row order), so a large training set gives a file of a few
MB at most; ``n_rows__<part>`` records how many there were before sampling.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

EVALUATION_FILE = "evaluation.npz"
MAX_SCORED_ROWS = 50_000
MAX_FEATURE_ROWS = 5_000
FEATURE_PARTS = ("train", "test")


def _sample(n: int, limit: int, seed: int) -> np.ndarray:
    """Row positions: all of them, or a sorted seeded sample of ``limit``."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def scored_arrays(
    part: str,
    y: np.ndarray | pd.Series,
    scores: np.ndarray,
    recency: np.ndarray | None = None,
    *,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``<part>_y``, ``<part>_score`` (and ``<part>_recency``), sampled to the bound."""
    y_np = np.asarray(y, dtype=np.int8)
    rows = _sample(len(y_np), MAX_SCORED_ROWS, seed)
    out = {
        f"{part}_y": y_np[rows],
        f"{part}_score": np.asarray(scores, dtype=np.float64)[rows],
        f"n_rows__{part}": np.asarray(len(y_np), dtype=np.int64),
    }
    if recency is not None:
        out[f"{part}_recency"] = np.asarray(recency, dtype=np.float64)[rows]
    return out


def feature_arrays(
    part: str,
    frame: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A sample of each feature's values in one part (``train`` or ``test``)."""
    rows = _sample(len(frame), MAX_FEATURE_ROWS, seed)
    sample = frame.iloc[rows]
    out: dict[str, np.ndarray] = {}
    for name in numeric:
        column = pd.to_numeric(sample[name], errors="coerce")
        out[f"{part}__{name}"] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    for name in categorical:
        column = pd.Series(sample[name], dtype=object)
        missing = column.isna().to_numpy()
        out[f"{part}__{name}"] = np.asarray(
            ["" if gone else str(value) for value, gone in zip(column, missing, strict=True)],
            dtype=str,
        )
        out[f"missing__{part}__{name}"] = missing
    return out


def to_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The ``.npz`` file's bytes (compressed)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **dict(arrays))  # type: ignore[arg-type]  # numpy's stub
    return buffer.getvalue()


def from_bytes(payload: bytes) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` payload; refuses pickled (object) arrays."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
