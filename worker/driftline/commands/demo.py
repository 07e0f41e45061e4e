"""Run the whole product on this machine: broker, model, worker, live events, drift.

Starts a local broker (Tansu, in memory, by default; `--broker-kind kafka` runs Apache
Kafka, which needs Java 17+), or uses an existing cluster (`--bootstrap-servers`),
creates the topics, trains a churn model on a simulated customer history (unless the one
registered was trained on this very history), starts a scoring worker as its own process
with drift monitoring on, warms its state up on the history (replayed into the input
topic), then streams the same world going on live, with a small share of broken events to
show the dead-letter path.  A status line shows events in, predictions out, dead letters,
latency, the model version and the drift state (OK/WARN/DRIFT and the features drifting),
read from the worker's own /metrics endpoint; retrain requests the worker publishes are
printed as they arrive.  `--inject SCENARIO --at 90s` changes the live world at that
moment (see `--inject`).  Ctrl-C (or --duration) stops everything cleanly.

The live stream continues the training history (demo_world.py): the same customers in
the state the history left them in, the same rates, the event clock going on from where
the history ended, which is some time before today (the stream runs faster than real
time and waits for the present if it catches up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from driftline import config
from driftline.broker import BROKER_KINDS, BrokerError, BrokerProcess, free_port, make_broker
from driftline.commands._demo_drift import RetrainWatcher, describe_request
from driftline.commands._demo_loop import DRIFT_PERSISTENCE_S as LOOP_DRIFT_PERSISTENCE_S
from driftline.commands._demo_loop import HORIZON_DAYS as LOOP_HORIZON_DAYS
from driftline.commands._demo_loop import ConceptLoop, Topics
from driftline.commands._demo_stall import (
    StallWatch,
    live_producer_config,
    stall_message,
    worker_fetch_wait_ms,
)
from driftline.commands._demo_status import print_status, scrape
from driftline.commands._demo_worker import (
    RETRAIN_TOPIC,
    _start_worker,
    _stop_worker,
    _wait_ready,
)
from driftline.commands._demo_worker import worker_command as worker_command  # re-export
from driftline.commands._kafka import add_kafka_client, connect
from driftline.commands.train import _day as train_day
from driftline.commands.train import register, train_on_events
from driftline.config import CONSUMER_GROUP, TopicNames
from driftline.core.spec import FeatureSpec, load_default_spec
from driftline.corpus import bad_payloads
from driftline.demo_world import (
    SCENARIOS,
    DemoWorld,
    Injection,
    headroom_days,
    history_end_ms,
    summary,
)
from driftline.engine.kafka.admin import TopicSpec, default_topics, ensure_topics
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.event_producer import produce, produce_records
from driftline.model.registry import ModelRegistry
from driftline.simulate import frame_to_events

HELP = __doc__ or ""
#: Churn horizon of the demo's model (days without a purchase that count as churned).
HORIZON_DAYS = 60
#: Events per day the worker's false-alarm budget (one false alarm per 30 days) counts in.
#: It defaults to the reference's events per simulated day (~1,250 for 1,000 customers),
#: which the demo, ~10^5 times faster than its simulated calendar, streams in under a
#: second: that budget would be one false alarm every ~20 s of demo.  An operator's day is
#: a wall-clock day, so the demo counts in its own rate, capped at 10^7 per day (one false
#: alarm per ~40 hours of demo at 2,000 events/s; larger budgets overflow the monitor's
#: threshold search for some references).
MAX_DEMO_EVENTS_PER_DAY = 1e7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", default="var/demo", help="registry and logs (default: %(default)s)"
    )
    parser.add_argument(
        "--customers", type=int, default=2000, help="simulated customers (default: %(default)s)"
    )
    parser.add_argument(
        "--rate", type=float, default=2000, help="events per second (default: %(default)s)"
    )
    parser.add_argument(
        "--bad-share",
        type=float,
        default=0.01,
        help="share of broken events (default: %(default)s)",
    )
    parser.add_argument(
        "--partitions", type=int, default=4, help="input partitions (default: %(default)s)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after N seconds of live stream (default: Ctrl-C)",
    )
    parser.add_argument(
        "--retrain", action="store_true", help="train a new model even if one exists"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=9300, help="worker /metrics port (0: any free)"
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="simulation seed (default: %(default)s)"
    )
    parser.add_argument(
        "--drift",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="drift monitoring and retrain requests in the worker (default: on)",
    )
    parser.add_argument(
        "--inject",
        choices=sorted(SCENARIOS),
        default=None,
        help="change the live world at --at: "
        + "; ".join(f"{name}: {what}" for name, what in SCENARIOS.items()).replace("%", "%%"),
    )
    parser.add_argument(
        "--at",
        type=_seconds,
        default=90.0,
        help="with --inject: seconds of live stream before the change, e.g. 90s or 2m "
        "(default: 90s)",
    )
    parser.add_argument(
        "--alert-path",
        choices=("auto", "demo"),
        default="auto",
        help="with --inject concept: 'auto' runs Prometheus and Alertmanager when installed "
        "(else the demo evaluates the alert rule itself), 'demo' always the demo "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--retrain-persistence",
        type=float,
        default=30.0,
        help="seconds of the demo (wall clock) a drift must persist before the worker "
        "requests a retrain; the worker judges persistence in event time, so the demo "
        "passes it the simulated time its stream covers in that many seconds "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--topic-prefix",
        default="",
        help="prefix of the demo's topic and group names, for a cluster shared with other "
        "users (default: none)",
    )
    parser.add_argument(
        "--broker-kind",
        choices=BROKER_KINDS,
        default="tansu",
        help="local broker to start: tansu (pip-only, in memory) or kafka (Apache Kafka, "
        "needs Java 17+) (default: %(default)s)",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this existing cluster instead of starting a broker",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="fail (exit 1) when the worker has consumed nothing for this many seconds "
        "while events wait for it; the status line says STALLED after 10 s (0: never "
        "fail) (default: %(default)s)",
    )
    add_kafka_client(parser)  # for the cluster of --bootstrap-servers (SASL, TLS ...)


def _seconds(text: str) -> float:
    """``90``, ``90s``, ``2m``: seconds."""
    text = text.strip().lower()
    scale = 60.0 if text.endswith("m") else 1.0
    try:
        value = float(text.rstrip("sm")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 2m)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("--at must be >= 0")
    return value


def run(args: argparse.Namespace) -> int:
    if args.bootstrap_servers:
        connect(args)  # its --kafka-config; one line at once if the cluster does not answer
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # --inject concept runs the closed loop, under its own spec copy and registry.
    loop = (
        ConceptLoop(workdir, args.topic_prefix, real_alerting=args.alert_path == "auto")
        if args.inject == "concept"
        else None
    )
    registry_dir = loop.registry if loop else workdir / "models"
    spec = loop.spec if loop else load_default_spec()
    stop = threading.Event()
    #: Ctrl-C reaches the whole process group, the worker too: it is already stopping.
    interrupted = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: _on_signal(signum, interrupted, stop))

    injection = Injection(args.inject, args.at) if args.inject else None
    headroom = headroom_days(args.customers, args.rate, args.duration)
    world = DemoWorld(args.customers, args.seed, history_end_ms(headroom), concept=bool(loop))
    print(
        f"simulating {args.customers} customers: {world.history_days} days of history "
        f"to {_day(world.end_ms)} ...",
        flush=True,
    )
    history = world.history(progress=True)
    facts = summary(world, history)
    registry = ModelRegistry(registry_dir)
    latest = registry.latest("churn")
    if args.retrain or latest is None or not _trained_on(registry, latest, history, spec):
        if latest is not None and not args.retrain:
            print(f"churn {latest} was trained on another history: training anew", flush=True)
        result = train_on_events(
            history,
            spec,
            horizon_days=LOOP_HORIZON_DAYS if loop else HORIZON_DAYS,
            lookback_days=LOOP_HORIZON_DAYS if loop else None,
            n_cutoffs=3 if loop else 1,
            n_estimators=100,
            progress=True,
        )
        print(result.report, flush=True)
        version = register(result, registry, "churn", spec)
        print(f"registered churn {version.version} in {registry_dir}", flush=True)
    else:
        print(f"using registered model churn {latest} ({registry_dir})")

    metrics_port = args.metrics_port or free_port()
    with contextlib.ExitStack() as stack:
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
            print(f"broker: existing cluster at {bootstrap}", flush=True)
        else:
            broker: BrokerProcess = make_broker(args.broker_kind, log_dir=workdir)
            try:
                stack.enter_context(broker)
            except BrokerError as error:
                print(f"driftline demo: {error}", file=sys.stderr)
                return 2
            bootstrap = broker.bootstrap
            where = "in memory" if args.broker_kind == "tansu" else f"storage {workdir / 'data'}"
            print(
                f"broker: {bootstrap} ({broker.kind}, {where}; log {broker.log_path})", flush=True
            )
        prefix = args.topic_prefix
        names = TopicNames(
            input=prefix + config.INPUT_TOPIC,
            output=prefix + config.OUTPUT_TOPIC,
            dead_letter=prefix + config.DEAD_LETTER_TOPIC,
        )
        retrain_topic = prefix + RETRAIN_TOPIC
        kafka_config = args.kafka_config if args.bootstrap_servers else None
        # --kafka-config was loaded for every client of this process by connect().
        client = kafka_client_config({"bootstrap.servers": bootstrap})
        ensure_topics(
            bootstrap, [*default_topics(args.partitions, names), TopicSpec(retrain_topic, 1)]
        )
        if loop:
            topics = Topics(
                input=names.input,
                predictions=names.output,
                requests=retrain_topic,
                outcomes=prefix + "prediction-outcomes",
                outcomes_dlq=prefix + "prediction-outcomes-dlq",
                decisions=prefix + "retrain-decisions",
            )
            loop.start(
                bootstrap,
                topics,
                args.partitions,
                client,
                kafka_config,
                _event_seconds_per_second(args.rate, facts["events_per_day_last_30d"]) / 86_400,
            )
            stack.callback(loop.stop)
        watcher = None
        if args.drift:
            watcher = RetrainWatcher(client, retrain_topic, _print_request)
            watcher.start()
            stack.callback(watcher.stop)
        started_kind = None if args.bootstrap_servers else args.broker_kind
        worker = _start_worker(
            bootstrap,
            registry_dir,
            metrics_port,
            workdir,
            kafka_config,
            drift=args.drift,
            # With the loop, the retrain is the quality alert's: the worker's drift
            # trigger waits an hour of demo (its drift state is still shown).
            retrain_persistence_s=(LOOP_DRIFT_PERSISTENCE_S if loop else args.retrain_persistence)
            * _event_seconds_per_second(args.rate, facts["events_per_day_last_30d"]),
            names=names,
            group_id=prefix + CONSUMER_GROUP,
            retrain_topic=retrain_topic,
            events_per_day=min(args.rate * 86_400, MAX_DEMO_EVENTS_PER_DAY),
            tick_from_ms=world.end_ms,
            fetch_wait_max_ms=worker_fetch_wait_ms(started_kind),
            features=loop.spec_path if loop else None,
        )
        speed = _event_seconds_per_second(args.rate, facts["events_per_day_last_30d"]) / 86_400
        produced = _Count()
        producer = threading.Thread(
            target=_produce_live,
            args=(bootstrap, names.input, world, args.rate, args.bad_share, stop, injection),
            kwargs={"count": produced, "producer_config": live_producer_config(started_kind)},
            daemon=True,
        )
        watch = StallWatch(timeout_s=args.stall_timeout)
        failure = ""
        try:
            _wait_ready(metrics_port, worker, stop, workdir / "worker.log")
            print(
                f"worker ready: http://127.0.0.1:{metrics_port}/metrics  (Ctrl-C to stop)",
                flush=True,
            )
            produced.n, failure = _warm_up(
                bootstrap, names.input, history, metrics_port, worker, stop, watch, started_kind
            )
            if loop and not failure:
                failure = loop.wait_ready(stop)
                print(loop.timeline(speed) + "\n" + loop.describe_alerting(), flush=True)
            if not stop.is_set() and not failure:
                print(
                    f"live: the same {args.customers} customers (slots) from "
                    f"{_day(world.end_ms)} on, {args.rate:g} events/s (history: "
                    f"{facts['events_per_day_last_30d']:.0f} events/day)"
                    + (
                        f"; injecting {injection.scenario} at {injection.at_s:g}s"
                        if injection
                        else ""
                    ),
                    flush=True,
                )
                producer.start()
            deadline = time.monotonic() + args.duration if args.duration else None
            last: dict[str, float] = {}
            extra = ""
            while not failure and not stop.is_set() and worker.poll() is None:
                if deadline and time.monotonic() > deadline:
                    break
                stop.wait(1.0)
                if loop:
                    failure, extra = _loop_step(loop, last, injection)
                stalled_s = print_status(metrics_port, injection, last, watch, produced.n, extra)
                if watch.expired(stalled_s):
                    failure = stall_message(stalled_s, watch.waiting, started_kind)
                if loop and loop.closed():
                    print("\nthe loop closed: AUC fell, alert, retrain, promotion, swap, "
                          "recovery", flush=True)  # fmt: skip
                    break
            print(flush=True)
            if loop and not failure and not loop.closed() and not interrupted.is_set():
                failure = f"the closed loop did not close: {loop.missing()}"
            if failure:  # said at once; stopping the worker and broker can take a while
                print(f"driftline demo: FAILED: {failure}", file=sys.stderr, flush=True)
        finally:
            stop.set()
            producer.join(30) if producer.is_alive() else None
            code = _stop_worker(worker, grace_s=30.0 if interrupted.is_set() else 0.0)
        print(f"worker exited with {code}; broker stopped", flush=True)
        if watcher is not None:
            print(f"retrain requests: {len(watcher.requests)}", flush=True)
    return 1 if failure or code != 0 else 0


class _Count:
    """Records handed to the producer so far (written by the producer thread)."""

    n = 0


def _event_seconds_per_second(rate: float, events_per_day: float) -> float:
    """Simulated seconds the live stream covers per second of demo: its rate over the
    world's events per (simulated) day."""
    return rate / max(events_per_day, 1.0) * 86_400


def _day(ms: int) -> str:
    return str(pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d"))


def _loop_step(
    loop: ConceptLoop, last: dict[str, float], injection: Injection | None
) -> tuple[str, str]:
    """Print the loop's new milestones; (why the demo must fail or "", status text)."""
    serving = next((k.split()[-1] for k in last if k.startswith("model=")), "")
    lines, text = loop.step(serving, injection.applied_at_ms if injection else None)
    for line in lines:
        sys.stdout.write("\r" + line.ljust(100) + "\n")
    sys.stdout.flush()
    return loop.failure(), text


def _trained_on(
    registry: ModelRegistry, version: str, history: pd.DataFrame, spec: FeatureSpec | None = None
) -> bool:
    """Whether the registered model's dataset is this history (same size and span):
    the demo's history ends a set time before today, so yesterday's model is another's."""
    try:
        metadata = json.loads((registry.path("churn", version) / "metadata.json").read_text())
        dataset = metadata["extra"]["dataset"]
    except (OSError, KeyError, TypeError, ValueError):
        return False
    if metadata.get("spec_digest") != (spec or load_default_spec()).digest:
        return False  # trained under another feature spec: the worker would refuse it
    times = history["event_time"]
    span = [train_day(int(times.min())), train_day(int(times.max()))]
    return bool(dataset.get("n_events") == len(history) and dataset.get("history") == span)


def _warm_up(
    bootstrap: str,
    topic: str,
    history: pd.DataFrame,
    port: int,
    worker: subprocess.Popen[bytes],
    stop: threading.Event,
    watch: StallWatch,
    broker_kind: str | None,
) -> tuple[int, str]:
    """Replay the history into the input topic and wait until the worker has read it all,
    so its state (windows, first-seen times) is where the history ended.  Returns the
    records sent, and why the demo must fail ("" if it need not: ``watch`` saw the
    worker stall)."""
    ordered = history.sort_values("event_time", kind="stable")
    print(f"warming the worker's state up on the history: {len(ordered)} events ...", flush=True)
    started = time.monotonic()
    sent = produce(bootstrap, topic, frame_to_events(ordered), stop=stop)
    while not stop.is_set() and worker.poll() is None:
        try:
            consumed = scrape(port).get("driftline_events_consumed_total", 0.0)
        except OSError:
            consumed = 0.0
        stalled_s = watch.observe(time.monotonic(), consumed, sent)
        sys.stdout.write(
            f"\rwarm-up: worker read {consumed:>9.0f} of {sent} history events"
            + watch.status(stalled_s)
        )
        sys.stdout.flush()
        if consumed >= sent:
            break
        if watch.expired(stalled_s):
            print(flush=True)
            return sent, stall_message(stalled_s, watch.waiting, broker_kind)
        stop.wait(0.5)
    print(f"\nwarm-up done in {time.monotonic() - started:.0f} s", flush=True)
    return sent, ""


def _print_request(request: dict[str, Any]) -> None:
    sys.stdout.write("\n" + describe_request(request) + "\n")
    sys.stdout.flush()


def _on_signal(signum: int, interrupted: threading.Event, stop: threading.Event) -> None:
    if signum == signal.SIGINT:  # a terminal's Ctrl-C: the worker got it too
        interrupted.set()
    stop.set()


def _produce_live(
    bootstrap: str,
    topic: str,
    world: DemoWorld,
    rate: float,
    bad_share: float,
    stop: threading.Event,
    injection: Injection | None = None,
    *,
    count: _Count | None = None,
    producer_config: dict[str, Any] | None = None,
) -> None:
    import msgspec

    encode = msgspec.json.Encoder().encode

    def records() -> Iterator[tuple[bytes | None, bytes, int | None]]:
        bad = iter(bad_payloads(100_000, seed=1))
        every = int(1 / bad_share) if bad_share > 0 else 0
        n = 0
        for frame in world.live_frames(injection=injection, stop=stop):
            # Event times are simulated (the stream runs faster than real time, from where
            # the history ended), so the features are those the model was trained on;
            # latency is measured from the record's timestamp, set by this producer.
            for event in frame_to_events(frame):
                yield event["customer_id"].encode(), encode(event), None
                n += 1
                if count is not None:
                    count.n += 1
                if every and n % every == 0:
                    value, _reason = next(bad)
                    yield b"broken", value or b"", None
                    if count is not None:
                        count.n += 1

    produce_records(
        bootstrap,
        topic,
        records(),
        rate=rate,
        stop=stop,
        desc="demo",
        producer_config=producer_config,
    )
