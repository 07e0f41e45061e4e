"""``driftline bench drift`` on streams: the product simulator's and an event file's.

Tiny runs (a few hundred customers): what they check is the report, not the monitor's
verdict (the long runs are in docs/drift-detection.md): one row per feature and the score,
the detectors summing to the monitor's budget count, the budget column computed from the
stated budget and the stream's events per day (it moves when the budget does), the rates
computed from the counts; and that serving a stream chunk by chunk gives the very verdict
of serving it at once (the state engine and the monitor carry over chunk boundaries).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftline.benchmarks.drift_streams import (
    SCORE,
    StreamReport,
    file_chunks,
    file_stream_bench,
    make_monitor,
    monitor_stream,
    simulator_chunks,
    simulator_stream_bench,
    split_history,
)
from driftline.cli import main as cli_main
from driftline.commands.train import train_on_events
from driftline.core.spec import DAY_MS, load_default_spec
from support.independent_stream import RenewingStream, write_events

START_MS = 1_735_689_600_000


def _check_rows(report: StreamReport) -> None:
    spec = load_default_spec()
    assert [r.feature for r in report.rows] == [*spec.feature_names, SCORE]
    assert sum(r.detectors for r in report.rows) == report.detectors
    budget = report.budget
    # ARL0 of the budget, derived here from what the report states: D * T * r / B.
    arl0 = (
        report.detectors
        * budget["period_days"]
        * budget["events_per_day"]
        / budget["false_triggers"]
    )
    assert report.arl0 == pytest.approx(arl0)
    for row in report.rows:
        assert row.budget_per_million == pytest.approx(row.detectors * 1e6 / arl0)
        assert row.budget_alarms == pytest.approx(row.detectors * report.events / arl0)
        assert row.per_million == pytest.approx(row.alarms * 1e6 / report.events)
        assert row.within == (row.alarms <= row.budget_alarms)
        assert sum(row.by_detector.values()) == row.alarms
    assert report.events > 0 and report.days > 0 and report.customers > 0
    table = report.to_table()
    for row in report.rows:
        assert f"| {row.feature} | {row.detectors} |" in table
    assert "retrain requests:" in table


def test_the_simulator_stream_bench_reports_every_feature_against_the_budget() -> None:
    report = simulator_stream_bench(customers=150, days=130, train_days=100, seed=3)
    _check_rows(report)
    # the served stream is the part after the reference period (~30 days of 130)
    assert 20 < report.days <= 31
    assert report.budget["period_days"] == 30.0


def _independent_model(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    stream = RenewingStream(seed=4, customers=150, days=130)
    path = tmp_path / "independent.csv"
    n = write_events(stream.chunks(), str(path))
    events = pd.read_csv(path)
    assert len(events) == n > 10_000
    return path, events


def test_an_events_file_bench_and_the_budget_moves_with_the_stated_budget(
    tmp_path: Path,
) -> None:
    path, events = _independent_model(tmp_path)
    report = file_stream_bench(str(path), train_days=100)
    _check_rows(report)
    # chunks in order, nothing lost: the generator's chunks hold every event once
    times = events["event_time"].to_numpy()
    assert (np.diff(times) >= 0).all()
    assert events["event_id"].is_unique
    # served: the events after the reference period, i.e. after the training cut
    cut = int(times.min()) + 100 * DAY_MS
    assert report.events <= int((times >= cut - DAY_MS).sum())
    assert report.events >= int((times > cut).sum()) - 5  # late ones dropped, if any

    # The same stream under half the period: the per-event budget doubles.
    ordered = events.sort_values("event_time", kind="stable", ignore_index=True)
    history, again = split_history(file_chunks(ordered), cut)
    result = train_on_events(
        history, load_default_spec(), horizon_days=60, n_estimators=20, progress=False
    )
    del history
    chunks = list(again)
    profile = result.reference_profile
    at_30 = monitor_stream(chunks, result.pipeline, profile, stream="t", budget_days=30)
    at_15 = monitor_stream(chunks, result.pipeline, profile, stream="t", budget_days=15)
    for a, b in zip(at_30.rows, at_15.rows, strict=True):
        assert b.budget_per_million == pytest.approx(2 * a.budget_per_million)
    assert make_monitor(profile, 15).arl0 == pytest.approx(at_15.arl0)

    # Chunk by chunk is the same as all at once: the state and monitor carry over.
    whole = monitor_stream(
        [pd.concat(chunks, ignore_index=True)], result.pipeline, profile, stream="t"
    )
    assert whole.events == at_30.events
    assert [(r.feature, r.alarms, r.drift_episodes) for r in whole.rows] == [
        (r.feature, r.alarms, r.drift_episodes) for r in at_30.rows
    ]
    assert whole.retrain_requests == at_30.retrain_requests


def test_the_command_line_runs_a_stream_and_says_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["bench", "drift", "--stream", "simulator", "--customers", "120",
                     "--days", "125", "--train-days", "95", "--json"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    report = json.loads(out)
    assert len(report["rows"]) == len(load_default_spec().feature_names) + 1
    missing = tmp_path / "nope.parquet"
    assert cli_main(["bench", "drift", "--events", str(missing)]) == 2
    assert "nope.parquet" in capsys.readouterr().err
    # a file name where a count is expected (throughput) is a usage error, not a crash
    assert cli_main(["bench", "throughput", "--events", "some.parquet"]) == 2
    assert "a number of events" in capsys.readouterr().err


def test_simulator_chunks_start_with_the_accounts_then_days_in_order() -> None:
    chunks = list(simulator_chunks(50, 1, 3, START_MS))
    assert (chunks[0]["event_time"] < START_MS).all()  # the pre-log accounts
    times = np.concatenate([c["event_time"].to_numpy() for c in chunks[1:]])
    assert (np.diff(times) >= 0).all() and times.min() >= START_MS
    assert times.max() < START_MS + 3 * DAY_MS
