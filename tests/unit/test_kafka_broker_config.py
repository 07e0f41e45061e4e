"""The Kafka broker's generated settings and the bench's broker choice, without a JVM."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline.benchmarks.broker import resolve_broker_kind
from driftline.broker import BrokerError, make_broker
from driftline.kafka_broker import (
    KafkaBroker,
    _cluster_id,
    java_executable,
    kafka_libs,
    kafka_version,
)


def _properties(broker: KafkaBroker) -> dict[str, str]:
    text = broker._server_properties()
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_the_pinned_version_comes_from_the_pom() -> None:
    assert kafka_version() == "4.4.0"


def test_one_node_settings_fit_one_machine(tmp_path: Path) -> None:
    broker = KafkaBroker(port=19092, log_dir=tmp_path, progress=None)
    broker.controller_port = 19093
    props = _properties(broker)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    for internal in ("offsets.topic", "transaction.state.log"):
        assert props[f"{internal}.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_sasl_users_add_a_plain_listener_of_their_own(tmp_path: Path) -> None:
    broker = KafkaBroker(
        port=19092, log_dir=tmp_path, sasl_users={"alice": "secret"}, progress=None
    )
    broker.controller_port, broker.sasl_port = 19093, 19094
    props = _properties(broker)
    assert props["listeners"].endswith(",SASL_PLAINTEXT://127.0.0.1:19094")
    assert props["sasl.enabled.mechanisms"] == "PLAIN"
    assert 'user_alice="secret"' in props["listener.name.sasl_plaintext.plain.sasl.jaas.config"]
    assert broker.sasl_bootstrap == "127.0.0.1:19094"
    with pytest.raises(BrokerError, match="no SASL listener"):
        _ = KafkaBroker(progress=None).sasl_bootstrap


def test_properties_override_the_defaults(tmp_path: Path) -> None:
    broker = KafkaBroker(
        log_dir=tmp_path, properties={"num.io.threads": "8", "x.y": "z"}, progress=None
    )
    props = _properties(broker)
    assert props["num.io.threads"] == "8" and props["x.y"] == "z"


def test_cluster_ids_are_kafka_uuids_never_read_as_flags() -> None:
    ids = {_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_without_java_the_error_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(BrokerError, match="Java not found"):
        java_executable()


def test_auto_benchmarks_on_tansu_without_java_and_says_why(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    said: list[str] = []
    assert resolve_broker_kind("auto", said.append) == "tansu"
    assert said and "Java not found" in said[0]
    assert resolve_broker_kind("kafka", said.append) == "kafka"


def test_unknown_kinds_and_tansu_storage_are_refused() -> None:
    with pytest.raises(BrokerError, match="unknown broker kind"):
        make_broker("redpanda")
    with pytest.raises(BrokerError, match="--data-dir needs --kind kafka"):
        make_broker("tansu", data_dir="/tmp/x")


def test_without_maven_an_empty_cache_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRIFTLINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn on it
    with pytest.raises(BrokerError, match=r"Maven \(mvn\) not found.*apt-get install maven"):
        kafka_libs(progress=None)


def test_an_unresolvable_artifact_is_named_not_hidden(monkeypatch, tmp_path: Path) -> None:
    """A fake mvn that fails as Maven does: the error quotes Maven's [ERROR] line."""
    fake = tmp_path / "bin" / "mvn"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho '[INFO] Scanning'\n"
        "echo '[ERROR] Failed to execute goal on project x: Could not resolve dependencies "
        "for project x: org.apache.kafka:kafka_2.13:jar:4.4.0 was not found'\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("DRIFTLINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(fake.parent))
    with pytest.raises(BrokerError, match=r"kafka_2\.13:jar:4\.4\.0 was not found"):
        kafka_libs(progress=None)
    assert not list((tmp_path / "cache").glob("kafka/*/complete"))  # nothing half-fetched
