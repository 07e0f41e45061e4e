"""Producing simulated and replayed events end to end through a broker."""

from __future__ import annotations

import time

import pytest

from driftline.core.events import decode_batch
from driftline.replay import CDNOW_MAPPING, encode_events, load_events, replay
from driftline.simulate import Population, produce

pytestmark = pytest.mark.integration


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


def test_produce_rate_limit_is_respected(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory()
    events = Population(n_customers=50, seed=1).stream_events()
    started = time.monotonic()
    sent = produce(kafka_bootstrap, topic, events, rate=400.0, limit=400)
    elapsed = time.monotonic() - started
    assert sent == 400
    assert elapsed >= 0.8  # one second's worth, minus the initial burst


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
