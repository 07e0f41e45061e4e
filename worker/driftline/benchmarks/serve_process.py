"""``driftline serve`` as a child process, for ``driftline bench serve`` and the tests.

Started as an operator starts it (``python -m driftline.cli serve ...``), on a free port
of 127.0.0.1, its output appended to a log file; killed (SIGKILL) if its context exits on
an exception, and it dies with its parent (a parent-death signal), like
:class:`~driftline.benchmarks.worker_process.WorkerProcess`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from driftline._subprocess import die_with_parent
from driftline.broker import free_port


class ServeProcess:
    """One ``driftline serve`` subprocess."""

    def __init__(
        self,
        bootstrap: str,
        *,
        input_topic: str,
        output_topic: str,
        group: str,
        registry: str | os.PathLike[str],
        model_name: str = "churn",
        log_path: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.input_topic = input_topic
        self.output_topic = output_topic
        self.group = group
        self.registry = str(registry)
        self.model_name = model_name
        self.log_path = Path(log_path) if log_path is not None else None
        self.extra_args = list(extra_args)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "driftline.cli",
            "serve",
            "--bootstrap-servers",
            self.bootstrap,
            "--input-topic",
            self.input_topic,
            "--output-topic",
            self.output_topic,
            "--group-id",
            self.group,
            "--registry",
            self.registry,
            "--model-name",
            self.model_name,
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def start(self) -> ServeProcess:
        self.port = free_port()
        out: IO[bytes] | int = subprocess.DEVNULL
        log_file = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = self.log_path.open("ab")
            out = log_file
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
            close_fds=True,
        )
        if log_file is not None:
            log_file.close()
        return self

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process has used (``/proc``; None if unknown)."""
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
        """``(status, body)`` of GET ``path``, or None when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            try:
                return error.code, error.read()
            except (OSError, ValueError):
                return None
        except (OSError, ValueError):
            return None

    def wait_answering(self, timeout: float = 60.0) -> None:
        """Until /healthz answers (the API is up; the replica may still be catching up)."""
        self._wait(lambda: self.get("/healthz"), timeout, "answer /healthz")

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Until /readyz says 200; seconds waited."""
        started = time.monotonic()

        def ready() -> bool:
            answer = self.get("/readyz")
            return answer is not None and answer[0] == 200

        self._wait(ready, timeout, "be ready")
        return time.monotonic() - started

    def _wait(self, probe: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"driftline serve exited:\n{self.log_tail()}")
            if probe():
                return
            time.sleep(0.1)
        raise RuntimeError(f"driftline serve did not {what} in {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (uvicorn stops, the follower closes), SIGKILL if it outlasts ``timeout``."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        return process.returncode

    def __enter__(self) -> ServeProcess:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self._process is not None and self.alive:
            self._process.kill()
            self._process.wait(10)
        self.close()
