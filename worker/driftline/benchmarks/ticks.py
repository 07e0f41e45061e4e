"""Tick benchmark (``driftline bench ticks``): what re-scoring every customer costs.

A tick (``core.ticks``) reads every customer of a partition's state as of a boundary,
scores them in one model call and encodes one prediction each.  Here a state of
``customers`` (the state benchmark's synthetic history: 8 events each over 90 days, every
bucket column in use) is ticked at three boundaries after the history (the windows slide
by one, two and three days; customers idle for longer than the eviction horizon by then
are not scored, as in a worker), and each part is timed per customer scored:

- ``features``: ``FeatureState.features_at`` (numpy over chunks of records);
- ``score``: the model, a RandomForest(100) trained on simulated history, served with the
  runtime ``--model-runtime auto`` picks (compiled when it reproduces scikit-learn);
- ``encode``: the prediction records (``tick_predictions.score_ticks`` minus the score).

Producing the records to Kafka is not included (the throughput benchmark measures the
producer per record).  Figures are medians of the three ticks.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from driftline.benchmarks.state import synthetic_events
from driftline.core.events import EventBatch
from driftline.core.spec import DAY_MS, load_default_spec
from driftline.core.state import FeatureState
from driftline.core.ticks import Tick
from driftline.model.registry import ModelRegistry
from driftline.model.runtimes import serving_scorer
from driftline.simulate import Population
from driftline.tick_predictions import score_ticks


@dataclass
class TickFigures:
    customers: int
    runtime: str
    features_us_per_customer: float
    score_us_per_customer: float
    encode_us_per_customer: float

    @property
    def total_us_per_customer(self) -> float:
        return (
            self.features_us_per_customer + self.score_us_per_customer + self.encode_us_per_customer
        )


def measure(customers: int, registry: ModelRegistry) -> TickFigures:
    spec = load_default_spec()
    state = FeatureState(spec, capacity=customers)
    batch = EventBatch.from_frame(synthetic_events(customers, 8))
    for lo in range(0, len(batch), 20_000):
        state.update_block(batch.take(np.arange(lo, min(lo + 20_000, len(batch)))))
    last = int(batch.event_time_ms.max())
    del batch
    loaded = registry.load("churn", expected_features=spec.feature_names)
    scorer = serving_scorer(loaded, "auto", compiled_tolerance=1e-12, onnx_tolerance=1e-5)
    features, scores, encodes, scored = [], [], [], []
    for days in (1, 2, 3):
        boundary = (last // DAY_MS + days) * DAY_MS
        started = time.perf_counter()
        as_of = state.features_at(boundary)
        features.append(time.perf_counter() - started)
        scored.append(len(as_of))
        started = time.perf_counter()
        scorer.score_block(as_of.block)
        scores.append(time.perf_counter() - started)
        tick = Tick(0, boundary, 0, 0, as_of.customer_ids, as_of.block, 0.0)
        started = time.perf_counter()
        output = score_ticks(scorer, [tick], int(time.time() * 1000))
        encodes.append(time.perf_counter() - started - scores[-1])
        assert len(output) == len(as_of)
    per = 1e6 / statistics.median(scored)
    return TickFigures(
        customers=int(statistics.median(scored)),
        runtime=type(scorer).__name__,
        features_us_per_customer=statistics.median(features) * per,
        score_us_per_customer=statistics.median(scores) * per,
        encode_us_per_customer=max(statistics.median(encodes), 0.0) * per,
    )


def run_tick_bench(sizes: list[int], progress: bool = True) -> list[TickFigures]:
    """Tick figures at each state size, with one model trained for all of them."""
    from driftline.benchmarks.throughput import train_bench_model

    with tempfile.TemporaryDirectory(prefix="driftline-ticks-") as root:
        registry = ModelRegistry(root)
        train_bench_model(
            registry, Population(n_customers=1000, seed=3), load_default_spec(), progress
        )
        return [measure(n, registry) for n in sizes]


def to_table(figures: list[TickFigures]) -> str:
    lines = [
        f"{'customers':>10} {'runtime':>16} {'features us/c':>14} {'score us/c':>11} "
        f"{'encode us/c':>12} {'tick us/c':>10} {'tick s':>7}"
    ]
    for f in figures:
        lines.append(
            f"{f.customers:>10,} {f.runtime:>16} {f.features_us_per_customer:>14.2f} "
            f"{f.score_us_per_customer:>11.2f} {f.encode_us_per_customer:>12.2f} "
            f"{f.total_us_per_customer:>10.2f} "
            f"{f.total_us_per_customer * f.customers / 1e6:>7.2f}"
        )
    lines.append(
        "one tick re-scores every customer in state: features as of the boundary, one model "
        "call (RandomForest(100)), one prediction record each; producing them is not included"
    )
    return "\n".join(lines)


def to_json(figures: list[TickFigures]) -> str:
    return json.dumps(
        [{**asdict(f), "total_us_per_customer": f.total_us_per_customer} for f in figures],
        indent=2,
    )
