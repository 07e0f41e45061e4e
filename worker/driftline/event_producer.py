"""Producing events to Kafka at a given rate, in event-time order or as fast as possible.

Apart from the simulator (:mod:`driftline.simulate`) because any source of events uses
it: the simulator's history and live stream, ``driftline replay``'s recorded logs, the
demo, and the benchmarks.  Records are keyed by customer id (so one customer's events
stay in order on one partition), paced by a token bucket, and every delivery is
confirmed: a record that failed is an error (:class:`ProduceError`), never a silent drop.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import msgspec

from driftline.core.events import CustomerEvent
from driftline.engine.kafka.client_config import kafka_client_config

__all__ = ["ProduceError", "produce", "produce_records", "progress_bar"]


class ProduceError(RuntimeError):
    """Some records were not delivered (the message quotes the first error)."""


def progress_bar(total: int | None, unit: str, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, unit=unit, desc=desc, disable=not enabled, file=sys.stderr, smoothing=0.1
    )


class _TokenBucket:
    """Admit ``rate`` records per second on average, with bursts of ``burst`` records.

    A bucket (rather than a fixed sleep per record) keeps the long-run rate exact even
    though each ``wait`` is coarse, and lets the producer batch while it waits.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 20.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def wait(self, idle: Callable[[float], object]) -> None:
        """Take one token, calling ``idle(seconds)`` (e.g. producer.poll) while short."""
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            idle((1.0 - self.tokens) / self.rate)


def _sleep_polling(producer: Any, seconds: float, stop: threading.Event | None = None) -> None:
    """Sleep while serving delivery callbacks (poll returns early on events)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop is not None and stop.is_set():
            return
        producer.poll(min(left, 0.1))


def produce_records(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes, int | None]],
    rate: float | None = None,
    speedup: float | None = None,
    limit: int | None = None,
    progress: bool = False,
    total: int | None = None,
    producer_config: Mapping[str, Any] | None = None,
    flush_timeout: float = 60.0,
    desc: str = "produce",
    stop: threading.Event | None = None,
) -> int:
    """Produce ``(key, value, event_time_ms)`` records; return how many were delivered.

    Pacing: ``rate`` caps records per second (token bucket); ``speedup`` replays event
    time that many times faster than real time (e.g. 86400: one day per second), which
    needs ``event_time_ms`` on each record.  Both may be combined; neither means as fast
    as the broker takes them.  A full local queue (``BufferError``) is handled by polling
    and retrying, never by dropping.  Raises ``ProduceError`` if any record failed.

    Stopping early: set ``stop`` (e.g. from a signal handler) to finish gracefully, flush
    and return the count.  A KeyboardInterrupt still flushes what was queued before it
    propagates, so records handed to the producer are not silently lost.
    """
    from confluent_kafka import KafkaError, Producer

    config: dict[str, Any] = kafka_client_config(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "enable.idempotence": True,  # retries cannot duplicate or reorder a customer's events
            "queue.buffering.max.messages": 200_000,
            **(producer_config or {}),
        }
    )
    producer = Producer(config)
    delivered = 0
    failures: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        nonlocal delivered
        if error is None:
            delivered += 1
        else:
            failures.append(error.str())

    def idle(seconds: float) -> None:
        _sleep_polling(producer, seconds, stop)

    bucket = _TokenBucket(rate) if rate else None
    wall0: float | None = None
    event0: int | None = None
    sent = 0
    bar_total = total if limit is None else (limit if total is None else min(limit, total))
    bar = progress_bar(total=bar_total, unit="ev", desc=desc, enabled=progress)
    unreported = 0
    remaining = 0
    try:
        try:
            for key, value, event_ms in records:
                if (limit is not None and sent >= limit) or failures:
                    break
                if bucket is not None:
                    bucket.wait(idle)
                if speedup and event_ms is not None:
                    if wall0 is None or event0 is None:
                        wall0, event0 = time.monotonic(), event_ms
                    due = wall0 + (event_ms - event0) / 1000.0 / speedup
                    if (ahead := due - time.monotonic()) > 0:
                        idle(ahead)
                if stop is not None and stop.is_set():
                    break
                while True:
                    try:
                        producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.05)  # local queue full: let deliveries drain, retry
                sent += 1
                unreported += 1
                if unreported >= 1_000:
                    producer.poll(0)
                    bar.update(unreported)
                    unreported = 0
        finally:
            remaining = producer.flush(flush_timeout)
        bar.update(unreported)
    finally:
        bar.close()
    if failures:
        raise ProduceError(f"{len(failures)} record(s) failed to deliver; first: {failures[0]}")
    if remaining:
        raise ProduceError(f"{remaining} record(s) still undelivered after {flush_timeout:g}s")
    return delivered


_ENCODER = msgspec.json.Encoder()


def produce(
    bootstrap: str,
    topic: str,
    events_iter: Iterable[Mapping[str, Any] | CustomerEvent],
    rate: float | None = None,
    limit: int | None = None,
    progress: bool = False,
    producer_config: Mapping[str, Any] | None = None,
    flush_timeout: float = 60.0,
    stop: threading.Event | None = None,
) -> int:
    """Produce events (dicts or ``CustomerEvent``) keyed by customer id; return the count.

    The key is the customer id so that all of a customer's events land on one partition,
    in order, which the worker's per-customer state relies on.
    """

    def records() -> Iterator[tuple[bytes, bytes, int | None]]:
        for event in events_iter:
            when: object
            if isinstance(event, CustomerEvent):
                customer, when = event.customer_id, event.event_time
            else:
                customer, when = event["customer_id"], event.get("event_time")
            yield (
                str(customer).encode(),
                _ENCODER.encode(event),
                when if isinstance(when, int) else None,
            )

    return produce_records(
        bootstrap,
        topic,
        records(),
        rate=rate,
        limit=limit,
        progress=progress,
        producer_config=producer_config,
        flush_timeout=flush_timeout,
        desc=f"produce {topic}",
        stop=stop,
    )
