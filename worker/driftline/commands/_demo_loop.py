"""The closed loop in the demo (``driftline demo --inject concept``): the loop services,
their timeline, and what the viewer is shown.

Processes, each the product's own command (logs in the workdir):

    worker ─► predictions ─► driftline outcomes ─► prediction-outcomes ─► driftline quality
        ▲                                                                        │ /metrics
        │ hot swap                         ModelPerformanceDegraded (_demo_alerting)
    registry champion ◄── driftline retrain --quality-alerts ◄── POST /alerts ◄──┘

**Timeline.**  The demo's event clock runs at its rate over the world's events per day
(~1.6 simulated days per second for 1,000 customers at 2,000 events/s), so the loop uses
the closed-loop test's time scale, in event time: label ``churned`` = no purchase within
**30 days** (lookback 30 days), weekly quality windows, daily ticks, an idle eviction of
31 days (ticks score the customers active in the last month, the rows the model is
trained on), and the outcomes join on tick predictions.  These go into a copy of the
shipped spec in the workdir (``loop-features.toml``) that the model, the worker, the
outcomes and the retrain service all read.  A label then resolves ~20 s of wall clock after
its prediction.  Retrains train on the last 100 days with two cutoffs (one horizon apart:
the latest is the evaluation), so a challenger trained ~60 days after the change has seen
only the new concept.

:class:`LoopView` turns the quality service's /metrics, the decisions topic and the
worker's model into status text and milestone lines, and says whether the loop closed:
a promotion, the worker serving the new champion, and a completed window of it whose
realised ROC AUC is back above the rule's threshold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from driftline.broker import free_port
from driftline.commands._demo_alerting import FLOOR, MARGIN, MIN_LABELS, Alerting
from driftline.core.spec import DAY_MS, FeatureSpec, load_spec

#: The loop's time scale (event time), see the module docstring.
HORIZON_DAYS = 30
WINDOW_DAYS = 7
IDLE_EVICTION = "31d"
RETRAIN_HISTORY_DAYS = 100
#: Three cutoffs one horizon apart: two train (the challenger's test split, whose ROC AUC
#: its alert threshold is drawn from, has ~450 rows, not ~220), the latest evaluates.
RETRAIN_CUTOFFS = 3
#: Completed weeks of the promoted model whose mean realised ROC AUC must be above its
#: own alert threshold (the rule no longer holds) and above the first model's degraded
#: weeks: one week is noisy.
RECOVERY_WINDOWS = 2
#: The alert rule's ``for:`` in the demo, in event time: production holds the condition
#: 30 minutes of wall clock (a few refreshes); the demo's 30 minutes would be years of
#: its event time.  65 days instead: longer than a window takes to collect its labels
#: (37 days), and the retrain it asks for then has labels from after the change for both
#: of its training cutoffs, not only from before.
FOR_DAYS = 65
#: Seconds of demo a drift must last before the worker's own trigger asks for a retrain:
#: an hour, so the retrain is the quality alert's.  The change moves the score a little
#: (a joint of inputs the old model never saw), enough for a 30-second persistence to ask
#: first in some runs, and then the loop closes on input drift, not on the outcomes.
DRIFT_PERSISTENCE_S = 3600.0
SHIPPED_SPEC = Path(__file__).resolve().parents[1] / "data/features.toml"


def loop_spec(workdir: Path) -> tuple[Path, FeatureSpec]:
    """The shipped spec with the loop's label and idle eviction, written to the workdir."""
    text = SHIPPED_SPEC.read_text()
    edits = {  # whatever the shipped values, each line must be there exactly once
        r'^horizon = "[^"]*"$': f'horizon = "{HORIZON_DAYS}d"',
        r'^lookback = "[^"]*"$': f'lookback = "{HORIZON_DAYS}d"',
        r'^#? ?idle_eviction = "[^"]*"$': f'idle_eviction = "{IDLE_EVICTION}"',
    }
    for pattern, line in edits.items():
        text, n = re.subn(pattern, line, text, flags=re.MULTILINE)
        if n != 1:  # the shipped spec changed shape: say so rather than run another loop
            raise RuntimeError(f"{SHIPPED_SPEC}: expected one line matching {pattern!r}")
    path = workdir / "loop-features.toml"
    path.write_text(text)
    return path, load_spec(path)


def metric_samples(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        text = answer.read().decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


@dataclasses.dataclass(frozen=True)
class Topics:
    input: str
    predictions: str
    requests: str
    outcomes: str
    outcomes_dlq: str
    decisions: str


class LoopServices:
    """``driftline outcomes``, ``quality`` and ``retrain --quality-alerts`` as processes,
    and the alert path between them (:class:`~._demo_alerting.Alerting`)."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        registry: Path,
        spec_path: Path,
        workdir: Path,
        prefix: str,
        kafka_config: str | None,
    ) -> None:
        self.bootstrap, self.topics, self.registry = bootstrap, topics, registry
        self.spec_path, self.workdir, self.prefix = spec_path, workdir, prefix
        self.kafka = ["--kafka-config", kafka_config] if kafka_config else []
        self.quality_port, self.retrain_port = free_port(), free_port()
        self.for_s = 1
        self.real_alerting = True
        self.token = secrets.token_hex(16)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.alerting: Alerting | None = None

    def _spawn(self, name: str, arguments: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self._logs.append(log)
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "driftline.cli", name, "--bootstrap-servers", self.bootstrap,
             *self.kafka, *arguments],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def start(self) -> None:
        t, spec = self.topics, str(self.spec_path)
        (self.workdir / "alerts-token").write_text(self.token + "\n")
        self._spawn("outcomes", [
            "--input-topic", t.input, "--predictions-topic", t.predictions,
            "--output-topic", t.outcomes, "--dead-letter-topic", t.outcomes_dlq,
            "--group-id", self.prefix + "driftline-outcomes", "--features", spec,
            "--triggers", "tick", "--metrics-port", "0",
        ])  # fmt: skip
        self._spawn("quality", [
            "--predictions-topic", t.predictions, "--outcomes-topic", t.outcomes,
            "--registry", str(self.registry), "--window", f"{WINDOW_DAYS}d",
            "--horizon", f"{HORIZON_DAYS}d", "--refresh", "1s",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(self.quality_port),
        ])  # fmt: skip
        self._spawn("retrain", [
            "--input-topic", t.input, "--requests-topic", t.requests,
            "--decisions-topic", t.decisions, "--group-id", self.prefix + "driftline-retrain",
            "--registry", str(self.registry), "--features", spec, "--quality-alerts",
            "--alerts-token-file", str(self.workdir / "alerts-token"),
            "--history-days", str(RETRAIN_HISTORY_DAYS), "--horizon-days", str(HORIZON_DAYS),
            "--lookback-days", str(HORIZON_DAYS), "--cutoffs", str(RETRAIN_CUTOFFS),
            "--n-estimators", "40", "--cv-folds", "3",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(self.retrain_port),
        ])  # fmt: skip

    def wait_ready(self, stop: threading.Event, timeout: float = 90.0) -> str:
        """Wait for the quality and retrain /metrics; "" or why they are not there."""
        deadline = time.monotonic() + timeout
        waiting = {"quality": self.quality_port, "retrain": self.retrain_port}
        while waiting and time.monotonic() < deadline and not stop.is_set():
            for name, port in list(waiting.items()):
                with contextlib.suppress(OSError):
                    metric_samples(port)
                    del waiting[name]
            if dead := self.dead():
                return dead
            stop.wait(0.5)
        if waiting:
            return f"{', '.join(waiting)} not serving /metrics within {timeout:g} s"
        self.alerting = Alerting(
            self.workdir, self.quality_port,
            f"http://127.0.0.1:{self.retrain_port}/alerts", self.token, for_s=self.for_s,
        )  # fmt: skip
        self.alerting.start(real=self.real_alerting)
        return ""

    def dead(self) -> str:
        """Which loop process exited (the loop cannot close without it), or ""."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return (
                    f"driftline {name} exited with {process.returncode} "
                    f"(log: {self.workdir / (name + '.log')})"
                )
        return ""

    def stop(self) -> None:
        if self.alerting is not None:
            self.alerting.stop()
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for log in self._logs:
            log.close()


def _day(window: str) -> str:
    return window[:10]


class LoopView:
    """What the loop has shown so far, from the quality service, the decisions topic
    (``on_decision``) and the worker's model; :meth:`update` returns new milestone lines."""

    def __init__(self, services: LoopServices) -> None:
        self.services = services
        self.decisions: list[dict[str, Any]] = []
        self.shown_windows: set[tuple[str, str]] = set()
        self.alerted: set[tuple[str, str]] = set()
        self.first_version = ""
        self.serving = ""
        self.promoted = ""
        self.swapped = False
        self.recovered: tuple[str, float] | None = None
        self.fell: tuple[str, float] | None = None
        self.latest: dict[str, tuple[str, float]] = {}  # version -> (window, AUC)
        self.degraded: list[float] = []  # the first model's weeks after the change
        self.served: list[float] = []  # the promoted model's weeks
        self._decode = msgspec.json.Decoder().decode

    def on_decision(self, value: bytes) -> str:
        decision = self._decode(value)
        self.decisions.append(decision)
        outcome = decision.get("outcome")
        if outcome == "promoted":
            self.promoted = str(decision.get("challenger_version"))
        reasons = "; ".join(decision.get("reasons", []))[:200]
        return (
            f"retrain decision: {outcome} challenger {decision.get('challenger_version')} "
            f"over champion {decision.get('champion_version')} ({reasons})"
        )

    def update(self, serving: str, injected_ms: int | None) -> list[str]:
        """Read the quality service once; milestone lines to print (each printed once)."""
        lines: list[str] = []
        if serving and not self.first_version:
            self.first_version = serving
        if serving and serving != self.serving and self.serving:
            lines.append(f"worker swapped model: {self.serving} -> {serving}")
            if serving == self.promoted or (self.promoted and serving != self.first_version):
                self.swapped = True
        self.serving = serving or self.serving
        try:
            samples = metric_samples(self.services.quality_port)
        except OSError:
            return lines
        windows: dict[tuple[str, str], dict[str, float]] = {}
        training: dict[str, float] = {}
        clock_ms = 0.0
        for name, labels, value in samples:
            version = labels.get("model_version", "")
            if name == "driftline_quality_training_roc_auc":
                training[version] = value
            elif name == "driftline_quality_watermark_timestamp_seconds":
                clock_ms = max(clock_ms, value * 1000)
            elif "window" in labels and name in (
                "driftline_quality_roc_auc",
                "driftline_quality_labels",
            ):
                if name.endswith("roc_auc") and labels.get("basis") != "realised":
                    continue
                key = "auc" if name.endswith("roc_auc") else "labels"
                windows.setdefault((version, labels["window"]), {})[key] = value
        horizon_ms = (HORIZON_DAYS + WINDOW_DAYS) * DAY_MS
        for (version, window), row in sorted(windows.items(), key=lambda kv: kv[0][1]):
            start_ms = datetime.fromisoformat(window.replace("Z", "+00:00")).timestamp() * 1000
            complete = start_ms + horizon_ms <= clock_ms
            if not complete or "auc" not in row or row.get("labels", 0) < MIN_LABELS:
                continue
            if (version, window) in self.shown_windows:
                continue
            self.shown_windows.add((version, window))
            auc = row["auc"]
            self.latest[version] = (window, auc)
            threshold = max(FLOOR, training.get(version, 0.0) - MARGIN)
            after = injected_ms is not None and start_ms >= injected_ms
            mark = "below" if auc < threshold else "above"
            lines.append(
                f"quality: churn {version} week of {_day(window)}: realised ROC AUC {auc:.3f} "
                f"from {row['labels']:.0f} labels ({mark} its alert threshold {threshold:.3f}"
                f"{'; predictions made after the change' if after else ''})"
            )
            if after and auc < threshold and version == self.first_version and not self.fell:
                self.fell = (window, auc)
            if after and version == self.first_version and auc < threshold:
                self.degraded.append(auc)
            if version == self.promoted and self.swapped:
                self.served.append(auc)
            first = self.served[:RECOVERY_WINDOWS]
            if self.recovered is None and len(first) == RECOVERY_WINDOWS and self.degraded:
                mean, before = float(np.mean(first)), float(np.mean(self.degraded))
                if mean >= threshold and mean > before:
                    self.recovered = (window, mean)
                    lines.append(
                        f"AUC recovered: churn {version} {mean:.3f} over its first "
                        f"{len(first)} weeks >= its alert threshold {threshold:.3f}, vs "
                        f"{before:.3f} for {self.first_version}'s degraded weeks"
                    )
        alerting = self.services.alerting
        for labels in alerting.firing() if alerting else []:
            fired = (labels.get("model_version", ""), labels.get("window", ""))
            if fired not in self.alerted:
                if not any(version == fired[0] for version, _ in self.alerted):
                    lines.append(  # the first per version; the status line counts them
                        f"ALERT ModelPerformanceDegraded firing: churn {fired[0]} week of "
                        f"{_day(fired[1])} -> retrain service"
                    )
                self.alerted.add(fired)
        return lines

    def status(self) -> str:
        """The loop's part of the status line."""
        auc = " ".join(f"{v} {a:.3f}" for v, (_w, a) in sorted(self.latest.items()))
        stage = (
            "RECOVERED" if self.recovered
            else f"serving {self.promoted}" if self.swapped
            else f"promoted {self.promoted}" if self.promoted
            else f"retrain {self.decisions[-1].get('outcome')}" if self.decisions
            else f"ALERT ({len(self.alerted)} weeks)" if self.alerted
            else "watching"
        )  # fmt: skip
        return f"live AUC {auc or '-'} | loop {stage}"

    def closed(self) -> bool:
        return bool(self.promoted and self.swapped and self.recovered)

    def missing(self) -> str:
        """The first stage of the loop that did not happen."""
        if not self.fell:
            return "the realised ROC AUC of the first model never fell below its threshold"
        if not self.alerted:
            return "ModelPerformanceDegraded never fired"
        if not self.promoted:
            outcomes = [d.get("outcome") for d in self.decisions]
            return f"no challenger was promoted (retrain decisions: {outcomes or 'none'})"
        if not self.swapped:
            return f"the worker never served the promoted {self.promoted}"
        first = [round(a, 3) for a in self.served[:RECOVERY_WINDOWS]]
        degraded = [round(a, 3) for a in self.degraded]
        return (
            f"{self.promoted}'s first {RECOVERY_WINDOWS} completed weeks were not above both "
            f"its alert threshold and {self.first_version}'s degraded weeks (realised ROC "
            f"AUC {first or 'not yet known'} vs {degraded})"
        )


class ConceptLoop:
    """The demo's side of the loop: topics, services, decisions, milestones, verdict."""

    def __init__(self, workdir: Path, prefix: str, real_alerting: bool = True) -> None:
        self.real_alerting = real_alerting
        self.workdir = workdir / "concept"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.registry = self.workdir / "models"
        if self.registry.exists():  # a fresh registry: v0001 is this run's model
            shutil.rmtree(self.registry)
        self.spec_path, self.spec = loop_spec(self.workdir)
        self.prefix = prefix
        self.services: LoopServices | None = None
        self.view: LoopView | None = None
        self._watcher: Any = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._live_started: float | None = None

    def timeline(self, days_per_second: float) -> str:
        """What the viewer is told about the loop's time scale."""
        label_s = HORIZON_DAYS / max(days_per_second, 1e-9)
        return (
            f"closed loop: event time runs {days_per_second:.2f} simulated days per second; "
            f"label churned = no purchase within {HORIZON_DAYS} days (~{label_s:.0f} s), "
            f"quality windows of {WINDOW_DAYS} days, daily ticks, idle eviction "
            f"{IDLE_EVICTION}, alert after the condition held {FOR_DAYS} days "
            f"(~{FOR_DAYS / max(days_per_second, 1e-9):.0f} s), retrain on the last "
            f"{RETRAIN_HISTORY_DAYS} days ({RETRAIN_CUTOFFS} cutoffs); the worker's drift "
            f"trigger waits {DRIFT_PERSISTENCE_S / 3600:g} h (the retrain here is the quality "
            f"alert's); logs in {self.workdir}"
        )

    def start(
        self,
        bootstrap: str,
        topics: Topics,
        partitions: int,
        client: dict[str, Any],
        kafka_config: str | None,
        days_per_second: float,
    ) -> None:
        from driftline.commands._demo_drift import RetrainWatcher
        from driftline.engine.kafka.admin import TopicSpec, ensure_topics

        # The outcomes service's own topics, as it declares them (the input's partition
        # count), created now so the quality service finds them from its start.
        delete = {"cleanup.policy": "delete"}
        ensure_topics(
            bootstrap,
            [TopicSpec(topics.outcomes, partitions, delete),
             TopicSpec(topics.outcomes_dlq, partitions, delete), TopicSpec(topics.decisions, 1)],
        )  # fmt: skip
        services = LoopServices(
            bootstrap, topics, self.registry, self.spec_path, self.workdir, self.prefix,
            kafka_config,
        )  # fmt: skip
        services.for_s = max(1, round(FOR_DAYS / max(days_per_second, 1e-9)))
        services.real_alerting = self.real_alerting
        self.services, self.view = services, LoopView(services)
        self._watcher = RetrainWatcher(client, topics.decisions, self._on_decision)
        self._watcher.start()
        services.start()

    def _on_decision(self, decision: dict[str, Any]) -> None:
        assert self.view is not None
        line = self.view.on_decision(msgspec.json.encode(decision))
        with self._lock:
            self._lines.append(line)

    def wait_ready(self, stop: threading.Event) -> str:
        assert self.services is not None
        return self.services.wait_ready(stop)

    def describe_alerting(self) -> str:
        alerting = self.services.alerting if self.services else None
        return alerting.describe if alerting else ""

    def step(self, serving: str, injected_ms: int | None) -> tuple[list[str], str]:
        """(milestone lines, status text) now; raises nothing (a dead service is
        reported by :meth:`failure`)."""
        assert self.view is not None
        if self._live_started is None:  # the first step comes with the live stream
            self._live_started = time.monotonic()
        lines = self.view.update(serving, injected_ms)
        with self._lock:
            lines = self._lines + lines
            self._lines = []
        # Seconds of live stream: --at counts from the same start.
        at = f"[{time.monotonic() - self._live_started:4.0f} s] "
        return [at + line for line in lines], self.view.status()

    def failure(self) -> str:
        return self.services.dead() if self.services else ""

    def closed(self) -> bool:
        return self.view is not None and self.view.closed()

    def missing(self) -> str:
        return self.view.missing() if self.view else "the loop never started"

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self.services is not None:
            self.services.stop()
