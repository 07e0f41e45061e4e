"""Every Grafana panel query returns data from a real Prometheus scraping a real worker.

No Grafana server runs here, so this stands in for opening the dashboards: a worker scores
live simulated events (with some broken ones, so dead-letter series exist) and serves
/metrics; a real Prometheus scrapes it every second under the job name the alert rules use;
then each target ``expr`` of every dashboard in ``grafana/dashboards`` is sent to the
Prometheus HTTP API the way Grafana would (range query for time series, instant query for
``instant`` targets), with Grafana's built-in variables replaced by values that suit a
one-second scrape interval.  A renamed metric, a wrong label or a PromQL syntax error
fails here instead of showing "No data" on a dashboard.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.observability.http import HealthServer
from driftline.simulate import Population, produce_records
from driftline.testing.corpus import bad_payloads

pytestmark = pytest.mark.integration

SCRAPE_INTERVAL_S = 1
#: Grafana's variables for a 1 s scrape interval: $__rate_interval is at least four scrapes.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5s",
    "$__interval": "1s",
    "$__range": "1m",
}
DEADLINE_S = 40.0


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None
    )
    if path is None:
        pytest.skip(reason="prometheus not installed (Debian package 'prometheus')")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def substitute(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
    return expr


def panel_targets(repo_root: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(where, target)`` for every target of every panel of every dashboard."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels") or [])

    found = []
    for path in sorted((repo_root / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in walk(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                where = f"{path.name} panel {panel.get('id')} {panel.get('title')!r}"
                found.append((f"{where} {target.get('refId')}", target))
    assert found, "no panel targets in grafana/dashboards"
    return found


class Prometheus:
    """A Prometheus server in a temporary directory, scraping one worker."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL_S}s\n"
            "scrape_configs:\n"
            "  - job_name: driftline-worker\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = workdir / "prometheus.log"
        self._log_handle = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_handle.close()

    def api(self, endpoint: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{endpoint}?{query}", timeout=5) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # 400 for a bad query: keep Prometheus' words
            body = json.load(error)
        assert body["status"] == "success", f"{params.get('query')}: {body.get('error')}"
        return body["data"]

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout} s: {self.log.read_text()}")

    def scrapes(self) -> int:
        """Successful scrapes of the worker so far (samples of ``up`` equal to 1)."""
        data = self.api(
            "/api/v1/query", query='sum(count_over_time(up{job="driftline-worker"}[5m]))'
        )
        return int(float(data["result"][0]["value"][1])) if data["result"] else 0

    def run(self, target: dict[str, Any]) -> list[Any]:
        """The target as Grafana runs it: instant query, or range query over the last 30 s."""
        expr = substitute(target["expr"])
        if target.get("instant") and not target.get("range"):
            return self.api("/api/v1/query", query=expr)["result"]
        now = time.time()
        return self.api("/api/v1/query_range", query=expr, start=now - 30, end=now, step=1)[
            "result"
        ]


def event_records(stop: threading.Event) -> Iterator[tuple[bytes | None, bytes | None, None]]:
    """Live simulated events keyed by customer, one broken record in every 25."""
    population = Population(n_customers=200, seed=21)
    population.generate_history(days=30)  # the stream continues from the history's clock
    bad = iter(bad_payloads(2_000, seed=9))
    encode = msgspec.json.encode
    for i, event in enumerate(population.stream_events(max_events=100_000)):
        if stop.is_set():
            return
        if i % 25 == 24:
            payload, _reason = next(bad)
            yield b"poison", payload, None
        yield str(event["customer_id"]).encode(), encode(event), None


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    repo_root: Path,
    tmp_path: Path,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    worker_in_thread: Callable[..., Any],
) -> None:
    binary = prometheus_binary()
    targets = panel_targets(repo_root)
    # Lag is read from librdkafka statistics: report them every second, not every 5 s.
    settings = dataclasses.replace(
        worker_settings, consumer_config={"statistics.interval.ms": 1000}
    )
    stop = threading.Event()
    produced: dict[str, Any] = {}

    def producer() -> None:
        try:
            produced["count"] = produce_records(
                settings.bootstrap_servers,
                settings.input_topic,
                event_records(stop),
                rate=400,
                stop=stop,
            )
        except Exception as error:  # reported by the assertion below, not lost in a thread
            produced["error"] = error

    # run() does not serve HTTP (serve_worker does): serve its metrics here, on a free port.
    with (
        worker_in_thread(settings, spec) as worker,
        HealthServer(worker.metrics, "127.0.0.1", 0, worker.health) as server,
    ):
        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        prometheus = Prometheus(binary, tmp_path, f"127.0.0.1:{server.port}")
        try:
            prometheus.wait_ready()
            deadline = time.monotonic() + DEADLINE_S
            empty = [where for where, _ in targets]
            while time.monotonic() < deadline:
                if prometheus.scrapes() >= 5:
                    empty = [where for where, target in targets if not prometheus.run(target)]
                    if not empty:
                        break
                time.sleep(1)
            scrapes = prometheus.scrapes()
            dead = prometheus.api(
                "/api/v1/query", query="sum by (reason) (driftline_dead_letters_total)"
            )["result"]
            consumed = prometheus.api(
                "/api/v1/query", query="sum(driftline_events_consumed_total)"
            )["result"]
        finally:
            prometheus.stop()
            stop.set()
            thread.join(30)

    assert "error" not in produced, produced.get("error")
    assert scrapes >= 5, f"only {scrapes} scrapes: {prometheus.log.read_text()}"
    assert consumed and float(consumed[0]["value"][1]) > 0
    assert dead and all(series["metric"].get("reason") for series in dead)
    assert not empty, "panel queries without data:\n" + "\n".join(
        f"{where}: {substitute(target['expr'])}" for where, target in targets if where in empty
    )
