"""No single record stops the worker: oversized events and dead-letter topics with limits.

Each test runs ``driftline worker`` as a subprocess against a real broker, sends valid
events with poison among them, and checks that the worker never stopped (one start, no
aborted transaction unless the broker refused a dead letter), that every valid event
around the poison was scored exactly once with the offline reference score, and what
reached the dead-letter topic: each rejected record, cut to fit the topic when it is
larger than the topic accepts, with its original length and SHA-256 in headers.

Before ``driftline.engine.kafka.dead_letters``, a 2 MB event was dead-lettered whole: the
producer refused it, the at-least-once worker exited (and again after every restart),
and the exactly-once one aborted and rewound to it forever while /healthz said ok.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from driftline.benchmarks.worker_process import WorkerProcess, killed_on_exit
from driftline.core.events import REASON_MALFORMED, REASON_OVERSIZED
from driftline.core.predictions import (
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_VALUE_BYTES,
    DLQ_VALUE_SHA256,
)
from driftline.core.spec import FeatureSpec
from driftline.event_producer import produce_records
from driftline.model.registry import LoadedModel
from driftline.simulate import Population
from support.faults import PredictionCheck, reference_scores
from support.topic_reading import read_predictions, read_topic, topic_layout, wait_committed

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
#: The input topic accepts 25 MiB records (the broker default is 1 MiB): the test must be
#: able to send a 20 MB event for the worker to meet it.
INPUT_CONFIG = {"max.message.bytes": str(25 * MIB)}
PRODUCER = {"message.max.bytes": 30 * MIB}
MODES = {"at-least-once": (), "exactly-once": ("--exactly-once",)}
SMALL_DLQ = 16 * 1024
ABORTED = "driftline_transactions_aborted_total"


def events_for(n: int, seed: int) -> list[dict[str, Any]]:
    population = Population(n_customers=max(60, n // 20), seed=seed)
    population.generate_history(days=10)
    return list(population.stream_events(max_events=n))


def padded(size: int, seed: int) -> bytes:
    """A JSON-looking value of exactly ``size`` bytes (not an event: it is rejected)."""
    head = b'{"customer_id":"c-%d","pad":"' % seed
    return head + b"x" * (size - len(head) - 2) + b'"}'


@dataclass
class Run:
    check: PredictionCheck
    dead: list[Any]
    worker: WorkerProcess
    metrics: dict[str, float]
    health: tuple[int, dict[str, Any]] | None
    poison: list[tuple[bytes, str]]


def run_with_poison(
    *,
    bootstrap: str,
    topic_factory: Callable[..., str],
    group: str,
    registry: Path,
    logs: Path,
    spec: FeatureSpec,
    model: LoadedModel,
    mode: str,
    poison: Sequence[tuple[bytes, str]],
    dlq_config: dict[str, str] | None = None,
    after_ready: Callable[[str], None] | None = None,
    n_valid: int = 600,
    seed: int = 5,
) -> Run:
    """Valid events, the ``poison`` (value, expected reason) in their middle; one worker."""
    inputs = topic_factory(2, "events", INPUT_CONFIG)
    output = topic_factory(2, "predictions")
    dlq = topic_factory(1, "dlq", dlq_config)
    events = events_for(n_valid, seed)
    encode = msgspec.json.encode
    valid = [(e["customer_id"].encode(), encode(e), None) for e in events]
    middle = len(valid) // 2
    key = events[middle]["customer_id"].encode()  # a customer with events either side
    records = [*valid[:middle], *((key, value, None) for value, _ in poison), *valid[middle:]]
    worker = WorkerProcess(
        bootstrap,
        input_topic=inputs,
        output_topic=output,
        dead_letter_topic=dlq,
        group=group,
        registry=registry,
        extra_args=["--batch-size", "200", *MODES[mode]],
        log_path=logs / "worker.log",
        name=f"poison-{mode}",
    )
    with worker, killed_on_exit(worker):
        worker.wait_ready(90)
        if after_ready is not None:
            after_ready(dlq)
        produce_records(bootstrap, inputs, iter(records), producer_config=PRODUCER)
        layout = topic_layout(bootstrap, inputs, len(records))
        wait_committed(bootstrap, group, inputs, layout.end_offsets, timeout=90, workers=[worker])
        assert worker.alive, worker.log_tail()
        metrics = worker.metrics()
        health = worker.healthz()
        assert worker.sigterm(timeout=60) == 0, worker.log_tail()
    committed = mode == "exactly-once"
    predictions = read_predictions(bootstrap, output, committed, expected=len(events))
    reference = reference_scores(events, layout.partition_of, spec, model)
    check = PredictionCheck.of(predictions, (e["event_id"] for e in events), reference)
    dead = read_topic(bootstrap, dlq, committed, expected=len(poison), timeout=30)
    return Run(check, dead, worker, metrics, health, list(poison))


def headers_of(message: Any) -> dict[str, bytes]:
    return dict(message.headers() or [])


def assert_cut_to_fit(message: Any, original: bytes, limit: int) -> None:
    """The dead letter is the original's first bytes, within ``limit``, described."""
    headers = headers_of(message)
    value = message.value()
    size = len(value) + len(message.key() or b"") + sum(len(k) + len(v) for k, v in headers.items())
    assert size <= limit, f"dead letter of {size} bytes over the {limit} limit"
    assert original.startswith(value) and len(value) > 0
    assert int(headers[DLQ_VALUE_BYTES]) == len(original)
    assert headers[DLQ_VALUE_SHA256].decode() == hashlib.sha256(original).hexdigest()


def assert_everything_valid_scored(run: Run) -> None:
    check = run.check
    assert run.worker.starts == 1 and run.worker.exit_codes == [0], run.worker.exit_codes
    assert check.exactly_once, check.summary()
    assert check.mismatched == 0 and check.checked_scores == check.events, check.summary()
    assert run.health is not None and run.health[0] == 200, run.health


@pytest.mark.parametrize("size", [2 * MIB, 20 * MIB], ids=["2MB", "20MB"])
@pytest.mark.parametrize("mode", list(MODES))
def test_an_oversized_event_is_dead_lettered_cut_to_fit_and_the_worker_carries_on(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    trained_registry: Path,
    tmp_path: Path,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    mode: str,
    size: int,
) -> None:
    original = padded(size, 1)
    run = run_with_poison(
        bootstrap=kafka_bootstrap,
        topic_factory=topic_factory,
        group=unique_group,
        registry=trained_registry,
        logs=tmp_path,
        spec=spec,
        model=loaded_model,
        mode=mode,
        poison=[(original, REASON_OVERSIZED)],
    )
    print(f"\n{mode} {size} B: {run.check.summary()}")
    assert_everything_valid_scored(run)
    assert run.metrics.get(ABORTED, 0.0) == 0.0
    assert len(run.dead) == 1, [headers_of(m) for m in run.dead]
    (dead,) = run.dead
    assert headers_of(dead)[DLQ_REASON].decode() == REASON_OVERSIZED
    # The producer's own limit (1,000,000 bytes) is the smaller one here.
    assert_cut_to_fit(dead, original, 1_000_000)
    assert run.metrics.get("driftline_dead_letters_truncated_total") == 1.0
    assert run.metrics.get("driftline_dead_letter_failures_total", 0.0) == 0.0


@pytest.mark.parametrize("mode", list(MODES))
def test_a_dead_letter_topic_with_a_small_limit_gets_every_dead_letter_cut_to_it(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    trained_registry: Path,
    tmp_path: Path,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    mode: str,
) -> None:
    """A 16 KiB dead-letter topic: big dead letters are cut to it, and small ones, which
    the producer would batch together past it, still land (its batches are kept under)."""
    big = [(padded(2 * MIB, 2), REASON_OVERSIZED)]
    big += [(padded(100_000 + i, 3 + i), REASON_OVERSIZED) for i in range(3)]
    small = [(b'{"event_id": "broken-%d", ' % i + b"y" * 3000, REASON_MALFORMED) for i in range(20)]
    run = run_with_poison(
        bootstrap=kafka_bootstrap,
        topic_factory=topic_factory,
        group=unique_group,
        registry=trained_registry,
        logs=tmp_path,
        spec=spec,
        model=loaded_model,
        mode=mode,
        poison=[*big, *small],
        dlq_config={"max.message.bytes": str(SMALL_DLQ)},
    )
    print(f"\n{mode}: {run.check.summary()}")
    assert_everything_valid_scored(run)
    assert run.metrics.get(ABORTED, 0.0) == 0.0
    assert run.metrics.get("driftline_dead_letter_failures_total", 0.0) == 0.0
    assert len(run.dead) == len(run.poison)
    by_offset = sorted(run.dead, key=lambda m: int(headers_of(m)[DLQ_SOURCE_OFFSET]))
    for message, (original, reason) in zip(by_offset, run.poison, strict=True):
        assert headers_of(message)[DLQ_REASON].decode() == reason
        if reason == REASON_OVERSIZED:
            assert_cut_to_fit(message, original, SMALL_DLQ)
        else:
            assert message.value() == original and DLQ_VALUE_BYTES not in headers_of(message)
    assert run.metrics.get("driftline_dead_letters_truncated_total") == len(big)


def lower_limit(bootstrap: str, topic: str, limit: int) -> None:
    """Lower a topic's ``max.message.bytes`` (as an operator might, while it runs)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry(
        "max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    admin.incremental_alter_configs([resource])[resource].result(30)
    time.sleep(1.0)  # let the broker apply it before records arrive


@pytest.mark.parametrize("mode", list(MODES))
def test_a_dead_letter_the_broker_refuses_is_counted_and_never_stops_the_worker(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    trained_registry: Path,
    tmp_path: Path,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    mode: str,
) -> None:
    """The dead-letter topic's limit lowered to 16 KiB after the worker read it (1 MiB).

    At-least-once, the ~1 MB dead letter is refused: counted, logged, the batch committed
    without it.  Exactly-once, the refusal fails the transaction once; the worker reads
    the limit again, rewinds, and the dead letter then lands cut to 16 KiB.
    """
    original = padded(2 * MIB, 9)
    run = run_with_poison(
        bootstrap=kafka_bootstrap,
        topic_factory=topic_factory,
        group=unique_group,
        registry=trained_registry,
        logs=tmp_path,
        spec=spec,
        model=loaded_model,
        mode=mode,
        poison=[(original, REASON_OVERSIZED)],
        after_ready=lambda dlq: lower_limit(kafka_bootstrap, dlq, SMALL_DLQ),
    )
    print(f"\n{mode}: {run.check.summary()} metrics aborted={run.metrics.get(ABORTED)}")
    assert_everything_valid_scored(run)
    failures = run.metrics.get("driftline_dead_letter_failures_total", 0.0)
    assert failures >= 1.0, run.worker.log_tail()
    if mode == "exactly-once":
        assert run.metrics.get(ABORTED, 0.0) <= 2.0, run.metrics.get(ABORTED)
        assert len(run.dead) == 1
        assert_cut_to_fit(run.dead[0], original, SMALL_DLQ)
    else:
        assert run.dead == []
        assert run.metrics.get("driftline_dead_letters_dropped_total") == 1.0
        assert "not written" in run.worker.log_text()
