"""Dead letters that fit where they go, and whose failure never stops the worker.

A rejected record goes to the dead-letter topic with its original key, value and headers
plus Driftline's own headers (``core.predictions``).  Two limits stand between it and the
topic: the producer's ``message.max.bytes`` (librdkafka refuses a larger record in
``produce()``) and the topic's ``max.message.bytes`` (the broker refuses a larger *record
batch*: several small dead letters batched together fail as one).  A 2 MB event, rightly
rejected as oversized, used to be produced whole: the producer raised, the at-least-once
worker exited and crashed again on the same record after every restart, and the
exactly-once worker aborted and rewound to it forever.

Here a dead letter is cut to fit the smaller of the two limits: the value keeps its first
bytes, and headers give the original length and SHA-256 (the key and the original headers
likewise, when they alone are too large).  The worker keeps its producer's ``batch.size``
under the topic's limit (``batch_size_for``), so dead letters batched together fit too.

Should the broker still refuse one (its limit lowered while running, a broker that
reports no limit), the failure is counted (``driftline_dead_letter_failures_total``),
logged, and never stops the worker:

* at-least-once: the batch is committed; the dead letter is lost (counted, logged with
  the source partition and offset, so it can be read again from the input topic);
* exactly-once: a refused record fails its transaction, so the worker rewinds (as for any
  failed transaction) and the batch comes again.  The limit is read again and the dead
  letter retried once, cut to it; refused a second time it is left out of the
  transaction (``driftline_dead_letters_dropped_total``).  At most two aborts per record,
  never a loop.

Errors that are not about the record (a broker that does not answer) are the worker's,
as for predictions: the batch is not committed and comes again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient, ConfigResource

from driftline.core.predictions import (
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_FAILED_AT,
    DLQ_HEADERS_DROPPED,
    DLQ_KEY_BYTES,
    DLQ_KEY_SHA256,
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TIMESTAMP,
    DLQ_SOURCE_TOPIC,
    DLQ_VALUE_BYTES,
    DLQ_VALUE_SHA256,
    DLQ_WORKER,
)
from driftline.engine.kafka.ports import ProducerPort
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import Rejected

log = logging.getLogger(__name__)

#: librdkafka's default ``message.max.bytes``; the worker sets it explicitly.
PRODUCER_MAX_MESSAGE_BYTES = 1_000_000
#: librdkafka's default ``batch.size``.
PRODUCER_BATCH_BYTES = 1_000_000
#: Room kept under a limit for what Kafka adds around a record: the record batch header
#: (61 bytes), the record's own framing and varints, and a safety margin.
FRAMING_BYTES = 512
#: A Kafka header costs its name, its value and two varint lengths (at most 5 bytes each).
HEADER_FRAMING = 10
#: A key longer than this share of the budget is cut (keys are ids; a huge one is poison).
KEY_SHARE = 4

#: Delivery errors that are about the record itself: retrying it as it is cannot succeed.
RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
    }
)
_TOO_LARGE = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG_SIZE}
)
#: Exactly-once: how many transactions a dead letter may fail before it is left out.
ATTEMPTS = 2


def failure_reason(code: int) -> str:
    """Metric label for a record-level failure (fixed vocabulary)."""
    return "too_large" if code in _TOO_LARGE else "refused"


def topic_max_message_bytes(
    bootstrap: str, topic: str, timeout_s: float = 10.0, client: dict[str, Any] | None = None
) -> int | None:
    """The topic's ``max.message.bytes`` as the broker reports it (None: unknown).

    Kafka reports the broker default when the topic has no override; a broker that only
    reports explicit configs (Tansu), or a topic that does not exist yet, gives None.
    """
    from driftline.engine.kafka.client_config import kafka_client_config

    # The user's client properties (SASL, TLS) first, then this call's own.
    admin = AdminClient(kafka_client_config({"bootstrap.servers": bootstrap, **(client or {})}))
    resource = ConfigResource("topic", topic)
    try:
        configs = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(
            timeout_s
        )
    except (KafkaException, TimeoutError, ValueError) as error:
        log.info("dead-letter topic %s: max.message.bytes not readable (%s)", topic, error)
        return None
    entry = configs.get("max.message.bytes")
    if entry is None or entry.value is None:
        return None
    try:
        return int(entry.value)
    except ValueError:
        return None


def batch_size_for(record_limit: int) -> int:
    """``batch.size`` for a producer whose dead letters must fit ``record_limit``.

    The broker checks a topic's limit against the whole record batch, and librdkafka does
    not split a refused batch: small dead letters batched together would all fail.
    """
    return max(1, min(PRODUCER_BATCH_BYTES, record_limit - FRAMING_BYTES))


def _header_bytes(headers: Sequence[tuple[str, bytes | None]]) -> int:
    return sum(len(k) + len(v or b"") + HEADER_FRAMING for k, v in headers)


def fit_dead_letter(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    original_headers: Sequence[tuple[str, bytes | None]] | None,
    record_limit: int,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], bool]:
    """``(key, value, headers, cut)``: the dead letter, cut to fit ``record_limit`` bytes.

    Driftline's headers always stay; then the key (cut when over a quarter of the room),
    the original headers (left off, and counted, when they do not fit beside the key),
    and the value gets what is left.  A cut part keeps its first bytes and gains an
    ``original_bytes``/``sha256`` header pair.  Nothing is copied when all fits.
    """
    room = record_limit - FRAMING_BYTES - _header_bytes(headers)
    extra: list[tuple[str, bytes]] = []
    pair = 2 * HEADER_FRAMING + len(DLQ_VALUE_BYTES) + len(DLQ_VALUE_SHA256) + 64 + 12
    cut = False
    if key is not None and len(key) > max(0, room) // KEY_SHARE:
        keep = max(0, room // KEY_SHARE - pair)
        extra += [
            (DLQ_KEY_BYTES, str(len(key)).encode()),
            (DLQ_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()),
        ]
        key, cut = key[:keep], True
    room -= len(key or b"") + _header_bytes(extra)
    original = list(original_headers or ())
    if original and _header_bytes(original) > room // 2:
        extra.append((DLQ_HEADERS_DROPPED, str(len(original)).encode()))
        room -= _header_bytes(extra[-1:])
        original, cut = [], True
    room -= _header_bytes(original)
    if value is not None and len(value) > room:
        extra += [
            (DLQ_VALUE_BYTES, str(len(value)).encode()),
            (DLQ_VALUE_SHA256, hashlib.sha256(value).hexdigest().encode()),
        ]
        value, cut = value[: max(0, room - pair)], True
    return key, value, [*headers, *extra, *original], cut


def dead_letter_headers(
    record: Message, rejected: Rejected, topic: str, worker_id: str, failed_at: bytes
) -> list[tuple[str, bytes]]:
    """Driftline's headers for a rejected record (the original ones are added after)."""
    timestamp_type, timestamp = record.timestamp()
    headers = [
        (DLQ_SOURCE_TOPIC, topic.encode()),
        (DLQ_SOURCE_PARTITION, str(record.partition()).encode()),
        (DLQ_SOURCE_OFFSET, str(record.offset()).encode()),
        (DLQ_REASON, rejected.reason.encode()),
        (DLQ_ERROR_CLASS, rejected.error_class.encode()),
        (DLQ_ERROR_MESSAGE, rejected.message[:1024].encode("utf-8", "replace")),
        (DLQ_FAILED_AT, failed_at),
        (DLQ_WORKER, worker_id.encode()),
    ]
    if timestamp_type != 0:  # TIMESTAMP_NOT_AVAILABLE
        headers.append((DLQ_SOURCE_TIMESTAMP, str(timestamp).encode()))
    return headers


class DeadLetterWriter:
    """Produces a batch's dead letters, cut to fit, and handles their failures.

    ``producer_limit`` is the producer's ``message.max.bytes``; the topic's own limit is
    read from the broker at construction and again after the broker refused a record.
    ``on_other_error`` gets delivery errors that are not the record's fault (the worker's
    own delivery handling).  Delivery callbacks run on whichever thread flushes.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        source_topic: str,
        worker_id: str,
        producer_limit: int,
        metrics: WorkerMetrics,
        exactly_once: bool,
        on_other_error: Callable[[KafkaError, Message], None],
        topic_limit: Callable[[], int | None] | None = None,
    ) -> None:
        self.topic = topic
        self.source_topic = source_topic
        self.worker_id = worker_id
        self.producer_limit = producer_limit
        self.metrics = metrics
        self.exactly_once = exactly_once
        self._on_other_error = on_other_error
        self._read_topic_limit = topic_limit or (lambda: topic_max_message_bytes(bootstrap, topic))
        self._lock = threading.Lock()
        #: Exactly-once: source (partition, offset) -> transactions its dead letter failed.
        self._failed: dict[tuple[int, int], int] = {}
        self._stale = False
        self.topic_limit = self._read_topic_limit()
        self.record_limit = self._limit()
        if self.topic_limit is not None and self.topic_limit < producer_limit:
            log.warning(
                "dead-letter topic %s accepts records of at most %d bytes: dead letters are "
                "cut to fit, and the producer's batches kept under it",
                topic,
                self.topic_limit,
            )

    def _limit(self) -> int:
        limits = [self.producer_limit]
        if self.topic_limit is not None:
            limits.append(self.topic_limit)
        return min(limits)

    def refresh_if_stale(self) -> None:
        """Read the topic's limit again if the broker refused a dead letter since."""
        if self._stale:
            self.refresh()

    def refresh(self) -> None:
        """Read the topic's limit again (after the broker refused a dead letter)."""
        with self._lock:
            self._stale = False
        limit = self._read_topic_limit()
        if limit is not None:
            self.topic_limit = limit
        self.record_limit = self._limit()
        log.info("dead-letter record limit now %d bytes", self.record_limit)

    def produce(
        self,
        producer: ProducerPort,
        records: Sequence[Message],
        rejected: Sequence[Rejected],
        failed_at: bytes,
    ) -> int:
        """Queue the dead letters; returns how many were cut to fit.

        A dead letter ``produce()`` itself refuses is counted and skipped: it never joined
        the transaction, so nothing else of the batch is affected.
        """
        if not rejected:
            return 0
        self.refresh_if_stale()
        cut_count = 0
        for r in rejected:
            record = records[r.index]
            # A consumed record always has both (None only on records being produced).
            source = (int(record.partition() or 0), int(record.offset() or 0))
            if self.exactly_once and self._failed.get(source, 0) >= ATTEMPTS:
                self._give_up(source, r.reason, "left out of the transaction")
                with self._lock:
                    self._failed.pop(source, None)
                continue
            headers = dead_letter_headers(record, r, self.source_topic, self.worker_id, failed_at)
            key, value, headers_out, cut = fit_dead_letter(
                record.key(), record.value(), headers, _header_list(record), self.record_limit
            )
            cut_count += cut
            on_delivery = self._callback(source, r.reason)
            while True:
                try:
                    producer.produce(
                        self.topic, value, key, headers=headers_out, on_delivery=on_delivery
                    )
                    break
                except BufferError:
                    producer.poll(0.05)  # queue full: let deliveries drain, then retry
                except KafkaException as error:
                    kafka_error = error.args[0] if error.args else None
                    code = kafka_error.code() if isinstance(kafka_error, KafkaError) else None
                    if code not in RECORD_ERRORS:
                        raise
                    self._count_failure(code, source, r.reason, str(kafka_error))
                    self._give_up(source, r.reason, "refused by the producer")
                    break
        if cut_count:
            self.metrics.inc_dead_letters_truncated(cut_count)
        return cut_count

    def _callback(self, source: tuple[int, int], reason: str) -> Callable[..., None]:
        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is None:
                return
            if error.code() not in RECORD_ERRORS:
                self._on_other_error(error, message)
                return
            self._count_failure(error.code(), source, reason, str(error))
            with self._lock:
                self._stale = True
            if self.exactly_once:
                # Its transaction fails: the batch comes again, and so does this record.
                with self._lock:
                    self._failed[source] = self._failed.get(source, 0) + 1
            else:
                self._give_up(source, reason, "the batch is committed without it")

        return delivered

    def _count_failure(self, code: int, source: tuple[int, int], reason: str, text: str) -> None:
        self.metrics.inc_dead_letter_failures(failure_reason(code))
        log.error(
            "dead letter of %s partition %d offset %d (%s) refused: %s",
            self.source_topic,
            source[0],
            source[1],
            reason,
            text,
        )

    def _give_up(self, source: tuple[int, int], reason: str, what: str) -> None:
        self.metrics.inc_dead_letters_dropped()
        log.error(
            "dead letter of %s partition %d offset %d (%s) not written (%s); the record is "
            "still on the input topic",
            self.source_topic,
            source[0],
            source[1],
            reason,
            what,
        )


def _header_list(record: Message) -> list[tuple[str, bytes | None]] | None:
    """A consumed record's headers as pairs (librdkafka gives a consumed record a list)."""
    headers = record.headers()
    if headers is None:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]
