"""What a user sees when something outside Driftline is wrong: one line, exit status 2.

Every test runs the real ``driftline`` CLI as a subprocess and reads its stderr.  A missing
broker is a port nobody listens on; the other cases run against the test broker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from driftline.broker import free_port

pytestmark = pytest.mark.integration


def run_cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 180.0):
    """``driftline ARGV`` with a clean DRIFTLINE_* environment; returns the finished process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *argv],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The only stderr line of a command that failed as a user error (exit 2)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert len(lines) == 1, f"{len(lines)} stderr lines:\n" + "\n".join(lines[:20])
    return lines[0]


@pytest.fixture
def listening_socket() -> Iterator[int]:
    """A port someone else listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "argv",
    [
        ["topics"],
        ["simulate", "--limit", "10", "--days", "5", "--customers", "20", "--no-progress"],
        ["worker", "--registry", "/nonexistent"],
        ["replay", "EVENTS"],
        ["outcomes", "--metrics-port", "0"],
    ],
    ids=["topics", "simulate", "worker", "replay", "outcomes"],
)
def test_no_broker_is_one_line_and_exit_2(argv: list[str], tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    events = tmp_path / "events.csv"
    pd.DataFrame(
        {"customer_id": ["c1"], "event_time": ["2024-01-01T00:00:00Z"], "event_type": ["login"]}
    ).to_csv(events, index=False)
    argv = [str(events) if a == "EVENTS" else a for a in argv]
    done = run_cli(
        *argv,
        "--bootstrap-servers",
        f"127.0.0.1:{port}",
        env={"DRIFTLINE_BROKER_TIMEOUT": "2"},
    )
    assert one_line(done) == (
        f"driftline {argv[0]}: no Kafka broker answered at 127.0.0.1:{port} within 2 s"
    )


def test_librdkafka_log_only_at_debug() -> None:
    port = free_port()
    argv = ["topics", "--bootstrap-servers", f"127.0.0.1:{port}", "--broker-timeout", "2"]
    done = run_cli("--log-level", "debug", *argv)
    assert done.returncode == 2
    assert "Connect to ipv4#127.0.0.1" in done.stderr  # librdkafka's own lines
    assert done.stderr.strip().splitlines()[-1].startswith("driftline topics: no Kafka broker")


def test_replay_missing_file_names_it(kafka_bootstrap: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    done = run_cli("replay", str(missing), "--bootstrap-servers", kafka_bootstrap)
    assert one_line(done) == f"driftline replay: {missing}: no such file"


def test_replay_wrong_columns_names_them(kafka_bootstrap: str, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    pd.DataFrame({"cust": ["c1"], "ts": ["2024-01-01"], "amount": [3.0]}).to_csv(path, index=False)
    line = one_line(run_cli("replay", str(path), "--bootstrap-servers", kafka_bootstrap))
    assert line.startswith(f"driftline replay: {path} has no column(s) customer_id, event_time")
    assert "columns: cust, ts, amount" in line
    # A custom mapping to a column the file does not have: named too.
    line = one_line(
        run_cli(
            "replay", str(path), "--bootstrap-servers", kafka_bootstrap,
            "--column", "customer_id=customer", "--column", "event_time=ts",
            "--constant", "event_type=purchase",
        )
    )  # fmt: skip
    assert line.startswith(f"driftline replay: {path} has no column(s) customer")


def test_replay_column_implies_a_custom_mapping(
    kafka_bootstrap: str,
    tmp_path: Path,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list],
) -> None:
    path = tmp_path / "orders.csv"
    pd.DataFrame(
        {"cust": ["c1", "c2"], "ts": ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]}
    ).to_csv(path, index=False)
    topic = topic_factory(1)
    done = run_cli(
        "replay", str(path), "--bootstrap-servers", kafka_bootstrap, "--input-topic", topic,
        "--column", "customer_id=cust", "--column", "event_time=ts",
        "--constant", "event_type=purchase", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"replayed 2 events from {path}" in done.stdout
    assert len(consume_all(topic, expected=2)) == 2
    # With a preset named explicitly, --column is a contradiction, said in one line.
    line = one_line(
        run_cli(
            "replay", str(path), "--mapping", "cdnow", "--column", "customer_id=cust",
            "--bootstrap-servers", kafka_bootstrap,
        )
    )  # fmt: skip
    assert "--column/--constant make a custom mapping" in line


def test_worker_metrics_port_in_use(
    kafka_bootstrap: str, trained_registry: Path, listening_socket: int
) -> None:
    done = run_cli(
        "worker", "--bootstrap-servers", kafka_bootstrap, "--registry", str(trained_registry),
        "--metrics-host", "127.0.0.1", "--metrics-port", str(listening_socket),
    )  # fmt: skip
    assert one_line(done) == (
        f"driftline worker: metrics port {listening_socket} on 127.0.0.1 is already in use "
        "(choose another with --metrics-port)"
    )


def test_broker_on_a_taken_port(listening_socket: int) -> None:
    done = run_cli("broker", "--port", str(listening_socket), timeout=60)
    assert one_line(done) == (
        f"driftline broker: port 127.0.0.1:{listening_socket} is already in use"
    )


def test_a_property_file_reaches_the_clients(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The same command succeeds without the file and fails with one that makes every
    client speak TLS to the plaintext test broker: the property reached the clients."""
    names = [f"props-{os.getpid()}-{n}" for n in ("in", "out", "dlq")]
    topics = ["--input-topic", names[0], "--output-topic", names[1]]
    argv = ["topics", "--bootstrap-servers", kafka_bootstrap, *topics, "--dead-letter-topic"]
    assert run_cli(*argv, names[2]).returncode == 0
    config = tmp_path / "client.properties"
    config.write_text("# TLS, which the test broker does not speak\nsecurity.protocol=SSL\n")
    done = run_cli(*argv, names[2], "--kafka-config", str(config), "--broker-timeout", "3")
    assert one_line(done) == (
        f"driftline topics: no Kafka broker answered at {kafka_bootstrap} within 3 s"
    )
    # At debug level the properties are shown, secrets masked.
    config.write_text(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=u\n"
        "sasl.password=hunter2-secret\n"
    )
    done = run_cli("--log-level", "debug", *argv, names[2], "--kafka-config", str(config),
                   "--broker-timeout", "2")  # fmt: skip
    assert done.returncode == 2
    assert "'sasl.password': '********'" in done.stderr
    assert "hunter2-secret" not in done.stderr
    # A property librdkafka refuses is one line too, in its own words.
    config.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=NOPE\n")
    line = one_line(run_cli(*argv, names[2], "--kafka-config", str(config)))
    assert line.startswith("driftline topics: Kafka client configuration: ") and "NOPE" in line
    # The same property from the environment.
    done = run_cli(
        *argv, names[2], "--broker-timeout", "3", env={"DRIFTLINE_KAFKA_SECURITY_PROTOCOL": "SSL"}
    )
    assert done.returncode == 2, done.stderr


def test_demo_names_the_taken_port_and_the_worker_log(
    tmp_path: Path, listening_socket: int
) -> None:
    """The demo's worker runs with its output in a log file: the line says where."""
    workdir = tmp_path / "demo"
    done = run_cli(
        "demo", "--workdir", str(workdir), "--customers", "300",
        "--metrics-port", str(listening_socket), "--duration", "5",
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]  # progress bars come before it
    assert last == (
        "driftline demo: worker exited with 2 before it was ready: driftline worker: metrics "
        f"port {listening_socket} on 127.0.0.1 is already in use (choose another with "
        f"--metrics-port) (log: {workdir / 'worker.log'})"
    )
