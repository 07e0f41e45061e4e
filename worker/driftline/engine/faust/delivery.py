"""Producing a batch's results through the Faust app's producer, in the engines' order.

The order is the Kafka engine's at-least-once order: predictions and dead letters are
delivered (every send acknowledged by the broker) before the batch's changelog records
are produced, and the changelog is delivered before the batch's events are acked, so
Faust can commit their offsets.  A snapshot therefore never claims an event whose
prediction could still be lost, and a crash at any point only redelivers (events the
restored state already holds are skipped, as with the Kafka engine).

Dead letters carry the Kafka engine's headers and are cut to fit the same way
(``engine.kafka.dead_letters``).  A dead letter the producer or broker refuses for its
size or content is counted and logged, never fatal (the record stays on the input
topic); any other delivery error fails the batch: its events are not acked, and the
worker stops (exit 3) so that they come again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from faust.exceptions import ProducerSendError

from driftline.engine.faust.records import SourceRecord
from driftline.engine.kafka.dead_letters import dead_letter_headers, fit_dead_letter
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import BatchResult

log = logging.getLogger(__name__)

_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
#: Errors about the record itself: sending it again as it is cannot succeed.
RECORD_ERRORS = (*_TOO_LARGE, CorruptRecordException, InvalidMessageError)


class DeliveryFailed(RuntimeError):
    """Part of a batch was not delivered: its events must not be acked."""


def _record_error(error: BaseException) -> BaseException | None:
    """The record-level cause of a send error, if that is what it is."""
    for candidate in (error, error.__cause__):
        if isinstance(candidate, RECORD_ERRORS):
            found: BaseException = candidate
            return found
    return None


class FaustDelivery:
    """Sends predictions, dead letters and changelog records with a Faust producer."""

    def __init__(
        self,
        producer: Any,
        *,
        output_topic: str,
        dead_letter_topic: str,
        changelog_topic: str,
        source_topic: str,
        worker_id: str,
        record_limit: int,
        metrics: WorkerMetrics,
    ) -> None:
        self.producer = producer
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.changelog_topic = changelog_topic
        self.source_topic = source_topic
        self.worker_id = worker_id
        self.record_limit = record_limit
        self.metrics = metrics

    async def deliver(
        self,
        result: BatchResult,
        records: Sequence[SourceRecord],
        changelog: Sequence[tuple[int, bytes, bytes | None]],
    ) -> None:
        """Predictions and dead letters delivered, then the changelog delivered."""
        send = self.producer.send
        topic = self.output_topic
        sent: list[Awaitable[Any]] = [
            await send(topic, key, value, None, None, None)
            for key, value in zip(result.prediction_keys, result.prediction_values, strict=True)
        ]
        dead = await self._send_dead_letters(result, records)
        await self.producer.flush()
        await self._check(sent, "predictions")
        await self._check_dead_letters(dead)
        if changelog:
            topic = self.changelog_topic
            sent = [await send(topic, key, value, p, None, None) for p, key, value in changelog]
            await self.producer.flush()
            await self._check(sent, "changelog")

    async def _send_dead_letters(
        self, result: BatchResult, records: Sequence[SourceRecord]
    ) -> list[tuple[Awaitable[Any], SourceRecord, str]]:
        if not result.rejected:
            return []
        failed_at = str(int(time.time() * 1000)).encode()
        sent = []
        cut_count = 0
        for r in result.rejected:
            record = records[r.index]
            headers = dead_letter_headers(
                record,  # type: ignore[arg-type]  # SourceRecord has Message's accessors
                r,
                self.source_topic,
                self.worker_id,
                failed_at,
            )
            key, value, headers_out, cut = fit_dead_letter(
                record.key(), record.value(), headers, record.headers(), self.record_limit
            )
            cut_count += cut
            try:
                future = await self.producer.send(
                    self.dead_letter_topic, key, value, None, None, headers_out
                )
            except ProducerSendError as error:
                cause = _record_error(error)
                if cause is None:
                    raise DeliveryFailed(f"dead letter not sent: {error}") from error
                self._give_up(record, r.reason, cause)
                continue
            sent.append((future, record, r.reason))
        if cut_count:
            self.metrics.inc_dead_letters_truncated(cut_count)
        return sent

    async def _check(self, sent: list[Awaitable[Any]], what: str) -> None:
        outcomes = await asyncio.gather(*sent, return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            self.metrics.inc_producer_delivery_errors(len(errors))
            raise DeliveryFailed(f"{len(errors)} {what} undelivered, errors: {errors[:3]}")

    async def _check_dead_letters(
        self, sent: list[tuple[Awaitable[Any], SourceRecord, str]]
    ) -> None:
        outcomes = await asyncio.gather(*(f for f, _, _ in sent), return_exceptions=True)
        for outcome, (_, record, reason) in zip(outcomes, sent, strict=True):
            if not isinstance(outcome, BaseException):
                continue
            cause = _record_error(outcome)
            if cause is None:
                self.metrics.inc_producer_delivery_errors()
                raise DeliveryFailed(f"dead letter undelivered: {outcome!r}")
            self._give_up(record, reason, cause)

    def _give_up(self, record: SourceRecord, reason: str, cause: BaseException) -> None:
        """A dead letter refused for what it is: counted, logged, never fatal."""
        label = "too_large" if isinstance(cause, _TOO_LARGE) else "refused"
        self.metrics.inc_dead_letter_failures(label)
        self.metrics.inc_dead_letters_dropped()
        log.error(
            "dead letter of %s partition %d offset %d (%s) not written (%r); the record is "
            "still on the input topic",
            self.source_topic,
            record.partition(),
            record.offset(),
            reason,
            cause,
        )
