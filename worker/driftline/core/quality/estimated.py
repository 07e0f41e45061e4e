"""Estimated quality without labels (confidence-based performance estimation).

If the scores are calibrated, a prediction with score p is positive with probability p.
Every figure that is a sum over predictions then has an expectation that the scores alone
give: the expected true positives above a threshold are the sum of the scores there, the
expected Brier score is the mean of p(1 - p), the expected prevalence the mean score.
ROC AUC and average precision are computed on the expected curves (NannyML's CBPE does
the same), a close estimate for windows of a few hundred predictions or more.

It is only as good as the calibration: a model whose calibration drifted (concept drift)
is estimated as if it had not, which is why realised figures replace the estimate once
labels arrive, and the two are shown side by side.  The calibration error of the
estimate is 0 by construction, so it is reported as ``nan``.
"""

from __future__ import annotations

import numpy.typing as npt

from driftline.core.quality.realised import Quality, _as_arrays, quality_of


def estimated_quality(scores: npt.ArrayLike, threshold: float = 0.5) -> Quality:
    """The expected quality of a window of calibrated ``scores`` at ``threshold``."""
    s, _ = _as_arrays(scores)
    if s.size == 0:
        raise ValueError("no predictions in the window")
    return quality_of(s, s, threshold, calibration=float("nan"))
