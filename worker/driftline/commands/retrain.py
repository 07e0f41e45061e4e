"""``driftline retrain``: a service that retrains on request (or schedule), judges, promotes.

The library parts: :mod:`driftline.commands._retrain_job` (one retrain, broker-free),
:mod:`driftline.commands._retrain_service` (the Kafka loop), :mod:`driftline.core.retrain`
(gate and promotion policy).  docs/retraining.md describes the whole loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal

from driftline import config
from driftline.commands._errors import CommandError
from driftline.commands._flags import add_bootstrap, add_spec, duration_ms, load_spec_arg
from driftline.commands._mlflow import add_mlflow, check_mlflow, decision_tracker
from driftline.commands._retrain_alerts import QualityAlertIntake, kafka_publisher, serve
from driftline.commands._retrain_job import RetrainConfig
from driftline.commands._retrain_service import RetrainService, ServiceSettings
from driftline.core.events import EVENT_TYPES
from driftline.core.labels import label_definition
from driftline.core.retrain import PromotionPolicy
from driftline.core.spec import DAY_MS
from driftline.engine.kafka.admin import TopicMismatch, TopicSpec, ensure_topics
from driftline.model.registry import ModelRegistry
from driftline.observability.bearer import load_token
from driftline.observability.retrain_metrics import RetrainMetrics

log = logging.getLogger(__name__)

HELP = """Retrain the model on request or on a schedule; promote the challenger by policy.

Consumes --requests-topic (the retrain requests drift-monitoring workers send; one retrain
per incident_id, and none within --cooldown of event time of the last one), and with
--every also retrains on a wall-clock schedule.  Each retrain reads the retained input
topic back (the last --history-days of event time), builds a point-in-time training set
with the label definition, trains a challenger exactly as `driftline train` does on
--cutoffs cutoffs one horizon apart, and scores the champion and the challenger on the same
rows: the latest labelled cutoff, held out of the challenger's training.  The challenger is
registered as a candidate with its lineage (parent version, incident, training window,
data hash) and promoted to champion when its ROC AUC beats the champion's by
--min-auc-gain and its calibration error is not worse by more than
--max-calibration-loss.  Workers serving `champion` switch at their next model poll.

Every decision is printed as one JSON line, published to --decisions-topic and counted
(driftline_retrain_decisions_total).  --once runs one retrain now and exits (0 promoted,
1 not promoted, 3 failed).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap(parser)
    parser.add_argument(
        "--input-topic",
        default=config.INPUT_TOPIC,
        help="the retained customer events topic (default: %(default)s)",
    )
    parser.add_argument(
        "--requests-topic",
        default="retrain-requests",
        help="retrain requests topic (default: %(default)s)",
    )
    parser.add_argument(
        "--decisions-topic",
        default="model-decisions",
        help="where decisions are published, '' for none (default: %(default)s)",
    )
    parser.add_argument(
        "--group-id", default="driftline-retrain", help="consumer group (default: %(default)s)"
    )
    parser.add_argument(
        "--registry",
        default=config.DEFAULT_REGISTRY,
        help="model registry directory (default: %(default)s)",
    )
    parser.add_argument(
        "--model-name", default=config.DEFAULT_MODEL_NAME, help="model name (default: %(default)s)"
    )
    add_spec(parser)
    data = parser.add_argument_group("training data")
    data.add_argument(
        "--history-days",
        type=int,
        default=400,
        help="train on events within this many days before the latest (default: %(default)s)",
    )
    data.add_argument(
        "--cutoffs",
        type=int,
        default=3,
        help="cutoffs one horizon apart; the latest evaluates, the others train "
        "(default: %(default)s)",
    )
    data.add_argument(
        "--horizon-days",
        type=int,
        default=None,
        help="label horizon in days (default: the spec's [label])",
    )
    data.add_argument(
        "--target-event",
        default=None,
        choices=EVENT_TYPES,
        help="label target event (default: the spec's [label])",
    )
    data.add_argument(
        "--lookback-days",
        type=int,
        default=None,
        help="training rows: customers active this many days before a cutoff "
        "(default: the spec's [label])",
    )
    data.add_argument(
        "--since",
        type=int,
        default=None,
        metavar="EPOCH_MS",
        help="read the input topic from this produce time (Kafka timestamp) on "
        "(default: from the beginning)",
    )
    policy = parser.add_argument_group("promotion policy (docs/retraining.md)")
    rules = PromotionPolicy()
    policy.add_argument(
        "--min-auc-gain",
        type=float,
        default=rules.min_auc_gain,
        help="challenger ROC AUC must beat the champion's by this (default: %(default)s)",
    )
    policy.add_argument(
        "--max-calibration-loss",
        type=float,
        default=rules.max_calibration_loss,
        help="its calibration error may be worse by at most this (default: %(default)s)",
    )
    policy.add_argument(
        "--min-eval-rows",
        type=int,
        default=rules.min_rows,
        help="evaluation window rows needed to judge (default: %(default)s)",
    )
    policy.add_argument(
        "--min-eval-per-class",
        type=int,
        default=rules.min_per_class,
        help="... and rows of each class (default: %(default)s)",
    )
    when = parser.add_argument_group("when")
    when.add_argument(
        "--cooldown",
        type=duration_ms,
        default=DAY_MS,
        help="no retrain for a request within this much event time of the last one (default: 1d)",
    )
    when.add_argument(
        "--every",
        type=duration_ms,
        default=None,
        help="also retrain on this wall-clock schedule, e.g. 7d (default: requests only)",
    )
    when.add_argument("--once", action="store_true", help="retrain once now and exit")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve /metrics (driftline_retrain_*) on this port; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for /metrics (default: %(default)s)"
    )
    alerts = parser.add_argument_group(
        "quality alerts (POST /alerts on --metrics-port; README 'The closed loop')"
    )
    alerts.add_argument(
        "--quality-alerts",
        action="store_true",
        help="take Alertmanager's ModelPerformanceDegraded on POST /alerts: a firing alert "
        "of the champion publishes one retrain request (reason quality) per degraded "
        "window to --requests-topic",
    )
    alerts.add_argument(
        "--alerts-token-file",
        default=None,
        help="POST /alerts takes only 'Authorization: Bearer <first line of FILE>' "
        "(env DRIFTLINE_ALERTS_TOKEN_FILE)",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--n-estimators", type=int, default=100)
    model.add_argument("--cv-folds", type=int, default=5)
    model.add_argument("--seed", type=int, default=42)
    add_mlflow(parser)


def job_config(args: argparse.Namespace) -> RetrainConfig:
    if args.cutoffs < 2:
        raise CommandError("--cutoffs must be at least 2 (one to train on, one to evaluate)")
    given = [d for d in (args.horizon_days, args.lookback_days, args.history_days) if d is not None]
    if min(given) < 1:
        raise CommandError("--horizon-days, --lookback-days and --history-days must be >= 1")
    spec = load_spec_arg(args)
    label = label_definition(spec)  # the spec's [label], the flags override its parts
    if args.horizon_days is not None:
        label = dataclasses.replace(label, horizon_ms=args.horizon_days * DAY_MS)
    if args.target_event is not None:
        label = dataclasses.replace(label, target_event=args.target_event)
    if args.lookback_days is not None:
        label = dataclasses.replace(label, lookback_ms=args.lookback_days * DAY_MS)
    return RetrainConfig(
        registry=args.registry,
        model_name=args.model_name,
        spec=spec,
        churn=label,
        policy=PromotionPolicy(
            min_auc_gain=args.min_auc_gain,
            max_calibration_loss=args.max_calibration_loss,
            min_rows=args.min_eval_rows,
            min_per_class=args.min_eval_per_class,
        ),
        history_ms=args.history_days * DAY_MS,
        n_cutoffs=args.cutoffs,
        train_kwargs={
            "n_estimators": args.n_estimators,
            "cv_folds": args.cv_folds,
            "seed": args.seed,
        },
        source={"topic": args.input_topic, "since_ms": args.since},
    )


def run(args: argparse.Namespace) -> int:
    check_mlflow(args)
    metrics = RetrainMetrics()
    champions = ModelRegistry(args.registry)
    metrics.watch_champion(args.model_name, lambda: champions.champion(args.model_name).version)
    if args.quality_alerts and not args.metrics_port:
        raise CommandError("--quality-alerts needs --metrics-port (POST /alerts is served there)")
    if args.metrics_port:
        intake = None
        if args.quality_alerts:
            try:
                token = load_token(None, args.alerts_token_file)
            except ValueError as error:
                raise CommandError(str(error)) from None
            registry = ModelRegistry(args.registry)
            intake = QualityAlertIntake(
                args.model_name,
                lambda: registry.champion(args.model_name).version,
                kafka_publisher(args.bootstrap_servers, args.requests_topic),
                metrics,
                token,
            )
        try:
            serve(args.metrics_host, args.metrics_port, metrics, intake)
        except OSError as error:
            raise CommandError(
                f"cannot serve /metrics on {args.metrics_host}:{args.metrics_port}: {error}"
            ) from None
        log.info("metrics on http://%s:%d/metrics", args.metrics_host, args.metrics_port)
    service = RetrainService(
        ServiceSettings(
            bootstrap_servers=args.bootstrap_servers,
            input_topic=args.input_topic,
            requests_topic=args.requests_topic,
            decisions_topic=args.decisions_topic,
            group_id=args.group_id,
            cooldown_ms=args.cooldown,
            every_s=args.every / 1000 if args.every else None,
            since_ms=args.since,
        ),
        job_config(args),
        metrics,
        track=decision_tracker(args),
    )
    if args.once:
        decision = service.run_once("schedule")
        return {"promoted": 0, "rejected": 1}.get(decision.outcome, 3)
    ensure_service_topics(args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop())
    return service.run()


def ensure_service_topics(args: argparse.Namespace) -> None:
    """Create the requests and decisions topics when missing (one partition each, as the
    workers' drift trigger creates the requests topic): a broker with topic auto-creation
    off, as in docker-compose.yml, would otherwise refuse the first request the quality
    alert publishes and every decision.  A topic that exists with another partition count
    serves as well here (nothing is keyed to a partition): logged, not fatal."""
    names = [args.requests_topic, *([args.decisions_topic] if args.decisions_topic else [])]
    for name in names:
        try:
            ensure_topics(args.bootstrap_servers, [TopicSpec(name, 1)])
        except TopicMismatch as mismatch:
            log.info("topic %s: %s", name, mismatch)
