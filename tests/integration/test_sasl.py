"""A secured cluster: the worker with SASL credentials works end to end, without them it
stops at once with one line.

The broker is Apache Kafka with a SASL_PLAINTEXT/PLAIN listener beside its plain one
(``KafkaBroker(sasl_users=...)``).  The test itself sets up topics and reads results on
the plain listener, as an administrator would; the worker only ever sees the SASL one,
with its credentials in a ``--kafka-config`` file.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline.benchmarks.worker_process import WorkerProcess, killed_on_exit
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.event_producer import produce
from driftline.kafka_broker import KafkaBroker
from driftline.simulate import Population
from support.topic_reading import read_predictions

pytestmark = pytest.mark.integration

USER, PASSWORD = "driftline-worker", "correct horse battery staple"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, broker_source: str) -> Iterator[KafkaBroker]:
    if broker_source == "tansu":
        pytest.skip("Tansu has no SASL; the session runs on Tansu")
    with KafkaBroker(
        log_dir=tmp_path_factory.mktemp("sasl-broker"), sasl_users={USER: PASSWORD}, progress=None
    ) as broker:
        yield broker


def _properties(path: Path, password: str) -> Path:
    path.write_text(
        "# a secured cluster\n"
        "security.protocol=SASL_PLAINTEXT\n"
        "sasl.mechanism=PLAIN\n"
        f"sasl.username={USER}\n"
        f"sasl.password={password}\n"
    )
    return path


def test_a_worker_with_credentials_scores_every_event_on_a_sasl_listener(
    secured: KafkaBroker, trained_registry: Path, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    names = (f"events-{suffix}", f"predictions-{suffix}", f"dlq-{suffix}")
    ensure_topics(secured.bootstrap, [TopicSpec(names[0], 2), TopicSpec(names[1], 2)])
    ensure_topics(secured.bootstrap, [TopicSpec(names[2], 1)])
    population = Population(n_customers=100, seed=5)
    population.generate_history(days=20)
    events = list(population.stream_events(max_events=1_000))
    produce(secured.bootstrap, names[0], events)
    config = _properties(tmp_path / "client.properties", PASSWORD)
    worker = WorkerProcess(
        secured.sasl_bootstrap,
        *names,
        group=f"g-{suffix}",
        registry=trained_registry,
        extra_args=["--kafka-config", str(config)],
        log_path=tmp_path / "worker.log",
    )
    with killed_on_exit(worker), worker:
        worker.wait_ready(90)
        predictions = read_predictions(secured.bootstrap, names[1], expected=len(events))
        assert worker.sigterm(timeout=60) == 0, worker.log_tail()
    assert {p.event_id for p in predictions} == {e["event_id"] for e in events}
    assert PASSWORD not in worker.log_text()


@pytest.mark.parametrize("password", ["wrong password", None], ids=["wrong", "none"])
def test_a_worker_without_valid_credentials_stops_with_one_line(
    secured: KafkaBroker, trained_registry: Path, tmp_path: Path, password: str | None
) -> None:
    extra = []
    if password is not None:
        extra = ["--kafka-config", str(_properties(tmp_path / "client.properties", password))]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "worker",
            "--bootstrap-servers",
            secured.sasl_bootstrap,
            "--registry",
            str(trained_registry),
            "--metrics-port",
            "0",
            "--broker-timeout",
            "15",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if password is not None:
        assert "authentication" in lines[0].lower(), lines[0]
        assert password not in lines[0]
    else:  # a plain client on a SASL port: the broker hangs up on it
        assert secured.sasl_bootstrap in lines[0], lines[0]
