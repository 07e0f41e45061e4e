"""`driftline bench all`: throughput, latency and state in one run, one report.

One broker and one trained model serve every benchmark of the run, so the figures sit
side by side on the same machine state; the report names the broker and says which
throughput and latency targets hold with the figures measured, in markdown for people and
JSON for machines.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from driftline.benchmarks.broker import bench_broker
from driftline.benchmarks.latency import (
    ONE_HOP,
    LatencyFigures,
    run_latency_bench,
    run_one_hop_bench,
)
from driftline.benchmarks.throughput import (
    BenchResult,
    machine_description,
    run_bench,
    train_bench_model,
)
from driftline.core.spec import load_default_spec
from driftline.model.registry import ModelRegistry
from driftline.model.runtimes.onnx import onnx_missing_reason
from driftline.model.runtimes.sklearn import limit_native_threads
from driftline.simulate import Population

#: The targets: the worker against its compute limit and the per-event loop, exactly-once
#: against at-least-once, and p99 latency at a fixed offered rate.
TARGET_MODEL_RATIO = 0.75
TARGET_PER_EVENT_RATIO = 100.0
TARGET_EOS_RATIO = 0.85
TARGET_P99_MS = 50.0
TARGET_P99_RATE = 5000.0


@dataclass
class SuiteReport:
    machine: str
    broker: str = ""
    throughput: BenchResult | None = None
    latency: list[LatencyFigures] = field(default_factory=list)
    state: list[Any] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def targets(self) -> list[dict[str, Any]]:
        """Each target with the measured value and whether it holds (None: not measured)."""
        out: list[dict[str, Any]] = []
        t = self.throughput
        if t is not None:
            ratios = t.ratios
            out += [
                _target("worker / model alone", ratios["worker/model_only"], TARGET_MODEL_RATIO),
                _target("worker / per-event", ratios["worker/per_event"], TARGET_PER_EVENT_RATIO),
                _target(
                    "exactly-once / at-least-once",
                    ratios["exactly_once/at_least_once"],
                    TARGET_EOS_RATIO,
                ),
            ]
            if t.process_worker_eps:
                # The same target, with the model in a scoring process: the worker then
                # uses a second core (the report gives the cores each run took).
                out.append(
                    _target(
                        "worker with a scoring process / model alone",
                        ratios["scoring-process worker/model_only"],
                        TARGET_MODEL_RATIO,
                    )
                )
            if t.compiled_worker_eps and t.compiled_model_only_eps:
                # Stricter than the model-ratio target: the compute limit is the model as the
                # worker runs it, so a faster model leaves less room for everything else.
                out.append(
                    _target(
                        "compiled worker / compiled model alone",
                        ratios["compiled worker/compiled model_only"],
                        TARGET_MODEL_RATIO,
                    )
                )
        for f in self.latency:
            if f.offered_eps != TARGET_P99_RATE or f.p99_ms is None or f.runtime == ONE_HOP:
                continue
            out.append(
                {
                    "target": f"p99 at {TARGET_P99_RATE:,.0f} ev/s ({f.runtime})",
                    "measured": f.p99_ms,
                    "threshold": f"<= {TARGET_P99_MS:g} ms",
                    "holds": f.p99_ms <= TARGET_P99_MS and f.received >= f.sent,
                }
            )
        return out

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "machine": self.machine,
            "broker": self.broker,
            "settings": self.settings,
            "throughput": (
                {**asdict(self.throughput), "ratios": self.throughput.ratios}
                if self.throughput
                else None
            ),
            "latency": [asdict(f) for f in self.latency],
            "state": [asdict(f) for f in self.state],
            "targets": self.targets(),
        }
        return json.dumps(doc, indent=2)

    def to_markdown(self) -> str:
        lines = [f"machine: {self.machine}", f"broker: {self.broker}", ""]
        if self.throughput is not None:
            lines += ["## Throughput", "", self.throughput.to_table(), ""]
        if self.latency:
            lines += [
                "## Latency under a fixed offered load (event sent -> prediction read)",
                "",
                "| runtime | offered ev/s | achieved ev/s | sent | received | p50 ms | p99 ms "
                "| p99.9 ms | max ms | mean batch |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for f in self.latency:
                lines.append(
                    f"| {f.runtime} | {f.offered_eps:,.0f} | {f.achieved_eps:,.0f} | {f.sent:,} | "
                    f"{f.received:,} | {_ms(f.p50_ms)} | {_ms(f.p99_ms)} | {_ms(f.p99_9_ms)} | "
                    f"{_ms(f.max_ms)} | {f.mean_batch or 0:,.0f} |"
                )
            lines.append("")
        if self.state:
            from driftline.benchmarks.state import to_table

            lines += ["## State", "", "```", to_table(self.state), "```", ""]
        targets = self.targets()
        if targets:
            lines += ["## Targets", "", "| target | measured | threshold | holds |"]
            lines.append("|---|---:|---|---|")
            for t in targets:
                lines.append(
                    f"| {t['target']} | {t['measured']:.3g} | {t['threshold']} | "
                    f"{'yes' if t['holds'] else 'NO'} |"
                )
        return "\n".join(lines)


def _target(name: str, value: float, threshold: float) -> dict[str, Any]:
    return {
        "target": name,
        "measured": value,
        "threshold": f">= {threshold:g}",
        "holds": value >= threshold,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def run_suite(
    suites: set[str],
    *,
    events: int,
    per_event_events: int,
    batch_size: int,
    partitions: int,
    customers: int,
    rates: list[float],
    duration_s: float,
    state_sizes: list[int],
    changelog_sizes: list[int],
    bootstrap: str | None = None,
    broker_kind: str = "auto",
    progress: bool = True,
    onnx: bool = True,
    n_estimators: int = 100,
) -> SuiteReport:
    """Run the chosen suites (``throughput``, ``latency``, ``state``) on one broker."""
    limit_native_threads(1)
    report = SuiteReport(
        machine=machine_description(),
        settings={
            "events": events,
            "batch_size": batch_size,
            "partitions": partitions,
            "customers": customers,
            "rates": rates,
            "latency_duration_s": duration_s,
            "n_estimators": n_estimators,
        },
    )
    spec = load_default_spec()
    with (
        tempfile.TemporaryDirectory(prefix="driftline-suite-") as tmp,
        bench_broker(bootstrap, broker_kind) as (servers, broker_name),
    ):
        report.broker = broker_name
        registry = ModelRegistry(Path(tmp) / "models")
        if suites & {"throughput", "latency"}:
            population = Population(n_customers=customers, seed=7)
            train_bench_model(registry, population, spec, progress, n_estimators)
        if "throughput" in suites:
            report.throughput = run_bench(
                events=events,
                per_event_events=per_event_events,
                batch_size=batch_size,
                partitions=partitions,
                customers=customers,
                bootstrap=servers,
                progress=progress,
                onnx=onnx,
                registry=registry,
            )
        if "latency" in suites:
            report.latency = run_one_hop_bench(servers, rates, duration_s)
            report.latency += run_latency_bench(
                servers, registry.root, rates, duration_s, batch_size=batch_size
            )
            report.latency += run_latency_bench(
                servers, registry.root, rates, duration_s, batch_size=batch_size, runtime="compiled"
            )
            report.latency += run_latency_bench(
                servers,
                registry.root,
                rates,
                duration_s,
                batch_size=batch_size,
                runtime="sklearn+process",
            )
            if onnx and onnx_missing_reason() is None:
                report.latency += run_latency_bench(
                    servers, registry.root, rates, duration_s, batch_size=batch_size, runtime="onnx"
                )
    if "state" in suites:
        from driftline.benchmarks.state import run_state_bench

        report.state = run_state_bench(
            state_sizes, changelog_sizes, bootstrap=bootstrap, broker_kind=broker_kind
        )
    return report


def side_by_side(reports: dict[str, SuiteReport]) -> str:
    """The figures that depend on the broker, one column per broker (markdown)."""
    names = list(reports)
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, values: list[float | None], fmt: str = "{:,.0f}") -> None:
        rows.append((label, ["-" if v is None else fmt.format(v) for v in values]))

    throughputs = [r.throughput for r in reports.values()]
    if all(t is not None for t in throughputs):
        ts = [t for t in throughputs if t is not None]
        row("(a) pass-through, events/s", [t.passthrough_eps for t in ts])
        row("(b) worker at-least-once, events/s", [t.worker_eps for t in ts])
        row("(b') worker exactly-once, events/s", [t.worker_exactly_once_eps for t in ts])
        row("(d) model alone, events/s", [t.model_only_eps for t in ts])
        row("compiled worker, events/s", [t.compiled_worker_eps for t in ts])
        for ratio in ("worker/model_only", "exactly_once/at_least_once", "worker/passthrough"):
            row(ratio, [t.ratios.get(ratio) for t in ts], "{:.3f}")
    keys = sorted(
        {(f.runtime, f.offered_eps) for r in reports.values() for f in r.latency},
        key=lambda k: (k[0], k[1]),
    )
    for runtime, rate in keys:
        found = [
            next((f for f in r.latency if (f.runtime, f.offered_eps) == (runtime, rate)), None)
            for r in reports.values()
        ]
        rows.append(
            (
                f"p50 / p99 ms at {rate:,.0f} ev/s ({runtime})",
                ["-" if f is None else f"{_ms(f.p50_ms)} / {_ms(f.p99_ms)}" for f in found],
            )
        )
    restores = [
        next((f.changelog_restore_seconds for f in r.state if f.changelog_restore_seconds), None)
        for r in reports.values()
    ]
    if any(v is not None for v in restores):
        row("changelog restore, s", restores, "{:.2f}")
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    brokers = "; ".join(f"{name}: {r.broker}" for name, r in reports.items())
    return "\n".join([f"brokers: {brokers}", "", *lines])
