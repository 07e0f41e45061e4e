"""The Faust engine around rebalances: nothing lost, nothing repeated (issue #15).

Faust can hand a partition's events to the agent out of offset order around a
rebalance: events fetched before it wait in the take buffer and come before Faust's
seek back to the committed offset brings the ones between, and a fetcher left with a
stale read offset drops events and hands out later ones (``engine.faust.cursors``).  The
processor then takes the earlier events for future-dated, late or redelivered ones, and
they get no prediction.  One test puts Faust's fetcher in the stale state on purpose (it
lost ~200 events before the fix, every run); the other is a harsher form of the engine
contract's one-join test.  Every event must end with exactly one prediction, equal to the
offline score.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from faust.types import TP
from test_engine_contract import engine_worker
from test_worker import assert_scored_once_as_offline, decode_prediction, live_events

from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import LoadedModel

pytestmark = pytest.mark.integration


def _missing(messages: list[Any], events: list[dict[str, Any]]) -> str:
    """The events without a prediction, and what was scored around them, for the report."""
    got = collections.Counter(decode_prediction(m.value()).event_id for m in messages)
    lost = [e["event_id"] for e in events if e["event_id"] not in got]
    repeated = sum(c - 1 for c in got.values() if c > 1)
    return f"{len(lost)} events without a prediction, {repeated} repeated predictions"


@pytest.mark.parametrize("engine", ["faust"])
def test_workers_joining_and_leaving_during_a_backlog_lose_and_repeat_nothing(
    engine: str,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
) -> None:
    """Three times a second worker joins while the first is busy, scores a little and
    leaves: six rebalances with batches in flight, the partitions moving each time."""
    worker_settings.model_runtime = "sklearn"  # slower batches: the backlog lasts
    worker_settings.batch_size = 50
    events = live_events(12_000, seed=21)
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
    with engine_worker(engine, worker_settings, spec) as first:
        deadline = time.monotonic() + 90
        while first.events_processed < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.events_processed >= 500, "the first worker made no progress"
        for n in range(3):
            joining = dataclasses.replace(worker_settings, worker_id=f"joining-{n}")
            with engine_worker(engine, joining, spec) as second:
                deadline = time.monotonic() + 60
                while second.events_processed < 200 and time.monotonic() < deadline:
                    time.sleep(0.01)
        messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=180)
    ids = {decode_prediction(m.value()).event_id for m in messages}
    assert ids == {e["event_id"] for e in events}, _missing(messages, events)
    assert_scored_once_as_offline(messages, events, spec, loaded_model)


def test_events_faust_hands_out_after_a_stale_read_offset_are_scored_in_order(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
    kafka_bootstrap: str,
) -> None:
    """Faust's fetcher is given the stale read offset a revocation leaves it: 200 past
    what it has queued of a partition, so it drops the events it fetches there below
    that.  Once events after those are scored, a second worker joins.  Before the fix
    the dropped events were scored only after the later ones (late, or taken for
    redeliveries): about 200 lost, every run."""
    worker_settings.model_runtime = "sklearn"
    worker_settings.batch_size = 50
    events = live_events(20_000, seed=22)
    sizes = collections.Counter(zlib.crc32(e["customer_id"].encode()) % 4 for e in events)
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
    with engine_worker("faust", worker_settings, spec) as first:
        deadline = time.monotonic() + 90
        while first.events_processed < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.events_processed >= 300, "the first worker made no progress"
        stale: concurrent.futures.Future[tuple[int, int]] = concurrent.futures.Future()
        loop, consumer = first._loop, first._app.consumer
        topic = worker_settings.input_topic

        def make_stale() -> None:
            # The partition its fetcher is least far into, with 400 events still ahead.
            read = {p: consumer._read_offset[TP(topic, p)] for p in range(4)}
            ahead = [(o, p) for p, o in read.items() if o is not None and o + 400 < sizes[p]]
            if not ahead:
                stale.set_exception(RuntimeError(f"nothing left to fetch: {read} {sizes}"))
                return
            offset, p = min(ahead)
            stale.set_result((p, offset + 200))
            keep_stale(TP(topic, p), offset + 200, time.monotonic() + 30)

        def keep_stale(tp: TP, offset: int, until: float) -> None:
            # The fetcher writes its read offset after each event it queues: keep it
            # stale until the fetcher reaches it.
            if (consumer._read_offset[tp] or 0) < offset and time.monotonic() < until:
                consumer._read_offset[tp] = offset
                loop.call_later(0.002, keep_stale, tp, offset, until)

        loop.call_soon_threadsafe(make_stale)
        partition, offset = stale.result(timeout=10)
        assert _wait_for_prediction(
            kafka_bootstrap, worker_settings.output_topic, partition, offset + 100
        )
        joining = dataclasses.replace(worker_settings, worker_id="second-worker")
        with engine_worker("faust", joining, spec):
            messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=120)
    ids = {decode_prediction(m.value()).event_id for m in messages}
    assert ids == {e["event_id"] for e in events}, _missing(messages, events)
    assert_scored_once_as_offline(messages, events, spec, loaded_model)
    assert first.holes >= 1, "Faust dropped no events: the test did not test"


def _wait_for_prediction(bootstrap: str, topic: str, partition: int, offset: int) -> bool:
    """Wait (up to 90 s) for the prediction of an input event at ``offset`` or later of
    input ``partition``."""
    from confluent_kafka import Consumer

    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"wait-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([topic])
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is None or message.error() is not None:
                continue
            prediction = decode_prediction(message.value())
            if prediction.source_partition == partition and prediction.source_offset >= offset:
                return True
        return False
    finally:
        reader.close()
