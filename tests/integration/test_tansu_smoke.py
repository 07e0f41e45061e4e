"""The pip-only path stays honest: the worker end to end on the Tansu broker.

The suite runs on Apache Kafka; ``make demo`` runs on Tansu, so one end-to-end test runs
there on every run (the demo's own tests, ``test_demo_smoke.py``, start Tansu too), and
one test pins down the known gap that keeps the exactly-once checks on Kafka.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import pytest
from test_worker import assert_scored_once_as_offline, live_events

from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import LoadedModel
from support.topic_reading import broker_filters_aborted_transactions, read_topic

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_every_event_is_scored_once_as_offline_on_tansu(
    tansu_bootstrap: str,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    worker_in_thread,
    exactly_once: bool,
) -> None:
    suffix = uuid.uuid4().hex[:10]
    settings = dataclasses.replace(
        worker_settings,
        bootstrap_servers=tansu_bootstrap,
        input_topic=f"events-{suffix}",
        output_topic=f"predictions-{suffix}",
        dead_letter_topic=f"dlq-{suffix}",
        group_id=f"g-{suffix}",
        exactly_once=exactly_once,
    )
    ensure_topics(
        tansu_bootstrap,
        [
            TopicSpec(settings.input_topic, 4),
            TopicSpec(settings.output_topic, 4),
            TopicSpec(settings.dead_letter_topic, 1),
        ],
    )
    events = live_events(2_000)
    with worker_in_thread(settings, spec):
        produce(tansu_bootstrap, settings.input_topic, events)
        messages = read_topic(
            tansu_bootstrap, settings.output_topic, exactly_once, expected=len(events), timeout=90
        )
    assert_scored_once_as_offline(messages, events, spec, loaded_model)


def test_tansu_still_shows_aborted_transactions_to_read_committed_readers(
    tansu_bootstrap: str,
) -> None:
    """Why strict exactly-once is checked on Kafka.  If this starts failing, Tansu has
    fixed it: the exactly-once checks can then be strict on Tansu too."""
    assert not broker_filters_aborted_transactions(tansu_bootstrap)


def _first_record_within(bootstrap: str, topic: str, offset: int, wait_ms: int, limit_s: float):
    """Seconds until a consumer at ``offset`` with ``fetch.wait.max.ms=wait_ms`` gets a
    record (None: none within ``limit_s``)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": wait_ms,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, offset)])
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            message = consumer.poll(0.05)
            if message is not None and message.error() is None:
                return time.monotonic() - started
        return None
    finally:
        consumer.close()


def _one_record_batches(bootstrap: str, topic: str, count: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1})
    for i in range(count):
        producer.produce(topic, value=b"x" * 200)
        if i % 200 == 199:
            producer.flush(30)  # one record per batch: nothing to batch with
    assert producer.flush(30) == 0


def test_tansu_answers_short_fetches_empty_once_a_partition_holds_many_batches(
    tansu_bootstrap: str,
) -> None:
    """Why ``make demo`` on Tansu stalled (issue #14), and why the demo's live producer
    batches for longer on Tansu (``driftline.commands._demo_stall``).  Tansu 0.6.0 reads
    a fetch in time proportional to the record batches the partition holds, and answers
    a fetch whose ``fetch.wait.max.ms`` runs out first with no records: a consumer whose
    wait is shorter than that reads nothing, ever, though the records are there (a
    longer wait reads them).  If this starts failing, Tansu has fixed it."""
    topic = f"batches-{uuid.uuid4().hex[:10]}"
    ensure_topics(tansu_bootstrap, [TopicSpec(topic, 1)])
    _one_record_batches(tansu_bootstrap, topic, 200)
    assert _first_record_within(tansu_bootstrap, topic, 199, 1, 5.0) is not None  # few: fine
    _one_record_batches(tansu_bootstrap, topic, 8_000)
    last = 8_199
    assert _first_record_within(tansu_bootstrap, topic, last, 1, 5.0) is None
    assert _first_record_within(tansu_bootstrap, topic, last, 2_000, 10.0) is not None


def test_the_demo_live_producer_sends_few_batches_on_tansu(tansu_bootstrap: str) -> None:
    """The workaround: at the demo's default 2,000 events/s over 4 partitions, its live
    producer's Tansu settings send under 20 batches per second per partition (the
    default 5 ms linger sent ~120, which stalled the demo's worker after ~4 minutes)."""
    import json
    import threading

    from driftline.commands._demo_stall import live_producer_config
    from driftline.event_producer import produce_records

    topic = f"live-{uuid.uuid4().hex[:10]}"
    ensure_topics(tansu_bootstrap, [TopicSpec(topic, 4)])
    batches = 0

    def on_stats(document: str) -> None:
        nonlocal batches
        for stats in json.loads(document).get("topics", {}).values():
            batches += stats.get("batchcnt", {}).get("cnt", 0)

    def records():
        n = 0
        while True:
            n += 1
            yield str(n % 2_000).encode(), b"x" * 250, None

    stop = threading.Event()
    timer = threading.Timer(6.0, stop.set)
    timer.start()
    sent = produce_records(
        tansu_bootstrap,
        topic,
        records(),
        rate=2_000,
        stop=stop,
        producer_config={
            **live_producer_config("tansu"),
            "statistics.interval.ms": 500,
            "stats_cb": on_stats,
        },
    )
    timer.cancel()
    assert sent > 8_000
    assert 0 < batches / 6.0 / 4 < 20, (batches, sent)


def _demo_worker_settings(bootstrap: str, registry: str, suffix: str) -> WorkerSettings:
    """The worker's settings from the command line ``driftline demo`` starts it with on
    the Tansu it starts itself (drift off: not what this is about)."""
    from driftline.cli import build_parser
    from driftline.commands._demo_stall import worker_fetch_wait_ms
    from driftline.commands.demo import worker_command
    from driftline.commands.worker import settings_from_args
    from driftline.config import TopicNames

    argv = worker_command(
        bootstrap,
        Path(registry),
        0,
        drift=False,
        names=TopicNames(
            input=f"events-{suffix}", output=f"predictions-{suffix}", dead_letter=f"dlq-{suffix}"
        ),
        group_id=f"g-{suffix}",
        fetch_wait_max_ms=worker_fetch_wait_ms("tansu"),
    )
    return settings_from_args(build_parser().parse_args(argv[3:]))


def test_the_demo_worker_reads_a_partition_of_60k_batches_on_tansu(
    tansu_bootstrap: str,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    worker_in_thread,
) -> None:
    """Issue #14: a fetch on Tansu takes ~50-140 ms once a partition holds 60k record
    batches (the demo's live partitions get there in ~2 hours at ~9 batches/s), longer
    than the worker's default 10 ms wait, so the worker would read nothing from it.  The
    demo gives its worker a longer wait on Tansu (``--fetch-wait-max-ms``): it reads on."""
    from confluent_kafka import Consumer, TopicPartition

    suffix = uuid.uuid4().hex[:10]
    settings = _demo_worker_settings(tansu_bootstrap, worker_settings.registry, suffix)
    settings = dataclasses.replace(
        settings,
        model_name=worker_settings.model_name,
        metrics_port=0,
        batch_size=500,
        tick_ms=None,  # scheduled re-scores: not what is counted here
    )
    ensure_topics(
        tansu_bootstrap,
        [
            TopicSpec(settings.input_topic, 1),
            TopicSpec(settings.output_topic, 1),
            TopicSpec(settings.dead_letter_topic, 1),
        ],
    )
    filler = 60_000
    _one_record_batches(tansu_bootstrap, settings.input_topic, filler)
    # The worker's group starts after the filler (not events: it would dead-letter them).
    committer = Consumer({"bootstrap.servers": tansu_bootstrap, "group.id": settings.group_id})
    try:
        committer.commit(
            offsets=[TopicPartition(settings.input_topic, 0, filler)], asynchronous=False
        )
    finally:
        committer.close()
    events = live_events(500)
    with worker_in_thread(settings, spec):
        produce(tansu_bootstrap, settings.input_topic, events)
        messages = read_topic(
            tansu_bootstrap, settings.output_topic, expected=len(events), timeout=45
        )
    assert len(messages) >= len(events), f"{len(messages)} of {len(events)} scored"
    assert_scored_once_as_offline(messages, events, spec, loaded_model)
