"""Real Prometheus and Alertmanager processes for tests, with generated configs.

Test support, not shipped: no command starts Prometheus or Alertmanager (operators run
their own, with ``monitoring/``'s rules).

Why the real binaries (the Debian packages ``prometheus`` and ``prometheus-alertmanager``):
what the product depends on is their behaviour, the rule evaluation, the routing and the
webhook payload Alertmanager really sends; a stand-in would only test our reading of their
documentation.  Each process runs in a temporary directory of its own (config, storage,
log), listens on 127.0.0.1 on a free port (a new one if the port was taken meanwhile), and
is stopped with SIGTERM then SIGKILL; it also gets a parent-death signal and an ``atexit``
net, so a crashed test run leaks no process and no port.

* :func:`shortened_rules` copies rule files with every ``for:`` cut down: the production
  rules wait minutes before firing, a test cannot.
* :class:`Prometheus` scrapes given targets under the job name the alert rules select,
  evaluates rule files and sends alerts to an Alertmanager.
* :class:`Alertmanager` routes one alert name to one webhook and drops everything else.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from driftline._subprocess import die_with_parent
from driftline.broker import free_port

__all__ = [
    "Alertmanager",
    "MonitoringProcess",
    "Prometheus",
    "alertmanager_binary",
    "prometheus_binary",
    "shortened_rules",
]

_LIVE: weakref.WeakSet[MonitoringProcess] = weakref.WeakSet()
_FOR = re.compile(r"^(\s*for:\s*)\S+", re.MULTILINE)


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None
        )
        if found:
            return found
    return None


def prometheus_binary() -> str | None:
    """The ``prometheus`` executable, or None (the caller skips and says so)."""
    return _binary("prometheus")


def alertmanager_binary() -> str | None:
    """Alertmanager: Debian names it ``prometheus-alertmanager``, upstream ``alertmanager``."""
    return _binary("prometheus-alertmanager", "alertmanager")


def shortened_rules(sources: Iterable[Path], directory: Path, for_duration: str) -> list[Path]:
    """Copies of rule files into ``directory`` with every ``for:`` set to ``for_duration``.

    Only the durations change: expressions, labels and annotations stay the production ones,
    which is what a test of the alerting path wants to exercise.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        target = directory / source.name
        target.write_text(_FOR.sub(rf"\g<1>{for_duration}", source.read_text()))
        written.append(target)
    return written


class MonitoringProcess:
    """One server process in ``workdir``: started by :meth:`start`, ready at ``/-/ready``."""

    name = "server"
    start_attempts = 3

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arguments(self) -> list[str]:
        """Command-line flags after the binary, for :attr:`port` (set before the call)."""
        raise NotImplementedError

    def start(self, ready_timeout: float = 30.0) -> MonitoringProcess:
        """Start and wait until ready; on a port taken meanwhile, again on another one."""
        for attempt in range(self.start_attempts):
            self.port = free_port()
            self._spawn()
            try:
                self.wait_ready(ready_timeout)
                return self
            except RuntimeError:
                self.stop()
                taken = "address already in use" in self.log_text().lower()
                if not taken or attempt == self.start_attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary, *self.arguments()],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,  # a Ctrl-C aimed at pytest is not a signal to it
            preexec_fn=die_with_parent(signal.SIGKILL),
            close_fds=True,
        )
        _LIVE.add(self)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``; reaped, log closed; safe to call twice."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout)
            _LIVE.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None

    def get_json(self, path: str, **params: Any) -> Any:
        """GET ``path`` (with query ``params``) and decode the JSON answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            return json.load(response)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the server's own ``name`` samples matching ``labels`` (0 if none)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"

    def __enter__(self) -> MonitoringProcess:
        return self.start() if not self.alive else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Alertmanager(MonitoringProcess):
    """Alertmanager routing ``alertname`` (and ``severity``) to ``webhook_url``; the rest is
    dropped (a receiver with no integration), so only the alert under test notifies.

    Clustering is off (``--cluster.listen-address=``): no gossip port to collide on.
    """

    name = "alertmanager"

    def __init__(
        self,
        binary: str,
        workdir: Path,
        webhook_url: str,
        alertname: str,
        severity: str = "critical",
        group_wait: str = "1s",
        credentials_file: Path | None = None,
    ) -> None:
        super().__init__(binary, workdir)
        # As monitoring/alertmanager.yml: the worker's POST /alerts wants a bearer token.
        auth = (
            "        http_config:\n"
            "          authorization:\n"
            "            type: Bearer\n"
            f"            credentials_file: {credentials_file}\n"
            if credentials_file is not None
            else ""
        )
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(
            "route:\n"
            "  receiver: dropped\n"
            "  group_by: [alertname, model, model_version]\n"
            f"  group_wait: {group_wait}\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "  routes:\n"
            "    - receiver: webhook\n"
            "      matchers:\n"
            f'        - alertname = "{alertname}"\n'
            f'        - severity = "{severity}"\n'
            "receivers:\n"
            "  - name: dropped\n"
            "  - name: webhook\n"
            "    webhook_configs:\n"
            f"      - url: {webhook_url}\n"
            "        send_resolved: true\n" + auth
        )

    def arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=info",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts it holds (API v2): labels, status.state, receivers, startsAt, ..."""
        answer: list[dict[str, Any]] = self.get_json("/api/v2/alerts")
        return answer


class Prometheus(MonitoringProcess):
    """Prometheus scraping ``targets`` as job ``job``, evaluating ``rule_files`` and
    alerting to ``alertmanager``, all every ``interval``."""

    name = "prometheus"

    def __init__(
        self,
        binary: str,
        workdir: Path,
        targets: Sequence[str],
        rule_files: Sequence[Path],
        alertmanager: str,
        job: str = "driftline-worker",
        interval: str = "1s",
    ) -> None:
        super().__init__(binary, workdir)
        self.config_path = workdir / "prometheus.yml"
        rules = "".join(f"  - {path}\n" for path in rule_files)
        self.config_path.write_text(
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  scrape_timeout: {interval}\n"
            f"  evaluation_interval: {interval}\n"
            f"rule_files:\n{rules}"
            "alerting:\n"
            "  alertmanagers:\n"
            "    - static_configs:\n"
            f"        - targets: ['{alertmanager}']\n"
            "scrape_configs:\n"
            f"  - job_name: {job}\n"
            "    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )

    def arguments(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (``/api/v1/alerts``): labels, state, activeAt, ..."""
        answer = self.get_json("/api/v1/alerts")
        alerts: list[dict[str, Any]] = answer["data"]["alerts"]
        return alerts

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector."""
        answer = self.get_json("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


@atexit.register
def _stop_all() -> None:
    """Safety net: no server started here outlives the interpreter."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=2.0)
