"""Serve the live state over HTTP: customer lookups from a read replica, and scoring.

GET /customers/{id} answers with the customer's features as of its latest event, its
latest prediction (score, decision, model version, reason codes when the worker runs
with --explain) and the offsets they stand at.  It reads a replica this process keeps by
following the workers' compacted state changelog (<group>-<input>-changelog) and the
predictions topic, read_committed, without asking the workers (docs/serving.md: the
design, and how stale an answer can be, measured).  POST /predict scores one feature
row or an array of rows with the registry's champion, validated against the feature
spec's row schema (schemas/predict-request.schema.json).  /healthz, /readyz (ready once
the replica has read both topics to the ends they had at start), /metrics, and the
OpenAPI document at /openapi.json.  Needs the 'serve' extra (FastAPI, uvicorn).
"""

from __future__ import annotations

import argparse
import logging
import threading

from driftline import config
from driftline.commands._errors import CommandError
from driftline.commands._flags import add_bootstrap, add_model, add_spec, load_spec_arg
from driftline.commands._kafka import connect

HELP = __doc__ or ""

log = logging.getLogger(__name__)

DEFAULT_SERVE_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap(parser)
    add_model(parser)
    add_spec(parser)
    parser.add_argument(
        "--input-topic",
        default=config.INPUT_TOPIC,
        help="the workers' input topic: names their changelog (default: %(default)s)",
    )
    parser.add_argument(
        "--output-topic",
        default=config.OUTPUT_TOPIC,
        help="the workers' predictions topic (default: %(default)s)",
    )
    parser.add_argument(
        "--group-id",
        default=config.CONSUMER_GROUP,
        help="the workers' consumer group: names their changelog (default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_SERVE_PORT, help="listen port (default: %(default)s)"
    )
    parser.add_argument(
        "--model-runtime",
        choices=["auto", "sklearn", "compiled", "onnx"],
        default="auto",
        help="runtime of POST /predict, chosen by the worker's rule (default: %(default)s)",
    )
    parser.add_argument(
        "--model-poll-interval",
        type=float,
        default=5.0,
        help="seconds between registry checks for a new champion (default: %(default)s)",
    )
    parser.add_argument(
        "--fetch-wait-max-ms",
        type=int,
        default=10,
        help="the replica consumer's fetch.wait.max.ms: bounds how long a new record can "
        "wait at the broker before the replica sees it (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from driftline.serving.app import CustomerFastPath, ServeContext, create_app
    except ImportError as error:
        raise CommandError(
            f"driftline serve needs the 'serve' extra (pip install 'driftline[serve]'): {error}"
        ) from error
    from driftline.core.replica import StateReplica
    from driftline.engine.kafka.replica_follower import FollowerSettings, ReplicaFollower
    from driftline.engine.kafka.settings import WorkerSettings
    from driftline.model.registry import ModelRefused
    from driftline.observability.serve_metrics import ServeMetrics
    from driftline.serving.heap import freeze_long_lived_objects, freeze_when
    from driftline.serving.predict import Predictor

    connect(args)
    spec = load_spec_arg(args)
    try:
        predictor = Predictor(
            spec,
            args.registry,
            args.model_name,
            version=args.model_version,
            runtime=args.model_runtime,
            poll_interval_s=args.model_poll_interval,
        )
    except ModelRefused as refused:
        raise CommandError(f"model refused ({refused.reason}): {refused.message}") from refused
    names = WorkerSettings(
        bootstrap_servers=args.bootstrap_servers,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        group_id=args.group_id,
    )
    metrics = ServeMetrics()
    replica = StateReplica(spec)
    lock = threading.Lock()
    follower = ReplicaFollower(
        FollowerSettings(
            bootstrap_servers=args.bootstrap_servers,
            changelog_topic=names.changelog_topic,
            predictions_topic=args.output_topic,
            fetch_wait_max_ms=args.fetch_wait_max_ms,
        ),
        replica,
        lock,
        on_applied=lambda kind, counts, processed: metrics.observe_applied(
            kind, counts.records, counts.rejected, processed
        ),
    )
    app = CustomerFastPath(create_app(ServeContext(replica, lock, follower, predictor, metrics)))
    # Full garbage collections walk every object alive; those alive now, and once the
    # replica has caught up, live as long as the process (serving/heap.py).
    freeze_long_lived_objects()
    stopped = threading.Event()
    follower.start()
    freeze_when(follower.wait_ready, stopped)
    log.info(
        "serving on http://%s:%d (replica of %s and %s)",
        args.host,
        args.port,
        names.changelog_topic,
        args.output_topic,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        stopped.set()
        follower.stop()
    return 0
