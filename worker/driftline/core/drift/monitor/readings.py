"""What the detectors see of a batch's rows: rank scores, rate indicators and bins."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np
import pandas as pd

from driftline.core.drift.bins import OTHER, assign_bins
from driftline.core.drift.monitor.detectors import DetectorSetup


class Readings(DetectorSetup):
    """Mixin of ``DriftMonitor``: rows to detector inputs, vectorized over the batch."""

    def readings(
        self, features: pd.DataFrame, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What the detectors see of rows: rank scores ``z`` and spread scores ``v`` (n,
        numeric + score; NaN = missing), rate indicators (n, rate streams; NaN = not
        applicable), categorical and numeric bins (-1 = missing)."""
        numeric = numeric_matrix(features, self.numeric)
        bern, cat_bins = self._indicators(features, numeric)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        numeric_bins = np.column_stack(
            [self._bin_numeric(numeric), self._bin_values(scores, self._edges[-1])[:, None]]
        )
        streams = np.arange(numeric_bins.shape[1])[None, :]
        z = self._z_table[streams, numeric_bins]  # bin -1 (missing) -> the NaN column
        v = self._v_table[streams, numeric_bins]
        return z, v, bern, cat_bins, numeric_bins

    @property
    def rate_streams(self) -> list[tuple[str, str]]:
        """(feature, detector) of each rate stream, in the column order of ``readings``."""
        return list(self._bern_streams)

    def _indicators(
        self, features: pd.DataFrame, numeric: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """0/1 Bernoulli inputs (n, streams; NaN = not applicable) and categorical bins."""
        n = len(features)
        numeric_missing = np.isnan(numeric).astype(np.float64)
        cat_missing = np.zeros((n, len(self.categorical)))
        unseen = np.zeros((n, len(self.categorical)))
        cat_bins = np.full((n, len(self.categorical)), -1, dtype=np.int64)
        for j, name in enumerate(self.categorical):
            values = features[name].to_numpy(dtype=object)
            missing = pd.isna(values)
            codes = np.fromiter(
                map(self._category_code[name].get, map(str, values), repeat(-1)),
                dtype=np.int64,
                count=n,
            )
            other = self._category_code[name][str(OTHER)]
            outside = (codes < 0) | (codes == other)
            cat_missing[:, j] = missing
            unseen[:, j] = np.where(missing, np.nan, outside)
            cat_bins[:, j] = np.where(missing, -1, np.where(codes < 0, other, codes))
        bern = np.column_stack([numeric_missing, cat_missing, unseen])
        if not self._bern_active.all():
            bern[:, ~self._bern_active] = np.nan  # inactive rate streams observe nothing
        return bern, cat_bins

    def _bin_numeric(self, numeric: np.ndarray) -> np.ndarray:
        columns = [self._bin_values(numeric[:, j], self._edges[j]) for j in range(numeric.shape[1])]
        return np.column_stack(columns) if columns else np.zeros((len(numeric), 0), np.int64)

    @staticmethod
    def _bin_values(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """Frozen right-closed bins (``assign_bins``), -1 for a missing value."""
        out = np.full(len(values), -1, dtype=np.int64)
        observed = ~np.isnan(values)
        out[observed] = assign_bins(values[observed], edges)
        return out


def string_keys(keys: np.ndarray | Sequence[object]) -> np.ndarray:
    """Keys as an object array of str (what checkpoints store), converted only if needed."""
    array = np.asarray(keys, dtype=object)
    if (
        all(isinstance(k, str) for k in array[:1])
        and pd.api.types.infer_dtype(array, skipna=False) == "string"
    ):
        return array
    converted: np.ndarray = pd.Series(array, dtype=object).astype(str).to_numpy(dtype=object)
    return converted


def numeric_matrix(features: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """(n, F) float matrix of the numeric features; non-numeric and inf become NaN."""
    if not names:
        return np.zeros((len(features), 0))
    frame = features[list(names)]
    if not all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes):
        frame = frame.apply(pd.to_numeric, errors="coerce")  # the worker's frames never need it
    matrix = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isinf(matrix), np.nan, matrix)
