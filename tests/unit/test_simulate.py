"""The simulator: reproducible by seed, valid events, and a churn signal a model can find."""

from __future__ import annotations

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.core.events import decode_batch
from driftline.simulate import (
    DAY_MS,
    EVENT_FIELDS,
    Population,
    frame_to_events,
    write_history,
)


@pytest.fixture(scope="module")
def history() -> tuple[Population, pd.DataFrame]:
    population = Population(n_customers=600, seed=11, churn_rate=0.35, horizon_days=200)
    return population, population.generate_history(days=120)


def test_same_seed_same_events_other_seed_other_events() -> None:
    def run(seed: int) -> tuple[pd.DataFrame, list[dict[str, object]]]:
        population = Population(n_customers=150, seed=seed)
        frame = population.generate_history(days=20)
        live = list(population.stream_events(max_events=300))
        return frame, live

    first, first_live = run(5)
    again, again_live = run(5)
    other, _ = run(6)
    pd.testing.assert_frame_equal(first, again)
    assert first_live == again_live
    assert not first[["customer_id", "event_time"]].equals(other[["customer_id", "event_time"]])


def test_history_shape_and_order(history: tuple[Population, pd.DataFrame]) -> None:
    population, frame = history
    assert tuple(frame.columns) == EVENT_FIELDS
    assert frame["event_time"].dtype == np.int64
    assert frame["event_time"].is_monotonic_increasing
    assert frame["event_id"].is_unique
    assert frame["event_time"].min() >= population.start_ms
    assert frame["event_time"].max() < population.start_ms + 120 * DAY_MS
    assert frame["customer_id"].str.fullmatch(r"c\d{6}").all()
    # Every active customer's first event carries the profile.
    first = frame.groupby("customer_id", sort=False).head(1)
    assert first["plan_type"].notna().all()
    assert first[["age", "income", "tenure_months"]].notna().all().all()


def test_history_events_satisfy_the_contract(history: tuple[Population, pd.DataFrame]) -> None:
    _, frame = history
    values = [msgspec.json.encode(event) for event in frame_to_events(frame)]
    keys = [cid.encode() for cid in frame["customer_id"]]
    batch, rejections = decode_batch(values, keys)
    assert rejections == []
    assert len(batch) == len(frame)
    np.testing.assert_array_equal(batch.event_time_ms, frame["event_time"].to_numpy())


def test_stream_continues_after_history_in_time_order() -> None:
    population = Population(n_customers=200, seed=2)
    frame = population.generate_history(days=10)
    live = list(population.stream_events(max_events=2_000))
    times = [event["event_time"] for event in live]
    assert len(live) == 2_000
    assert times == sorted(times)
    assert times[0] >= population.start_ms + 10 * DAY_MS > frame["event_time"].max()
    assert not {e["event_id"] for e in live} & set(frame["event_id"])
    # profile_first: a worker starting on the live stream still learns profiles.
    first_seen: dict[str, dict[str, object]] = {}
    for event in live:
        first_seen.setdefault(str(event["customer_id"]), event)
    assert all("plan_type" in event for event in first_seen.values())


def test_churners_stop_purchasing(history: tuple[Population, pd.DataFrame]) -> None:
    population, frame = history
    truth = population.customers.set_index("customer_id")
    onset_day = (truth["churn_onset_ms"] - population.start_ms) / DAY_MS
    purchases = frame[frame["event_type"] == "purchase"]
    day = (purchases["event_time"] - population.start_ms) // DAY_MS

    def per_customer_rate(mask: pd.Series, days: int) -> pd.Series:
        counts = purchases[mask.to_numpy()].groupby("customer_id").size()
        return counts.reindex(truth.index, fill_value=0) / days

    early = per_customer_rate(day < 30, 30)
    late = per_customer_rate(day >= 90, 30)
    # Churners whose onset is well inside the history vs customers who never churn.
    lapsed = truth["churner"] & (onset_day < 75).fillna(False)
    steady = ~truth["churner"]
    assert lapsed.sum() > 20 and steady.sum() > 200
    assert late[lapsed].mean() < 0.1 * early[lapsed].mean()
    assert late[steady].mean() == pytest.approx(early[steady].mean(), rel=0.25)
    # And they show trouble first: more support tickets than steady customers.
    tickets = frame[frame["event_type"] == "support_ticket"].groupby("customer_id").size()
    tickets = tickets.reindex(truth.index, fill_value=0)
    assert tickets[lapsed].mean() > 2 * tickets[steady].mean()


def test_churn_share_matches_target() -> None:
    population = Population(n_customers=5_000, seed=3, churn_rate=0.2)
    assert population.customers["churner"].mean() == pytest.approx(0.2, abs=0.03)
    assert population.propensity.mean() == pytest.approx(0.2, abs=1e-3)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_history_round_trip(tmp_path, suffix: str) -> None:
    frame = Population(n_customers=50, seed=1).generate_history(days=5)
    path = write_history(frame, tmp_path / f"history{suffix}")
    loaded = (
        pd.read_parquet(path)
        if suffix == ".parquet"
        else pd.read_csv(path, dtype={"customer_id": str, "event_id": str})
    )
    assert len(loaded) == len(frame)
    np.testing.assert_array_equal(loaded["event_time"].to_numpy(), frame["event_time"].to_numpy())
    assert loaded["customer_id"].tolist() == frame["customer_id"].tolist()


def test_drift_changes_behaviour_not_customers() -> None:
    population = Population(n_customers=400, seed=9)
    before = population.generate_history(days=20)
    churners = population.customers["churner"].copy()
    population.drift(order_value=(50.0, 90.0, 160.0))
    after = population.generate_history(days=20)
    spend = {
        name: frame.loc[frame["event_type"] == "purchase", "amount"].mean()
        for name, frame in (("before", before), ("after", after))
    }
    assert spend["after"] > 1.6 * spend["before"]
    pd.testing.assert_series_equal(population.customers["churner"], churners)
    with pytest.raises(TypeError):
        population.drift(no_such_knob=1)
