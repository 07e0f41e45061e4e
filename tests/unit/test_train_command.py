"""``driftline train``: event logs become spec-pinned registered models; bad input exits 2.

The event log is generated here, small and with a known mechanism: every customer logs in
regularly; churners stop purchasing from an onset time on (and log in less).  A customer
whose purchases stopped before a cutoff shows it in the features of their last event before
it (no purchase in 30 days, a long time since the last one), so a model must beat the
majority baseline clearly.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftline import cli
from driftline.commands.train import (
    UsageError,
    auto_cutoffs,
    parse_cutoff,
    register,
    train_on_events,
)
from driftline.core.spec import DAY_MS, load_default_spec
from driftline.model.registry import ModelRegistry

START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
HISTORY_DAYS = 300
FAST = ["--n-estimators", "50", "--cv-folds", "3", "--no-progress"]


def _history(n_customers: int = 400, seed: int = 3) -> pd.DataFrame:
    """Logins and purchases; about half the customers stop purchasing at a random onset."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for c in range(n_customers):
        customer = f"c{c:04d}"
        churner = rng.random() < 0.5
        onset = rng.uniform(60, HISTORY_DAYS) if churner else np.inf
        buy_every = rng.uniform(4, 12)
        plan = str(rng.choice(["basic", "pro"]))
        first = True
        for kind, every in (("login", 3.0), ("purchase", buy_every)):
            day = rng.exponential(every)
            while day < HISTORY_DAYS:
                active = day < onset
                if kind == "login" or active:
                    row: dict[str, object] = {
                        "customer_id": customer,
                        "event_time": START_MS + int(day * DAY_MS),
                        "event_type": kind,
                    }
                    if kind == "purchase":
                        row["amount"] = round(float(rng.gamma(2.0, 20.0)), 2)
                        row["quantity"] = float(rng.integers(1, 4))
                    if first:  # the profile arrives with the customer's first event
                        row.update(age=float(rng.integers(18, 80)), plan_type=plan)
                        first = False
                    rows.append(row)
                day += rng.exponential(every if active else every * 2)
    frame = pd.DataFrame(rows).sort_values("event_time", kind="stable").reset_index(drop=True)
    frame.insert(0, "event_id", [f"e{i}" for i in range(len(frame))])
    return frame


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return _history()


@pytest.fixture(scope="module")
def events_csv(history: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The history as a CSV with ISO datetimes, as an export from a warehouse would be."""
    path = tmp_path_factory.mktemp("events") / "events.csv"
    stamps = pd.to_datetime(history["event_time"], unit="ms", utc=True)
    history.assign(event_time=stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(path, index=False)
    return path


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """``driftline.cli.main`` with only the train subcommand registered.

    The real entry point (parser, env defaults, logging), but independent of the other
    subcommands' modules and imports, which are not under test here.
    """
    monkeypatch.setattr(cli, "COMMANDS", ("train",))
    return cli.main


def test_events_csv_trains_and_registers_a_spec_model(
    main: Callable[[list[str]], int],
    events_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = tmp_path / "models"
    argv = ["train", "--events", str(events_csv), "--registry", str(registry), "--cutoffs", "2"]
    assert main([*argv, *FAST, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    spec = load_default_spec()

    loaded = ModelRegistry(registry).load(
        "churn", expected_features=spec.feature_names, expected_spec_digest=spec.digest
    )
    assert loaded.version == out["model"]["version"] == "v0001"
    assert loaded.sha256 == out["model"]["sha256"]
    assert loaded.metadata["feature_names"] == spec.feature_names
    assert loaded.metadata["spec_digest"] == spec.digest
    assert loaded.metadata["feature_types"] == spec.feature_types

    dataset = out["dataset"]
    assert len(dataset["cutoffs"]) == 2
    assert dataset["n_rows"] == out["n_rows"] > dataset["n_customers"] > 300
    assert 0.2 < dataset["churn_rate"] < 0.8
    assert loaded.metadata["extra"]["dataset"]["cutoffs"] == dataset["cutoffs"]
    # the latest automatic cutoff leaves exactly room for the 90-day horizon
    last_event = pd.Timestamp(START_MS + HISTORY_DAYS * DAY_MS, unit="ms", tz="UTC")
    assert (last_event - pd.Timestamp(dataset["cutoffs"][-1], tz="UTC")).days in (90, 91)

    test, baseline = out["test"], out["baseline"]
    # Customers never trained on (80 rows: noisy) and the out-of-time cutoff (400 rows).
    assert test["roc_auc"] > 0.7 > 0.5 == baseline["roc_auc"]
    assert test["pr_auc"] > baseline["pr_auc"] + 0.2
    assert out["out_of_time"]["roc_auc"] > 0.85


def test_report_names_the_data_the_metrics_and_the_version(
    main: Callable[[list[str]], int],
    events_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = str(tmp_path / "models")
    argv = ["train", "--events", str(events_csv), "--registry", registry, "--model-name", "m"]
    assert main([*argv, *FAST]) == 0
    assert main([*argv, *FAST, "--balanced"]) == 0
    text = capsys.readouterr().out
    assert "1 cutoff(s)" in text and "churn rate" in text
    assert "ROC AUC" in text and "PR AUC" in text and "baseline" in text
    assert "Top features" in text
    assert "Registered m v0001" in text and "Registered m v0002" in text
    assert ModelRegistry(registry).versions("m") == ["v0001", "v0002"]


def test_library_trains_on_a_frame_with_an_auto_threshold(
    history: pd.DataFrame, tmp_path: Path
) -> None:
    spec = load_default_spec()
    cutoff = parse_cutoff("2025-07-15")
    result = train_on_events(
        history,
        spec,
        cutoffs_ms=[cutoff],
        n_estimators=50,
        cv_folds=3,
        progress=False,
        threshold="auto",
    )
    assert result.feature_names == spec.feature_names
    assert result.dataset["cutoffs"] == ["2025-07-15"]
    assert result.metrics["threshold"]["method"].startswith("max F1 on the calibrated out-of-fold")
    assert 0.0 < result.threshold < 1.0
    assert result.metrics["test"]["threshold"] == result.threshold

    version = register(result, tmp_path, "churn", spec)
    loaded = ModelRegistry(tmp_path).load("churn", expected_spec_digest=spec.digest)
    assert (loaded.version, loaded.threshold) == (version.version, result.threshold)
    with pytest.raises(ValueError, match="not the spec's"):
        register(result, tmp_path, "churn", spec.__class__(features=spec.features[::-1]))


def test_auto_cutoffs_step_back_one_horizon_and_stay_inside_the_history() -> None:
    times = np.array([0, 400 * DAY_MS + 5_000], dtype=np.int64) + START_MS
    horizon = 90 * DAY_MS
    assert auto_cutoffs(times, horizon) == [START_MS + 310 * DAY_MS]
    assert auto_cutoffs(times, horizon, 3) == [START_MS + d * DAY_MS for d in (130, 220, 310)]
    assert len(auto_cutoffs(times, horizon, 10)) == 4  # day 40; day -50 precedes the history
    with pytest.raises(UsageError, match="shorter than"):
        auto_cutoffs(times, 500 * DAY_MS)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", "no such file"),
        ("missing_columns", "missing column(s) ['event_type']"),
        ("one_class", "single value"),
        ("cutoff_past_end", "runs past the end of the history"),
        ("no_label_column", "no label column 'Churn'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(
    main: Callable[[list[str]], int],
    events_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    message: str,
) -> None:
    args = {
        "missing_file": ["--events", str(tmp_path / "absent.csv")],
        "missing_columns": [
            "--events",
            str(_write(tmp_path / "e.csv", "customer_id,event_time\nc1,2025-01-01\n")),
        ],
        "one_class": [
            "--table",
            str(_write(tmp_path / "t.csv", "customer_id,x,Churn\na,1,No\nb,2,No\n")),
        ],
        "cutoff_past_end": ["--events", str(events_csv), "--cutoff", "2025-10-01"],
        "no_label_column": [
            "--table",
            str(_write(tmp_path / "nolabel.csv", "customer_id,x\na,1\n")),
        ],
    }[case]
    registry = tmp_path / "models"
    assert main(["train", *args, "--registry", str(registry), *FAST]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("driftline train: error:")
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert not registry.exists()


def test_telco_table_through_the_cli(
    main: Callable[[list[str]], int],
    require_shared: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    telco = require_shared("data", "telco", "telco_customer_churn.csv")
    argv = ["train", "--table", str(telco), "--label-column", "Churn", "--positive-label", "Yes"]
    registry = tmp_path / "models"
    assert main([*argv, "--registry", str(registry), *FAST]) == 0
    text = capsys.readouterr().out
    assert "IBM describes the Telco company" in text and "fictional" in text
    assert "7043 customers" in text and "churn rate 26.5%" in text
    assert "not servable by the worker" in text

    loaded = ModelRegistry(registry).load("churn")
    assert loaded.metadata["spec_digest"] is None
    assert "customerID" not in loaded.feature_names
    metrics = loaded.metadata["metrics"]
    print(  # the numbers for the record (pytest -s)
        f"\nTelco (IBM sample, fictional company): ROC AUC {metrics['test']['roc_auc']:.3f}, "
        f"PR AUC {metrics['test']['pr_auc']:.3f} vs baseline {metrics['baseline']['pr_auc']:.3f}"
    )
    assert metrics["test"]["roc_auc"] > 0.78
    assert metrics["test"]["pr_auc"] > metrics["baseline"]["pr_auc"] + 0.2


def test_the_reference_profile_describes_what_the_worker_scores_after_the_cutoff() -> None:
    """Per-event features after the last cutoff, not the per-customer training rows."""
    from driftline.commands.train import train_on_events
    from driftline.core.offline import history_features
    from driftline.core.spec import load_default_spec
    from driftline.simulate import Population

    spec = load_default_spec()
    history = Population(n_customers=300, seed=4).generate_history(days=200)
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=10, cv_folds=3, progress=False
    )
    profile = result.reference_profile
    start, end = profile["window_ms"]
    features, late = history_features(history, spec)
    times = history.sort_values("event_time", kind="stable")["event_time"].to_numpy()
    served = features[(times > start) & (times <= end) & ~late]
    assert profile["n_rows"] == len(served)
    assert profile["events_per_day"] == pytest.approx(len(served) / 30)
    assert profile["numeric"]["purchases_30d"]["mean"] == pytest.approx(
        served["purchases_30d"].mean()
    )


def test_train_reads_a_raw_log_with_replays_custom_mapping_flags(
    main: Callable[[list[str]], int],
    history: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A purchase log with its own column names, mapped as ``replay`` maps it."""
    purchases = history[history["event_type"] == "purchase"]
    raw = tmp_path / "orders.csv"
    pd.DataFrame(
        {
            "cust": purchases["customer_id"],
            "ts": pd.to_datetime(purchases["event_time"], unit="ms").dt.strftime("%d/%m/%Y %H:%M"),
            "value": purchases["amount"],
        }
    ).to_csv(raw, index=False)
    mapping = ["--column", "customer_id=cust", "--column", "event_time=ts"]
    mapping += ["--column", "amount=value", "--constant", "event_type=purchase"]
    mapping += ["--time-format", "%d/%m/%Y %H:%M"]
    registry = tmp_path / "models"
    argv = ["train", "--events", str(raw), *mapping, "--registry", str(registry), "--cutoffs", "2"]
    assert main([*argv, *FAST, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"]["mapping"] == "custom"
    assert out["dataset"]["n_events"] == len(purchases)
    # Purchases only: the login feature is constant and left out, and said so.
    assert "logins_7d" in {d["feature"] for d in out["dropped_features"]}

    # A contradiction is one line on stderr, as in replay.
    bad = ["train", "--events", str(raw), "--mapping", "cdnow", "--column", "customer_id=cust"]
    assert main([*bad, "--registry", str(registry), *FAST]) == 2
    assert "--column/--constant make a custom mapping" in capsys.readouterr().err


def test_train_and_replay_share_one_definition_of_the_mapping_flags() -> None:
    from driftline.commands import replay, train

    def mapping_flags(add: Callable[[argparse.ArgumentParser], None]) -> dict[str, object]:
        parser = argparse.ArgumentParser()
        add(parser)
        return {
            option: (action.choices, action.default, type(action).__name__)
            for action in parser._actions
            for option in action.option_strings
            if option in ("--mapping", "--column", "--constant", "--time-format")
        }

    flags = mapping_flags(train.add_arguments)
    assert flags == mapping_flags(replay.add_arguments)
    assert set(flags) == {"--mapping", "--column", "--constant", "--time-format"}
