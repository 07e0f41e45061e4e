"""A small harness for fault tests on real worker processes.

``WorkerProcess`` runs ``python -m driftline.cli worker ...`` as a child process that can
be killed with SIGKILL (no cleanup runs: the real crash), stopped with SIGTERM, probed on
``/readyz`` and scraped on ``/metrics``.  ``read_predictions`` reads an output topic to
its end (``enable.partition.eof`` on every partition, never the high watermark: the Tansu
broker reports a wrong one), optionally with ``isolation.level=read_committed``, and
``PredictionCheck`` sums up what came out against what went in: lost events, duplicate
predictions and scores that differ from a reference run.

Every process started here is killed (SIGKILL) if the test fails, when its context
manager exits on an exception, and at interpreter exit; on Linux a worker also gets a
parent-death signal, so it cannot outlive a SIGKILLed test runner either.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import msgspec

from driftline._subprocess import die_with_parent as child_dies_with_parent
from driftline.broker import free_port
from driftline.core.predictions import Prediction

__all__ = [
    "Crash",
    "PredictionCheck",
    "TopicLayout",
    "WorkerProcess",
    "broker_filters_aborted_transactions",
    "committed_all",
    "committed_offsets",
    "kill_loop",
    "killed_on_exit",
    "partitions_of",
    "read_predictions",
    "read_topic",
    "reference_scores",
    "rss_kb",
    "topic_layout",
    "wait_committed",
]

log = logging.getLogger(__name__)
_KAFKA_LOGGER = logging.getLogger("driftline.kafka")
_LIVE: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()
_decode_prediction = msgspec.json.Decoder(Prediction).decode


def rss_kb(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS`` in /proc), or None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class WorkerProcess:
    """One ``driftline worker`` subprocess; ``start()`` again after it died to restart it.

    Output (stdout and stderr) is appended to ``log_path`` across restarts, with a marker
    line per start.  Each start binds the HTTP endpoints to a fresh free port on
    127.0.0.1 (``metrics_port`` pins one instead).  ``extra_args`` go last on the command
    line (``["--exactly-once", "--batch-size", "200"]``).
    """

    def __init__(
        self,
        bootstrap: str,
        input_topic: str,
        output_topic: str,
        dead_letter_topic: str,
        group: str,
        registry: str | os.PathLike[str],
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        *,
        model_name: str = "churn",
        metrics_port: int | None = None,
        name: str | None = None,
        worker_id: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.input_topic = input_topic
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.group = group
        self.registry = str(registry)
        self.extra_args = list(extra_args)
        self.model_name = model_name
        self.name = name or f"worker-{uuid.uuid4().hex[:6]}"
        #: Stable across restarts, like a supervisor restarting the same instance; the
        #: worker derives its transactional.id from it, so a restart fences the old one.
        self.worker_id = worker_id or self.name
        self.log_path = Path(log_path) if log_path is not None else None
        self._fixed_port = metrics_port
        self.port: int = metrics_port or 0
        self._env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._recorded: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.starts = 0
        self.started_at: float | None = None
        self.exit_codes: list[int] = []

    # -- lifecycle ----------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "driftline.cli",
            "worker",
            "--bootstrap-servers",
            self.bootstrap,
            "--input-topic",
            self.input_topic,
            "--output-topic",
            self.output_topic,
            "--dead-letter-topic",
            self.dead_letter_topic,
            "--group-id",
            self.group,
            "--registry",
            self.registry,
            "--model-name",
            self.model_name,
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(self.port),
            "--worker-id",
            self.worker_id,
            *self.extra_args,
        ]

    def start(self) -> WorkerProcess:
        """Start the process (it must not be running); returns at once, see ``wait_ready``."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        self.port = self._fixed_port or free_port()
        self.starts += 1
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("ab")
            self._log_file.write(
                f"\n===== {self.name} start #{self.starts} at {time.time():.3f} "
                f"port {self.port}: {' '.join(self.extra_args)}\n".encode()
            )
            self._log_file.flush()
        out: Any = self._log_file if self._log_file is not None else subprocess.DEVNULL
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self._env},
            start_new_session=True,  # a Ctrl-C aimed at pytest is not a SIGINT to it
            preexec_fn=child_dies_with_parent(signal.SIGKILL),
            close_fds=True,
        )
        if self._log_file is not None:  # the child has its own descriptor now
            self._log_file.close()
            self._log_file = None
        self.started_at = time.monotonic()
        _LIVE.add(self)
        return self

    def restart(self) -> WorkerProcess:
        """SIGKILL it if it still runs, then start it again."""
        if self.alive:
            self.kill9()
        return self.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    @property
    def transactional_id(self) -> str:
        """The transactional id this worker uses with ``--exactly-once``."""
        from driftline.engine.kafka.worker import transactional_id

        args = self.extra_args
        flag = "--group-instance-id"
        identity = args[args.index(flag) + 1] if flag in args else self.worker_id
        return transactional_id(self.group, identity)

    def kill9(self) -> int | None:
        """SIGKILL the process and reap it; returns its status (-9), None if none ran."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
        code = process.wait()
        self._reap()
        return code

    def sigterm(self, wait: bool = True, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful stop); with ``wait``, the exit code, SIGKILL after ``timeout``.

        A worker that ignores SIGTERM for ``timeout`` seconds is killed and the returned
        code is -9, so a test asserting ``== 0`` fails rather than hangs.
        """
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not wait:
            return None
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("%s ignored SIGTERM for %.0fs: SIGKILL", self.name, timeout)
            process.kill()
            code = process.wait()
        self._reap()
        return code

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for the process to exit by itself; its exit code, or None on timeout."""
        if self._process is None:
            return None
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reap()
        return code

    def _reap(self) -> None:
        """Record the exit code of a finished process (once)."""
        process = self._process
        if process is not None and process.poll() is not None:
            if process is not self._recorded:
                self.exit_codes.append(process.returncode)
                self._recorded = process
            _LIVE.discard(self)

    def close(self, graceful: bool = True, timeout: float = 30.0) -> None:
        """Stop it if still running (SIGTERM then SIGKILL, or SIGKILL at once)."""
        if self.alive:
            if graceful:
                self.sigterm(wait=True, timeout=timeout)
            else:
                self.kill9()
        self._reap()

    def __enter__(self) -> WorkerProcess:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(graceful=exc_type is None)

    def __repr__(self) -> str:
        state = f"pid {self.pid} alive" if self.alive else f"exited {self.returncode}"
        return f"WorkerProcess({self.name}, {state}, port {self.port}, starts {self.starts})"

    # -- probes -------------------------------------------------------------------------

    def _get(self, path: str, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """``(status, body)`` of GET ``path``, or None when nothing answers."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=timeout
            ) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            # The body of an error status is read after the status line; a worker busy
            # starting up can send one and not the other within the timeout.
            try:
                return error.code, error.read()
            except (OSError, ValueError):
                return None
        except (OSError, ValueError):
            return None

    def readyz(self, timeout: float = 1.0) -> tuple[int, str] | None:
        """``(status, body)`` of /readyz, or None when the server does not answer."""
        answer = self._get("/readyz", timeout)
        return None if answer is None else (answer[0], answer[1].decode(errors="replace"))

    def healthz(self, timeout: float = 1.0) -> tuple[int, dict[str, Any]] | None:
        """``(status, body)`` of /healthz (liveness, JSON), or None when nothing answers."""
        import json

        answer = self._get("/healthz", timeout)
        if answer is None:
            return None
        try:
            body = json.loads(answer[1])
        except ValueError:
            body = {"raw": answer[1].decode(errors="replace")}
        return answer[0], body

    def ready(self) -> bool:
        answer = self.readyz()
        return answer is not None and answer[0] == 200

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll /readyz until it says 200; seconds since ``start()``.

        Raises ``RuntimeError`` (with the log tail) if the process exits or the timeout
        passes first.
        """
        deadline = time.monotonic() + timeout
        last: tuple[int, str] | None = None
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(
                    f"{self.name} exited ({self.returncode}) before ready:\n{self.log_tail()}"
                )
            last = self.readyz(timeout=0.5)
            if last is not None and last[0] == 200:
                return time.monotonic() - (self.started_at or time.monotonic())
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} not ready within {timeout:g}s (last /readyz {last}):\n{self.log_tail()}"
        )

    def metric_samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample on /metrics as ``(name, labels, value)``; [] if it does not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        answer = self._get("/metrics", timeout=2.0)
        if answer is None or answer[0] != 200:
            return []
        return [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(answer[1].decode())
            for sample in family.samples
        ]

    def metrics(self) -> dict[str, float]:
        """Sample name -> value summed over its label sets ({} if /metrics is down)."""
        totals: dict[str, float] = collections.defaultdict(float)
        for name, _labels, value in self.metric_samples():
            totals[name] += value
        return dict(totals)

    def metric(self, name: str, default: float = 0.0) -> float:
        """One sample name summed over labels (``default`` if absent or unreachable)."""
        return self.metrics().get(name, default)

    def wait_metric(self, name: str, at_least: float, timeout: float) -> float:
        """Wait until ``metric(name) >= at_least``; returns the value (raises on timeout)."""
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(
                    f"{self.name} exited ({self.returncode}) waiting for {name} >= "
                    f"{at_least}:\n{self.log_tail()}"
                )
            value = self.metric(name)
            if value >= at_least:
                return value
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name}: {name} = {value} < {at_least} after {timeout:g}s:\n{self.log_tail()}"
        )

    def rss_kb(self) -> int | None:
        return rss_kb(self.pid) if self.alive and self.pid is not None else None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()
        return "\n".join(text[-lines:]) if text else "(no log)"


@atexit.register
def _kill_all() -> None:
    """Safety net: no worker started here outlives the interpreter."""
    for worker in list(_LIVE):
        with contextlib.suppress(Exception):
            worker.kill9()


@contextlib.contextmanager
def killed_on_exit(*workers: WorkerProcess) -> Iterator[tuple[WorkerProcess, ...]]:
    """SIGKILL every given worker still running when the block exits, however it exits."""
    try:
        yield workers
    finally:
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.kill9()


# ------------------------------------------------------------------------------ reading


def _consumer(bootstrap: str, read_committed: bool, **extra: Any) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"faults-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "logger": _KAFKA_LOGGER,
            **extra,
        }
    )


def read_topic(
    bootstrap: str,
    topic: str,
    read_committed: bool = False,
    expected: int = 0,
    timeout: float = 60.0,
) -> list[Any]:
    """Every record of ``topic`` from the beginning, as confluent-kafka ``Message`` objects.

    Reads until at least ``expected`` records arrived *and* every partition reported EOF
    after its last record (so records beyond ``expected``, e.g. duplicates, are read too),
    or until ``timeout``: then it returns what it has (the caller's counts show the gap).
    With ``read_committed``, EOF is the last stable offset: an open transaction hides
    everything after it.
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    consumer = _consumer(bootstrap, read_committed)
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        partitions = set(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, -2) for p in sorted(partitions)])  # beginning
        at_end: set[int] = set()
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10_000, timeout=0.2)
            for message in batch:
                error = message.error()
                if error is None:
                    at_end.discard(message.partition())
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    raise KafkaException(error)
            if len(messages) >= expected and at_end >= partitions:
                break
        else:
            log.warning(
                "read_topic %s: %d/%d records, EOF on %s of %s after %.0fs",
                topic,
                len(messages),
                expected,
                sorted(at_end),
                sorted(partitions),
                timeout,
            )
        return messages
    finally:
        consumer.close()


def read_predictions(
    bootstrap: str,
    topic: str,
    read_committed: bool = False,
    expected: int = 0,
    timeout: float = 60.0,
) -> list[Prediction]:
    """The predictions on ``topic`` (see ``read_topic``), decoded; keys are checked."""
    predictions = []
    for message in read_topic(bootstrap, topic, read_committed, expected, timeout):
        prediction = _decode_prediction(message.value())
        if message.key() != prediction.customer_id.encode():
            raise AssertionError(
                f"prediction for {prediction.event_id} keyed {message.key()!r}, "
                f"not its customer {prediction.customer_id!r}"
            )
        predictions.append(prediction)
    return predictions


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (-1001: none yet)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "logger": _KAFKA_LOGGER}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def broker_filters_aborted_transactions(bootstrap: str, timeout: float = 20.0) -> bool:
    """Does a read_committed consumer on this broker skip records of aborted transactions?

    Kafka does; the Tansu broker (0.6.0) does not: it hides *open* transactions (the last
    stable offset holds) but returns an aborted transaction's records as if committed.
    Exactly-once tests use this to tell a broker limitation from a worker bug.
    """
    from confluent_kafka import Producer

    from driftline.engine.kafka.admin import TopicSpec, ensure_topics

    topic = f"probe-abort-{uuid.uuid4().hex[:12]}"
    ensure_topics(bootstrap, [TopicSpec(topic, 1, {})])
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"probe-{uuid.uuid4().hex}",
            "logger": _KAFKA_LOGGER,
        }
    )
    producer.init_transactions(timeout)
    producer.begin_transaction()
    producer.produce(topic, b"aborted", b"k")
    producer.flush(timeout)  # on the broker before the abort, as after a crash
    producer.abort_transaction(timeout)
    producer.begin_transaction()
    producer.produce(topic, b"committed", b"k")
    producer.commit_transaction(timeout)
    values = [m.value() for m in read_topic(bootstrap, topic, True, expected=1, timeout=timeout)]
    return values == [b"committed"]


def fence_transactional_id(bootstrap: str, transactional_id: str, timeout: float = 30.0) -> None:
    """Abort the transaction a dead producer left open under ``transactional_id``.

    Starting a producer under the same id bumps its epoch, and the coordinator aborts the
    open transaction.  Kafka does it by itself once ``transaction.timeout.ms`` passes;
    Tansu (0.6.0) never does, and while such a transaction stays open it also holds back
    every other producer's transactional offset commits for the group: the group stops
    committing for good.  Tests that kill an exactly-once worker for good call this in
    the broker's place.
    """
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "logger": _KAFKA_LOGGER,
        }
    )
    producer.init_transactions(timeout)
    producer.flush(0)


# ------------------------------------------------------------------------------ checking


@dataclass
class PredictionCheck:
    """What came out for what went in.

    ``lost``: valid event ids without any prediction.  ``duplicated``: predictions beyond
    the first for an event id (a count of records, not of ids).  ``mismatched``: event
    ids with at least one prediction whose score differs from the reference by more than
    ``atol`` (only when a reference is given).  ``unexpected``: predictions for ids that
    were never sent.
    """

    events: int
    predicted: int
    lost: int
    duplicated: int
    mismatched: int
    unexpected: int
    checked_scores: int
    max_abs_diff: float
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: dict[str, int] = field(default_factory=dict)
    mismatch_examples: list[tuple[str, float, float]] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        predictions: Iterable[Prediction],
        event_ids: Iterable[str],
        reference: Mapping[str, float] | None = None,
        atol: float = 1e-12,
        examples: int = 10,
    ) -> PredictionCheck:
        ids = set(event_ids)
        predictions = list(predictions)
        counts = collections.Counter(p.event_id for p in predictions)
        lost_ids = sorted(ids - counts.keys())
        duplicates = {k: c for k, c in counts.items() if c > 1}
        mismatched: set[str] = set()
        examples_: list[tuple[str, float, float]] = []
        checked = 0
        max_diff = 0.0
        if reference is not None:
            for p in predictions:
                want = reference.get(p.event_id)
                if want is None:
                    continue
                checked += 1
                diff = abs(p.score - want)
                max_diff = max(max_diff, diff)
                if diff > atol:
                    if p.event_id not in mismatched and len(examples_) < examples:
                        examples_.append((p.event_id, p.score, want))
                    mismatched.add(p.event_id)
        return cls(
            events=len(ids),
            predicted=len(predictions),
            lost=len(lost_ids),
            duplicated=sum(c - 1 for c in duplicates.values()),
            mismatched=len(mismatched),
            unexpected=len(counts.keys() - ids),
            checked_scores=checked,
            max_abs_diff=max_diff,
            lost_ids=lost_ids[:examples],
            duplicate_ids=dict(list(duplicates.items())[:examples]),
            mismatch_examples=examples_,
        )

    @property
    def exactly_once(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.unexpected == 0

    def summary(self) -> str:
        text = (
            f"events={self.events} predicted={self.predicted} lost={self.lost} "
            f"duplicated={self.duplicated} unexpected={self.unexpected} "
            f"mismatched={self.mismatched}/{self.checked_scores} "
            f"max_abs_diff={self.max_abs_diff:.3g}"
        )
        if self.lost_ids:
            text += f"\n  lost e.g. {self.lost_ids}"
        if self.duplicate_ids:
            text += f"\n  duplicated e.g. {self.duplicate_ids}"
        if self.mismatch_examples:
            text += f"\n  mismatched (id, got, want) e.g. {self.mismatch_examples}"
        return text


def reference_scores(
    events: Sequence[Mapping[str, Any]],
    partition_of: Mapping[str, int],
    spec: Any,
    model: Any,
) -> dict[str, float]:
    """event_id -> score computed offline: the spec's reference features, in each
    partition's order (production order within a partition), scored by ``model``.

    ``partition_of`` maps customer id -> input partition (e.g. from the predictions'
    ``source_partition``); customers missing from it are put on a partition of their
    own, which is exact as long as no event is late (each customer's features depend
    only on its own events; a partition's watermark only decides lateness).
    """
    import pandas as pd

    from driftline.core.events import EventBatch
    from driftline.model.scoring import Scorer
    from support.feature_oracle import reference_features

    frame = EventBatch.from_frame(pd.DataFrame(list(events))).to_frame()
    unknown = {
        c: -1 - i for i, c in enumerate(sorted(set(frame["customer_id"]) - partition_of.keys()))
    }
    frame["partition"] = frame["customer_id"].map(lambda c: partition_of.get(c, unknown.get(c)))
    frame = frame.sort_values("partition", kind="stable")
    features = reference_features(frame, spec)
    scores = Scorer(model).score(features)
    ids = frame.loc[features.index, "event_id"].to_numpy()
    return {str(i): float(s) for i, s in zip(ids, scores, strict=True)}


def partitions_of(predictions: Iterable[Prediction]) -> dict[str, int]:
    """customer id -> source partition, from predictions (raises if one has two)."""
    out: dict[str, int] = {}
    for p in predictions:
        seen = out.setdefault(p.customer_id, p.source_partition)
        if seen != p.source_partition:
            raise AssertionError(
                f"customer {p.customer_id} on partitions {seen} and {p.source_partition}"
            )
    return out


# ------------------------------------------------------------------------------ driving


@dataclass(frozen=True)
class TopicLayout:
    """Where records landed: end offset per partition, and customer (key) -> partition."""

    end_offsets: dict[int, int]
    partition_of: dict[str, int]
    records: int


def topic_layout(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> TopicLayout:
    """Read ``topic`` to EOF once: its end offsets and which partition each key is on.

    End offsets come from the records read, not ListOffsets (wrong on Tansu).
    """
    messages = read_topic(bootstrap, topic, False, expected, timeout)
    if len(messages) < expected:
        raise AssertionError(f"{topic}: {len(messages)} records, expected {expected}")
    ends: dict[int, int] = {}
    keys: dict[str, int] = {}
    for m in messages:
        ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
        if m.key() is not None:
            keys.setdefault(m.key().decode(errors="replace"), m.partition())
    return TopicLayout(ends, keys, len(messages))


def wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    end_offsets: Mapping[int, int],
    timeout: float,
    workers: Sequence[WorkerProcess] = (),
) -> float:
    """Wait until ``group`` committed ``end_offsets`` on every partition; seconds waited.

    Raises if the timeout passes, or if every given worker has exited meanwhile.
    """
    started = time.monotonic()
    deadline = started + timeout
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        committed = committed_offsets(bootstrap, group, topic)
        if all(committed.get(p, -1) >= end for p, end in end_offsets.items()):
            return time.monotonic() - started
        if workers and not any(w.alive for w in workers):
            tails = "\n".join(f"--- {w.name}:\n{w.log_tail()}" for w in workers)
            raise RuntimeError(f"all workers exited before committing {end_offsets}:\n{tails}")
        time.sleep(0.25)
    raise RuntimeError(
        f"group {group} committed {committed}, not {dict(end_offsets)}, after {timeout:g}s"
    )


def committed_all(bootstrap: str, group: str, topic: str, end_offsets: Mapping[int, int]) -> bool:
    committed = committed_offsets(bootstrap, group, topic)
    return all(committed.get(p, -1) >= end for p, end in end_offsets.items())


@dataclass(frozen=True)
class Crash:
    """One SIGKILL: which start it ended, after how long, and how far that start got."""

    start: int
    ready_after_s: float
    delay_s: float
    consumed_before_kill: float
    redelivered: float


def kill_loop(
    worker: WorkerProcess,
    kills: int,
    rng: Any,
    done: Any,
    min_delay: float = 0.3,
    max_delay: float = 2.0,
    ready_timeout: float = 90.0,
    progress_metric: str = "driftline_events_consumed_total",
) -> list[Crash]:
    """Start ``worker`` and SIGKILL it ``kills`` times at random points, restarting it.

    Each start: wait for /readyz, then for progress (``progress_metric`` > 0), then a
    random delay (``rng.uniform(min_delay, max_delay)``), then SIGKILL.  Stops early when
    ``done()`` says there is nothing left to process (a kill then would prove nothing),
    leaving that last start running; otherwise the worker is left killed.
    """
    crashes: list[Crash] = []
    while len(crashes) < kills:
        worker.start()
        ready_after = worker.wait_ready(ready_timeout)
        deadline = time.monotonic() + ready_timeout
        while worker.metric(progress_metric) <= 0:
            if done():
                return crashes
            if time.monotonic() > deadline:
                raise RuntimeError(f"{worker.name} made no progress:\n{worker.log_tail()}")
            if not worker.alive:
                raise RuntimeError(f"{worker.name} exited on its own:\n{worker.log_tail()}")
            time.sleep(0.02)
        delay = rng.uniform(min_delay, max_delay)
        time.sleep(delay)
        if not worker.alive:
            raise RuntimeError(f"{worker.name} exited on its own:\n{worker.log_tail()}")
        metrics = worker.metrics()
        if done():
            return crashes
        worker.kill9()
        crashes.append(
            Crash(
                start=worker.starts,
                ready_after_s=round(ready_after, 2),
                delay_s=round(delay, 2),
                consumed_before_kill=metrics.get(progress_metric, 0.0),
                redelivered=metrics.get("driftline_redelivered_events_total", 0.0),
            )
        )
    return crashes
