"""Run a scoring worker: consume customer events, keep features, publish predictions.

The worker joins the consumer group, keeps windowed features per customer for the
partitions it is assigned, scores every valid event with the registered model (one
predict_proba per micro-batch) and publishes predictions keyed by customer id.  Events
that cannot be decoded, fail validation, are dated further ahead than the clock-skew
allowance (--max-clock-skew, --max-replay-jump) or arrive later than the watermark go to the
dead-letter topic with their original bytes and the reason.  Offsets are committed only
after the predictions are delivered (at-least-once).

At every event-time tick (--tick, default daily at 00:00 UTC) every customer in a
partition's state is scored again with its features as of the tick, so customers who
went quiet get fresh predictions (trigger "tick"); replays tick in event time.

State survives restarts and rebalances: each partition's customer state is written to a
compacted changelog topic and restored before the partition is processed.  With
--exactly-once every batch is one transaction.

Endpoints: /metrics (Prometheus), /healthz (loop heartbeat), /readyz (partitions
assigned, state restored, model loaded), POST /alerts (Alertmanager's RetrainRequired
webhook: with --drift, sends the retrain request of a drift this worker sees if its own
trigger has not yet; never a second one per incident).  SIGTERM/SIGINT finish the batch,
commit and exit 0.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from driftline.commands._errors import CommandError
from driftline.commands._flags import (
    add_bootstrap,
    add_model,
    add_spec,
    add_topics,
    duration_ms,
    load_spec_arg,
)
from driftline.commands._kafka import connect
from driftline.config import CONSUMER_GROUP, DEFAULT_METRICS_PORT
from driftline.core.spec import SpecError
from driftline.core.ticks import DEFAULT_TICK_MS, parse_tick
from driftline.engine.kafka.worker import WorkerSettings, serve_worker
from driftline.observability.bearer import load_token
from driftline.observability.http import PortInUse

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap(parser)
    add_topics(parser)
    add_model(parser)
    add_spec(parser)
    parser.add_argument(
        "--engine",
        choices=["kafka", "faust"],
        default="kafka",
        help="kafka: confluent-kafka (librdkafka), every option below; faust: a "
        "faust-streaming app running the same processor, at-least-once, without "
        "--exactly-once, --drift or --scoring-process (see the README's engine table) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--group-id", default=CONSUMER_GROUP, help="consumer group (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=2000,
        help="most events per micro-batch (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-timeout",
        type=float,
        default=0.05,
        help="seconds to wait for a batch to fill (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        help="HTTP bind address; 127.0.0.1 keeps /metrics and POST /alerts off the network "
        "(default: %(default)s, for containers)",
    )
    parser.add_argument(
        "--alerts-token-file",
        default=None,
        metavar="FILE",
        help="POST /alerts requires 'Authorization: Bearer <first line of FILE>' "
        "(Alertmanager's http_config.authorization); others get 401",
    )
    parser.add_argument(
        "--alerts-token",
        default=None,
        help="the same token given directly (prefer the file or the env variable: a flag "
        "shows in the process list)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="HTTP port for /metrics, /healthz, /readyz and POST /alerts; 0 picks a free one "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-event-bytes",
        type=int,
        default=64 * 1024,
        help="larger values are dead-lettered as oversized (default: %(default)s)",
    )
    parser.add_argument(
        "--max-clock-skew",
        type=duration_ms,
        default="10m",
        help="an event dated further ahead of the worker's clock is dead-lettered as "
        "future and never moves its partition's watermark; keep it well under the "
        "allowed lateness (default: %(default)s)",
    )
    parser.add_argument(
        "--max-replay-jump",
        type=duration_ms,
        default="1d",
        help="on a partition replaying old events (median lag over its last events more "
        "than this), an event further ahead of the stream's own clock is future too; "
        "set it to the replayed log's time resolution (default: %(default)s)",
    )
    parser.add_argument(
        "--native-threads",
        type=int,
        default=1,
        help="BLAS/OpenMP threads for the model; run one worker per core (default: %(default)s)",
    )
    parser.add_argument(
        "--worker-id", default=None, help="name in logs and dead letters (default: host-pid)"
    )
    parser.add_argument(
        "--exactly-once",
        action="store_true",
        help="one transaction per batch: predictions, dead letters, changelog and offsets "
        "(consumers of the output must read with isolation.level=read_committed)",
    )
    parser.add_argument(
        "--transaction-timeout",
        type=float,
        default=15.0,
        help="seconds, with --exactly-once: an abandoned transaction (a worker killed for "
        "good) blocks read_committed readers this long on brokers that time it out; a "
        "broker unreachable longer makes the batch's transaction fail, and the worker "
        "then rewinds to its last committed batch (default: %(default)s)",
    )
    parser.add_argument(
        "--changelog",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep partition state in a compacted changelog topic and restore it on "
        "assignment (default: on)",
    )
    parser.add_argument(
        "--model-poll-interval",
        type=float,
        default=5.0,
        help="seconds between registry checks for a new or replaced model; a new version is "
        "swapped in between batches once verified, a refused one leaves the current model "
        "serving (default: %(default)s)",
    )
    parser.add_argument(
        "--drift",
        action="store_true",
        help="monitor feature and prediction drift against the model's reference profile, "
        "export it on /metrics and send retrain requests (see docs/drift-detection.md)",
    )
    parser.add_argument(
        "--drift-from-start",
        action="store_true",
        help="with --drift, monitor every event, also those older than the model's "
        "reference period (by default they are scored, counted in "
        "driftline_drift_unmonitored_events_total and logged, but not monitored: a backfill "
        "of the training history would otherwise be compared with its own future)",
    )
    parser.add_argument(
        "--retrain-topic",
        default="retrain-requests",
        help="topic of retrain requests (default: %(default)s)",
    )
    parser.add_argument(
        "--drift-events-per-day",
        type=float,
        default=None,
        help="expected events/day for the false-alarm budget (default: from the reference)",
    )
    parser.add_argument(
        "--retrain-persistence",
        type=float,
        default=600.0,
        help="seconds of event time drift must persist before a retrain request; the "
        "cooldown and weekly cap are in event time too (default: %(default)s)",
    )
    parser.add_argument(
        "--model-runtime",
        choices=["auto", "sklearn", "compiled", "onnx"],
        default="auto",
        help="auto: compiled when it reproduces the model, else scikit-learn's predict_proba; "
        "compiled: evaluate the fitted pipeline in numpy and call the trees directly "
        "(no per-call pandas, validation or joblib overhead: small batches score ~10x "
        "faster); onnx: run the forest in ONNX Runtime (extra 'onnx').  Either is used only "
        "if it matches scikit-learn on the model's reference sample (compiled: to 1e-12, "
        "onnx: within --onnx-tolerance); asked for explicitly, the worker refuses to start "
        "otherwise (default: %(default)s)",
    )
    parser.add_argument(
        "--explain",
        type=int,
        default=None,
        metavar="K",
        help="reason codes: add the K features that moved each event prediction most to its "
        "record (reasons, reasons_base, reasons_rest: path-based contributions of the "
        "forest's raw probability, computed per micro-batch); needs the sklearn model "
        "runtime (auto picks it) and the Kafka engine.  Off by default: records unchanged",
    )
    parser.add_argument(
        "--scoring-process",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="score in a child process, overlapping the model with the next batch's decode "
        "and state update: faster when the model costs about as much as the rest "
        "(scikit-learn forests) and a second core is free (default: off)",
    )
    parser.add_argument(
        "--onnx-tolerance",
        type=float,
        default=1e-5,
        help="largest accepted |score difference| ONNX vs scikit-learn (default: %(default)s)",
    )
    parser.add_argument(
        "--latency-target",
        type=float,
        default=0.05,
        help="seconds: adaptive micro-batching waits at most what this leaves after "
        "processing when caught up, and grows the batch up to --batch-size under a "
        "backlog (default: %(default)s)",
    )
    parser.add_argument(
        "--fetch-wait-max-ms",
        type=int,
        default=None,
        help="the consumers' fetch.wait.max.ms (default: a fifth of --latency-target, at "
        "most 50).  Longer for Tansu, which answers a fetch with no records when reading "
        "the partition takes longer than this (driftline demo passes it on Tansu)",
    )
    parser.add_argument(
        "--adaptive-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="adapt the batch size and poll wait to the load (default: on)",
    )
    parser.add_argument(
        "--tick",
        default=None,
        metavar="PERIOD",
        help="scheduled re-scoring: at every event-time boundary of PERIOD (1d: 00:00 UTC "
        "daily; 6h, 1w, ...), when a partition's first event past it arrives, every customer "
        "in that partition's state is scored again with its features as of the boundary "
        '(predictions with trigger "tick"), so customers who went quiet get fresh scores; '
        "replays tick in event time; 'off' scores on events only (default: 1d with --engine "
        "kafka, off with --engine faust, which does not support ticks)",
    )
    parser.add_argument(
        "--tick-from",
        default=None,
        metavar="TIME",
        help="no ticks at boundaries before TIME (RFC 3339, e.g. 2024-03-10T00:00:00Z, or "
        "epoch milliseconds): a replay that warms the state up does not re-score the past "
        "(default: every boundary)",
    )
    parser.add_argument(
        "--group-instance-id",
        default=None,
        help="static group membership: a restart within the session timeout keeps the "
        "partitions without a rebalance",
    )


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    try:
        token = load_token(args.alerts_token, args.alerts_token_file)
    except ValueError as error:
        raise CommandError(str(error)) from error
    settings = WorkerSettings(
        alerts_token=token,
        bootstrap_servers=args.bootstrap_servers,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        dead_letter_topic=args.dead_letter_topic,
        group_id=args.group_id,
        registry=args.registry,
        model_name=args.model_name,
        model_version=args.model_version,
        batch_size=args.batch_size,
        poll_timeout_s=args.poll_timeout,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        max_event_bytes=args.max_event_bytes,
        max_clock_skew_ms=args.max_clock_skew,
        max_replay_jump_ms=args.max_replay_jump,
        native_threads=args.native_threads,
        exactly_once=args.exactly_once,
        transaction_timeout_s=args.transaction_timeout,
        changelog=args.changelog,
        group_instance_id=args.group_instance_id,
        model_poll_interval_s=args.model_poll_interval,
        drift=args.drift,
        retrain_topic=args.retrain_topic,
        drift_events_per_day=args.drift_events_per_day,
        drift_from_start=args.drift_from_start,
        retrain_persistence_s=args.retrain_persistence,
        model_runtime=args.model_runtime,
        scoring_process=args.scoring_process,
        onnx_tolerance=args.onnx_tolerance,
        latency_target_s=args.latency_target,
        fetch_wait_max_ms=args.fetch_wait_max_ms,
        adaptive_batch=args.adaptive_batch,
    )
    if args.worker_id:
        settings.worker_id = args.worker_id
    settings.tick_ms = tick_period(args)
    settings.tick_from_ms = tick_from(args)
    if args.explain is not None and args.explain < 1:
        raise CommandError(f"--explain K needs K >= 1, got {args.explain}")
    settings.explain = args.explain
    return settings


def tick_from(args: argparse.Namespace) -> int | None:
    """``--tick-from`` as epoch milliseconds (None: every boundary)."""
    text = getattr(args, "tick_from", None)
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise CommandError(
            f"--tick-from: {text!r} is neither an RFC 3339 time with its zone "
            "(2024-03-10T00:00:00Z) nor epoch milliseconds"
        )
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def tick_period(args: argparse.Namespace) -> int | None:
    """``--tick``, or the engine's default: daily for Kafka, off for Faust (no ticks)."""
    if args.tick is None:
        return DEFAULT_TICK_MS if getattr(args, "engine", "kafka") == "kafka" else None
    try:
        return parse_tick(args.tick)
    except SpecError as error:
        raise CommandError(f"--tick: {error}") from error


def run(args: argparse.Namespace) -> int:
    settings, spec = settings_from_args(args), load_spec_arg(args)
    if args.engine == "faust":
        from driftline.engine.faust.worker import unsupported

        missing = unsupported(settings)
        if missing:
            raise CommandError("--engine faust does not support " + "; ".join(missing))
    connect(args)
    try:
        if args.engine == "faust":
            from driftline.engine.faust.worker import serve_faust_worker

            return serve_faust_worker(settings, spec)
        return serve_worker(settings, spec)
    except PortInUse as error:
        raise CommandError(f"metrics {error} (choose another with --metrics-port)") from error
