"""Checking that a faster runtime scores exactly like the registered scikit-learn pipeline.

A runtime other than scikit-learn's own ``predict_proba`` (ONNX Runtime, or the compiled
numpy path) is only served once it agrees with scikit-learn on the model's *reference
sample*.  The registry keeps no rows, so the sample is drawn, seeded, from the model's
reference profile: values inside every histogram bin, the bin edges themselves (where a
float rounding difference would flip a split), missing values, and every recorded
category plus an unseen one; callers may add real rows (the benchmark adds its frames).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from driftline.model.registry import LoadedModel
from driftline.model.runtimes.sklearn import Scorer

REFERENCE_ROWS = 2000


class RuntimeRefused(RuntimeError):
    """A model runtime cannot serve this model here (missing, unsupported, or different)."""


class RuntimeMismatch(RuntimeRefused):
    """The runtime's scores differ from scikit-learn's beyond the tolerance: refused."""


def reference_sample(model: LoadedModel, rows: int = REFERENCE_ROWS, seed: int = 0) -> pd.DataFrame:
    """Feature rows drawn from the model's reference profile (see the module docstring)."""
    rng = np.random.default_rng(seed)
    profile = model.metadata.get("reference_profile") or {}
    types = model.metadata.get("feature_types") or {}
    columns: dict[str, Any] = {}
    for name in model.feature_names:
        if types.get(name) == "categorical":
            shares = ((profile.get("categorical") or {}).get(name) or {}).get("shares") or {}
            seen = [c for c in shares if c != "__other__"]
            choices = np.asarray([*seen, "never-seen-in-training"], dtype=object)
            values = choices[rng.integers(0, len(choices), rows)]
            values[rng.random(rows) < 0.05] = None
            columns[name] = values
        else:
            columns[name] = _numeric_sample(
                (profile.get("numeric") or {}).get(name) or {}, rows, rng
            )
    return pd.DataFrame(columns, columns=model.feature_names)


def _numeric_sample(entry: dict[str, Any], rows: int, rng: np.random.Generator) -> np.ndarray:
    edges = np.asarray(entry.get("edges") or [], dtype=np.float64)
    spread = float(entry.get("std") or 1.0) or 1.0
    centre = float(entry.get("mean") or 0.0)
    if edges.size == 0:
        values = centre + spread * rng.standard_normal(rows)
    else:
        lows = np.concatenate([[edges[0] - 2 * spread], edges])
        highs = np.concatenate([edges, [edges[-1] + 2 * spread]])
        bins = rng.integers(0, lows.size, rows)
        values = lows[bins] + (highs[bins] - lows[bins]) * rng.random(rows)
        on_edge = rng.random(rows) < 0.2  # exactly on a split candidate
        values[on_edge] = edges[rng.integers(0, edges.size, int(on_edge.sum()))]
    values[rng.random(rows) < max(0.02, float(entry.get("missing_rate") or 0.0))] = np.nan
    return values


def verify(
    candidate: Scorer,
    reference: Scorer,
    sample: pd.DataFrame,
    tolerance: float,
    runtime: str,
    error: type[RuntimeMismatch] = RuntimeMismatch,
) -> float:
    """Largest |difference| of the two scorers on ``sample``; raises ``error`` beyond
    ``tolerance``."""
    got, want = candidate.score(sample), reference.score(sample)
    worst = float(np.max(np.abs(got - want))) if len(sample) else 0.0
    if not worst <= tolerance:
        raise error(
            f"model {reference.name} {reference.version}: {runtime} differs from "
            f"scikit-learn by up to {worst:.3g} on {len(sample)} reference rows "
            f"(tolerance {tolerance:g}); refusing to serve it with {runtime}"
        )
    return worst


def sample_with(model: LoadedModel, extra_rows: pd.DataFrame | None) -> pd.DataFrame:
    """The reference sample, plus ``extra_rows`` (real frames) when given."""
    sample = reference_sample(model)
    if extra_rows is not None and len(extra_rows):
        sample = pd.concat([sample, extra_rows.loc[:, model.feature_names]], ignore_index=True)
    return sample
