"""Run the whole product on this machine: broker, model, worker, live events.

Starts a local broker (Tansu, in memory, by default; `--broker-kind kafka` runs Apache
Kafka, which needs Java 17+), or uses an existing cluster (`--bootstrap-servers`),
creates the topics, trains a churn model
on a simulated customer history (unless one is registered already), starts a scoring
worker as its own process, then streams live simulated events into it, with a small
share of broken ones to show the dead-letter path.  A status line shows events in,
predictions out, dead letters, latency and the model version, read from the worker's own
/metrics endpoint.  Ctrl-C (or --duration) stops everything cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from driftline.broker import BROKER_KINDS, BrokerError, BrokerProcess, free_port, make_broker
from driftline.commands._errors import CommandError
from driftline.commands._kafka import add_kafka_client, connect
from driftline.commands.train import register, train_on_events
from driftline.config import TopicNames
from driftline.core.spec import load_default_spec
from driftline.engine.kafka.admin import default_topics, ensure_topics
from driftline.model.registry import ModelRegistry
from driftline.simulate import Population, produce_records
from driftline.testing.corpus import bad_payloads

HELP = __doc__ or ""


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
        "--duration", type=float, default=None, help="stop after N seconds (default: Ctrl-C)"
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
    add_kafka_client(parser)  # for the cluster of --bootstrap-servers (SASL, TLS ...)


def run(args: argparse.Namespace) -> int:
    if args.bootstrap_servers:
        connect(args)  # its --kafka-config; one line at once if the cluster does not answer
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    registry_dir = workdir / "models"
    spec = load_default_spec()
    stop = threading.Event()
    #: Ctrl-C reaches the whole process group, the worker too: it is already stopping.
    interrupted = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: _on_signal(signum, interrupted, stop))

    population = Population(n_customers=args.customers, seed=args.seed)
    print(f"simulating {args.customers} customers: 365 days of history ...", flush=True)
    history = population.generate_history(days=365, progress=True)
    registry = ModelRegistry(registry_dir)
    if args.retrain or registry.latest("churn") is None:
        result = train_on_events(history, spec, horizon_days=60, n_estimators=100, progress=True)
        print(result.report, flush=True)
        version = register(result, registry, "churn", spec)
        print(f"registered churn {version.version} in {registry_dir}", flush=True)
    else:
        print(f"using registered model churn {registry.latest('churn')} ({registry_dir})")

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
        names = TopicNames()
        ensure_topics(bootstrap, default_topics(args.partitions, names))
        kafka_config = args.kafka_config if args.bootstrap_servers else None
        worker = _start_worker(bootstrap, registry_dir, metrics_port, workdir, kafka_config)
        producer = threading.Thread(
            target=_produce_live,
            args=(bootstrap, names.input, population, args.rate, args.bad_share, stop),
            daemon=True,
        )
        try:
            _wait_ready(metrics_port, worker, stop, workdir / "worker.log")
            print(
                f"worker ready: http://127.0.0.1:{metrics_port}/metrics  (Ctrl-C to stop)",
                flush=True,
            )
            producer.start()
            deadline = time.monotonic() + args.duration if args.duration else None
            while not stop.is_set() and worker.poll() is None:
                if deadline and time.monotonic() > deadline:
                    break
                stop.wait(1.0)
                _print_status(metrics_port)
            print(flush=True)
        finally:
            stop.set()
            producer.join(30) if producer.is_alive() else None
            code = _stop_worker(worker, grace_s=30.0 if interrupted.is_set() else 0.0)
        print(f"worker exited with {code}; broker stopped", flush=True)
    return 0 if code == 0 else 1


def _start_worker(
    bootstrap: str, registry: Path, port: int, workdir: Path, kafka_config: str | None = None
) -> subprocess.Popen[bytes]:
    log = open(workdir / "worker.log", "ab")  # noqa: SIM115 - owned by the child's lifetime
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "worker",
            "--bootstrap-servers",
            bootstrap,
            "--registry",
            str(registry),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(port),
            *(["--kafka-config", kafka_config] if kafka_config else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _on_signal(signum: int, interrupted: threading.Event, stop: threading.Event) -> None:
    if signum == signal.SIGINT:  # a terminal's Ctrl-C: the worker got it too
        interrupted.set()
    stop.set()


def _stop_worker(worker: subprocess.Popen[bytes], grace_s: float = 0.0) -> int:
    """Stop the worker gracefully.  ``grace_s``: it got the terminal's SIGINT itself and
    is finishing its batch; a SIGTERM sent while it exits (its handlers already gone)
    would kill it (-15), so it is given that long first."""
    if grace_s > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return worker.wait(grace_s)
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            return worker.wait()
    return worker.returncode


def _last_line(path: Path) -> str:
    """The worker's last log line: with the CLI's one-line errors, the reason it stopped."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "nothing logged"


def _wait_ready(
    port: int, worker: subprocess.Popen[bytes], stop: threading.Event, log_path: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stop.is_set():
        if worker.poll() is not None:
            raise CommandError(
                f"worker exited with {worker.returncode} before it was ready: "
                f"{_last_line(log_path)} (log: {log_path})"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)


def _produce_live(
    bootstrap: str,
    topic: str,
    population: Population,
    rate: float,
    bad_share: float,
    stop: threading.Event,
) -> None:
    import msgspec

    encode = msgspec.json.Encoder().encode

    def records() -> Iterator[tuple[bytes | None, bytes, int | None]]:
        bad = iter(bad_payloads(100_000, seed=1))
        every = int(1 / bad_share) if bad_share > 0 else 0
        for n, event in enumerate(population.stream_events()):
            # Event times stay simulated (the stream runs faster than real time), so the
            # features are those the model was trained on; latency is measured from the
            # record's timestamp, set by this producer.
            yield event["customer_id"].encode(), encode(event), None
            if every and n % every == every - 1:
                value, _reason = next(bad)
                yield b"broken", value or b"", None

    produce_records(bootstrap, topic, records(), rate=rate, stop=stop, desc="demo")


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if sample.name == "driftline_model_info":
                values[
                    f"model={sample.labels.get('model')} {sample.labels.get('model_version')}"
                ] = 1
            elif (
                sample.name.endswith("_bucket")
                and family.name == "driftline_event_to_prediction_seconds"
            ):
                values[f"{key}:{sample.labels['le']}"] = sample.value
            else:
                values[key] = values.get(key, 0.0) + sample.value
    return values


def _quantile(values: dict[str, float], q: float) -> float:
    prefix = "driftline_event_to_prediction_seconds_bucket:"
    buckets = sorted(
        (float(k[len(prefix) :]), v) for k, v in values.items() if k.startswith(prefix)
    )
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan")
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def _print_status(port: int) -> None:
    try:
        v = _scrape(port)
    except OSError:
        return
    model = next((k for k in v if k.startswith("model=")), "model=?")
    p50, p99 = _quantile(v, 0.5) * 1e3, _quantile(v, 0.99) * 1e3
    line = (
        f"\revents in {v.get('driftline_events_consumed_total', 0):>9.0f} | "
        f"predictions {v.get('driftline_predictions_produced_total', 0):>9.0f} | "
        f"dead letters {v.get('driftline_dead_letters_total', 0):>6.0f} | "
        f"latency p50 <= {p50:.0f} ms, p99 <= {p99:.0f} ms | "
        f"customers {v.get('driftline_customers_in_state', 0):>6.0f} | {model}   "
    )
    sys.stdout.write(line)
    sys.stdout.flush()
