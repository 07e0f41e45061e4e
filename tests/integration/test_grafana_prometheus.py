"""Every Grafana query returns data from a real Prometheus scraping a real worker.

No Grafana server runs here, so this stands in for opening the dashboards.  One worker
with drift monitoring on (a model registered with its reference profile) scores live
simulated events for the whole module: some broken, so dead-letter series exist, and after
a while with eight times bigger baskets, so features drift, detectors alarm and the retrain
trigger sends a request.  A real Prometheus scrapes it every second under the job name the
alert rules use and evaluates ``monitoring/rules`` (dashboards read recording rules too).

Then each dashboard in ``grafana/dashboards`` is "opened" the way Grafana would: its
template variables are resolved in order against Prometheus (``label_values`` through the
label-values API, custom lists split), each taking the value Grafana selects on first load
(the saved "All", else the first option in the variable's sort order); a repeated panel is
run once per value of its variable; and every panel target and annotation query is sent to
the HTTP API (range query for time series, instant query for ``instant`` targets), with
Grafana's built-in variables replaced by values that suit a one-second scrape interval.
A query passes when it returns at least one sample that is not NaN.  A renamed metric, a
wrong label, a variable that matches nothing or a PromQL syntax error fails here instead of
showing "No data" on a dashboard.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from driftline.commands.train import register, train_on_events
from driftline.core.spec import FeatureSpec
from driftline.corpus import bad_payloads
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce_records
from driftline.model.registry import ModelRegistry
from driftline.observability.drift_metrics import CHECKPOINT_REASONS
from driftline.observability.http import HealthServer
from driftline.simulate import Population, frame_to_events

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The dashboards of the scoring worker; model-quality.json reads ``driftline quality``
#: instead, and ``test_quality_service.py`` opens it against that process; retraining.json
#: reads ``driftline retrain``, opened by ``test_retrain_dashboard.py``.
OTHER_PROCESSES = {"model-quality", "retraining"}
DASHBOARDS = sorted(
    p
    for p in (REPO_ROOT / "grafana" / "dashboards").glob("*.json")
    if p.stem not in OTHER_PROCESSES
)
SCRAPE_INTERVAL_S = 1
#: Grafana's variables for a 1 s scrape interval: $__rate_interval is at least four scrapes.
GRAFANA_VARIABLES = {
    "__rate_interval": "5s",
    "__interval": "1s",
    # A five-minute dashboard range: the whole test run, restore at start-up included.
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
#: The first dashboard waits for the stream to fill every series; the others find it full.
DEADLINE_S = 60.0
#: Events per second into the worker: a 5000-event drift window completes within seconds.
RATE = 800
#: Undrifted live events before the baskets grow.
DRIFT_AFTER = 3_000
#: Labels a drift series may carry: the exporter's bounded set, Prometheus' target labels
#: and the histogram bucket bound.
DRIFT_LABELS = {"model", "model_version", "feature", "detector", "reason"}
TARGET_LABELS = {"__name__", "instance", "job", "le"}


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


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``$name`` and ``${name}`` replaced, longest name first (``$model_version`` before
    ``$model``); anything left with a ``$`` is a variable nobody defined."""
    values = {**GRAFANA_VARIABLES, **variables}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
    return expr


def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels") or [])


class Prometheus:
    """A Prometheus server in a temporary directory, scraping one worker and evaluating
    the repository's rule files."""

    def __init__(self, binary: str, workdir: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL_S}s\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
            "rule_files:\n"
            f"  - {rules}/*.yml\n"
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
        assert body["status"] == "success", f"{params}: {body.get('error')}"
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

    def instant(self, expr: str) -> list[Any]:
        return list(self.api("/api/v1/query", query=expr)["result"])

    def run(self, target: dict[str, Any], variables: dict[str, str]) -> list[Any]:
        """A target (or annotation) as Grafana runs it: instant query, or range query over
        the last 30 s."""
        expr = substitute(target["expr"], variables)
        if target.get("instant") and not target.get("range"):
            return self.instant(expr)
        now = time.time()
        return list(
            self.api("/api/v1/query_range", query=expr, start=now - 30, end=now, step=1)["result"]
        )

    def label_values(self, selector: str | None, label: str) -> list[str]:
        """``label_values(selector, label)`` as Grafana's Prometheus datasource resolves it:
        the label-values API limited to series matching the selector in the time range."""
        now = time.time()
        params: dict[str, Any] = {"start": now - 600, "end": now}
        if selector:
            params["match[]"] = selector
        return list(self.api(f"/api/v1/label/{label}/values", **params))


def has_data(result: list[Any]) -> bool:
    """At least one sample that is a number: NaN-only series draw nothing on a panel."""
    for series in result:
        samples = series.get("values") or [series["value"]]
        if any(not math.isnan(float(value)) for _, value in samples):
            return True
    return False


# --- template variables ----------------------------------------------------------------------

LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$"
)
#: Grafana's variable sort orders these dashboards use (0 keeps Prometheus' order).
SORTS: dict[int, Callable[[list[str]], list[str]]] = {
    0: lambda values: values,
    1: sorted,
    2: lambda values: sorted(values, reverse=True),
}


@dataclass
class Variables:
    """Each template variable's options and the text Grafana puts in a query for it."""

    options: dict[str, list[str]] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    multi: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def single(self, name: str, value: str) -> dict[str, str]:
        """The values with ``name`` set to one of its options, as in a repeated panel."""
        return {**self.values, name: regex_value([value]) if name in self.multi else value}


def regex_value(values: list[str]) -> str:
    """Several values of a multi-value variable as Grafana's Prometheus datasource writes
    them: an alternation of regex-escaped values."""
    escaped = [re.escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def variable_options(
    prometheus: Prometheus, variable: dict[str, Any], known: Variables
) -> list[str]:
    kind = variable["type"]
    if kind == "custom":
        return [o.strip() for o in variable["query"].split(",") if o.strip()]
    assert kind == "query", f"${variable['name']}: variable type {kind!r} not handled here"
    query = variable["query"]
    match = LABEL_VALUES.match(substitute(query, known.values))
    assert match, f"${variable['name']}: only label_values(...) is handled here: {query!r}"
    assert not variable.get("regex"), f"${variable['name']}: regex not handled here"
    values = prometheus.label_values(match["selector"], match["label"])
    sort = variable.get("sort", 0)
    assert sort in SORTS, f"${variable['name']}: sort {sort} not handled here"
    return SORTS[sort](values)


def resolve_variables(prometheus: Prometheus, dashboard: dict[str, Any]) -> Variables:
    """Variables in dashboard order (a query may use the ones before it), each set to the
    value Grafana selects when the dashboard opens."""
    known = Variables()
    known.multi = {v["name"] for v in dashboard["templating"]["list"] if v.get("multi")}
    for variable in dashboard["templating"]["list"]:
        name = variable["name"]
        options = variable_options(prometheus, variable, known)
        if not options:
            known.problems.append(f"variable ${name}: no values for {variable['query']!r}")
            return known
        current = variable.get("current", {}).get("value")
        current = current[0] if isinstance(current, list) and len(current) == 1 else current
        if variable.get("includeAll") and current == "$__all":
            known.options[name] = options
            known.values[name] = variable.get("allValue") or regex_value(options)
        else:
            chosen = current if current in options else options[0]
            known.options[name] = [chosen]
            known.values[name] = known.single(name, chosen)[name]
    return known


def dashboard_queries(
    dashboard: dict[str, Any], variables: Variables
) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """``(where, target, variable values)`` of every query the dashboard would run."""
    found = []
    name = dashboard["uid"]
    for panel in walk(dashboard.get("panels", [])):
        repeat = panel.get("repeat")
        # A repeated panel is one copy per value, each with the variable set to that value.
        copies = (
            [variables.single(repeat, value) for value in variables.options[repeat]]
            if repeat
            else [variables.values]
        )
        for values in copies:
            suffix = f" [{repeat}={values[repeat]}]" if repeat else ""
            for target in panel.get("targets", []):
                where = f"{name} panel {panel.get('id')} {panel.get('title')!r}{suffix}"
                found.append((f"{where} {target.get('refId')}", target, values))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found.append(
                (f"{name} annotation {annotation['name']!r}", annotation, variables.values)
            )
    return found


# --- the worker and Prometheus, shared by every test of this module ---------------------------


def event_records(
    population: Population, stop: threading.Event
) -> Iterator[tuple[bytes | None, bytes | None, None]]:
    """Live events continuing the training history, keyed by customer, one broken record in
    every 25; after ``DRIFT_AFTER`` events every order is eight times bigger."""

    def events() -> Iterator[dict[str, Any]]:
        yield from population.stream_events(max_events=DRIFT_AFTER)
        bigger = tuple(8 * value for value in population.mechanism.order_value)
        population.drift(order_value=bigger)
        yield from population.stream_events()

    bad = bad_payloads(500, seed=9)
    encode = msgspec.json.encode
    for i, event in enumerate(events()):
        if stop.is_set():
            return
        if i % 25 == 24:
            payload, _reason = bad[(i // 25) % len(bad)]
            yield b"poison", payload, None
        yield str(event["customer_id"]).encode(), encode(event), None


@pytest.fixture(scope="module")
def prometheus(
    kafka_bootstrap: str,
    spec: FeatureSpec,
    worker_in_thread: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Prometheus]:
    """A drift-monitoring worker fed a live, drifting stream, and a Prometheus scraping it."""
    binary = prometheus_binary()
    workdir = tmp_path_factory.mktemp("grafana-prometheus")
    # The model's reference profile describes the days after its training cutoff; the live
    # stream continues the same population's clock, so every live event is monitored.
    population = Population(n_customers=300, seed=21)
    history = population.generate_history(days=240)
    trained = train_on_events(
        history, spec, horizon_days=60, n_estimators=20, cv_folds=3, progress=False
    )
    registry = ModelRegistry(workdir / "models")
    register(trained, registry, "churn", spec)

    suffix = uuid.uuid4().hex[:12]
    topics = {
        "input_topic": f"events-{suffix}",
        "output_topic": f"predictions-{suffix}",
        "dead_letter_topic": f"dlq-{suffix}",
    }
    ensure_topics(
        kafka_bootstrap,
        [
            TopicSpec(topics["input_topic"], 4),
            TopicSpec(topics["output_topic"], 4),
            TopicSpec(topics["dead_letter_topic"], 1),
        ],
    )
    settings = WorkerSettings(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{suffix}",
        registry=str(registry.root),
        model_name="churn",
        batch_size=500,
        metrics_port=0,
        drift=True,
        retrain_topic=f"retrain-{suffix}",
        retrain_persistence_s=1.0,
        # Lag is read from librdkafka statistics: report them every second, not every 5 s.
        consumer_config={"statistics.interval.ms": 1000},
        **topics,
    )
    stop = threading.Event()
    produced: dict[str, Any] = {}

    def producer() -> None:
        try:
            produced["count"] = produce_records(
                kafka_bootstrap,
                settings.input_topic,
                event_records(population, stop),
                rate=RATE,
                stop=stop,
            )
        except Exception as error:  # reported below, not lost in a thread
            produced["error"] = error

    # Prometheus first, as in a deployment: it sees the worker's series from their first
    # value, so the restore on partition assignment is an increase it can report.
    # run() does not serve HTTP (serve_worker does): its metrics are served here.
    port = free_port()
    prom = Prometheus(binary, workdir, f"127.0.0.1:{port}", REPO_ROOT / "monitoring" / "rules")
    try:
        prom.wait_ready()
        with (
            worker_in_thread(settings, spec) as worker,
            HealthServer(worker.metrics, "127.0.0.1", port, worker.health),
        ):
            # The history first, as a deployment backfills it (read before the live events): a
            # cold state would serve features unlike the reference (every 90-day count near 0),
            # which the monitor reports as a reference mismatch, never as a reason to retrain.
            encode = msgspec.json.encode
            produce_records(
                kafka_bootstrap,
                settings.input_topic,
                (
                    (str(e["customer_id"]).encode(), encode(e), None)
                    for e in frame_to_events(history)
                ),
            )
            thread = threading.Thread(target=producer, daemon=True)
            thread.start()
            try:
                yield prom
            finally:
                stop.set()
                thread.join(30)
    finally:
        prom.stop()
    assert "error" not in produced, produced.get("error")


def wait_for(check: Callable[[], list[str]], deadline_s: float) -> list[str]:
    """Run ``check`` (which returns what is still missing) until nothing is, or time is up."""
    deadline = time.monotonic() + deadline_s
    missing = check()
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = check()
    return missing


# --- tests -----------------------------------------------------------------------------------


def test_the_worker_is_scraped_and_dead_letters_carry_their_reason(
    prometheus: Prometheus,
) -> None:
    def missing() -> list[str]:
        gaps = [] if prometheus.scrapes() >= 5 else ["fewer than 5 scrapes"]
        if not prometheus.instant("sum(driftline_events_consumed_total) > 0"):
            gaps.append("no events consumed")
        if not prometheus.instant("sum by (reason) (driftline_dead_letters_total)"):
            gaps.append("no dead letters")
        return gaps

    assert not wait_for(missing, DEADLINE_S), prometheus.log.read_text()
    dead = prometheus.instant("sum by (reason) (driftline_dead_letters_total)")
    assert all(series["metric"].get("reason") for series in dead)


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_query_of_the_dashboard_returns_data(prometheus: Prometheus, path: Path) -> None:
    dashboard = json.loads(path.read_text())
    report: list[str] = []

    def missing() -> list[str]:
        variables = resolve_variables(prometheus, dashboard)
        if variables.problems:
            return variables.problems
        queries = dashboard_queries(dashboard, variables)
        report[:] = [
            f"{where}: {substitute(target['expr'], values)}" for where, target, values in queries
        ]
        return [
            line
            for line, (_, target, values) in zip(report, queries, strict=True)
            if not has_data(prometheus.run(target, values))
        ]

    empty = wait_for(missing, DEADLINE_S)
    assert report, f"{path.name}: no queries"
    assert not empty, f"{path.name} queries without data:\n" + "\n".join(empty)


#: Drift series of the worker as a whole, not of one model.
WORKER_LEVEL_DRIFT_SERIES = ("driftline_drift_checkpoints_ignored",)


def test_drift_series_carry_only_bounded_labels(prometheus: Prometheus) -> None:
    """Model, version, feature, detector, reason: never a customer id or anything unbounded."""
    selector = '{__name__=~"driftline_(feature|prediction|drift|drifted|reference|retrain)_.+"}'

    def missing() -> list[str]:
        found = prometheus.instant(f"count by (__name__) ({selector})")
        names = {series["metric"]["__name__"] for series in found}
        return [] if "driftline_prediction_score_bucket" in names else ["no score histogram"]

    assert not wait_for(missing, DEADLINE_S)
    now = time.time()
    series = prometheus.api("/api/v1/series", **{"match[]": selector, "start": now - 60})
    assert series
    for labels in series:
        extra = set(labels) - DRIFT_LABELS - TARGET_LABELS
        assert not extra, f"{labels['__name__']}: unexpected labels {extra}"
        if labels["__name__"].startswith(WORKER_LEVEL_DRIFT_SERIES):
            # About the worker's checkpoint topic, read before any model's monitor exists.
            assert labels.get("reason") in CHECKPOINT_REASONS, labels
            continue
        assert labels.get("model") and labels.get("model_version"), labels
