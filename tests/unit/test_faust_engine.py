"""The Faust engine's pieces that need no broker: records, partitioner, refusals."""

from __future__ import annotations

import zlib

import pytest
from confluent_kafka import Message

from driftline.cli import main
from driftline.engine.faust.records import SourceRecord, consistent_partition, raw_batch
from driftline.engine.faust.worker import unsupported
from driftline.engine.kafka.dead_letters import dead_letter_headers, fit_dead_letter
from driftline.engine.kafka.worker import WorkerSettings
from driftline.processor import Rejected


class _FaustMessage:
    """What Faust's aiokafka driver hands a stream: the timestamp in float seconds."""

    def __init__(self, timestamp: float | None) -> None:
        self.partition, self.offset = 3, 41
        self.key, self.value = b"c001", b'{"event_id": 1'
        self.timestamp = timestamp
        self.headers = [("origin", b"app")]


@pytest.mark.parametrize("timestamp_ms", [1_733_380_000_123, None])
def test_a_dead_letter_gets_the_same_headers_from_a_faust_record_as_from_librdkafka(
    timestamp_ms: int | None,
) -> None:
    """Both engines build dead letters with the same functions; a Faust record must
    answer them as a confluent-kafka ``Message`` of the same record does."""
    faust_message = _FaustMessage(None if timestamp_ms is None else timestamp_ms / 1000.0)
    record = SourceRecord.of(faust_message)
    message = Message(
        topic="events",
        partition=3,
        offset=41,
        key=b"c001",
        value=b'{"event_id": 1',
        headers=[("origin", b"app")],
        timestamp=(0, -1) if timestamp_ms is None else (1, timestamp_ms),
    )
    rejected = Rejected(0, "malformed_json", "decode", "unexpected end of data")
    # SourceRecord answers the accessors of confluent-kafka's Message that this function reads.
    ours = dead_letter_headers(record, rejected, "events", "w1", b"1")  # type: ignore[arg-type]
    theirs = dead_letter_headers(message, rejected, "events", "w1", b"1")
    assert ours == theirs
    assert fit_dead_letter(
        record.key(), record.value(), ours, record.headers(), 1_000_000
    ) == fit_dead_letter(message.key(), message.value(), theirs, message.headers(), 1_000_000)


def test_raw_batch_columns_come_from_the_records() -> None:
    records = [SourceRecord(p, o, b"k", b"v", 1000 + o, None) for p, o in [(0, 5), (2, 9), (0, 6)]]
    raw = raw_batch("events", records)
    assert raw.partitions.tolist() == [0, 2, 0]
    assert raw.offsets.tolist() == [5, 9, 6]
    assert raw.timestamps is not None and raw.timestamps.tolist() == [1005, 1009, 1006]


def test_a_keyed_record_goes_where_librdkafka_puts_it() -> None:
    """librdkafka's default partitioner (consistent_random): crc32 of the key."""
    partitions = [3, 0, 2, 1]  # in any order
    for key in (b"c000001", b"c999", b"x" * 100):
        assert consistent_partition(key, partitions, partitions) == zlib.crc32(key) % 4
    assert consistent_partition(None, partitions, [2]) == 2


def test_what_the_faust_engine_does_not_do_is_refused_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert unsupported(WorkerSettings()) == []
    missing = unsupported(WorkerSettings(exactly_once=True, drift=True, scoring_process=True))
    assert [m.split()[0] for m in missing] == ["--exactly-once", "--drift", "--scoring-process"]
    code = main(["worker", "--engine", "faust", "--exactly-once", "--metrics-port", "0"])
    assert code == 2
    assert "--engine faust does not support --exactly-once" in capsys.readouterr().err
