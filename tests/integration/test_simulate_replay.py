"""Simulated and replayed events: loading and encoding, then end to end through a broker.

The loading tests need no broker; the producing ones are marked ``integration``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from driftline.core.events import decode_batch
from driftline.event_producer import produce
from driftline.replay import (
    CDNOW_MAPPING,
    ColumnMapping,
    encode_events,
    load_events,
    replay,
)
from driftline.simulate import Population, write_history

DAY_MS = 86_400_000


@pytest.mark.integration
def test_simulated_events_produced_are_consumed_exactly(
    kafka_bootstrap: str, topic_factory, consume_all
) -> None:
    topic = topic_factory(partitions=3)
    population = Population(n_customers=300, seed=7)
    population.generate_history(days=30)
    sent = produce(kafka_bootstrap, topic, population.stream_events(), limit=5_000)
    assert sent == 5_000

    messages = consume_all(topic, expected=sent)
    assert len(messages) == sent
    batch, rejections = decode_batch(
        [m.value() for m in messages], keys=[m.key() for m in messages]
    )
    assert rejections == []
    assert len(set(batch.event_id)) == sent
    # Keyed by customer: each customer on exactly one partition, in event-time order.
    partitions: dict[str, set[int]] = {}
    last_time: dict[str, int] = {}
    for message, customer, when in zip(
        messages, batch.customer_id, batch.event_time_ms.tolist(), strict=True
    ):
        partitions.setdefault(customer, set()).add(message.partition())
        assert when >= last_time.get(customer, when)
        last_time[customer] = when
    assert all(len(p) == 1 for p in partitions.values())


@pytest.mark.integration
def test_produce_rate_limit_is_respected(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory()
    events = Population(n_customers=50, seed=1).stream_events()
    started = time.monotonic()
    sent = produce(kafka_bootstrap, topic, events, rate=400.0, limit=400)
    elapsed = time.monotonic() - started
    assert sent == 400
    assert elapsed >= 0.8  # one second's worth, minus the initial burst


@pytest.mark.integration
def test_replay_cdnow_head(
    kafka_bootstrap: str, topic_factory, consume_all, require_shared
) -> None:
    path = require_shared("data", "cdnow", "cdnow_master.csv")
    frame = load_events(path, CDNOW_MAPPING, limit=2_000)
    assert len(frame) == 2_000
    assert frame["customer_id"].iloc[0] == "00001"  # zero padding kept
    assert frame["event_time"].is_monotonic_increasing
    topic = topic_factory(partitions=2)

    sent = replay(kafka_bootstrap, topic, frame)
    assert sent == 2_000
    messages = consume_all(topic, expected=sent)
    assert len(messages) == 2_000
    batch, rejections = decode_batch(
        [m.value() for m in messages], keys=[m.key() for m in messages]
    )
    assert rejections == []
    assert len(batch) == 2_000
    assert set(batch.event_id) == set(frame["event_id"])
    assert set(batch.customer_id) == set(frame["customer_id"])
    assert batch.amount.sum() == pytest.approx(frame["amount"].sum())


@pytest.mark.integration
def test_replay_with_speedup_paces_by_event_time(
    kafka_bootstrap: str, topic_factory, require_shared
) -> None:
    path = require_shared("data", "cdnow", "cdnow_master.csv")
    frame = load_events(path, CDNOW_MAPPING, limit=3_000)
    first_days = frame[frame["event_time"] < frame["event_time"].iloc[0] + 3 * 86_400_000]
    topic = topic_factory()
    started = time.monotonic()
    # Three days of purchases at one day per half second: about one second of wall time.
    sent = replay(kafka_bootstrap, topic, first_days, speedup=2 * 86_400)
    elapsed = time.monotonic() - started
    assert sent == len(first_days)
    assert 0.9 <= elapsed < 10
    assert len(encode_events(first_days)) == sent


# ------------------------------------------------------------------ loading (no broker)


def test_cdnow_loads_whole_and_valid(require_shared) -> None:
    frame = load_events(require_shared("data", "cdnow", "cdnow_master.csv"), CDNOW_MAPPING)
    assert len(frame) == 69_659
    assert frame["customer_id"].nunique() == 23_570
    assert frame["customer_id"].str.fullmatch(r"\d{5}").all()  # zero padding kept
    assert frame["amount"].sum() == pytest.approx(2_500_315.63, abs=1.0)
    # Shifted by 28 calendar years into the contract's 2000..2100 range: same dates.
    first, last = pd.to_datetime(frame["event_time"].iloc[[0, -1]], unit="ms")
    assert (str(first.date()), str(last.date())) == ("2025-01-01", "2026-06-30")
    assert (frame["event_time"] % DAY_MS == 0).all()  # dates are midnight UTC
    batch, rejections = decode_batch(
        encode_events(frame), keys=[c.encode() for c in frame["customer_id"]]
    )
    assert rejections == [] and len(batch) == len(frame)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sort_is_stable_and_ids_follow_file_rows(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "log.csv",
        "cust,day,value\n007,2024-03-02,5\n001,2024-03-01,1\n002,2024-03-02,2\n003,2024-03-01,3\n",
    )
    mapping = ColumnMapping(
        columns={"customer_id": "cust", "event_time": "day", "amount": "value"},
        constants={"event_type": "purchase"},
    )
    frame = load_events(path, mapping)
    assert frame["customer_id"].tolist() == ["001", "003", "007", "002"]
    assert frame["event_id"].tolist() == ["log-1", "log-3", "log-0", "log-2"]
    assert frame["event_time"].iloc[0] == pd.Timestamp("2024-03-01", tz="UTC").value // 10**6


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        ("2024-03-01", "auto", "2024-03-01T00:00:00Z"),
        ("2024-03-01T12:30:00", "auto", "2024-03-01T12:30:00Z"),  # naive is UTC
        ("2024-03-01T12:30:00+02:00", "auto", "2024-03-01T10:30:00Z"),
        ("1709296200", "auto", "2024-03-01T12:30:00Z"),  # epoch seconds, guessed
        ("1709296200000", "auto", "2024-03-01T12:30:00Z"),  # epoch millis, guessed
        ("1709296200", "s", "2024-03-01T12:30:00Z"),
    ],
)
def test_time_formats(tmp_path: Path, text: str, unit: str, expected: str) -> None:
    path = _write(tmp_path, "t.csv", f"id,when,kind\nx1,{text},login\n")
    mapping = ColumnMapping(
        columns={"customer_id": "id", "event_time": "when", "event_type": "kind"},
        time_unit=unit,
    )
    frame = load_events(path, mapping)
    assert frame["event_time"].iloc[0] == pd.Timestamp(expected).value // 10**6
    assert frame["event_type"].iloc[0] == "login"


def test_bad_time_names_the_row(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "id,when\na,2024-01-01\nb,not-a-date\n")
    mapping = ColumnMapping(
        columns={"customer_id": "id", "event_time": "when"}, constants={"event_type": "login"}
    )
    with pytest.raises(ValueError, match=r"not-a-date.*row 1"):
        load_events(path, mapping)


def test_mapping_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown event field"):
        ColumnMapping(columns={"customer_id": "a", "event_time": "b", "colour": "c"})
    with pytest.raises(ValueError, match="customer_id"):
        ColumnMapping(columns={"event_time": "b"}, constants={"event_type": "login"})
    with pytest.raises(ValueError, match="event_type"):
        ColumnMapping(columns={"customer_id": "a", "event_time": "b"})
    with pytest.raises(ValueError, match="is not one of"):
        ColumnMapping(
            columns={"customer_id": "a", "event_time": "b"}, constants={"event_type": "sale"}
        )
    parsed = ColumnMapping.from_strings(
        ["customer_id=customer_id", "event_time=date", "amount=dollar_value"],
        ["event_type=purchase", "quantity=1"],
    )
    assert parsed.columns["amount"] == "dollar_value"
    assert parsed.constants == {"event_type": "purchase", "quantity": 1.0}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_simulated_history_file_replays_as_itself(tmp_path: Path, suffix: str) -> None:
    history = Population(n_customers=40, seed=4).generate_history(days=6)
    path = write_history(history, tmp_path / f"history{suffix}")
    loaded = load_events(path)  # no mapping: the file is already in the event format
    assert loaded["event_id"].tolist() == history["event_id"].tolist()
    assert loaded["event_time"].tolist() == history["event_time"].tolist()
    assert encode_events(loaded) == encode_events(history)
