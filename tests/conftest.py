"""Shared fixtures: one Apache Kafka broker per test session, unique topics per test.

Broker choice, most explicit first:

1. ``KAFKA_BOOTSTRAP_SERVERS`` set: use that cluster (an existing Kafka);
2. ``DRIFTLINE_TEST_BROKER`` = ``kafka`` | ``docker`` | ``tansu``: that kind;
3. otherwise ``kafka``: Apache Kafka on the JVM (``driftline.kafka_broker``), started
   once for the session (the JVM takes seconds).  If Java or the jars are missing the
   session fails saying so: it never falls back to another broker silently.

``docker`` runs Kafka in KRaft mode through testcontainers (needs a Docker engine);
``tansu`` runs the whole suite on the pip-only Tansu broker, which hides nothing from
``read_committed`` readers, so the exactly-once checks then only xfail.  Tansu keeps its
own smoke tests on every run (``tansu_bootstrap``): the demo path and one end-to-end test.

Tests never share topics or consumer groups (uuid suffixes), so they are independent of
order and of whatever an earlier test or run left on the broker.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from driftline.engine.kafka.admin import TopicSpec, ensure_topics, wait_for_broker

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


def _require_shared(*parts: str) -> Path:
    """Path under ``../shared``, or skip the test saying why (a fresh clone lacks it)."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(reason=f"../shared absent: {path} not found (real data lives outside the repo)")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Any test that needs the broker is an integration test, marked or not."""
    for item in items:
        if {"kafka_bootstrap", "tansu_bootstrap"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` relative to the repo root (may not exist: see ``require_shared``)."""
    return SHARED_DIR


@pytest.fixture(scope="session")
def require_shared() -> Callable[..., Path]:
    """``require_shared("data", "cdnow", "cdnow_master.csv") -> Path``, else skip."""
    return _require_shared


def _docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


#: ``DRIFTLINE_TEST_BROKER`` values.
TEST_BROKERS = ("kafka", "docker", "tansu")


def _broker_source() -> str:
    """Which broker the session uses: "external", "kafka", "docker" or "tansu"."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    chosen = os.environ.get("DRIFTLINE_TEST_BROKER", "kafka").strip().lower()
    if chosen not in TEST_BROKERS:
        raise pytest.UsageError(
            f"DRIFTLINE_TEST_BROKER={chosen!r}: choose one of {', '.join(TEST_BROKERS)}"
        )
    if chosen == "docker" and not _docker_available():
        raise pytest.UsageError("DRIFTLINE_TEST_BROKER=docker but no Docker engine answers")
    return chosen


@pytest.fixture(scope="session")
def broker_source() -> str:
    return _broker_source()


@pytest.fixture(scope="session")
def broker_times_out_transactions(broker_source: str) -> bool:
    """Does the broker abort a transaction its dead producer left open?

    Kafka does after ``transaction.timeout.ms``; Tansu never does.
    """
    return broker_source != "tansu"


@pytest.fixture(scope="session")
def strict_exactly_once(broker_source: str) -> bool:
    """Exactly-once checks are strict (no xfail) on every broker but Tansu."""
    return broker_source != "tansu"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory, broker_source: str) -> Iterator[str]:
    """Bootstrap servers of the session's broker (see the module docstring for which)."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if broker_source == "external" and configured:
        wait_for_broker(configured, timeout=30)  # fail here, clearly, not in every test
        yield configured
        return
    if broker_source == "docker":
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # older testcontainers layout
            from testcontainers.kafka import KafkaContainer

        container = KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft()
        container.start()
        try:
            yield container.get_bootstrap_server()
        finally:
            container.stop()
        return
    from driftline.broker import BrokerError, make_broker

    # Log (and Kafka's storage) under pytest's temp dir: kept after the run for a post-mortem.
    broker = make_broker(broker_source, log_dir=tmp_path_factory.mktemp("broker"))
    try:
        broker.start()
    except BrokerError as error:
        pytest.exit(f"the session's {broker_source} broker did not start: {error}", returncode=3)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def tansu_bootstrap(
    tmp_path_factory: pytest.TempPathFactory, broker_source: str, kafka_bootstrap: str
) -> Iterator[str]:
    """A Tansu broker for the pip-only smoke tests (the session's own when it is Tansu)."""
    if broker_source == "tansu":
        yield kafka_bootstrap
        return
    from driftline.broker import EmbeddedBroker

    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("tansu")) as broker:
        yield broker.bootstrap


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """``make(partitions=1, prefix="t", config=None) -> name``: a fresh, unique topic."""

    def make(
        partitions: int = 1, prefix: str = "t", config: Mapping[str, str] | None = None
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions, dict(config or {}))])
        return name

    return make


@pytest.fixture
def unique_group() -> str:
    """A consumer group id no other test uses (append a suffix for more than one)."""
    return f"g-{uuid.uuid4().hex[:12]}"


def consumer_config(bootstrap: str, group: str, **extra: Any) -> dict[str, Any]:
    """Consumer settings for tests: fast group joins, read from the start, see EOFs."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "session.timeout.ms": 6000,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        # Tansu's high watermark is unreliable, so "caught up" is EOF on every partition.
        "enable.partition.eof": True,
        "logger": logging.getLogger("driftline.kafka"),
        **extra,
    }


@pytest.fixture
def consume_all(kafka_bootstrap: str, unique_group: str) -> Callable[..., list[Any]]:
    """``consume(topic, expected, timeout=60) -> messages``: read a topic to its end.

    Stops once at least ``expected`` messages arrived *and* every partition reported EOF
    after its last message, so extra (duplicate) messages would be caught, not ignored.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException

    def consume(topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
        consumer = Consumer(consumer_config(kafka_bootstrap, f"{unique_group}-{topic}"))
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        at_end: set[int] = set()
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        consumer.subscribe([topic])
        try:
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                        if len(messages) >= expected and at_end >= set(partitions):
                            break
                        continue
                    raise KafkaException(error)
                at_end.discard(message.partition())
                messages.append(message)
        finally:
            consumer.close()
        return messages

    return consume
