"""``driftline outcomes``: resolve live predictions into labelled outcomes (docs/labels.md)."""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

from driftline.commands._errors import CommandError
from driftline.commands._flags import add_spec, duration_ms, load_spec_arg
from driftline.commands._kafka import add_kafka_client, connect
from driftline.core.labels import label_definition
from driftline.core.labels.resolver import DEFAULT_SAMPLE_EVERY_MS
from driftline.core.spec import SpecError

log = logging.getLogger(__name__)

HELP = """Join predictions with what followed them: one labelled outcome per prediction.

Reads the predictions topic, the input events topic and, with --customer-outcomes-topic,
external outcomes (all keyed by customer id, with the same partition count), and writes to
--output-topic one record per resolved prediction (schemas/prediction-outcome.schema.json).
The label is the feature spec's [label] (default: churned = no purchase within 90 days): a
prediction at t resolves as soon as a target event of its customer follows in (t, t+H], or
once the input partition's event-time watermark passes t+H without one, or by an external
outcome dated in (t, t+H], whichever comes first.  Pending predictions are sampled (the
first of each customer per --sample-every) and capped (--max-pending); they are kept on a
compacted changelog, in the same transaction as the outcomes and the consumed offsets, so a
restarted service resumes exactly where it stopped.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--predictions-topic", default="predictions")
    parser.add_argument("--input-topic", default="customer-events",
                        help="the workers' input events topic (default: %(default)s)")  # fmt: skip
    parser.add_argument(
        "--customer-outcomes-topic",
        default=None,
        help="external outcomes (schemas/customer-outcome.schema.json); default: none",
    )
    parser.add_argument("--output-topic", default="prediction-outcomes")
    parser.add_argument("--dead-letter-topic", default="prediction-outcomes-dlq",
                        help="undecodable predictions and customer outcomes go here")  # fmt: skip
    parser.add_argument("--group-id", default="driftline-outcomes",
                        help="consumer group; the changelog is <group>-changelog")  # fmt: skip
    parser.add_argument(
        "--instance-id",
        default="outcomes-0",
        help="stable id of this instance (names its transactional id): give each instance "
        "its own, and a restarted one the same (default: %(default)s)",
    )
    parser.add_argument(
        "--sample-every",
        type=duration_ms,
        default=DEFAULT_SAMPLE_EVERY_MS,
        metavar="DURATION",
        help="keep the first prediction of each customer per bucket of this length (default: 7d)",
    )
    parser.add_argument(
        "--triggers",
        choices=["all", "event", "tick"],
        default="all",
        help="which predictions to resolve (default: %(default)s)",
    )
    parser.add_argument("--max-pending", type=int, default=1_000_000,
                        help="pending predictions at most, over all partitions")  # fmt: skip
    parser.add_argument(
        "--max-lead",
        type=duration_ms,
        default=None,
        metavar="DURATION",
        help="pause a partition's events while they run this far (event time) ahead of its "
        "predictions; must exceed the label horizon (default: the horizon plus 1d)",
    )
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument(
        "--metrics-port", type=int, default=8001,
        help="Prometheus /metrics port; 0: none (default: %(default)s)",
    )  # fmt: skip
    add_spec(parser)
    add_kafka_client(parser)


def run(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from driftline.engine.kafka.outcomes import (
        OutcomeService,
        OutcomeServiceError,
        OutcomeSettings,
    )
    from driftline.observability.outcome_metrics import OutcomeMetrics

    try:
        spec = load_spec_arg(args)
    except (SpecError, OSError) as error:
        raise CommandError(str(error)) from error
    if args.max_pending < 1 or args.batch_size < 1:
        raise CommandError("--max-pending and --batch-size must be at least 1")
    connect(args)
    label = label_definition(spec)
    if args.max_lead is not None and args.max_lead <= label.horizon_ms:
        raise CommandError(
            f"--max-lead must exceed the label horizon ({label.horizon_ms} ms): pending "
            "predictions resolve only once the events run past their horizon"
        )
    settings = OutcomeSettings(
        bootstrap_servers=args.bootstrap_servers,
        label=label,
        allowed_lateness_ms=spec.allowed_lateness_ms,
        predictions_topic=args.predictions_topic,
        events_topic=args.input_topic,
        external_topic=args.customer_outcomes_topic,
        output_topic=args.output_topic,
        dead_letter_topic=args.dead_letter_topic,
        group_id=args.group_id,
        instance_id=args.instance_id,
        sample_every_ms=args.sample_every,
        triggers=("event", "tick") if args.triggers == "all" else (args.triggers,),
        max_pending=args.max_pending,
        max_lead_ms=args.max_lead,
        batch_size=args.batch_size,
    )
    metrics = OutcomeMetrics()
    service = OutcomeService(settings, metrics)
    try:
        service.check_topics()
    except OutcomeServiceError as error:
        raise CommandError(str(error)) from error
    if args.metrics_port:
        try:
            start_http_server(args.metrics_port, args.metrics_host, registry=metrics.registry)
        except OSError as error:
            raise CommandError(f"metrics port {args.metrics_port}: {error}") from error

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("outcomes: signal %d, stopping after the current batch", signum)
        service.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("outcomes: label %s, sampling one per customer per %d ms", label.describe(),
             args.sample_every)  # fmt: skip
    try:
        service.run()
    except OutcomeServiceError as error:
        raise CommandError(str(error)) from error
    return 0
