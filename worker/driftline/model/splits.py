"""Honest splits: by customer, and out of time.

A customer labelled at several cutoffs contributes several rows that are near copies of
one another (the same habits, a few months apart).  A row-level split puts some of them in
training and some in the test set, and the test then partly measures memory: the model
has seen this customer.  So:

* **by customer** (:func:`honest_split`): every row of a customer is on one side; the
  customer-level test set answers "how good is the model on customers it never saw".
* **out of time**: with two or more cutoffs, every row of the *latest* cutoff is held out
  of training and validation entirely.  It answers what the deployed model faces: the
  next period, with the population and the season as they are then (customers seen in
  earlier periods included, as in production).
* **cross-validation grouped by customer** too (:func:`grouped_folds`), since its
  out-of-fold scores choose the threshold and fit the calibration.

A table with one row per customer needs no groups: its rows are customers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import (
    BaseCrossValidator,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)


@dataclass(frozen=True)
class HonestSplit:
    """Row positions (into the training table) of each part; the three are disjoint."""

    train: np.ndarray
    #: Customers not in ``train`` (rows before the latest cutoff, when there is an ``oot``).
    test: np.ndarray
    #: Every row of the latest cutoff (empty with fewer than two cutoffs).
    oot: np.ndarray
    #: How the split was made, for the report and the metadata.
    method: str
    oot_cutoff: int | None = None


def honest_split(
    y: pd.Series,
    groups: pd.Series | None,
    times: pd.Series | None,
    *,
    test_size: float,
    seed: int,
) -> HonestSplit:
    """Out-of-time rows (latest ``times`` value), then a customer split of the rest.

    ``groups`` (customer ids, one per row) keep each customer on one side of the split;
    ``None`` treats every row as its own customer (a stratified row split).  ``times``
    (the row's cutoff) with two or more distinct values hold out the latest one.
    """
    n = len(y)
    positions = np.arange(n)
    oot = np.empty(0, dtype=np.intp)
    oot_cutoff: int | None = None
    method = []
    if times is not None:
        t = pd.Series(times).to_numpy()
        if len(np.unique(t)) >= 2:
            oot_cutoff = int(np.max(t))
            oot = positions[t == oot_cutoff]
            positions = positions[t != oot_cutoff]
            method.append("out-of-time: every row of the latest cutoff held out")
    y_dev = pd.Series(y).to_numpy()[positions]
    if groups is not None:
        g = pd.Series(groups).astype(str).to_numpy()[positions]
        train_at, test_at = _customer_split(g, y_dev, test_size, seed)
        method.insert(0, f"by customer: {test_size:.0%} of customers held out")
    else:
        train_at, test_at = train_test_split(
            np.arange(len(positions)), test_size=test_size, stratify=y_dev, random_state=seed
        )
        method.insert(0, f"stratified by row (one row per customer): {test_size:.0%} held out")
    train, test = np.sort(positions[train_at]), np.sort(positions[test_at])
    for part, name in ((train, "training"), (test, "test")):
        if len(np.unique(pd.Series(y).to_numpy()[part])) < 2:
            raise ValueError(
                f"the {name} part has a single class: too few rows or customers to split"
            )
    return HonestSplit(train, test, np.sort(oot), "; ".join(method), oot_cutoff)


def _customer_split(
    groups: np.ndarray, y: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (train, test) of a split of the customers, stratified by whether a
    customer has any positive row, so both sides get churners even when few customers do."""
    customers, inverse = np.unique(groups, return_inverse=True)
    any_positive = np.zeros(len(customers), dtype=np.int64)
    np.maximum.at(any_positive, inverse, y.astype(np.int64))
    stratify = any_positive if np.bincount(any_positive, minlength=2).min() >= 2 else None
    _, test_customers = train_test_split(
        np.arange(len(customers)), test_size=test_size, stratify=stratify, random_state=seed
    )
    in_test = np.zeros(len(customers), dtype=bool)
    in_test[test_customers] = True
    rows = np.arange(len(groups))
    return rows[~in_test[inverse]], rows[in_test[inverse]]


def grouped_folds(groups: pd.Series | None, n_splits: int, seed: int) -> BaseCrossValidator:
    """Cross-validation folds: stratified, and grouped by customer when there are groups."""
    if groups is None:
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def customers_overlap(groups: pd.Series, a: np.ndarray, b: np.ndarray) -> set[str]:
    """Customers with rows in both ``a`` and ``b`` (the tests' check of a split)."""
    g = pd.Series(groups).astype(str).to_numpy()
    return set(g[a]) & set(g[b])
