"""``driftline outcomes`` as a subprocess, with the worker harness's lifecycle (start,
kill -9, SIGTERM, /metrics): ``WorkerProcess`` with the outcome service's command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from driftline.benchmarks.worker_process import WorkerProcess


class OutcomesProcess(WorkerProcess):
    """One ``driftline outcomes``; ``extra_args`` go last (``--triggers tick`` ...)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        events_topic: str,
        predictions_topic: str,
        output_topic: str,
        dead_letter_topic: str,
        group: str,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        name: str = "outcomes",
    ) -> None:
        super().__init__(
            bootstrap, events_topic, output_topic, dead_letter_topic, group,
            registry="-", extra_args=extra_args, log_path=log_path, name=name,
        )  # fmt: skip
        self.predictions_topic = predictions_topic

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "driftline.cli", "outcomes",
            "--bootstrap-servers", self.bootstrap,
            "--input-topic", self.input_topic,
            "--predictions-topic", self.predictions_topic,
            "--output-topic", self.output_topic,
            "--dead-letter-topic", self.dead_letter_topic,
            "--group-id", self.group,
            "--instance-id", self.worker_id,
            "--metrics-host", "127.0.0.1",
            "--metrics-port", str(self.port),
            *self.extra_args,
        ]  # fmt: skip

    def wait_assigned(self, partitions: int, timeout: float = 90.0) -> None:
        """Until every partition is assigned and restored from the changelog."""
        self.wait_metric("driftline_outcomes_partitions", partitions, timeout)
