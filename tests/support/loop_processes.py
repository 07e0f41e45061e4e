"""``driftline quality`` and ``driftline retrain`` as subprocesses, with the worker
harness's lifecycle (start, SIGTERM, /metrics, log tail): ``WorkerProcess`` with their
command lines, for the closed-loop test."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from driftline.benchmarks.worker_process import WorkerProcess


class QualityProcess(WorkerProcess):
    """One ``driftline quality`` reading ``predictions_topic`` and ``outcomes_topic``."""

    def __init__(
        self,
        bootstrap: str,
        *,
        predictions_topic: str,
        outcomes_topic: str,
        registry: str | Path,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        name: str = "quality",
    ) -> None:
        super().__init__(
            bootstrap, predictions_topic, outcomes_topic, "-", "-",
            registry=registry, extra_args=extra_args, log_path=log_path, name=name,
        )  # fmt: skip

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "driftline.cli", "quality",
            "--bootstrap-servers", self.bootstrap,
            "--predictions-topic", self.input_topic,
            "--outcomes-topic", self.output_topic,
            "--registry", self.registry,
            "--metrics-host", "127.0.0.1",
            "--metrics-port", str(self.port),
            *self.extra_args,
        ]  # fmt: skip


class RetrainProcess(WorkerProcess):
    """One ``driftline retrain`` service; /metrics and POST /alerts on ``port``."""

    def __init__(
        self,
        bootstrap: str,
        *,
        input_topic: str,
        requests_topic: str,
        decisions_topic: str,
        group: str,
        registry: str | Path,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        name: str = "retrain",
    ) -> None:
        super().__init__(
            bootstrap, input_topic, decisions_topic, "-", group,
            registry=registry, extra_args=extra_args, log_path=log_path, name=name,
        )  # fmt: skip
        self.requests_topic = requests_topic

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "driftline.cli", "retrain",
            "--bootstrap-servers", self.bootstrap,
            "--input-topic", self.input_topic,
            "--requests-topic", self.requests_topic,
            "--decisions-topic", self.output_topic,
            "--group-id", self.group,
            "--registry", self.registry,
            "--model-name", self.model_name,
            "--metrics-host", "127.0.0.1",
            "--metrics-port", str(self.port),
            *self.extra_args,
        ]  # fmt: skip
