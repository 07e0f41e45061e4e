"""The demo's quality alert path: ModelPerformanceDegraded from ``driftline quality`` to
``driftline retrain``'s ``POST /alerts``.

Two ways, the real one preferred:

* **Prometheus and Alertmanager** (the Debian packages ``prometheus`` and
  ``prometheus-alertmanager``, or upstream binaries on the PATH): the demo starts both
  in its workdir, Prometheus scraping the quality service every second and evaluating
  the production rule file ``monitoring/rules/driftline-quality.yml`` with only its
  ``for: 30m`` cut to ``for: 1s`` (the demo's event time runs ~10^5 times faster than a
  calendar: half an hour of wall clock would be years of it), Alertmanager grouping for
  1 s and posting to the retrain service with its bearer token.
* **The demo's own evaluation** when either binary (or the rule file, outside a source
  checkout) is missing: every second the demo reads the quality service's /metrics,
  evaluates the rule's expression itself (realised ROC AUC below the version's training
  ROC AUC minus 0.05, or below 0.6, from at least 200 labels) and posts the same
  Alertmanager webhook body (version 4) to the same endpoint.  The status line says
  which path runs.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from driftline._subprocess import die_with_parent
from driftline.broker import free_port

ALERT = "ModelPerformanceDegraded"
#: The rule's margins (monitoring/rules/driftline-quality.yml), for the fallback.
MARGIN, FLOOR, MIN_LABELS = 0.05, 0.6, 200
RULES = Path(__file__).resolve().parents[3] / "monitoring/rules/driftline-quality.yml"
_FOR = re.compile(r"^(\s*for:\s*)\S+", re.MULTILINE)


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None
        )
        if found:
            return found
    return None


def degraded(samples: list[tuple[str, dict[str, str], float]]) -> list[dict[str, str]]:
    """The rule's condition on one scrape of ``driftline quality``: the (model, version,
    window) labels whose realised ROC AUC is below the version's training ROC AUC minus
    :data:`MARGIN` (or below :data:`FLOOR`) with at least :data:`MIN_LABELS` labels."""
    training: dict[tuple[str, str], float] = {}
    labels: dict[tuple[str, str, str], float] = {}
    auc: dict[tuple[str, str, str], float] = {}
    for name, lab, value in samples:
        key = (lab.get("model", ""), lab.get("model_version", ""))
        if name == "driftline_quality_training_roc_auc":
            training[key] = value
        elif name == "driftline_quality_labels" and "window" in lab:
            labels[(*key, lab["window"])] = value
        elif name == "driftline_quality_roc_auc" and lab.get("basis") == "realised":
            auc[(*key, lab["window"])] = value
    found = []
    for (model, version, window), value in sorted(auc.items()):
        threshold = training.get((model, version))
        low = value < FLOOR or (threshold is not None and value < threshold - MARGIN)
        if low and labels.get((model, version, window), 0.0) >= MIN_LABELS:
            found.append({"model": model, "model_version": version, "window": window})
    return found


class _Server:
    """One Prometheus or Alertmanager process in ``workdir``, ready at ``/-/ready``."""

    def __init__(self, name: str, binary: str, workdir: Path) -> None:
        self.name, self.binary, self.workdir = name, binary, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, arguments: list[str], timeout: float = 30.0) -> None:
        self._log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, *arguments],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited (log: {self.workdir})")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {timeout:g} s (log: {self.workdir})")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


class Alerting:
    """Starts the alert path (see module); ``describe`` says which one runs."""

    def __init__(
        self, workdir: Path, quality_port: int, webhook: str, token: str, for_s: int = 1
    ) -> None:
        self.workdir, self.quality_port, self.for_s = workdir, quality_port, for_s
        self.webhook, self.token = webhook, token
        self.servers: list[_Server] = []
        self.describe = ""
        self.posted = 0
        self._posted_windows: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, real: bool = True) -> None:
        """``real``: Prometheus and Alertmanager when installed; False: the fallback."""
        prometheus = _binary("prometheus")
        alertmanager = _binary("prometheus-alertmanager", "alertmanager")
        if not real:
            why = "--alert-path demo"
        elif prometheus and alertmanager and RULES.is_file():
            try:
                self._start_real(prometheus, alertmanager)
                return
            except RuntimeError as error:
                for server in reversed(self.servers):  # not stop(): the fallback runs next
                    server.stop()
                self.servers = []
                why = f"Prometheus/Alertmanager failed to start ({error})"
        else:  # not installed, or outside a source checkout
            why = "Prometheus/Alertmanager not installed" if RULES.is_file() else "no rule file"
        self.describe = (
            f"alert: the demo evaluates {ALERT}'s expression itself every 1 s (for: "
            f"{self.for_s}s) and posts "
            f"Alertmanager's webhook to the retrain service ({why})"
        )
        self._thread = threading.Thread(target=self._evaluate, daemon=True, name="demo-rule")
        self._thread.start()

    def _start_real(self, prometheus_bin: str, alertmanager_bin: str) -> None:
        root = self.workdir / "monitoring"
        token_file = root / "alerts-token"
        root.mkdir(parents=True, exist_ok=True)
        token_file.write_text(self.token + "\n")
        am = _Server("alertmanager", alertmanager_bin, root / "alertmanager")
        (am.workdir / "alertmanager.yml").write_text(
            "route:\n  receiver: dropped\n  group_by: [alertname, model, model_version]\n"
            "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n  routes:\n"
            f'    - receiver: retrain\n      matchers: ["alertname = {ALERT}"]\n'
            "receivers:\n  - name: dropped\n  - name: retrain\n    webhook_configs:\n"
            f"      - url: {self.webhook}\n        http_config:\n          authorization:\n"
            f"            type: Bearer\n            credentials_file: {token_file}\n"
        )
        self.servers.append(am)
        am.start(
            [
                f"--config.file={am.workdir / 'alertmanager.yml'}",
                f"--storage.path={am.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{am.port}",
                "--cluster.listen-address=",
            ]
        )
        prom = _Server("prometheus", prometheus_bin, root / "prometheus")
        rules = prom.workdir / RULES.name
        rules.write_text(_FOR.sub(rf"\g<1>{self.for_s}s", RULES.read_text()))
        (prom.workdir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {rules}\nalerting:\n  alertmanagers:\n    - static_configs:\n"
            f"        - targets: ['127.0.0.1:{am.port}']\nscrape_configs:\n"
            "  - job_name: driftline-quality\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{self.quality_port}']\n"
        )
        self.servers.append(prom)
        prom.start(
            [
                f"--config.file={prom.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={prom.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom.port}",
                "--log.level=warn",
            ]
        )
        self.describe = (
            f"alert: Prometheus {prom.url} evaluates {RULES.name} (for: 30m cut to "
            f"{self.for_s}s) -> "
            f"Alertmanager {am.url} -> POST {self.webhook}"
        )

    def firing(self) -> list[dict[str, str]]:
        """Firing ModelPerformanceDegraded alerts' labels (Prometheus), or the windows the
        fallback posted."""
        if not self.servers:
            return list(self._posted_windows)
        prom = self.servers[-1]
        try:
            with urllib.request.urlopen(f"{prom.url}/api/v1/alerts", timeout=2) as answer:
                alerts = json.load(answer)["data"]["alerts"]
        except (OSError, ValueError, KeyError):
            return []
        return [
            a["labels"]
            for a in alerts
            if a["labels"].get("alertname") == ALERT and a.get("state") == "firing"
        ]

    def _evaluate(self) -> None:
        from driftline.commands._demo_loop import metric_samples

        sent: set[tuple[str, str, str]] = set()
        pending: dict[tuple[str, str, str], float] = {}  # condition held since (monotonic)
        while not self._stop.wait(1.0):
            try:
                found = degraded(metric_samples(self.quality_port))
            except OSError:
                continue
            now_s = time.monotonic()
            held = {(f["model"], f["model_version"], f["window"]): f for f in found}
            pending = {key: pending.get(key, now_s) for key in held}  # as the rule's for:
            new = [
                f
                for key, f in held.items()
                if key not in sent and now_s - pending[key] >= self.for_s
            ]
            if not new:
                continue
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            body = {
                "version": "4",
                "status": "firing",
                "receiver": "retrain",
                "groupKey": "demo",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {"alertname": ALERT, "severity": "warning", **f},
                        "startsAt": now,
                    }
                    for f in new
                ],
            }
            request = urllib.request.Request(
                self.webhook,
                data=json.dumps(body).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {self.token}",
                },
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=10):
                    pass
            except OSError:
                continue  # as Alertmanager does: tried again at the next evaluation
            for f in new:
                sent.add((f["model"], f["model_version"], f["window"]))
            self._posted_windows.extend(new)
            self.posted += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for server in reversed(self.servers):
            server.stop()

    def __enter__(self) -> Alerting:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
