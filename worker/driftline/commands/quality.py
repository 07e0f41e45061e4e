"""Live model quality: realised and estimated figures per model version and window.

Reads the predictions topic and the resolved outcomes (prediction-outcomes, written by
`driftline outcomes`) from the beginning, keeps tumbling event-time windows of each model
version by prediction time (--window, default 7d, Monday-aligned) for --retention after
they end, and serves on /metrics: realised ROC AUC, PR AUC, Brier score, calibration
error, positive ratio from the labels that arrived (once a window has --min-labels of
them), the same figures estimated from the scores alone (confidence-based performance
estimation: valid while the model is calibrated), label coverage, and each version's
training-time test ROC AUC from --registry (the alert ModelPerformanceDegraded compares
with it).  docs/model-quality.md explains each figure.  SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse

from driftline import config
from driftline.commands._errors import CommandError
from driftline.commands._flags import add_bootstrap, duration_ms
from driftline.commands._kafka import connect
from driftline.core.quality import QualitySettings
from driftline.core.quality.windows import MAX_RECORDS, MIN_LABELS
from driftline.engine.kafka.quality import QualityServiceSettings, serve_quality
from driftline.observability.http import PortInUse

HELP = __doc__ or ""
DEFAULT_QUALITY_PORT = 9301


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap(parser)
    parser.add_argument(
        "--predictions-topic",
        default=config.OUTPUT_TOPIC,
        help="the workers' predictions (default: %(default)s)",
    )
    parser.add_argument(
        "--outcomes-topic",
        default="prediction-outcomes",
        help="resolved predictions with their labels (default: %(default)s)",
    )
    parser.add_argument(
        "--registry",
        default=config.DEFAULT_REGISTRY,
        help="model registry, for each version's training-time ROC AUC (default: %(default)s)",
    )
    parser.add_argument(
        "--window", type=duration_ms, default="7d", help="window length (default: %(default)s)"
    )
    parser.add_argument(
        "--horizon",
        type=duration_ms,
        default="90d",
        help="label horizon: a prediction's label is due this long after it, for label "
        "coverage (default: %(default)s)",
    )
    parser.add_argument(
        "--retention",
        type=duration_ms,
        default="120d",
        help="keep a window this long after it ends; later records are dropped as late "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--min-labels",
        type=int,
        default=MIN_LABELS,
        help="labels a window needs before its realised figures are reported "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=MAX_RECORDS,
        help="distinct records held per window and kind; beyond it, a uniform hash sample "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--refresh",
        type=duration_ms,
        default="5s",
        help="recompute the figures at most this often while reading (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=5_000, help="records per poll (default: %(default)s)"
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of /metrics, /healthz, /readyz (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_QUALITY_PORT,
        help="port of /metrics; 0 picks a free one (default: %(default)s)",
    )


def settings_from_args(args: argparse.Namespace) -> QualityServiceSettings:
    try:
        quality = QualitySettings(
            window_ms=args.window,
            horizon_ms=args.horizon,
            retention_ms=args.retention,
            min_labels=args.min_labels,
            max_records=args.max_records,
        )
    except ValueError as error:
        raise CommandError(str(error)) from error
    if args.batch_size <= 0:
        raise CommandError("--batch-size must be positive")
    return QualityServiceSettings(
        bootstrap_servers=args.bootstrap_servers,
        predictions_topic=args.predictions_topic,
        outcomes_topic=args.outcomes_topic,
        registry=args.registry,
        quality=quality,
        batch_size=args.batch_size,
        refresh_s=args.refresh / 1000,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    connect(args)
    try:
        return serve_quality(settings)
    except PortInUse as error:
        raise CommandError(f"metrics {error} (choose another with --metrics-port)") from error
