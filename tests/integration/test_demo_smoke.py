"""``driftline demo`` as a user runs it: a subprocess, stopped by Ctrl-C or --duration.

The demo starts its own broker (Tansu by default, Kafka when asked) and a worker process,
so these tests do not use the session broker.  Ctrl-C is simulated as a terminal does it:
SIGINT to the whole foreground process group (the demo and the worker it started; the
broker runs in a session of its own and is stopped by the demo).  Afterwards no process
the demo started may survive.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STATUS = re.compile(r"predictions\s+(\d+)")


class Demo:
    """A ``driftline demo`` subprocess in its own session, its output read in a thread."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftline.cli",
                "demo",
                "--workdir",
                str(workdir),
                "--customers",
                "300",
                "--metrics-port",
                "0",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group, like a shell job
        )
        self.pgid = os.getpgid(self.process.pid)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for chunk in iter(lambda: self.process.stdout.read1(4096), b""):  # type: ignore[union-attr]
            self._chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def predictions(self) -> int:
        """Predictions on the latest status line (status lines are rewritten with '\\r')."""
        counts = [int(n) for n in STATUS.findall(self.output)]
        return counts[-1] if counts else 0

    def wait_for_predictions(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.predictions() == 0:
            assert self.process.poll() is None, f"demo exited early:\n{self.output}"
            assert time.monotonic() < deadline, f"no prediction within {timeout} s:\n{self.output}"
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        """Last resort in a failing test: nothing may outlive it."""
        for pid in descendants(self.process.pid):
            _signal(pid, signal.SIGKILL)
        _signal(-self.pgid, signal.SIGKILL)
        self.process.wait(10)


def _signal(pid: int, sig: int) -> None:
    try:
        if pid < 0:
            os.killpg(-pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> start time (tells a reused pid apart)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            fields = _stat(child)
            if fields is not None:
                found[child] = fields[19]  # starttime
                todo.append(child)
    return found


def alive(pid: int, started: str) -> bool:
    """The same process still exists and has not exited (a zombie has exited)."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def group_alive(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def assert_nothing_survives(demo: Demo, started: dict[int, str]) -> None:
    deadline = time.monotonic() + 5  # the kernel reaps orphans asynchronously
    while True:
        survivors = [pid for pid, start in started.items() if alive(pid, start)]
        survivors += group_alive(demo.pgid)
        if not survivors:
            break
        assert time.monotonic() < deadline, f"processes survived the demo: {survivors}"
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.killpg(demo.pgid, 0)


def test_ctrl_c_stops_the_demo_cleanly_and_leaves_no_process(tmp_path: Path) -> None:
    demo = Demo(tmp_path / "demo")
    try:
        demo.wait_for_predictions(timeout=120)  # it trains a model first
        started = descendants(demo.process.pid)
        cmdlines = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            for pid in started
        }
        assert any("tansu" in c or " broker " in c for c in cmdlines.values()), cmdlines
        assert any(" worker " in c for c in cmdlines.values()), cmdlines

        os.killpg(demo.pgid, signal.SIGINT)  # what a terminal's Ctrl-C does
        code = demo.wait(60)
    except BaseException:
        demo.kill()
        raise
    assert code == 0, demo.output
    assert "worker exited with 0" in demo.output, demo.output
    assert_nothing_survives(demo, started)


def test_duration_stops_the_demo_by_itself(tmp_path: Path) -> None:
    demo = Demo(tmp_path / "demo", "--duration", "6")
    try:
        demo.wait_for_predictions(timeout=120)
        started = descendants(demo.process.pid)
        code = demo.wait(60)
    except BaseException:
        demo.kill()
        raise
    assert code == 0, demo.output
    assert "worker exited with 0" in demo.output, demo.output
    assert demo.predictions() > 0
    assert_nothing_survives(demo, started)


def test_the_demo_runs_on_apache_kafka_when_asked(tmp_path: Path) -> None:
    demo = Demo(tmp_path / "demo", "--broker-kind", "kafka", "--duration", "8")
    try:
        demo.wait_for_predictions(timeout=180)
        started = descendants(demo.process.pid)
        cmdlines = [
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            for pid in started
        ]
        assert any("kafka.Kafka" in c for c in cmdlines), cmdlines
        code = demo.wait(90)
    except BaseException:
        demo.kill()
        raise
    assert code == 0, demo.output
    assert "(Apache Kafka " in demo.output, demo.output
    assert demo.predictions() > 0
    assert_nothing_survives(demo, started)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_demo_whose_worker_stops_consuming_says_stalled_and_fails(tmp_path: Path) -> None:
    """Issue #14: on Tansu the worker stopped consuming minutes into the live stream
    (Tansu answers its fetches empty once a partition holds many batches, see
    ``test_tansu_smoke.py``) while the status line kept saying OK and the demo exited 0.
    Here the demo's own broker is frozen (SIGSTOP), which stops consumption the same way
    in seconds: the worker and its /metrics stay up, "events in" freezes, the producer
    gets ahead.  The demo must say STALLED, fail with its reason and exit 1."""
    demo = Demo(tmp_path / "demo", "--duration", "300", "--stall-timeout", "15")
    broker_pid = 0
    try:
        demo.wait_for_predictions(timeout=120)
        started = descendants(demo.process.pid)
        broker_pid = next(pid for pid in started if "tansu" in _cmdline(pid))
        os.kill(broker_pid, signal.SIGSTOP)
        deadline = time.monotonic() + 90
        while "FAILED" not in demo.output:
            assert demo.process.poll() is None, f"demo exited without failing:\n{demo.output}"
            assert time.monotonic() < deadline, f"no stall reported:\n{demo.output}"
            time.sleep(0.2)
        os.kill(broker_pid, signal.SIGCONT)  # so that the demo's shutdown is quick
        code = demo.wait(150)
    except BaseException:
        if broker_pid:
            _signal(broker_pid, signal.SIGCONT)
        demo.kill()
        raise
    assert code == 1, demo.output
    assert "STALLED: nothing consumed for" in demo.output, demo.output
    assert "driftline demo: FAILED: the worker has consumed nothing for" in demo.output
    assert "on Tansu a fetch slows down" in demo.output
    assert_nothing_survives(demo, started)
