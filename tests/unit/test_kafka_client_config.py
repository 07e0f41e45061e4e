"""User-supplied Kafka client properties: the file format, the environment mapping, the
precedence, and that secrets never reach a log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline.engine.kafka import client_config
from driftline.engine.kafka.client_config import (
    KAFKA_LOGGER,
    KafkaConfigError,
    env_properties,
    is_secret,
    kafka_client_config,
    load_properties,
    masked,
    use_config_file,
)


@pytest.fixture(autouse=True)
def no_file_properties() -> Iterator[None]:
    """The file's properties are process-wide: every test starts and ends without any."""
    use_config_file(None)
    yield
    use_config_file(None)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.properties"
    path.write_text(text)
    return path


def test_properties_file_lines_comments_and_separators(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# a comment\n"
        "! another comment\n"
        "\n"
        "security.protocol=SASL_SSL\n"
        "  sasl.mechanism = SCRAM-SHA-512  \n"
        "sasl.username: alice\n"
        "sasl.password=p=ss:word # not a comment\n"
        "client.id first\n"
        "client.id=second\n",
    )
    assert load_properties(path) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "p=ss:word # not a comment",
        "client.id": "second",  # the last occurrence wins
    }


def test_a_key_without_value_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "security.protocol=SSL\nsasl.username\n")
    with pytest.raises(KafkaConfigError, match=r"line 2.*sasl\.username"):
        load_properties(path)


def test_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError, match=r"nope\.properties: No such file"):
        load_properties(tmp_path / "nope.properties")


def test_environment_names_map_to_dotted_lower_case_properties() -> None:
    environ = {
        "DRIFTLINE_KAFKA_SASL_USERNAME": "alice",
        "DRIFTLINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "DRIFTLINE_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
        "DRIFTLINE_KAFKA_CONFIG": "/etc/driftline/kafka.properties",  # the file, not a property
        "DRIFTLINE_BOOTSTRAP_SERVERS": "kafka:9092",  # a driftline flag, not a property
        "KAFKA_SASL_USERNAME": "bob",
    }
    assert env_properties(environ) == {
        "sasl.username": "alice",
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/etc/ca.pem",
    }


def test_precedence_file_then_environment_then_driftline(tmp_path: Path) -> None:
    use_config_file(
        write(
            tmp_path,
            "bootstrap.servers=from-file:9092\nsasl.username=file-user\n"
            "security.protocol=SASL_SSL\nlinger.ms=100\n",
        )
    )
    environ = {"DRIFTLINE_KAFKA_SASL_USERNAME": "env-user", "DRIFTLINE_KAFKA_LINGER_MS": "7"}
    config = kafka_client_config(
        {"bootstrap.servers": "flag:9092", "group.id": "driftline-scoring"}, environ
    )
    assert config["bootstrap.servers"] == "flag:9092"  # --bootstrap-servers wins
    assert config["group.id"] == "driftline-scoring"
    assert config["sasl.username"] == "env-user"  # env over file
    assert config["security.protocol"] == "SASL_SSL"  # from the file
    assert config["linger.ms"] == "7"  # env over file for what Driftline leaves unset
    assert config["logger"] is KAFKA_LOGGER
    assert client_config.user_properties({}) == {
        "bootstrap.servers": "from-file:9092",
        "sasl.username": "file-user",
        "security.protocol": "SASL_SSL",
        "linger.ms": "100",
    }


def test_without_file_or_environment_only_the_logger_is_added() -> None:
    base = {"bootstrap.servers": "b:9092", "linger.ms": 5}
    assert kafka_client_config(base, {}) == {**base, "logger": KAFKA_LOGGER}


@pytest.mark.parametrize(
    "name",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "sasl.jaas.config",
        "some.future.secret",
        "SASL.PASSWORD",
    ],
)
def test_secrets_are_recognised(name: str) -> None:
    assert is_secret(name)


@pytest.mark.parametrize(
    "name", ["sasl.username", "security.protocol", "ssl.ca.location", "sasl.mechanism"]
)
def test_plain_properties_are_not_secrets(name: str) -> None:
    assert not is_secret(name)


def test_masked_config_hides_secrets_and_callables(caplog: pytest.LogCaptureFixture) -> None:
    config = kafka_client_config(
        {"bootstrap.servers": "b:9092", "error_cb": print},
        {
            "DRIFTLINE_KAFKA_SASL_PASSWORD": "hunter2",
            "DRIFTLINE_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "s3cr3t",
            "DRIFTLINE_KAFKA_SASL_USERNAME": "alice",
        },
    )
    shown = masked(config)
    assert shown["sasl.password"] == shown["sasl.oauthbearer.client.secret"] == "********"
    assert shown["sasl.username"] == "alice"
    assert shown["error_cb"] == "<builtin_function_or_method>"
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("client config %s", shown)
    assert "hunter2" not in caplog.text and "s3cr3t" not in caplog.text
    assert config["sasl.password"] == "hunter2"  # the client itself still gets it
