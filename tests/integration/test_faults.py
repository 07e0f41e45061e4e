"""Fault injection on real worker processes: kill -9, rebalances, a frozen broker, poison.

Every scenario runs ``driftline worker`` as a subprocess (``driftline.benchmarks.worker_process``)
and checks what reached the output topic against what was sent: nothing lost, duplicates
only where the delivery mode allows them, and, where state must survive, every score
equal to offline scoring of each partition's events in order (a run without faults).

The short versions here run in CI; ``test_faults_slow.py`` runs them longer
(``DRIFTLINE_SLOW=1``).  Figures go to stdout (``pytest -s`` shows them).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from driftline.benchmarks.worker_process import WorkerProcess, killed_on_exit
from driftline.core.predictions import DLQ_REASON
from driftline.core.spec import FeatureSpec
from driftline.corpus import bad_payloads, interleave
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.event_producer import produce, produce_records
from driftline.model.registry import LoadedModel
from driftline.simulate import Population
from support.faults import PredictionCheck, kill_loop, reference_scores
from support.topic_reading import (
    committed_all,
    fence_transactional_id,
    read_predictions,
    read_topic,
    topic_layout,
    wait_committed,
)

pytestmark = pytest.mark.integration

CONSUMED = "driftline_events_consumed_total"
ABORTED = "driftline_transactions_aborted_total"
ASSIGNED = "driftline_assigned_partitions"
EXACTLY_ONCE = "--exactly-once"


def live_events(n: int, seed: int = 21, customers: int | None = None) -> list[dict[str, Any]]:
    """``n`` live events; about 100 per customer by default, so the offline reference
    (quadratic in a customer's history) stays fast for long runs."""
    population = Population(n_customers=customers or max(300, n // 100), seed=seed)
    population.generate_history(days=10)  # advance the clock; the stream continues from it
    return list(population.stream_events(max_events=n))


@dataclass
class Topics:
    bootstrap: str
    input: str
    output: str
    dead_letters: str
    group: str
    registry: Path
    logs: Path

    def worker(self, name: str, *extra: str, group: str | None = None) -> WorkerProcess:
        return WorkerProcess(
            self.bootstrap,
            input_topic=self.input,
            output_topic=self.output,
            dead_letter_topic=self.dead_letters,
            group=group or self.group,
            registry=self.registry,
            extra_args=list(extra),
            log_path=self.logs / f"{name}.log",
            name=name,
        )


@pytest.fixture
def topics(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    trained_registry: Path,
    tmp_path: Path,
) -> Topics:
    return Topics(
        bootstrap=kafka_bootstrap,
        input=topic_factory(4, "events"),
        output=topic_factory(4, "predictions"),
        dead_letters=topic_factory(1, "dlq"),
        group=unique_group,
        registry=trained_registry,
        logs=tmp_path,
    )


def assert_no_duplicates_or_xfail(
    check: PredictionCheck, strict: bool, bound: int, what: str
) -> None:
    """Exactly-once: no duplicate, strictly, on Apache Kafka (``strict``).

    Tansu 0.6.0 returns an aborted transaction's records to read_committed readers, so
    after a kill -9 the predictions of the batch in flight are visible twice there,
    through no fault of the worker.  On Tansu the duplicates must still be within that
    bound, and the test is an expected failure saying so, not a pass.
    """
    if strict or check.duplicated == 0:
        assert check.duplicated == 0, f"{what}: {check.summary()}"
        return
    assert check.duplicated <= bound, f"{what}: more duplicates than aborted batches could hold"
    pytest.xfail(
        f"Tansu returns aborted transactions to read_committed readers: {check.duplicated} "
        f"duplicate predictions (<= {bound}) from batches aborted by the crashes; "
        "the strict check runs on Apache Kafka (the suite's default broker)"
    )


# ------------------------------------------------------------------------- scenarios


def scenario_kill_loop(
    topics: Topics,
    spec: FeatureSpec,
    model: LoadedModel,
    *,
    exactly_once: bool,
    n_events: int,
    kills: int,
    batch_size: int = 200,
    seed: int = 7,
    static_membership: bool = True,
    extra_args: tuple[str, ...] = (),
) -> tuple[PredictionCheck, list[Any], float]:
    """Produce ``n_events`` up front, then kill -9 the worker ``kills`` times, restarting it,
    and let a last run finish.  Returns the check against offline scores, the crashes and
    the seconds it took.

    With ``static_membership`` the restarts keep one ``--group-instance-id`` (a
    supervisor restarting the same instance): the group hands the partitions straight
    back instead of waiting a session timeout for the dead member."""
    events = live_events(n_events, seed=seed)
    produce(topics.bootstrap, topics.input, events)
    layout = topic_layout(topics.bootstrap, topics.input, len(events))
    reference = reference_scores(events, layout.partition_of, spec, model)
    extra = ["--batch-size", str(batch_size)] + ([EXACTLY_ONCE] if exactly_once else [])
    if static_membership:
        extra += ["--group-instance-id", "kill-loop-0"]
    worker = topics.worker("kill-loop", *extra, *extra_args)
    rng = random.Random(seed)
    started = time.monotonic()
    with killed_on_exit(worker):
        crashes = kill_loop(
            worker,
            kills,
            rng,
            # Kill within a quarter second of progress: the worker gets through 40-60k
            # events a second here (compiled runtime), and every kill must land while the
            # stream still flows (at 0.3-0.5 s, one CI run finished 60k events in 3 runs).
            min_delay=0.1,
            max_delay=0.25,
            done=lambda: committed_all(
                topics.bootstrap, topics.group, topics.input, layout.end_offsets
            ),
        )
        if not worker.alive:
            worker.start()  # the final run, to completion
        worker.wait_ready(90)
        wait_committed(
            topics.bootstrap,
            topics.group,
            topics.input,
            layout.end_offsets,
            timeout=120,
            workers=[worker],
        )
        final = worker.metrics()
        assert worker.sigterm(timeout=60) == 0, worker.log_tail()
    elapsed = time.monotonic() - started
    predictions = read_predictions(
        topics.bootstrap,
        topics.output,
        read_committed=exactly_once,
        expected=len(events),
        timeout=60,
    )
    check = PredictionCheck.of(predictions, (e["event_id"] for e in events), reference)
    mode = "exactly-once" if exactly_once else "at-least-once"
    print(
        f"\nkill loop ({mode}, batch {batch_size}): {len(crashes)} crashes survived in "
        f"{elapsed:.1f}s; {check.summary()}"
    )
    for crash in crashes:
        print(f"  {crash}")
    print(
        f"  last run: consumed {final.get(CONSUMED, 0):.0f}, redelivered "
        f"{final.get('driftline_redelivered_events_total', 0):.0f}, restore records "
        f"{final.get('driftline_restore_records_total', 0):.0f}"
    )
    return check, crashes, elapsed


def test_kill9_loop_exactly_once_gives_one_prediction_per_event_and_the_reference_scores(
    topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel, strict_exactly_once: bool
) -> None:
    check, crashes, _ = scenario_kill_loop(
        topics, spec, loaded_model, exactly_once=True, n_events=60_000, kills=3
    )
    assert len(crashes) >= 3, "the stream ended before the worker was killed 3 times"
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.mismatched == 0, f"state not restored exactly: {check.summary()}"
    assert_no_duplicates_or_xfail(check, strict_exactly_once, 200 * len(crashes), "kill loop")


def test_kill9_loop_at_least_once_loses_nothing_and_duplicates_at_most_a_batch_per_crash(
    topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel
) -> None:
    check, crashes, _ = scenario_kill_loop(
        topics, spec, loaded_model, exactly_once=False, n_events=60_000, kills=3
    )
    assert len(crashes) >= 3, "the stream ended before the worker was killed 3 times"
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.duplicated <= 200 * len(crashes), check.summary()
    # A redelivered event is scored from the state restored at the commit before it, so
    # its score repeats: duplicates are copies, and every score is the reference one.
    assert check.mismatched == 0, f"state not restored exactly: {check.summary()}"


def test_kill9_loop_with_a_scoring_process_loses_nothing_and_scores_as_offline(
    topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel
) -> None:
    """Killed with a batch in the child and the next one prepared: neither was published
    nor committed, so both come again to the restarted worker (and its new child)."""
    check, crashes, _ = scenario_kill_loop(
        topics,
        spec,
        loaded_model,
        exactly_once=False,
        n_events=60_000,
        kills=3,
        extra_args=("--scoring-process",),
    )
    assert len(crashes) >= 3, "the stream ended before the worker was killed 3 times"
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.duplicated <= 200 * len(crashes), check.summary()
    assert check.mismatched == 0, f"state not restored exactly: {check.summary()}"


class BackgroundProducer:
    """Produce events from a thread at ``rate`` per second, so they flow during a fault."""

    def __init__(self, bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float):
        self._args = (bootstrap, topic, events)
        self._rate = rate
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="producer")

    def _run(self) -> None:
        try:
            self.delivered = produce(*self._args, rate=self._rate, stop=self._stop)
        except BaseException as error:
            self._errors.append(error)

    def __enter__(self) -> BackgroundProducer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> int:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"producer still running after {timeout:g}s"
        if self._errors:
            raise self._errors[0]
        return self.delivered


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def scenario_rebalance(
    topics: Topics,
    spec: FeatureSpec,
    model: LoadedModel,
    *,
    n_events: int,
    rate: float,
    broker_times_out_transactions: bool,
    seed: int = 9,
) -> tuple[PredictionCheck, dict[str, Any]]:
    """Workers a and b share the input while events flow; a is killed -9, b takes its
    partitions over (restoring their state) and carries on; then c joins and gets some of
    b's partitions (state moves again, this time with a graceful hand-over).

    a never comes back, so a transaction it was killed inside stays open until the broker
    times it out.  Tansu never does, and meanwhile holds back the whole group's offset
    commits; there the test fences a's transactional id in the broker's place.
    """
    events = live_events(n_events, seed=seed)
    extra = (EXACTLY_ONCE, "--batch-size", "200")
    a, b, c = (topics.worker(name, *extra) for name in ("a", "b", "c"))
    figures: dict[str, Any] = {}
    started = time.monotonic()

    def since() -> float:
        return round(time.monotonic() - started, 1)

    with killed_on_exit(a, b, c):
        a.start()
        b.start()
        a.wait_ready(90)
        b.wait_ready(90)
        with BackgroundProducer(topics.bootstrap, topics.input, events, rate) as producer:
            wait_for(lambda: a.metric(CONSUMED) >= 1_000, 60, "worker a to make progress")
            time.sleep(random.Random(seed).uniform(0.3, 2.0))
            figures["a_consumed_at_kill"] = a.metric(CONSUMED)
            a.kill9()
            figures["a_killed_at_s"] = since()
            if not broker_times_out_transactions:
                fence_transactional_id(topics.bootstrap, a.transactional_id)
            wait_for(lambda: b.metric(ASSIGNED) == 4, 60, "b to take a's partitions over")
            figures["b_took_over_at_s"] = since()
            consumed = b.metric(CONSUMED)
            wait_for(lambda: b.metric(CONSUMED) >= consumed + 1_000, 60, "b to go on")
            assert producer.running, "the stream ended before the third worker joined"
            c.start()
            c.wait_ready(90)
            figures["c_ready_at_s"] = since()
            wait_for(lambda: c.metric(CONSUMED) > 0, 60, "c to make progress")
            figures["c_working_at_s"] = since()
            figures["stream_still_flowing_when_c_worked"] = producer.running
            producer.join(180)
            figures["stream_ended_at_s"] = since()
        layout = topic_layout(topics.bootstrap, topics.input, len(events))
        wait_committed(
            topics.bootstrap,
            topics.group,
            topics.input,
            layout.end_offsets,
            timeout=120,
            workers=[b, c],
        )
        figures["drained_at_s"] = since()
        for w in (b, c):
            m = w.metrics()
            figures[f"{w.name}_partitions"] = m.get(ASSIGNED, 0.0)
            figures[f"{w.name}_consumed"] = m.get(CONSUMED, 0.0)
            figures[f"{w.name}_restore_records"] = m.get("driftline_restore_records_total", 0.0)
        assert b.sigterm(timeout=60) == 0, b.log_tail()
        assert c.sigterm(timeout=60) == 0, c.log_tail()
    reference = reference_scores(events, layout.partition_of, spec, model)
    predictions = read_predictions(
        topics.bootstrap, topics.output, read_committed=True, expected=len(events), timeout=60
    )
    check = PredictionCheck.of(predictions, (e["event_id"] for e in events), reference)
    dead = read_topic(topics.bootstrap, topics.dead_letters, True, expected=0, timeout=20)
    figures["dead_letters"] = dict(
        collections.Counter(dict(m.headers() or [])[DLQ_REASON].decode() for m in dead)
    )
    print(f"\nrebalance (exactly-once): {figures}\n  {check.summary()}")
    return check, figures


def test_rebalance_after_a_kill9_and_a_join_moves_state_with_the_partitions(
    topics: Topics,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    strict_exactly_once: bool,
    broker_times_out_transactions: bool,
) -> None:
    check, figures = scenario_rebalance(
        topics,
        spec,
        loaded_model,
        n_events=50_000,
        rate=1_000,
        broker_times_out_transactions=broker_times_out_transactions,
    )
    assert check.lost == 0 and check.unexpected == 0, f"{check.summary()} {figures}"
    assert figures["c_partitions"] > 0 and figures["b_partitions"] > 0, figures
    assert figures["stream_still_flowing_when_c_worked"], f"c joined too late: {figures}"
    assert check.mismatched == 0, f"state did not move with the partitions: {check.summary()}"
    assert_no_duplicates_or_xfail(check, strict_exactly_once, 200, "rebalance")


def frozen_broker_kind(broker_source: str) -> str:
    """The kind of broker the freeze scenarios start for themselves (they SIGSTOP it, so
    it cannot be the session's): Tansu on a Tansu session, Apache Kafka otherwise."""
    return "tansu" if broker_source == "tansu" else "kafka"


def scenario_broker_frozen(
    registry: Path,
    logs: Path,
    *,
    broker_kind: str,
    n_events: int,
    rate: float,
    freeze_s: float,
    extra: tuple[str, ...] = (),
    until_aborted: int = 0,
) -> tuple[PredictionCheck, dict[str, Any]]:
    """SIGSTOP the broker mid-stream for ``freeze_s``, then SIGCONT; its own broker.

    ``until_aborted``: freeze (up to that many times) while the worker works through a
    backlog, until a transaction has been aborted: a caught-up worker is usually polling,
    not inside a transaction, when the broker freezes.
    """
    events = live_events(n_events, seed=13)
    figures: dict[str, Any] = {}
    try:
        return _broker_frozen(
            registry, logs, broker_kind, events, rate, freeze_s, extra, until_aborted, figures
        )
    finally:
        print(f"\nbroker frozen: {figures}")


def _broker_frozen(
    registry: Path,
    logs: Path,
    broker_kind: str,
    events: list[dict[str, Any]],
    rate: float,
    freeze_s: float,
    extra: tuple[str, ...],
    until_aborted: int,
    figures: dict[str, Any],
) -> tuple[PredictionCheck, dict[str, Any]]:
    from driftline.broker import make_broker

    with make_broker(broker_kind, log_dir=logs / "frozen-broker") as broker:
        bootstrap = broker.bootstrap
        names = Topics(bootstrap, "events-f", "predictions-f", "dlq-f", "g-frozen", registry, logs)
        ensure_topics(
            bootstrap,
            [
                TopicSpec(names.input, 4, {}),
                TopicSpec(names.output, 4, {}),
                TopicSpec(names.dead_letters, 1, {}),
            ],
        )
        worker = names.worker("frozen", "--batch-size", "200", *extra)
        read_committed = EXACTLY_ONCE in extra
        with worker, killed_on_exit(worker):
            worker.wait_ready(90)
            with BackgroundProducer(bootstrap, names.input, events, rate) as producer:
                wait_for(lambda: worker.metric(CONSUMED) >= 2_000, 60, "progress")
                for attempt in range(1, max(1, until_aborted) + 1):
                    figures["freezes"] = attempt
                    _freeze_once(broker, worker, freeze_s, bool(until_aborted), figures)
                    if worker.metric(ABORTED) >= 1:
                        break
                producer.join(180)
            assert_alive(worker)
            layout = topic_layout(bootstrap, names.input, len(events))
            figures["drain_s"] = round(
                wait_committed(
                    bootstrap,
                    names.group,
                    names.input,
                    layout.end_offsets,
                    timeout=120,
                    workers=[worker],
                ),
                1,
            )
            assert worker.alive
            figures["starts"] = worker.starts
            figures["transactions_aborted"] = worker.metric(ABORTED)
            # Commits answered fenced after their timeout, and those the broker had made.
            log_text = worker.log_text()
            figures["fenced_commits"] = log_text.count("commit fenced after its timeout")
            figures["fenced_but_landed"] = log_text.count("the broker committed the batch")
            assert worker.sigterm(timeout=60) == 0, worker.log_tail()
        predictions = read_predictions(
            bootstrap, names.output, read_committed=read_committed, expected=len(events)
        )
    check = PredictionCheck.of(predictions, (e["event_id"] for e in events))
    figures["check"] = check.summary()
    return check, figures


def assert_alive(worker: WorkerProcess) -> None:
    """The worker is still running; if not, the test fails with its log.

    A transaction that timed out while its commit (EndTxn) was in flight is answered
    fenced by Kafka, fatal in librdkafka.  The worker used to stop there (exit 3; seen in
    a fresh-clone CI of 2026-12-05); it now asks the broker whether that commit landed
    and carries on either way (``test_fenced_commit.py`` makes both outcomes happen).
    """
    if not worker.alive:
        raise AssertionError(f"the worker died ({worker.returncode}):\n{worker.log_tail()}")


def _freeze_once(
    broker: Any, worker: WorkerProcess, freeze_s: float, mid_batch: bool, figures: dict[str, Any]
) -> None:
    """Freeze the broker for ``freeze_s``, watching /readyz and /healthz, then resume.

    ``mid_batch``: first let a backlog of ~3 s build up (the worker stopped), then freeze
    a few batches into it, when the worker is most likely inside a transaction.
    """
    if mid_batch:
        assert worker.pid is not None
        before = worker.metric(CONSUMED)
        os.kill(worker.pid, signal.SIGSTOP)
        time.sleep(3)
        os.kill(worker.pid, signal.SIGCONT)
        wait_for(lambda: not worker.alive or worker.metric(CONSUMED) >= before + 400, 30, "backlog")
        assert_alive(worker)
    figures["consumed_at_freeze"] = worker.metric(CONSUMED)
    statuses: list[int | None] = []
    broker.pause()
    frozen_at = time.monotonic()
    first_503: float | None = None
    heartbeat_age = 0.0
    try:
        while time.monotonic() - frozen_at < freeze_s:
            answer = worker.readyz(timeout=1.0)
            status = None if answer is None else answer[0]
            statuses.append(status)
            if status == 503 and first_503 is None:
                first_503 = time.monotonic() - frozen_at
                figures["readyz_503_body"] = answer[1] if answer else None
            health = worker.healthz(timeout=1.0)
            if health is not None:
                age = float(health[1].get("heartbeat_age_seconds", 0.0))
                heartbeat_age = max(heartbeat_age, age)
            assert worker.alive, f"worker died while frozen:\n{worker.log_tail()}"
            time.sleep(0.25)
    finally:
        broker.resume()
    resumed_at = time.monotonic()
    figures["freeze_s"] = round(resumed_at - frozen_at, 1)
    figures["readyz_during_freeze"] = dict(collections.Counter(statuses))
    figures["first_503_after_s"] = None if first_503 is None else round(first_503, 1)
    figures["max_heartbeat_age_s"] = round(heartbeat_age, 1)
    figures["ready_again_after_resume_s"] = round(
        wait_for(worker.ready, 90, "ready again after the broker resumed"), 1
    )


def test_a_frozen_broker_makes_the_worker_unready_and_it_resumes_losing_nothing(
    trained_registry: Path, tmp_path: Path, broker_source: str
) -> None:
    check, figures = scenario_broker_frozen(
        trained_registry,
        tmp_path,
        broker_kind=frozen_broker_kind(broker_source),
        n_events=16_000,
        rate=800,
        freeze_s=20,
    )
    assert figures["starts"] == 1, "the worker was restarted"
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.duplicated <= 200 * 4, check.summary()  # at most a batch per partition
    assert figures["first_503_after_s"] is not None, (
        f"/readyz never said 503 during a {figures['freeze_s']} s broker freeze: "
        f"{figures['readyz_during_freeze']}"
    )


@pytest.mark.parametrize("scoring", [(), ("--scoring-process",)], ids=["in-loop", "process"])
def test_an_exactly_once_batch_whose_transaction_times_out_is_rewound_and_scored_once(
    trained_registry: Path, tmp_path: Path, scoring: tuple[str, ...], broker_source: str
) -> None:
    # Frozen longer than the transaction timeout, inside a transaction: its records time
    # out, the worker replaces its producer, rewinds to the last committed batch and
    # carries on (it used to stop with exit 3).  With a scoring process, the batch
    # prepared after the failed one is dropped and comes again too.
    kind = frozen_broker_kind(broker_source)
    check, figures = scenario_broker_frozen(
        trained_registry,
        tmp_path,
        broker_kind=kind,
        n_events=40_000,
        rate=1_000,
        freeze_s=8,
        extra=(EXACTLY_ONCE, "--transaction-timeout", "4", *scoring),
        until_aborted=3,
    )
    aborted = figures["transactions_aborted"]
    assert aborted >= 1, f"no transaction timed out: {figures}"
    assert figures["starts"] == 1, "the worker was restarted"
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.mismatched == 0, check.summary()
    # Strict on Kafka; Tansu shows aborted records to read_committed readers, so there the
    # failed batch's predictions are there twice.
    assert_no_duplicates_or_xfail(check, kind == "kafka", int(200 * aborted), "rewind")


def scenario_poison(
    topics: Topics,
    spec: FeatureSpec,
    model: LoadedModel,
    *,
    n_valid: int,
    n_bad: int,
    seed: int = 31,
) -> tuple[PredictionCheck, dict[str, Any]]:
    """Valid events with a fuzz corpus mixed in, produced in two halves; RSS after each."""
    events = live_events(n_valid, seed=seed)
    bad = bad_payloads(n_bad, seed=seed)
    encode = msgspec.json.encode
    mixed = interleave([(encode(e), None) for e in events], bad, seed=seed)
    rng = random.Random(seed)
    customers = sorted({e["customer_id"] for e in events})
    valid_keys = iter(e["customer_id"].encode() for e in events)
    records = [
        (next(valid_keys) if reason is None else rng.choice(customers).encode(), value, None)
        for value, reason in mixed
    ]
    halves = [records[: len(records) // 2], records[len(records) // 2 :]]
    worker = topics.worker("poison", "--batch-size", "500")
    figures: dict[str, Any] = {"valid": len(events), "bad": len(bad)}
    rss: list[int | None] = []
    started = time.monotonic()
    with worker, killed_on_exit(worker):
        worker.wait_ready(90)
        rss.append(worker.rss_kb())
        produced = 0
        for half in halves:
            produce_records(topics.bootstrap, topics.input, iter(half))
            produced += len(half)
            layout = topic_layout(topics.bootstrap, topics.input, produced)
            wait_committed(
                topics.bootstrap,
                topics.group,
                topics.input,
                layout.end_offsets,
                timeout=120,
                workers=[worker],
            )
            assert worker.alive, worker.log_tail()
            rss.append(worker.rss_kb())
        figures["dead_letter_metric"] = worker.metric("driftline_dead_letters_total")
        figures["starts"] = worker.starts
        assert worker.sigterm(timeout=60) == 0, worker.log_tail()
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    figures["rss_mib"] = [None if r is None else round(r / 1024) for r in rss]
    reference = reference_scores(events, layout.partition_of, spec, model)
    predictions = read_predictions(topics.bootstrap, topics.output, expected=len(events))
    check = PredictionCheck.of(predictions, (e["event_id"] for e in events), reference)
    dead = read_topic(topics.bootstrap, topics.dead_letters, expected=len(bad), timeout=60)
    figures["dead_letters"] = len(dead)
    sent = collections.Counter(value for value, reason in mixed if reason is not None)
    got = collections.Counter(m.value() for m in dead)
    figures["dead_letters_missing"] = sum((sent - got).values())
    figures["dead_letters_extra"] = sum((got - sent).values())
    reasons_sent = collections.Counter(reason for _, reason in bad)
    reasons_got = collections.Counter(dict(m.headers() or [])[DLQ_REASON].decode() for m in dead)
    figures["wrong_reasons"] = {
        r: (reasons_sent[r], reasons_got[r])
        for r in reasons_sent.keys() | reasons_got.keys()
        if reasons_sent[r] != reasons_got[r]
    }
    print(f"\npoison: {figures}\n  {check.summary()}")
    return check, figures


def test_poison_input_goes_to_the_dead_letter_topic_with_bounded_memory(
    topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel
) -> None:
    check, figures = scenario_poison(topics, spec, loaded_model, n_valid=5_000, n_bad=10_000)
    assert figures["starts"] == 1
    assert check.exactly_once, check.summary()
    assert check.mismatched == 0, check.summary()
    assert figures["dead_letters_missing"] == 0 and figures["dead_letters_extra"] == 0, figures
    assert figures["wrong_reasons"] == {}, figures
    base, half, end = figures["rss_mib"]
    # The second half of the corpus must not grow memory much beyond the first (bounded,
    # not leaking per message), and the whole run stays far from a container limit.
    assert end - half < 128, f"RSS grew {end - half} MiB over the second half: {figures}"
    assert end - base < 512, f"RSS grew {end - base} MiB in all: {figures}"


def scenario_sigterm_exactly_once(
    topics: Topics, spec: FeatureSpec, model: LoadedModel, *, n_events: int, stops: int
) -> tuple[PredictionCheck, dict[str, Any]]:
    """SIGTERM the exactly-once worker ``stops`` times while events flow, then finish."""
    events = live_events(n_events, seed=17)
    produce(topics.bootstrap, topics.input, events)
    layout = topic_layout(topics.bootstrap, topics.input, len(events))
    reference = reference_scores(events, layout.partition_of, spec, model)
    worker = topics.worker("sigterm", EXACTLY_ONCE, "--batch-size", "200")
    figures: dict[str, Any] = {"consumed_at_sigterm": [], "stop_s": []}
    rng = random.Random(17)
    with killed_on_exit(worker):
        for _ in range(stops):
            worker.start()
            worker.wait_ready(90)
            worker.wait_metric(CONSUMED, 1, 60)
            # Short: the compiled runtime got through 150k events in fewer than 10 stops
            # of 0.2-1 s each.
            time.sleep(rng.uniform(0.05, 0.3))
            assert not committed_all(
                topics.bootstrap, topics.group, topics.input, layout.end_offsets
            ), "the stream ended before the SIGTERM"
            figures["consumed_at_sigterm"].append(worker.metric(CONSUMED))
            t0 = time.monotonic()
            code = worker.sigterm(timeout=30)
            figures["stop_s"].append(round(time.monotonic() - t0, 2))
            assert code == 0, f"exit {code} after SIGTERM:\n{worker.log_tail()}"
        worker.start()
        wait_committed(
            topics.bootstrap,
            topics.group,
            topics.input,
            layout.end_offsets,
            timeout=120,
            workers=[worker],
        )
        assert worker.sigterm(timeout=60) == 0, worker.log_tail()
    figures["graceful_stops_logged"] = worker.log_text().count("worker stopped after")
    predictions = read_predictions(
        topics.bootstrap, topics.output, read_committed=True, expected=len(events), timeout=60
    )
    check = PredictionCheck.of(predictions, (e["event_id"] for e in events), reference)
    print(f"\nSIGTERM (exactly-once): {figures}\n  {check.summary()}")
    return check, figures


def test_sigterm_during_a_transaction_exits_zero_and_the_restart_duplicates_nothing(
    topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel
) -> None:
    check, figures = scenario_sigterm_exactly_once(
        topics, spec, loaded_model, n_events=30_000, stops=1
    )
    assert figures["graceful_stops_logged"] == 2
    # A graceful stop finishes (commits) its batch's transaction before it exits: no
    # aborted batch is left on the broker to be shown twice, whatever the broker.
    assert check.exactly_once, check.summary()
    assert check.mismatched == 0, check.summary()
