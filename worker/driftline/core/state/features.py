"""Features from the raw readings of a batch, and the numpy blocks they are returned in.

The update paths (numpy rounds, C kernel) read only raw totals per event (window sums,
counts, extremes, latest times and values); the features are derived from them here once
per batch, by a flat list of steps compiled from the spec (no key lookups per batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from driftline.core.spec import ProfileFeature, RatioFeature, TenureFeature
from driftline.core.state.layout import (
    COUNT,
    MAX,
    MIN,
    NO_TIME,
    PRESENT,
    SUM,
    AccKey,
    FrameLayout,
    StateLayout,
)


@dataclass(slots=True)
class Readings:
    """What the rounds read after each event (round order), before features are derived."""

    clock: np.ndarray
    first_seen: np.ndarray
    totals: list[np.ndarray]  # per block: (events, keys)
    latest_time: np.ndarray
    latest_value: np.ndarray
    latest_category: np.ndarray


@dataclass(slots=True)
class FeatureBlock:
    """Features of a batch as two numpy blocks: ``numeric`` (numeric features, rows)
    float64 and ``categorical`` (categorical features, rows) object.

    Blocks of several partitions ``concat`` cheaply; ``frame`` builds the DataFrame once.
    """

    layout: FrameLayout
    numeric: np.ndarray
    categorical: np.ndarray

    def __len__(self) -> int:
        return int(self.numeric.shape[1])

    @classmethod
    def empty(cls, layout: FrameLayout) -> FeatureBlock:
        return cls(
            layout,
            np.empty((len(layout.numeric), 0)),
            np.empty((len(layout.categorical), 0), dtype=object),
        )

    @classmethod
    def concat(cls, blocks: list[FeatureBlock]) -> FeatureBlock:
        if len(blocks) == 1:
            return blocks[0]
        return cls(
            blocks[0].layout,
            np.concatenate([b.numeric for b in blocks], axis=1),
            np.concatenate([b.categorical for b in blocks], axis=1),
        )

    def take(self, rows: np.ndarray) -> FeatureBlock:
        """The block of some rows (positions), in that order: a copy."""
        return FeatureBlock(self.layout, self.numeric[:, rows], self.categorical[:, rows])

    def frame(self) -> pd.DataFrame:
        """The feature frame in spec column order: float64 columns from the numeric block
        (one pandas block, no copy) and object columns (missing: ``None``).

        Categorical columns are inserted as object Series: inserting a bare object array
        makes pandas infer its string dtype value by value, which costs more than the whole
        numeric frame.
        """
        layout = self.layout
        frame = pd.DataFrame(self.numeric.T, columns=layout.numeric, copy=False)
        for i, (name, loc) in enumerate(
            zip(layout.categorical, layout.categorical_at, strict=True)
        ):
            frame.insert(loc, name, pd.Series(self.categorical[i], dtype=object, copy=False))
        return frame


class FeatureDerivation(StateLayout):
    """Mixin of ``FeatureState``: compiles the spec's features, derives them per batch."""

    _feature_steps: list[tuple[str, int, tuple[Any, ...]]]

    def _compile_features(self) -> list[tuple[str, int, tuple[Any, ...]]]:
        """Resolve each feature to where its inputs are read, once: ``_features`` then runs
        a flat list of steps per batch, without key lookups.

        A step is ``(op, output row, arguments)``; numeric features write row ``output
        row`` of the numeric block, categorical ones row ``-1 - output row`` of the
        categorical block.
        """
        numeric_row = {name: i for i, name in enumerate(self.spec.numeric_features)}
        categorical_row = {name: i for i, name in enumerate(self.spec.categorical_features)}
        n_last = len(self._last_keys)
        steps: list[tuple[str, int, tuple[Any, ...]]] = []
        for feature in self.spec.features:
            if isinstance(feature, ProfileFeature):
                j = n_last + self._profiles.index(feature.source)
                if feature.categorical:
                    col = self._category_cols.index(j)
                    steps.append(("category", -1 - categorical_row[feature.name], (col,)))
                else:
                    steps.append(("value", numeric_row[feature.name], (self._value_cols.index(j),)))
                continue
            out = numeric_row[feature.name]
            if isinstance(feature, TenureFeature):
                steps.append(("tenure", out, (feature.unit_ms, feature.floor)))
            elif isinstance(feature, RatioFeature):
                num, den = numeric_row[feature.numerator], numeric_row[feature.denominator]
                steps.append(("ratio", out, (num, den)))
            else:
                codes = self._codes[feature.name]
                w, f = feature.window_ms, feature.field
                match feature.agg:
                    case "count":
                        steps.append(("total", out, self._acc_at[AccKey(w, codes, None, COUNT)]))
                    case "sum":
                        steps.append(("total", out, self._acc_at[AccKey(w, codes, f, SUM)]))
                    case "mean":
                        total = self._acc_at[AccKey(w, codes, f, SUM)]
                        count = self._acc_at[AccKey(w, codes, f, PRESENT)]
                        steps.append(("mean", out, (*total, *count)))
                    case "min" | "max":
                        kind = MIN if feature.agg == "min" else MAX
                        steps.append(("extreme", out, self._acc_at[AccKey(w, codes, f, kind)]))
                    case "last":
                        j = self._last_keys.index((codes, f))
                        steps.append(("value", out, (self._value_cols.index(j),)))
                    case "time_since_last":
                        j = self._last_keys.index((codes, f))
                        steps.append(("since", out, (j, feature.unit_ms)))
                    case _:  # pragma: no cover - the spec parser rejects others
                        raise AssertionError(feature.agg)
        return steps

    def _features(self, readings: Readings) -> tuple[np.ndarray, np.ndarray]:
        """Features from the raw readings: (numeric features, events) float64 and
        (categorical features, events) object blocks."""
        clock = readings.clock
        n_events = len(clock)
        numeric = np.empty((len(self._frame_layout.numeric), n_events))
        categorical = np.empty((len(self._frame_layout.categorical), n_events), dtype=object)
        totals = readings.totals
        with np.errstate(invalid="ignore", divide="ignore"):
            for op, out, args in self._feature_steps:
                if op == "total":
                    b, j = args
                    numeric[out] = totals[b][:, j]
                elif op == "mean":
                    b, j, bn, jn = args
                    n = totals[bn][:, jn]
                    numeric[out] = np.where(n > 0, totals[b][:, j] / n, np.nan)
                elif op == "extreme":
                    b, j = args
                    value = totals[b][:, j]
                    numeric[out] = np.where(np.isinf(value), np.nan, value)
                elif op == "value":
                    numeric[out] = readings.latest_value[:, args[0]]
                elif op == "since":
                    j, unit = args
                    last = readings.latest_time[:, j]
                    numeric[out] = np.where(last == NO_TIME, np.nan, (clock - last) / unit)
                elif op == "tenure":
                    unit, floor = args
                    numeric[out] = np.maximum((clock - readings.first_seen) / unit, floor)
                elif op == "ratio":
                    num, den = numeric[args[0]], numeric[args[1]]
                    numeric[out] = np.where((den != 0) & ~np.isnan(den), num / den, np.nan)
                else:  # "category"
                    categorical[-1 - out] = readings.latest_category[:, args[0]]
        return numeric, categorical
