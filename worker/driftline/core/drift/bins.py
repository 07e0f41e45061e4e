"""The binning rule of reference profiles, shared by the profile builder and the detectors.

A reference profile (the model layer's ``model/profile.py``) freezes bin edges at training time;
the drift detectors bin live values with the same edges.  The rule lives here, in core, so
that both sides use one function and core depends on nothing above it: the model layer
imports it from here.

Bins are right-closed, ``(-inf, e1], (e1, e2], ..., (ek, +inf)``.  The outer bins are open,
so a live value beyond the training range still lands in a bin instead of being dropped.
Right-closed bins suit deduplicated quantile edges of discrete features (counts with many
zeros): the edge ``0`` is an attained value and ``(-inf, 0]`` holds the zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Category of a profile's categorical shares that holds every value outside its top-k
#: vocabulary (and, live, every value the reference never saw).
OTHER = "__other__"


def assign_bins(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Bin index of each (non-missing) value for interior ``edges``: right-closed bins.

    ``searchsorted(side="left")`` returns ``i`` with ``edges[i-1] < x <= edges[i]``, which
    is exactly the right-closed rule described in the module docstring.
    """
    bins: np.ndarray = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return bins
