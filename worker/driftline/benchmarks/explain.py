"""Reason-code benchmark (``driftline bench explain``): what ``--explain K`` costs per event.

The scoring processor (decode, state, model, encode: a worker's work per batch without
the broker) runs the same stream of simulated live events in micro-batches of each
``batch_sizes`` three ways, each on a fresh processor:

- ``sklearn``: scikit-learn's ``predict_proba``, no reasons (the runtime ``--explain``
  needs, without it);
- ``sklearn+explain``: the same with the top ``k`` reasons on every prediction (the
  ``explain`` stage: preprocessing again, one ``decision_path`` over the batch, one sparse
  product, the top K and their values; plus the longer records);
- ``auto``: the runtime a worker without ``--explain`` picks (compiled when it reproduces
  scikit-learn), for what turning reasons on costs against the default worker.

Figures are µs per event: each batch's time over its events, the median over the batches,
the best of ``rounds`` rounds (the machine is shared).  The model is a RandomForest(100)
trained on simulated history, as in the other benchmarks.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass

import msgspec
import numpy as np

from driftline.core.spec import load_default_spec
from driftline.model.registry import LoadedModel, ModelRegistry
from driftline.model.runtimes import serving_scorer
from driftline.model.runtimes.sklearn import Scorer, limit_native_threads
from driftline.processor import RawBatch, ScoringProcessor
from driftline.simulate import Population

MODES = ("sklearn", "sklearn+explain", "auto")


@dataclass
class ExplainFigures:
    batch_size: int
    k: int
    #: µs per event of a whole batch (decode .. encode), by mode (see ``MODES``).
    sklearn_us: float
    explain_us: float
    auto_us: float
    #: µs per event of the ``explain`` stage alone, and of the model (``predict``).
    explain_stage_us: float
    predict_us: float
    auto_runtime: str

    @property
    def extra_us(self) -> float:
        """What reasons add per event to a worker on the sklearn runtime."""
        return self.explain_us - self.sklearn_us


def _batches(events: int, batch_size: int, seed: int = 17) -> list[RawBatch]:
    population = Population(n_customers=5000, seed=seed)
    population.generate_history(days=30)
    stream = list(population.stream_events(max_events=events))
    encode = msgspec.json.encode
    out = []
    for lo in range(0, len(stream), batch_size):
        part = stream[lo : lo + batch_size]
        out.append(
            RawBatch(
                "events",
                [encode(e) for e in part],
                [e["customer_id"].encode() for e in part],
                np.zeros(len(part), np.int32),
                np.arange(lo, lo + len(part), dtype=np.int64),
            )
        )
    return out


def _run(
    mode: str, loaded: LoadedModel, batches: list[RawBatch], k: int
) -> tuple[float, float, float, str]:
    """Median µs/event of a batch, of its explain stage and of its predict stage."""
    spec = load_default_spec()
    if mode == "auto":
        scorer = serving_scorer(loaded, "auto", compiled_tolerance=1e-12, onnx_tolerance=1e-5)
    else:
        scorer = Scorer(loaded)
    processor = ScoringProcessor(spec, scorer, explain=k if mode == "sklearn+explain" else None)
    total, explain, predict = [], [], []
    for raw in batches:
        started = time.perf_counter()
        result = processor.process(raw)
        elapsed = time.perf_counter() - started
        n = len(result.prediction_values)
        if mode == "sklearn+explain":
            assert all(b'"reasons"' in v for v in result.prediction_values)
        total.append(elapsed / n * 1e6)
        explain.append(result.stage_seconds.get("explain", 0.0) / n * 1e6)
        predict.append(result.stage_seconds["predict"] / n * 1e6)
    return (
        statistics.median(total),
        statistics.median(explain),
        statistics.median(predict),
        type(scorer).__name__,
    )


def measure(
    loaded: LoadedModel, batch_size: int, k: int, events: int, rounds: int
) -> ExplainFigures:
    batches = _batches(events, batch_size)
    best: dict[str, tuple[float, float, float, str]] = {}
    for _ in range(rounds):
        for mode in MODES:
            figures = _run(mode, loaded, batches, k)
            if mode not in best or figures[0] < best[mode][0]:
                best[mode] = figures
    return ExplainFigures(
        batch_size=batch_size,
        k=k,
        sklearn_us=best["sklearn"][0],
        explain_us=best["sklearn+explain"][0],
        auto_us=best["auto"][0],
        explain_stage_us=best["sklearn+explain"][1],
        predict_us=best["sklearn"][2],
        auto_runtime=best["auto"][3],
    )


def run_explain_bench(
    batch_sizes: list[int],
    k: int = 3,
    events: int = 20_000,
    rounds: int = 3,
    progress: bool = True,
) -> list[ExplainFigures]:
    """Figures at each batch size, with one model trained for all of them."""
    from driftline.benchmarks.throughput import train_bench_model

    limit_native_threads(1)
    spec = load_default_spec()
    with tempfile.TemporaryDirectory(prefix="driftline-explain-") as root:
        registry = ModelRegistry(root)
        train_bench_model(registry, Population(n_customers=1000, seed=3), spec, progress)
        loaded = registry.load("churn", expected_features=spec.feature_names)
        return [measure(loaded, b, k, events, rounds) for b in batch_sizes]


def to_table(figures: list[ExplainFigures]) -> str:
    lines = [
        f"{'batch':>6} {'K':>3} {'sklearn us/ev':>14} {'+explain us/ev':>15} "
        f"{'extra us/ev':>12} {'explain stage':>14} {'predict':>8} {'auto us/ev':>11}"
    ]
    for f in figures:
        lines.append(
            f"{f.batch_size:>6,} {f.k:>3} {f.sklearn_us:>14.1f} {f.explain_us:>15.1f} "
            f"{f.extra_us:>12.1f} {f.explain_stage_us:>14.1f} {f.predict_us:>8.1f} "
            f"{f.auto_us:>11.1f}"
        )
    runtime = figures[0].auto_runtime if figures else ""
    lines.append(
        "µs per event of a whole batch in the scoring processor (decode, state, model, "
        "encode; no broker), median over batches, best of rounds; RandomForest(100); "
        f"auto = the runtime a worker without --explain picks ({runtime})"
    )
    return "\n".join(lines)


def to_json(figures: list[ExplainFigures]) -> str:
    return json.dumps([{**asdict(f), "extra_us": f.extra_us} for f in figures], indent=2)
