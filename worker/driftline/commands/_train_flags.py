"""The flags of ``driftline train`` (its ``add_arguments``), apart from what they drive."""

from __future__ import annotations

import argparse

from driftline import config
from driftline.commands._flags import add_spec
from driftline.commands._mapping import add_mapping
from driftline.commands._mlflow import add_mlflow
from driftline.core.events import EVENT_TYPES
from driftline.model.calibration import METHODS as CALIBRATION_METHODS
from driftline.model.evaluation import THRESHOLD_OBJECTIVES
from driftline.model.training import AUTO_THRESHOLD, DEFAULT_THRESHOLD


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("data (one of --events / --table)")
    exclusive = source.add_mutually_exclusive_group(required=True)
    exclusive.add_argument("--events", metavar="PATH", help="event log, CSV or Parquet")
    exclusive.add_argument(
        "--table", metavar="PATH", help="customer table with a label column, CSV or Parquet"
    )
    add_mapping(source)
    source.add_argument(
        "--label-column", default="Churn", help="--table label column (default: %(default)s)"
    )
    source.add_argument(
        "--positive-label",
        default=None,
        help="--table label value meaning churned (default: inferred for yes/no, 1/0, true/false)",
    )

    churn = parser.add_argument_group("churn definition (--events)")
    churn.add_argument(
        "--cutoff",
        action="append",
        default=None,
        metavar="DATE",
        help="label cutoff date, repeatable (default: chosen from the history)",
    )
    churn.add_argument(
        "--cutoffs",
        type=int,
        default=1,
        metavar="N",
        help="without --cutoff: use N automatic cutoffs, one horizon apart (default: %(default)s)",
    )
    churn.add_argument(
        "--horizon-days",
        type=int,
        default=None,
        help="override the spec's [label] horizon (default: the spec's, else 90)",
    )
    churn.add_argument(
        "--target-event",
        default=None,
        choices=EVENT_TYPES,
        help="override the spec's [label] target_event (default: the spec's, else purchase)",
    )
    churn.add_argument(
        "--lookback-days",
        type=int,
        default=None,
        help="override the spec's [label] lookback (default: the spec's, else the idle "
        "eviction, at most 90)",
    )
    add_spec(parser)

    model = parser.add_argument_group("model")
    model.add_argument(
        "--registry",
        default=config.DEFAULT_REGISTRY,
        help="model registry directory (default: %(default)s)",
    )
    model.add_argument(
        "--model-name", default=config.DEFAULT_MODEL_NAME, help="model name (default: %(default)s)"
    )
    model.add_argument(
        "--stage",
        choices=("champion", "candidate"),
        default="champion",
        help="registry stage of the new version: champion (workers serve it: training by "
        "hand is a deploy) or candidate (registered, not served; `driftline models promote` "
        "later) (default: %(default)s)",
    )
    model.add_argument(
        "--balanced", action="store_true", help="class_weight='balanced' for the forest"
    )
    model.add_argument(
        "--grid-search", action="store_true", help="grid-search depth and leaf size (slower)"
    )
    model.add_argument(
        "--n-estimators", type=int, default=100, help="trees in the forest (default: %(default)s)"
    )
    model.add_argument(
        "--test-size", type=float, default=0.2, help="held-out share (default: %(default)s)"
    )
    model.add_argument(
        "--cv-folds", type=int, default=5, help="cross-validation folds (default: %(default)s)"
    )
    model.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    model.add_argument(
        "--threshold",
        type=_threshold,
        default=DEFAULT_THRESHOLD,
        help="decision threshold in [0, 1], or 'auto': the best --threshold-objective on the "
        "calibrated out-of-fold scores of the training part (default: %(default)s)",
    )
    model.add_argument(
        "--threshold-objective",
        choices=THRESHOLD_OBJECTIVES,
        default="f1",
        help="what --threshold auto maximizes: f1, f2 (recall counts twice) or youden "
        "(TPR - FPR) (default: %(default)s)",
    )
    model.add_argument(
        "--calibration",
        choices=CALIBRATION_METHODS,
        default="auto",
        help="probability calibration fitted on out-of-fold scores: isotonic, sigmoid, none, "
        "or auto (isotonic from 1000 training rows, else sigmoid) (default: %(default)s)",
    )
    add_mlflow(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--json", action="store_true", help="print the metrics as JSON instead of the report"
    )


def _threshold(text: str) -> float | str:
    if text.strip().lower() == AUTO_THRESHOLD:
        return AUTO_THRESHOLD
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be within [0, 1], got {value}")
    return value
