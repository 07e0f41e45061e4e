"""The demo's worker process: its command line, start, readiness and stop.

Split from demo.py (which runs the whole show) so that it stays readable; the worker is
the product's own ``driftline worker``, run with the flags the demo needs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from driftline.commands._errors import CommandError
from driftline.config import CONSUMER_GROUP, TopicNames

#: The worker's retrain-requests topic in the demo.
RETRAIN_TOPIC = "retrain-requests"


def _start_worker(
    bootstrap: str,
    registry: Path,
    port: int,
    workdir: Path,
    kafka_config: str | None = None,
    **flags: Any,
) -> subprocess.Popen[bytes]:
    """The worker process, run with :func:`worker_command`'s command line (``flags``:
    its keyword arguments)."""
    log = open(workdir / "worker.log", "ab")  # noqa: SIM115 - owned by the child's lifetime
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        worker_command(bootstrap, registry, port, kafka_config, **flags),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def worker_command(
    bootstrap: str,
    registry: Path,
    port: int,
    kafka_config: str | None = None,
    *,
    drift: bool = True,
    retrain_persistence_s: float = 30.0,
    names: TopicNames | None = None,
    group_id: str = CONSUMER_GROUP,
    retrain_topic: str = RETRAIN_TOPIC,
    events_per_day: float | None = None,
    tick_from_ms: int | None = None,
    fetch_wait_max_ms: int | None = None,
    features: Path | None = None,
) -> list[str]:
    """The demo's ``driftline worker`` command line.  Demo-specific flags: drift on; a
    short retrain persistence; the false-alarm budget counted in ``events_per_day`` (the
    demo's events per wall-clock day, see :data:`MAX_DEMO_EVENTS_PER_DAY`; without it
    the worker counts in the reference's events per simulated day, which the demo streams
    in about a second); a replay jump as coarse as the history's pre-log account events
    (one per 60 days), so the warm-up replay of them is not refused as future-dated;
    ticks from ``tick_from_ms`` (the live stream's start) on, so the warm-up replay of
    the history does not publish a year of daily re-scores nobody reads; on Tansu, a
    longer ``fetch_wait_max_ms`` (:func:`~driftline.commands._demo_stall.
    worker_fetch_wait_ms`)."""
    names = names or TopicNames()
    budget = ["--drift-events-per-day", repr(float(events_per_day))] if events_per_day else []
    return [
        sys.executable,
        "-m",
        "driftline.cli",
        "worker",
        "--bootstrap-servers",
        bootstrap,
        "--registry",
        str(registry),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(port),
        "--max-replay-jump",
        "61d",
        "--input-topic",
        names.input,
        "--output-topic",
        names.output,
        "--dead-letter-topic",
        names.dead_letter,
        "--group-id",
        group_id,
        "--retrain-topic",
        retrain_topic,
        *(
            ["--drift", "--retrain-persistence", str(retrain_persistence_s), *budget]
            if drift
            else []
        ),
        *(["--kafka-config", kafka_config] if kafka_config else []),
        *(["--tick-from", str(tick_from_ms)] if tick_from_ms is not None else []),
        *(["--fetch-wait-max-ms", str(fetch_wait_max_ms)] if fetch_wait_max_ms else []),
        *(["--features", str(features)] if features else []),
    ]


def _stop_worker(worker: subprocess.Popen[bytes], grace_s: float = 0.0) -> int:
    """Stop the worker gracefully.  ``grace_s``: it got the terminal's SIGINT itself and
    is finishing its batch; a SIGTERM sent while it exits (its handlers already gone)
    would kill it (-15), so it is given that long first."""
    if grace_s > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return worker.wait(grace_s)
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            return worker.wait()
    return worker.returncode


def _last_line(path: Path) -> str:
    """The worker's last log line: with the CLI's one-line errors, the reason it stopped."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "nothing logged"


def _wait_ready(
    port: int, worker: subprocess.Popen[bytes], stop: threading.Event, log_path: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stop.is_set():
        if worker.poll() is not None:
            raise CommandError(
                f"worker exited with {worker.returncode} before it was ready: "
                f"{_last_line(log_path)} (log: {log_path})"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
