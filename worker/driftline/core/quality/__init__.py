"""Model quality over a window of predictions: realised from labels, estimated without.

``realised`` scores predictions whose outcome is known (ROC AUC, PR AUC, Brier score,
calibration error, rates at the decision threshold).  ``estimated`` gives the same figures
from calibrated scores alone, as confidence-based performance estimation (NannyML's CBPE)
does: while labels are pending (a churn label needs the whole horizon to pass) it is the
only view of quality there is, and it is shown beside the realised figures when they come.
Both are pure numpy over a window's arrays: they know nothing of topics or model files.
``windows`` keeps them per model version over tumbling event-time windows, fed batches of
predictions and resolved outcomes (``records``) in stream order.
"""

from driftline.core.quality.estimated import estimated_quality
from driftline.core.quality.realised import Quality, realised_quality
from driftline.core.quality.records import (
    PredictionOutcome,
    decode_outcomes,
    decode_predictions,
    outcome_columns,
    prediction_columns,
)
from driftline.core.quality.windows import (
    MIN_LABELS,
    QualitySettings,
    WindowedQuality,
    WindowFigures,
)

__all__ = [
    "MIN_LABELS",
    "PredictionOutcome",
    "Quality",
    "QualitySettings",
    "WindowFigures",
    "WindowedQuality",
    "decode_outcomes",
    "decode_predictions",
    "estimated_quality",
    "outcome_columns",
    "prediction_columns",
    "realised_quality",
]
