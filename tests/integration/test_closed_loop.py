"""The whole closed loop on the real broker, real processes only (issue #16 item 6).

    customer-events ─► worker (weekly ticks, exactly-once) ─► predictions
          │                                    │                │
          │                                    ▼                ▼
          ├──────────────────────────► driftline outcomes ─► driftline quality /metrics
          │                                                     │ Prometheus, production rule
          │                                                     ▼
          │                            ModelPerformanceDegraded ─► Alertmanager
          │                                                            │ POST /alerts
          └── read back ──► driftline retrain ◄── retrain-requests ◄───┘
                                   │ v0002 champion (registry) ─► the worker swaps

The stream (``tests/support/regime_history.py``): 1,500 customers over 400 days of event
time whose churn mechanism flips on day 180 (the risky plan and the warning signal swap:
concept drift, the inputs' distribution barely moves).  v0001 is trained on the first 180
days and is the champion.  Days 0-300 are produced; the loop must on its own: see the
realised ROC AUC of v0001 fall in the windows after the flip, fire the production alert,
publish exactly one retrain request, train a challenger on the last 100 days (all after the
flip), promote it, and the worker must swap to it.  Only then are days 300-400 produced (the
test's one pause: so that the rest is scored by the new champion), and the realised ROC AUC
of v0002 must recover.  Every event is scored exactly once.

Test time scale, consistent everywhere: label horizon 30 days (the spec copy's
``[label]``, ``driftline outcomes``, ``driftline quality --horizon 30d``, ``driftline
retrain --horizon-days 30``, lookback 30 days), quality windows of 7 days (``--retention
500d`` so that every window stays to be printed), ticks every 7 days from day 63 (the
weeks before have no feature history: a cold start the champion was never trained for),
the outcome join on the tick predictions (``--triggers tick``; ``--sample-every`` 7d, its
default: every tick is labelled), and an idle eviction of 31 days in the spec copy, so
that a tick scores the customers active in the last month, the rows the models are trained
on (with the shipped 91 days, customers gone for months are easy positives for any model
and hide the drop).  The rule file is the production one with ``for: 30m`` cut to 1 s
(``shortened_rules``); expression, threshold and labels are unchanged.  Prometheus scrapes
and evaluates every second, Alertmanager groups for 1 s and posts to the retrain
service's ``POST /alerts`` with the bearer token.

The figures (ROC AUC per window and version; events and event time from the change until
the alert's condition first held and until the recovery was first known, both computed
from the prediction-outcomes topic, since the test produces faster than Prometheus
evaluates) are printed, so that the CI log shows them (``-s``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from driftline.benchmarks.worker_process import WorkerProcess
from driftline.commands.train import register, train_on_events
from driftline.core.spec import DAY_MS, FeatureSpec, load_spec
from driftline.event_producer import produce
from driftline.model.registry import ModelRegistry
from driftline.simulate import DEFAULT_START_MS, frame_to_events
from support.loop_processes import QualityProcess, RetrainProcess
from support.monitoring import (
    Alertmanager,
    Prometheus,
    alertmanager_binary,
    prometheus_binary,
    shortened_rules,
)
from support.outcomes_process import OutcomesProcess
from support.regime_history import regime_history
from support.topic_reading import read_topic

pytestmark = pytest.mark.integration

ALERT = "ModelPerformanceDegraded"
FLIP_DAY, PAUSE_DAY, DAYS = 180, 300, 400
FLIP_MS = DEFAULT_START_MS + FLIP_DAY * DAY_MS
PAUSE_MS = DEFAULT_START_MS + PAUSE_DAY * DAY_MS
#: The rule's margins (monitoring/rules/driftline-quality.yml).
MARGIN, FLOOR, MIN_LABELS = 0.05, 0.6, 200
FAST = {"n_estimators": 40, "cv_folds": 3}
#: Customers silent this long leave the state (the spec copy), as they leave the training
#: rows (lookback 30 days): ticks then score the population the model was trained on.
IDLE = "31d"
#: No ticks before day 63: the first weeks have no feature history yet (a cold start).
TICK_FROM_DAY = 63


def day(ms: float) -> float:
    return (ms - DEFAULT_START_MS) / DAY_MS


def write_spec(path: Path) -> FeatureSpec:
    """The shipped spec with the test's label: churned = no purchase within 30 days."""
    shipped = Path(__file__).resolve().parents[2] / "worker/driftline/data/features.toml"
    text = shipped.read_text()
    assert 'horizon = "90d"' in text and 'lookback = "90d"' in text
    assert '# idle_eviction = "91d"' in text
    path.write_text(
        text.replace('horizon = "90d"', 'horizon = "30d"')
        .replace('lookback = "90d"', 'lookback = "30d"')
        .replace('# idle_eviction = "91d"', f'idle_eviction = "{IDLE}"')
    )
    return load_spec(path)


def wait_for(condition: Callable[[], Any], what: str, timeout: float, *procs: Any) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        for proc in procs:
            assert proc.alive, f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}"
        assert time.monotonic() < deadline, f"timed out ({timeout:.0f} s) waiting for {what}"
        time.sleep(0.5)


def realised(quality: QualityProcess) -> pd.DataFrame:
    """Per (version, window): realised and estimated ROC AUC, labels (from /metrics)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    training: dict[str, float] = {}
    for name, labels, value in quality.metric_samples():
        if name == "driftline_quality_training_roc_auc":
            training[labels["model_version"]] = value
        if "window" not in labels:
            continue
        row = rows.setdefault((labels["model_version"], labels["window"]), {})
        if name == "driftline_quality_roc_auc":
            row[labels["basis"]] = value
        elif name == "driftline_quality_labels":
            row["labels"] = value
    frame = pd.DataFrame(
        [{"version": v, "window": w, **row} for (v, w), row in rows.items()],
        columns=["version", "window", "realised", "estimated", "labels"],
    )
    frame["start_ms"] = [
        int(datetime.fromisoformat(w.replace("Z", "+00:00")).replace(tzinfo=UTC).timestamp()) * 1000
        for w in frame["window"]
    ]
    frame["day"] = frame["start_ms"].map(day).round(1)
    frame["training"] = frame["version"].map(training)
    return frame.sort_values(["version", "start_ms"]).reset_index(drop=True)


def judged(frame: pd.DataFrame) -> pd.DataFrame:
    """Windows the alert judges: a realised ROC AUC from at least 200 labels."""
    return frame[(frame["labels"] >= MIN_LABELS) & frame["realised"].notna()]


def first_known(
    outcomes: pd.DataFrame, version: str, below: float | None, above: float | None
) -> int | None:
    """The earliest event time (a ``resolved_at``) at which some window of ``version``
    had at least 200 labels and a realised ROC AUC below ``below`` (or at least
    ``above``): when the alert's condition (or the recovery) was first knowable, whatever
    the pace of the test.  Windows as the quality service cuts them (7 days from Monday)."""
    mine = outcomes[outcomes["model_version"] == version]
    best: int | None = None
    for _, window in mine.groupby("window_ms"):
        window = window.sort_values("resolved_at")
        labels, resolved = window["label"].to_numpy(), window["resolved_at"].to_numpy()
        scores = window["score"].to_numpy()
        for end in np.unique(resolved):
            n = int(np.searchsorted(resolved, end, side="right"))
            if n < MIN_LABELS or len(set(labels[:n])) < 2:
                continue
            auc = roc_auc_score(labels[:n], scores[:n])
            if (below is not None and auc < below) or (above is not None and auc >= above):
                best = int(end) if best is None else min(best, int(end))
                break
    return best


def serving(worker: WorkerProcess) -> set[str]:
    return {
        labels["model_version"]
        for name, labels, value in worker.metric_samples()
        if name == "driftline_model_info" and value == 1
    }


def test_concept_drift_is_detected_retrained_promoted_served_and_recovers(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    tmp_path: Path,
    repo_root: Path,
) -> None:
    prometheus_bin, alertmanager_bin = prometheus_binary(), alertmanager_binary()
    if prometheus_bin is None or alertmanager_bin is None:
        pytest.skip("prometheus / prometheus-alertmanager not installed")
    started = time.monotonic()
    spec_path = tmp_path / "features.toml"
    spec = write_spec(spec_path)
    stream = regime_history(days=DAYS, switch_day=FLIP_DAY, flip=True, seed=1)
    times = stream["event_time"]
    old, first, rest = stream[times < FLIP_MS], stream[times < PAUSE_MS], stream[times >= PAUSE_MS]

    registry = ModelRegistry(tmp_path / "models")
    champion = train_on_events(
        old, spec, n_cutoffs=3, horizon_days=30, lookback_days=30, progress=False, **FAST
    )
    register(champion, registry, "churn", spec)
    assert registry.champion("churn").version == "v0001"

    bs = kafka_bootstrap
    events, predictions = topic_factory(2, "events"), topic_factory(2, "predictions")
    outcomes_topic, requests = topic_factory(2, "outcomes"), topic_factory(1, "requests")
    decisions = topic_factory(1, "decisions")
    token = tmp_path / "alerts-token"
    token.write_text(f"loop-{unique_group}\n")
    logs = tmp_path / "logs"
    procs: list[Any] = []
    monitors: list[Any] = []
    try:
        worker = WorkerProcess(
            bs, events, predictions, topic_factory(1, "dlq"), unique_group, registry.root,
            ["--features", str(spec_path), "--tick", "7d",
             "--tick-from", str(DEFAULT_START_MS + TICK_FROM_DAY * DAY_MS),
             "--model-poll-interval", "0.5", "--exactly-once"],
            log_path=logs / "worker.log", name="worker",
        ).start()  # fmt: skip
        procs.append(worker)
        outcomes = OutcomesProcess(
            bs, events_topic=events, predictions_topic=predictions,
            output_topic=outcomes_topic, dead_letter_topic=topic_factory(2, "outcomes-dlq"),
            group=f"{unique_group}-outcomes",
            extra_args=["--features", str(spec_path), "--triggers", "tick"],
            log_path=logs / "outcomes.log",
        ).start()  # fmt: skip
        procs.append(outcomes)
        quality = QualityProcess(
            bs, predictions_topic=predictions, outcomes_topic=outcomes_topic,
            registry=registry.root,
            extra_args=["--window", "7d", "--horizon", "30d", "--retention", "500d",
                        "--refresh", "1s"],
            log_path=logs / "quality.log",
        ).start()  # fmt: skip
        procs.append(quality)
        retrain = RetrainProcess(
            bs, input_topic=events, requests_topic=requests, decisions_topic=decisions,
            group=f"{unique_group}-retrain", registry=registry.root,
            extra_args=["--features", str(spec_path), "--quality-alerts",
                        "--alerts-token-file", str(token), "--history-days", "100",
                        "--horizon-days", "30", "--lookback-days", "30", "--cutoffs", "3",
                        "--n-estimators", "40", "--cv-folds", "3"],
            log_path=logs / "retrain.log",
        ).start()  # fmt: skip
        procs.append(retrain)
        worker.wait_ready(90)
        quality.wait_ready(60)
        wait_for(lambda: retrain.metric_samples(), "the retrain service's /metrics", 60, retrain)
        rules = shortened_rules(
            [repo_root / "monitoring/rules/driftline-quality.yml"], tmp_path / "rules", "1s"
        )
        alertmanager = Alertmanager(
            alertmanager_bin, tmp_path / "am", f"http://127.0.0.1:{retrain.port}/alerts",
            ALERT, severity="warning", credentials_file=token,
        ).start()  # fmt: skip
        monitors.append(alertmanager)
        prometheus = Prometheus(
            prometheus_bin, tmp_path / "prom", [f"127.0.0.1:{quality.port}"], rules,
            f"127.0.0.1:{alertmanager.port}", job="driftline-quality",
        ).start()  # fmt: skip
        monitors.append(prometheus)
        assert serving(worker) == {"v0001"}

        # ---- phase 1: the old regime, the change on day 180, 120 days of the new one
        t_produce = time.monotonic()
        assert produce(bs, events, frame_to_events(first)) == len(first)

        def firing() -> list[dict[str, Any]]:
            return [
                a
                for a in prometheus.alerts()
                if a["labels"]["alertname"] == ALERT and a["state"] == "firing"
            ]

        fired = wait_for(firing, "ModelPerformanceDegraded to fire", 150, *procs)
        t_alert = time.monotonic()
        quality_clock = quality.metric("driftline_quality_watermark_timestamp_seconds") * 1000
        at_alert = realised(quality)
        fired_windows = sorted(a["labels"]["window"] for a in fired)
        assert {a["labels"]["model_version"] for a in fired} == {"v0001"}

        def decided() -> list[Any]:
            return read_topic(bs, decisions, read_committed=True, timeout=2)

        [record] = wait_for(decided, "the retrain decision", 120, *procs)
        t_decision = time.monotonic()
        decision = json.loads(record.value())
        assert decision["outcome"] == "promoted", decision["reasons"]
        assert (decision["champion_version"], decision["challenger_version"]) == ("v0001", "v0002")
        wait_for(lambda: serving(worker) == {"v0002"}, "the worker to serve v0002", 60, *procs)
        t_swap = time.monotonic()
        lineage = registry.load("churn", "v0002").metadata["lineage"]
        trained_from, trained_to = lineage["training_window_ms"]

        # ---- phase 2: the new regime, scored by the new champion
        assert produce(bs, events, frame_to_events(rest)) == len(rest)
        last_resolvable = times.max() - 30 * DAY_MS  # predictions whose horizon fits

        def recovered() -> bool:
            frame = judged(realised(quality))
            new = frame[(frame["version"] == "v0002")]
            end = new["start_ms"] + 7 * DAY_MS
            done = new[end <= last_resolvable]
            return len(done) >= 6

        wait_for(recovered, "realised ROC AUC of v0002 in six windows", 150, *procs)
        time.sleep(3)  # one more refresh: the last windows' labels
        final = realised(quality)
        retrain_samples = retrain.metric_samples()
    finally:
        for monitor in monitors:
            monitor.stop()
        for proc in procs:
            code = proc.sigterm(timeout=30)
            assert code == 0, f"{proc.name} exited {code}:\n{proc.log_tail()}"

    # ---- one request, acted on once; nothing stale published
    request_records = read_topic(bs, requests, read_committed=True, timeout=10)
    assert len(request_records) == 1, [r.value() for r in request_records]
    request = json.loads(request_records[0].value())
    assert (request["reason"], request["model_version"]) == ("quality", "v0001")
    assert request["incident_id"] == decision["incident_id"] == lineage["incident_id"]
    published = {
        labels["outcome"]: value
        for name, labels, value in retrain_samples
        if name == "driftline_retrain_quality_alerts_total"
    }
    assert published.get("published") == 1, published
    # ---- the challenger learned from the new regime only
    assert trained_from >= FLIP_MS, day(trained_from)

    # ---- every event scored exactly once, the rest by v0002
    scored = read_topic(bs, predictions, read_committed=True, timeout=30)
    by_event: dict[str, list[str]] = {}
    for message in scored:
        value = json.loads(message.value())
        if value["trigger"] == "event":
            by_event.setdefault(value["event_id"], []).append(value["model_version"])
    assert set(by_event) == set(stream["event_id"]), "events lost or invented"
    assert all(len(v) == 1 for v in by_event.values()), "an event scored twice"
    assert {by_event[e][0] for e in rest["event_id"]} == {"v0002"}
    assert {by_event[e][0] for e in old["event_id"]} == {"v0001"}

    # ---- when the drop and the recovery were first knowable, in event time
    resolved = pd.DataFrame(
        [json.loads(m.value()) for m in read_topic(bs, outcomes_topic, read_committed=True)]
    ).drop_duplicates(["customer_id", "event_id"])
    monday = 4 * DAY_MS  # 1970-01-05, a Monday: the quality service's window alignment
    resolved["window_ms"] = (resolved["prediction_time"] - monday) // (7 * DAY_MS)
    trained = final.groupby("version")["training"].max()
    threshold = {v: max(FLOOR, t - MARGIN) for v, t in trained.items()}
    detectable = first_known(resolved, "v0001", below=threshold["v0001"], above=None)
    recovered_at = first_known(resolved, "v0002", below=None, above=threshold["v0002"])
    assert detectable is not None and recovered_at is not None

    # ---- the figures
    frame = judged(final)
    v1, v2 = frame[frame["version"] == "v0001"], frame[frame["version"] == "v0002"]
    threshold = {
        v: max(FLOOR, t - MARGIN) for v, t in final.groupby("version")["training"].max().items()
    }
    # before: the window and its labels' horizon before the change; during: predictions
    # made in the new regime
    before = v1[v1["start_ms"] + 37 * DAY_MS <= FLIP_MS]
    during = v1[v1["start_ms"] >= FLIP_MS]
    after = v2[v2["start_ms"] + 7 * DAY_MS <= last_resolvable]
    flip_to_alert_events = int(((times >= FLIP_MS) & (times <= quality_clock)).sum())
    flip_to_promotion_events = int(((times >= FLIP_MS) & (times <= trained_to)).sum())
    print()
    print("closed loop: realised ROC AUC per 7-day window (days from the start; flip at 180)")
    print(final.round(3).to_string(index=False))
    print(
        f"thresholds (training AUC - {MARGIN}, floor {FLOOR}): "
        + ", ".join(f"{v} {t:.3f}" for v, t in threshold.items())
    )
    summary = {
        "before (v0001, windows whose labels end before the flip)": before["realised"],
        "during (v0001, windows from the flip on)": during["realised"],
        "after (v0002, windows with their horizon passed)": after["realised"],
    }
    for what, values in summary.items():
        print(
            f"  {what}: mean {values.mean():.3f}, min {values.min():.3f}, "
            f"max {values.max():.3f} over {len(values)} windows"
        )
    print(
        f"alert fired for windows {fired_windows} at quality event clock day "
        f"{day(quality_clock):.1f} ({day(quality_clock) - FLIP_DAY:.1f} days and "
        f"{flip_to_alert_events} events after the change); challenger trained on days "
        f"{day(trained_from):.1f}-{day(trained_to):.1f} ({flip_to_promotion_events} events "
        f"from the change to the end of its data)"
    )
    print(
        f"wall clock from producing days 0-{PAUSE_DAY}: alert {t_alert - t_produce:.1f} s, "
        f"decision {t_decision - t_produce:.1f} s, worker on v0002 "
        f"{t_swap - t_produce:.1f} s; whole test {time.monotonic() - started:.0f} s"
    )

    def events_between(lo: float, hi: float) -> int:
        return int(((times >= lo) & (times <= hi)).sum())

    print(
        f"event time: the alert's condition first held (200 labels, AUC < "
        f"{threshold['v0001']:.3f}) at day {day(detectable):.1f}, "
        f"{day(detectable) - FLIP_DAY:.1f} days and {events_between(FLIP_MS, detectable)} "
        f"events after the change; v0002 took over at day {PAUSE_DAY} (the test holds the "
        f"stream there until the swap); its recovery (200 labels, AUC >= "
        f"{threshold['v0002']:.3f}) was first known at day {day(recovered_at):.1f}: "
        f"{day(recovered_at) - FLIP_DAY:.1f} days and {events_between(FLIP_MS, recovered_at)} "
        f"events after the change"
    )
    print(f"decision: {decision['reasons']}")
    print(f"at the alert: {len(judged(at_alert))} judged windows")
    assert FLIP_MS < detectable < PAUSE_MS
    assert recovered_at > PAUSE_MS

    assert len(before) >= 10 and len(during) >= 5 and len(after) >= 6
    assert before["realised"].min() >= threshold["v0001"], "alert condition before the change"
    assert during["realised"].mean() < threshold["v0001"] - 0.02
    assert (during["realised"] < threshold["v0001"]).mean() >= 0.8
    assert (after["realised"] >= threshold["v0002"]).all(), "no recovery"
    assert after["realised"].mean() > during["realised"].mean() + 0.05
    assert all(
        datetime.fromisoformat(w.replace("Z", "+00:00")).replace(tzinfo=UTC).timestamp() * 1000
        >= FLIP_MS - 7 * DAY_MS
        for w in fired_windows
    ), f"fired before the change: {fired_windows}"
    assert not np.isnan(after["realised"]).any()
