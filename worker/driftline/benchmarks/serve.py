"""``driftline bench serve``: the API's latency at fixed request rates, and its staleness,
while a worker scores a live stream.

Processes, as they run in production: a broker, a ``driftline worker`` fed a steady
stream by a separate producer process (``--event-rate`` events/s over ``--customers``
customers), a ``driftline serve`` following its changelog and predictions, and the load
generator (``serve_load``, its own process) offering each of ``--rates`` GETs/s of
``/customers/{id}`` for ``--duration`` s.  Then the staleness: an event is sent for a
fresh customer, and the API is polled every 5 ms until it answers with that event's
prediction; reported as the time from the send (the whole pipeline: producer, worker
batching, scoring, commit, replica) and from the worker's ``processed_at`` (what the
replica adds to the worker's own latency).  A benchmark, not a test: the machine is
printed with the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from confluent_kafka import Producer

from driftline.benchmarks import serve_load
from driftline.benchmarks.broker import bench_broker
from driftline.benchmarks.latency import latency_summary
from driftline.benchmarks.serve_process import ServeProcess
from driftline.benchmarks.throughput import machine_description, train_bench_model
from driftline.benchmarks.worker_process import WorkerProcess
from driftline.core.spec import load_default_spec
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.client_config import kafka_client_config
from driftline.model.registry import ModelRegistry
from driftline.simulate import Population

#: Target of issue #17: p99 of GET /customers/{id} at 1,000 requests/s.
P99_TARGET_MS = 10.0
TARGET_RATE = 1000.0
PREFIX = "lat-c"  # the latency producer's customer ids: lat-c00000, ...


@dataclass
class ServeBenchReport:
    machine: str
    broker: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    rates: list[dict[str, Any]] = field(default_factory=list)
    staleness: dict[str, Any] = field(default_factory=dict)
    #: The machine's load average (1, 5, 15 min) when the run ended: on a shared machine
    #: the latencies say as much about the neighbours as about the service.
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def target_held(self) -> bool | None:
        at = [r for r in self.rates if r["offered_rps"] == TARGET_RATE]
        if not at or at[0]["p99_ms"] is None:
            return None
        return bool(at[0]["p99_ms"] <= P99_TARGET_MS)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "p99_target_held": self.target_held()}, indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"machine: {self.machine}",
            f"broker: {self.broker}",
            f"settings: {json.dumps(self.settings)}",
            "",
            "| offered GET/s | achieved | answers | p50 ms | p99 ms | p99.9 ms | max ms "
            "| serve CPU us/request |",
            "|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in self.rates:
            lines.append(
                f"| {r['offered_rps']:,.0f} | {r['achieved_rps']:,.0f} | "
                f"{', '.join(f'{k}: {v}' for k, v in r['statuses'].items())} | "
                f"{_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['p99_9_ms'])} | "
                f"{_ms(r['max_ms'])} | {r.get('serve_cpu_us_per_request', '-')} |"
            )
        held = self.target_held()
        load = self.load_average
        lines.append("")
        lines.append(f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
        lines.append(
            f"target p99 <= {P99_TARGET_MS:g} ms at {TARGET_RATE:,.0f} GET/s: "
            + ("held" if held else "not held" if held is not None else "not measured")
        )
        s = self.staleness
        if s:
            lines += [
                "",
                f"staleness over {s['samples']} probes (poll every {s['poll_ms']} ms): "
                f"event sent -> API answers with its prediction p50 {_ms(s['from_send']['p50'])}"
                f" / p99 {_ms(s['from_send']['p99'])} ms; worker scored (processed_at) -> API "
                f"p50 {_ms(s['from_scored']['p50'])} / p99 {_ms(s['from_scored']['p99'])} ms; "
                f"not seen within {s['timeout_s']:g} s: {s['missed']}",
            ]
        return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def _wait_served(url: str, customers: list[str], timeout_s: float) -> None:
    """Until the replica answers for the stream's first customers (their state arrived)."""
    deadline = time.monotonic() + timeout_s
    for customer in customers:
        while _get_json(f"{url}/customers/{customer}")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API never answered for {customer}")
            time.sleep(0.2)


def measure_staleness(
    bootstrap: str, topic: str, url: str, samples: int, poll_ms: float, timeout_s: float
) -> dict[str, Any]:
    """Send one event at a time for a fresh customer; poll until the API shows its
    prediction (see the module docstring)."""
    producer = Producer(kafka_client_config({"bootstrap.servers": bootstrap, "linger.ms": 0}))
    encode = msgspec.json.encode
    run = uuid.uuid4().hex[:6]
    from_send: list[float] = []
    from_scored: list[float] = []
    missed = 0
    for i in range(samples):
        customer, event_id = f"probe-{run}-{i}", f"probe-{run}-{i}-e"
        event = {
            "event_id": event_id,
            "customer_id": customer,
            "event_time": int(time.time() * 1000),
            "event_type": "login",
        }
        producer.produce(topic, encode(event), customer.encode())
        producer.flush(10)
        sent = time.time()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status, body = _get_json(f"{url}/customers/{customer}")
            seen = time.time()
            prediction = (body or {}).get("prediction") if status == 200 else None
            if prediction and prediction["event_id"] == event_id:
                from_send.append(seen - sent)
                from_scored.append(max(0.0, seen - prediction["processed_at"] / 1000))
                break
            time.sleep(poll_ms / 1000)
        else:
            missed += 1
    return {
        "samples": samples,
        "poll_ms": poll_ms,
        "timeout_s": timeout_s,
        "missed": missed,
        "from_send": latency_summary(np.asarray(from_send)),
        "from_scored": latency_summary(np.asarray(from_scored)),
    }


def run_serve_bench(
    *,
    rates: list[float],
    duration_s: float,
    event_rate: float,
    customers: int,
    staleness_samples: int = 60,
    bootstrap: str | None = None,
    broker_kind: str = "auto",
    n_estimators: int = 50,
    progress: bool = True,
) -> ServeBenchReport:
    """See the module docstring."""

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    report = ServeBenchReport(
        machine=machine_description(),
        settings={
            "rates": rates,
            "duration_s": duration_s,
            "event_rate": event_rate,
            "customers": customers,
            "n_estimators": n_estimators,
        },
    )
    spec = load_default_spec()
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "input": f"sb-events-{suffix}",
        "output": f"sb-pred-{suffix}",
        "dlq": f"sb-dlq-{suffix}",
    }
    with (
        tempfile.TemporaryDirectory(prefix="driftline-serve-bench-") as tmp,
        bench_broker(bootstrap, broker_kind) as (servers, broker_name),
    ):
        report.broker = broker_name
        registry = ModelRegistry(Path(tmp) / "models")
        say("training the bench model ...")
        train_bench_model(registry, Population(n_customers=2000, seed=7), spec, False, n_estimators)
        ensure_topics(
            servers,
            [
                TopicSpec(topics["input"], 4),
                TopicSpec(topics["output"], 4),
                TopicSpec(topics["dlq"], 1),
            ],
        )
        group = f"sb-{suffix}"
        stream_s = len(rates) * (duration_s + 5) + staleness_samples * 2 + 120
        worker = WorkerProcess(
            servers,
            topics["input"],
            topics["output"],
            topics["dlq"],
            group,
            registry.root,
            log_path=Path(tmp) / "worker.log",
        )
        serve = ServeProcess(
            servers,
            input_topic=topics["input"],
            output_topic=topics["output"],
            group=group,
            registry=registry.root,
            log_path=Path(tmp) / "serve.log",
        )
        producer_cmd = [
            sys.executable,
            "-m",
            "driftline.benchmarks.latency",
            "--bootstrap-servers",
            servers,
            "--topic",
            topics["input"],
            "--rate",
            str(event_rate),
            "--duration",
            str(stream_s),
            "--prefix",
            f"sb{suffix}",
            "--customers",
            str(customers),
        ]
        with worker, serve:
            worker.wait_ready(120)
            say(f"worker ready; stream of {event_rate:g} events/s over {customers} customers")
            stream = subprocess.Popen(producer_cmd, stdout=subprocess.DEVNULL)
            try:
                serve.wait_ready(120)
                ids = [f"{PREFIX}{i:05d}" for i in range(customers)]
                _wait_served(serve.url, ids[:20], 120)
                # Let most customers get their first event before the lookups start.
                time.sleep(min(30.0, customers / event_rate))
                paths = Path(tmp) / "paths.txt"
                rng = np.random.default_rng(3)
                paths.write_text(
                    "\n".join(f"/customers/{ids[i]}" for i in rng.integers(0, customers, 20_000))
                )
                for rate in rates:
                    say(f"GET /customers/{{id}} at {rate:g}/s for {duration_s:g} s ...")
                    cpu_before = serve.cpu_seconds()
                    out = subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            serve_load.__name__,  # in its own process
                            "--port",
                            str(serve.port),
                            "--rate",
                            str(rate),
                            "--duration",
                            str(duration_s),
                            "--paths-file",
                            str(paths),
                        ],
                        capture_output=True,
                        text=True,
                        timeout=duration_s * 4 + 60,
                        check=True,
                    )
                    step = json.loads(out.stdout.strip().splitlines()[-1])
                    cpu_after = serve.cpu_seconds()
                    if cpu_before is not None and cpu_after is not None:
                        # The service's CPU per request: independent of how busy the
                        # machine is (it includes the replica following the stream).
                        step["serve_cpu_us_per_request"] = round(
                            (cpu_after - cpu_before) / step["requests"] * 1e6, 1
                        )
                    report.rates.append(step)
                say(f"staleness: {staleness_samples} probes ...")
                report.staleness = measure_staleness(
                    servers, topics["input"], serve.url, staleness_samples, 5.0, 15.0
                )
            finally:
                report.load_average = os.getloadavg()
                stream.kill()
                stream.wait(10)
    return report
