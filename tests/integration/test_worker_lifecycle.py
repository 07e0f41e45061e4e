"""Worker processes: graceful SIGTERM mid-stream, restart, and refused models."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from driftline.broker import free_port
from driftline.core.predictions import Prediction
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce
from driftline.simulate import Population

pytestmark = pytest.mark.integration


def start_worker(settings: WorkerSettings, port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "worker",
            "--bootstrap-servers",
            settings.bootstrap_servers,
            "--input-topic",
            settings.input_topic,
            "--output-topic",
            settings.output_topic,
            "--dead-letter-topic",
            settings.dead_letter_topic,
            "--group-id",
            settings.group_id,
            "--registry",
            settings.registry,
            "--tick",
            "off",  # one prediction per event is what this test counts
            "--batch-size",
            "100",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(port),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def consumed(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("driftline_events_consumed_total{")
    )


def test_sigterm_mid_stream_exits_zero_and_a_restart_loses_nothing(
    worker_settings: WorkerSettings, consume_all: Callable[..., list[Any]], tmp_path: Path
) -> None:
    population = Population(n_customers=300, seed=21)
    population.generate_history(days=10)
    events = list(population.stream_events(max_events=20_000))
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)

    port = free_port()
    log = tmp_path / "worker.log"
    first = start_worker(worker_settings, port, log)
    try:
        deadline = time.monotonic() + 60
        while consumed(port) < 2_000 and time.monotonic() < deadline:
            assert first.poll() is None, log.read_text()
            time.sleep(0.05)
        assert consumed(port) >= 2_000, log.read_text()
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
    assert "worker stopped after" in log.read_text()

    second = start_worker(worker_settings, port, log)
    try:
        messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
    ids = collections.Counter(
        msgspec.json.decode(m.value(), type=Prediction).event_id for m in messages
    )
    missing = {e["event_id"] for e in events} - set(ids)
    assert not missing, f"{len(missing)} events without a prediction"
    duplicates = sum(count - 1 for count in ids.values())
    # Graceful stop commits after the last delivered batch: nothing is redelivered.
    assert duplicates == 0, f"{duplicates} duplicate predictions after a graceful stop"


def _worker_refuses(registry: Path, bootstrap: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The worker reaches the broker (it checks that first), then refuses the model."""
    from driftline.cli import main

    code = main(
        [
            "worker",
            "--registry",
            str(registry),
            "--bootstrap-servers",
            bootstrap,
            "--metrics-port",
            "0",
        ]
    )
    assert code == 2
    return capsys.readouterr().err


def test_a_model_with_a_wrong_checksum_is_refused(
    trained_registry: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    capsys: pytest.CaptureFixture[str],
    caplog: Any,
) -> None:
    registry = tmp_path / "models"
    shutil.copytree(trained_registry, registry)
    (artifact,) = registry.glob("churn/*/model.joblib")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    _worker_refuses(registry, kafka_bootstrap, capsys)
    assert "checksum_mismatch" in caplog.text and "sha256" in caplog.text


def test_a_model_with_a_different_feature_list_is_refused(
    trained_registry: Path,
    tmp_path: Path,
    kafka_bootstrap: str,
    capsys: pytest.CaptureFixture[str],
    caplog: Any,
) -> None:
    registry = tmp_path / "models"
    shutil.copytree(trained_registry, registry)
    (metadata_path,) = registry.glob("churn/*/metadata.json")
    metadata = json.loads(metadata_path.read_text())
    metadata["feature_names"] = [*metadata["feature_names"][:-1], "favourite_colour"]
    metadata_path.write_text(json.dumps(metadata))
    _worker_refuses(registry, kafka_bootstrap, capsys)
    assert "feature_mismatch" in caplog.text and "favourite_colour" in caplog.text
