"""Pure core of the drift monitor: detectors, divergences and their calibration.

No I/O here (no Kafka, no metrics): small classes with one uniform, river-like API —
``update(batch)`` with a micro-batch (numpy, vectorized over events), then read the state —
and JSON-able ``state_dict()`` checkpoints.  See ``docs/drift-detection.md``.
"""

from driftline.core.drift.calibration import (
    FalseAlarmBudget,
    WindowThreshold,
    bernoulli_cusum_arl,
    bernoulli_cusum_threshold,
    cusum_threshold,
    markov_chain_arl,
    normal_increment_cdf,
    siegmund_arl,
    window_test_threshold,
)
from driftline.core.drift.cusum import (
    BernoulliCusum,
    CusumBank,
    CusumResult,
    lindley_path,
    variance_increments,
)
from driftline.core.drift.divergence import (
    EventWindow,
    FeatureBinner,
    TimeWindow,
    WindowCounts,
    chi2_statistic,
    g_statistic,
    jensen_shannon,
    pad_shares,
    psi,
    smooth_shares,
)
from driftline.core.drift.goodness_of_fit import CategoricalWindowTest, WindowTestResult

__all__ = [
    "BernoulliCusum",
    "CategoricalWindowTest",
    "CusumBank",
    "CusumResult",
    "EventWindow",
    "FalseAlarmBudget",
    "FeatureBinner",
    "TimeWindow",
    "WindowCounts",
    "WindowTestResult",
    "WindowThreshold",
    "bernoulli_cusum_arl",
    "bernoulli_cusum_threshold",
    "chi2_statistic",
    "cusum_threshold",
    "g_statistic",
    "jensen_shannon",
    "lindley_path",
    "markov_chain_arl",
    "normal_increment_cdf",
    "pad_shares",
    "psi",
    "siegmund_arl",
    "smooth_shares",
    "variance_increments",
    "window_test_threshold",
]
