"""``driftline worker`` as a child process, for ``driftline bench latency``.

Why it ships: the latency benchmark measures a real worker process, started as an
operator starts it (``python -m driftline.cli worker ...``), from an event's send to its
prediction read, and reads the batch sizes the worker chose from its own ``/metrics``.
The integration tests drive the same class for their fault scenarios (SIGKILL loops,
SIGTERM mid-transaction, restarts under the same id), so the benchmark and the tests
start a worker in one way.

``WorkerProcess`` runs the worker as a child that can be killed with SIGKILL (no cleanup
runs: the real crash), stopped with SIGTERM, probed on ``/readyz`` and ``/healthz`` and
scraped on ``/metrics``.  Every process started here is killed (SIGKILL) when its context
manager exits on an exception, and at interpreter exit; on Linux a worker also gets a
parent-death signal, so it cannot outlive a SIGKILLed parent either.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from driftline._subprocess import die_with_parent as child_dies_with_parent
from driftline.broker import free_port

__all__ = ["WorkerProcess", "killed_on_exit", "rss_kb"]

log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()


def rss_kb(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS`` in /proc), or None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class WorkerProcess:
    """One ``driftline worker`` subprocess; ``start()`` again after it died to restart it.

    Output (stdout and stderr) is appended to ``log_path`` across restarts, with a marker
    line per start.  Each start binds the HTTP endpoints to a fresh free port on
    127.0.0.1 (``metrics_port`` pins one instead).  ``extra_args`` go last on the command
    line (``["--exactly-once", "--batch-size", "200"]``).

    Ticks (scheduled re-scoring, ``--tick``) are off unless ``extra_args`` ask for them:
    the fault scenarios and the latency benchmark count and time the predictions of
    events, one per event; a simulated stream spans days of event time, and the daily
    ticks of ``driftline worker``'s default would add predictions of another kind.
    """

    def __init__(
        self,
        bootstrap: str,
        input_topic: str,
        output_topic: str,
        dead_letter_topic: str,
        group: str,
        registry: str | os.PathLike[str],
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        *,
        model_name: str = "churn",
        metrics_port: int | None = None,
        name: str | None = None,
        worker_id: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.input_topic = input_topic
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.group = group
        self.registry = str(registry)
        self.extra_args = list(extra_args)
        self.model_name = model_name
        self.name = name or f"worker-{uuid.uuid4().hex[:6]}"
        #: Stable across restarts, like a supervisor restarting the same instance; the
        #: worker derives its transactional.id from it, so a restart fences the old one.
        self.worker_id = worker_id or self.name
        self.log_path = Path(log_path) if log_path is not None else None
        self._fixed_port = metrics_port
        self.port: int = metrics_port or 0
        self._env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._recorded: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.starts = 0
        self.started_at: float | None = None
        self.exit_codes: list[int] = []

    # -- lifecycle ----------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "driftline.cli",
            "worker",
            "--bootstrap-servers",
            self.bootstrap,
            "--input-topic",
            self.input_topic,
            "--output-topic",
            self.output_topic,
            "--dead-letter-topic",
            self.dead_letter_topic,
            "--group-id",
            self.group,
            "--registry",
            self.registry,
            "--model-name",
            self.model_name,
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(self.port),
            "--worker-id",
            self.worker_id,
            *([] if "--tick" in self.extra_args else ["--tick", "off"]),
            *self.extra_args,
        ]

    def start(self) -> WorkerProcess:
        """Start the process (it must not be running); returns at once, see ``wait_ready``."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        self.port = self._fixed_port or free_port()
        self.starts += 1
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("ab")
            self._log_file.write(
                f"\n===== {self.name} start #{self.starts} at {time.time():.3f} "
                f"port {self.port}: {' '.join(self.extra_args)}\n".encode()
            )
            self._log_file.flush()
        out: Any = self._log_file if self._log_file is not None else subprocess.DEVNULL
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self._env},
            start_new_session=True,  # a Ctrl-C aimed at pytest is not a SIGINT to it
            preexec_fn=child_dies_with_parent(signal.SIGKILL),
            close_fds=True,
        )
        if self._log_file is not None:  # the child has its own descriptor now
            self._log_file.close()
            self._log_file = None
        self.started_at = time.monotonic()
        _LIVE.add(self)
        return self

    def restart(self) -> WorkerProcess:
        """SIGKILL it if it still runs, then start it again."""
        if self.alive:
            self.kill9()
        return self.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    @property
    def transactional_id(self) -> str:
        """The transactional id this worker uses with ``--exactly-once``."""
        from driftline.engine.kafka.worker import transactional_id

        args = self.extra_args
        flag = "--group-instance-id"
        identity = args[args.index(flag) + 1] if flag in args else self.worker_id
        return transactional_id(self.group, identity)

    def kill9(self) -> int | None:
        """SIGKILL the process and reap it; returns its status (-9), None if none ran."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
        code = process.wait()
        self._reap()
        return code

    def sigterm(self, wait: bool = True, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful stop); with ``wait``, the exit code, SIGKILL after ``timeout``.

        A worker that ignores SIGTERM for ``timeout`` seconds is killed and the returned
        code is -9, so a test asserting ``== 0`` fails rather than hangs.
        """
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not wait:
            return None
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("%s ignored SIGTERM for %.0fs: SIGKILL", self.name, timeout)
            process.kill()
            code = process.wait()
        self._reap()
        return code

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for the process to exit by itself; its exit code, or None on timeout."""
        if self._process is None:
            return None
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reap()
        return code

    def _reap(self) -> None:
        """Record the exit code of a finished process (once)."""
        process = self._process
        if process is not None and process.poll() is not None:
            if process is not self._recorded:
                self.exit_codes.append(process.returncode)
                self._recorded = process
            _LIVE.discard(self)

    def close(self, graceful: bool = True, timeout: float = 30.0) -> None:
        """Stop it if still running (SIGTERM then SIGKILL, or SIGKILL at once)."""
        if self.alive:
            if graceful:
                self.sigterm(wait=True, timeout=timeout)
            else:
                self.kill9()
        self._reap()

    def __enter__(self) -> WorkerProcess:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(graceful=exc_type is None)

    def __repr__(self) -> str:
        state = f"pid {self.pid} alive" if self.alive else f"exited {self.returncode}"
        return f"WorkerProcess({self.name}, {state}, port {self.port}, starts {self.starts})"

    # -- probes -------------------------------------------------------------------------

    def _get(self, path: str, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """``(status, body)`` of GET ``path``, or None when nothing answers."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=timeout
            ) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            # The body of an error status is read after the status line; a worker busy
            # starting up can send one and not the other within the timeout.
            try:
                return error.code, error.read()
            except (OSError, ValueError):
                return None
        except (OSError, ValueError):
            return None

    def readyz(self, timeout: float = 1.0) -> tuple[int, str] | None:
        """``(status, body)`` of /readyz, or None when the server does not answer."""
        answer = self._get("/readyz", timeout)
        return None if answer is None else (answer[0], answer[1].decode(errors="replace"))

    def healthz(self, timeout: float = 1.0) -> tuple[int, dict[str, Any]] | None:
        """``(status, body)`` of /healthz (liveness, JSON), or None when nothing answers."""
        import json

        answer = self._get("/healthz", timeout)
        if answer is None:
            return None
        try:
            body = json.loads(answer[1])
        except ValueError:
            body = {"raw": answer[1].decode(errors="replace")}
        return answer[0], body

    def ready(self) -> bool:
        answer = self.readyz()
        return answer is not None and answer[0] == 200

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll /readyz until it says 200; seconds since ``start()``.

        Raises ``RuntimeError`` (with the log tail) if the process exits or the timeout
        passes first.
        """
        deadline = time.monotonic() + timeout
        last: tuple[int, str] | None = None
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(
                    f"{self.name} exited ({self.returncode}) before ready:\n{self.log_tail()}"
                )
            last = self.readyz(timeout=0.5)
            if last is not None and last[0] == 200:
                return time.monotonic() - (self.started_at or time.monotonic())
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} not ready within {timeout:g}s (last /readyz {last}):\n{self.log_tail()}"
        )

    def metric_samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample on /metrics as ``(name, labels, value)``; [] if it does not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        answer = self._get("/metrics", timeout=2.0)
        if answer is None or answer[0] != 200:
            return []
        return [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(answer[1].decode())
            for sample in family.samples
        ]

    def metrics(self) -> dict[str, float]:
        """Sample name -> value summed over its label sets ({} if /metrics is down)."""
        totals: dict[str, float] = collections.defaultdict(float)
        for name, _labels, value in self.metric_samples():
            totals[name] += value
        return dict(totals)

    def metric(self, name: str, default: float = 0.0) -> float:
        """One sample name summed over labels (``default`` if absent or unreachable)."""
        return self.metrics().get(name, default)

    def wait_metric(self, name: str, at_least: float, timeout: float) -> float:
        """Wait until ``metric(name) >= at_least``; returns the value (raises on timeout)."""
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(
                    f"{self.name} exited ({self.returncode}) waiting for {name} >= "
                    f"{at_least}:\n{self.log_tail()}"
                )
            value = self.metric(name)
            if value >= at_least:
                return value
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name}: {name} = {value} < {at_least} after {timeout:g}s:\n{self.log_tail()}"
        )

    def rss_kb(self) -> int | None:
        return rss_kb(self.pid) if self.alive and self.pid is not None else None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()
        return "\n".join(text[-lines:]) if text else "(no log)"


@atexit.register
def _kill_all() -> None:
    """Safety net: no worker started here outlives the interpreter."""
    for worker in list(_LIVE):
        with contextlib.suppress(Exception):
            worker.kill9()


@contextlib.contextmanager
def killed_on_exit(*workers: WorkerProcess) -> Iterator[tuple[WorkerProcess, ...]]:
    """SIGKILL every given worker still running when the block exits, however it exits."""
    try:
        yield workers
    finally:
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.kill9()
