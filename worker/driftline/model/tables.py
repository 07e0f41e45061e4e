"""Training on a plain customer table (one row per customer, one label column).

The Telco sample is such a table.  Its columns are the model's inputs, not a feature
spec's, so the worker cannot serve what is trained here; it exercises the training
workflow on a classic tabular problem.  One row per customer, so a row split is a
customer split and there is no cutoff to hold out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from driftline.model.training import TrainResult, train_model

log = logging.getLogger(__name__)

_POSITIVE_WORDS = {"1", "yes", "y", "true", "t", "churn", "churned", "positive"}


def train_from_table(
    df: pd.DataFrame,
    label_column: str,
    positive_label: object = None,
    drop_columns: Iterable[str] = ("customerID", "customer_id"),
    **train_kwargs: Any,
) -> TrainResult:
    """Train on a plain customer table: one row per customer, one label column.

    ``positive_label`` defaults to the obvious one for 0/1, bool and yes/no-style labels;
    anything else must be given.  Columns in ``drop_columns`` are dropped when present (ids
    carry no signal and would one-hot into one column per customer).  Column types are
    inferred by :func:`infer_column_types`.  ``train_kwargs`` go to :func:`train_model`.
    """
    if label_column not in df.columns:
        raise ValueError(f"label column {label_column!r} not in the table")
    labels = df[label_column]
    if labels.isna().any():
        raise ValueError(f"{int(labels.isna().sum())} rows have no {label_column!r} label")
    if positive_label is None:
        positive_label = infer_positive_label(labels)
    elif not (labels == positive_label).any():
        raise ValueError(f"positive_label {positive_label!r} never occurs in {label_column!r}")
    y = pd.Series((labels == positive_label).to_numpy(dtype=np.int64), name=label_column)
    dropped = [c for c in drop_columns if c in df.columns and c != label_column]
    X, numeric, categorical = infer_column_types(df.drop(columns=[label_column, *dropped]))
    return train_model(X, y, numeric, categorical, **train_kwargs)


def infer_column_types(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Split columns into numeric and categorical; returns the coerced frame and both lists.

    Numeric and bool dtypes are numeric.  A text column is numeric when every non-blank
    value parses as a number (Telco's ``TotalCharges`` is text because of 11 blank cells);
    blanks become NaN.  Everything else is categorical, with blank strings as missing.
    """
    out: dict[str, pd.Series] = {}
    numeric: list[str] = []
    categorical: list[str] = []
    for name in df.columns:
        column = df[name]
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            out[name] = column.astype(np.float64)
            numeric.append(name)
            continue
        text = column.astype(object).where(column.notna(), None)
        stripped = text.map(lambda v: v.strip() if isinstance(v, str) else v)
        blank = stripped.isna() | (stripped == "")
        parsed = pd.to_numeric(stripped.where(~blank, None), errors="coerce")
        present = int((~blank).sum())
        if present and int(parsed.notna().sum()) == present:
            out[name] = parsed.astype(np.float64)
            numeric.append(name)
        else:
            out[name] = stripped.where(~blank, None).astype(object)
            categorical.append(name)
            if present > 50 and stripped[~blank].nunique() == present:
                log.warning("column %r has a distinct value on every row (an id?)", name)
    return pd.DataFrame(out, index=df.index), numeric, categorical


def infer_positive_label(labels: pd.Series) -> object:
    values = pd.unique(labels).tolist()
    if len(values) != 2:
        raise ValueError(f"label must have two values, got {len(values)}: {values[:10]}")
    if set(values) <= {0, 1}:
        return 1 if 1 in values else True
    positive = [v for v in values if str(v).strip().lower() in _POSITIVE_WORDS]
    if len(positive) != 1:
        raise ValueError(f"cannot tell the positive label among {values}: pass positive_label")
    return positive[0]
