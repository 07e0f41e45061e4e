"""`driftline bench --help` states the targets `bench all` checks, with their values.

The help is static text (importing the benchmarks to format it would make every
``driftline`` start pay for pandas and Kafka), so this keeps it in step with the
constants the report really judges by.
"""

from __future__ import annotations

from driftline.benchmarks import suite
from driftline.commands.bench import HELP


def test_the_bench_help_names_every_target_with_the_value_the_report_uses() -> None:
    text = " ".join(HELP.split())
    assert f">= {suite.TARGET_MODEL_RATIO:g}x the model alone" in text
    assert f">= {suite.TARGET_PER_EVENT_RATIO:g}x the per-event loop" in text
    assert f"exactly-once at >= {suite.TARGET_EOS_RATIO:g}x at-least-once" in text
    assert f"p99 latency <= {suite.TARGET_P99_MS:g} ms at {suite.TARGET_P99_RATE:,.0f}" in text
    assert "issue" not in text.lower()
