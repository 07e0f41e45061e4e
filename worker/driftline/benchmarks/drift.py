"""Drift benchmark: detection delay, false alarms and cost of the drift monitor.

Pure core, no Kafka: a synthetic population with known feature laws (a normal feature, a
skewed lognormal spend, Poisson counts, a feature with missing values, two categorical
profile fields) and a fixed logistic "model" scoring it.  A reference profile is built
from a stationary sample exactly as training does (``build_reference_profile``), then each
scenario streams stationary events, changes one thing at a known event, and records:

- the detection delay in events after the change (first alarm on the changed feature, or
  on the score for prediction drift);
- whether the first alarm after the change named the right feature;
- false alarms: alarms before the change (and, in the long stationary run, all alarms),
  reported per million stationary events next to what the budget allows;
- the monitor's cost in microseconds per event.

Events come in micro-batches with customer keys drawn from a large population, as a worker
would feed them.  The concept-drift scenario changes only the label relation, which a
label-free monitor cannot see: its expected outcome is "no alarm", and it is reported so.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from driftline.core.drift.monitor import DriftMonitor, MonitorBudget
from driftline.model.profile import build_reference_profile

NUMERIC = ["x_normal", "spend", "orders", "visits", "discount"]
CATEGORICAL = ["plan", "region"]
PLANS = ["basic", "standard", "premium"]
PLAN_SHARES = [0.5, 0.35, 0.15]
REGIONS = ["north", "south", "east", "west"]
COEFFICIENTS = {"x_normal": 0.6, "spend": 0.004, "orders": -0.25, "visits": -0.05, "discount": 2.0}

Mutation = Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]


def stationary_events(n: int, rng: np.random.Generator, customers: int) -> pd.DataFrame:
    """``n`` events of the reference law, with their customer keys."""
    discount = rng.uniform(0.0, 0.3, n)
    discount[rng.random(n) < 0.02] = np.nan  # 2 % missing
    return pd.DataFrame(
        {
            "x_normal": rng.normal(0.0, 1.0, n),
            "spend": rng.lognormal(4.0, 0.8, n),
            "orders": rng.poisson(3.0, n).astype(np.float64),
            "visits": rng.poisson(12.0, n).astype(np.float64),
            "discount": discount,
            "plan": rng.choice(PLANS, n, p=PLAN_SHARES).astype(object),
            "region": rng.choice(REGIONS, n).astype(object),
            "customer": np.char.add("c", rng.integers(0, customers, n).astype(str)).astype(object),
        }
    )


def model_scores(frame: pd.DataFrame) -> np.ndarray:
    """A fixed logistic model of the features (what the monitor's score stream watches)."""
    logit = np.full(len(frame), -0.5)
    for name, weight in COEFFICIENTS.items():
        logit += weight * frame[name].fillna(0.0).to_numpy(dtype=np.float64)
    logit += np.where(frame["plan"].to_numpy() == "premium", -0.8, 0.0)
    return 1.0 / (1.0 + np.exp(-(logit - 0.3)))


def _shift(name: str, sigmas: float) -> Mutation:
    def mutate(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        frame[name] = frame[name] + sigmas * 1.0  # x_normal has sd 1
        return frame

    return mutate


def _scale_spread(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    frame["x_normal"] = frame["x_normal"] * 2.0
    return frame


def _new_category(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    chosen = rng.random(len(frame)) < 0.2
    frame.loc[chosen, "plan"] = "platinum"
    return frame


def _missing_jump(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    chosen = rng.random(len(frame)) < 0.10
    frame.loc[chosen, "discount"] = np.nan
    return frame


@dataclass(frozen=True)
class Scenario:
    name: str
    feature: str | None  # the feature that changes (None: nothing the monitor can see)
    mutate: Mutation | None
    description: str


SCENARIOS: list[Scenario] = [
    Scenario("mean +0.25 sd", "x_normal", _shift("x_normal", 0.25), "mean of x_normal +0.25 sd"),
    Scenario("mean +0.5 sd", "x_normal", _shift("x_normal", 0.5), "mean of x_normal +0.5 sd"),
    Scenario("mean +1 sd", "x_normal", _shift("x_normal", 1.0), "mean of x_normal +1 sd"),
    Scenario("variance x4", "x_normal", _scale_spread, "sd of x_normal doubled"),
    Scenario("new category", "plan", _new_category, "20 % of plans become 'platinum'"),
    Scenario("missing 2%->12%", "discount", _missing_jump, "missing rate of discount jumps"),
    Scenario(
        "concept drift",
        None,
        None,
        "only the label relation changes: features and scores keep their law",
    ),
]


@dataclass
class ScenarioResult:
    scenario: str
    description: str
    changed_at: int
    events: int
    detected: bool
    delay_events: int | None
    first_alarm: str | None  # "feature/detector" of the first alarm after the change
    right_feature: bool | None  # None when nothing detectable changed
    false_alarms_before_change: int
    alarms_after_change: int


@dataclass
class DriftBenchResult:
    machine: str
    batch_size: int
    customers: int
    budget: dict[str, float]
    detectors: int
    arl0: float
    scenarios: list[ScenarioResult] = field(default_factory=list)
    stationary_events: int = 0
    stationary_false_alarms: int = 0
    false_alarms_per_million: float = 0.0
    budget_false_alarms_per_million: float = 0.0
    us_per_event: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_table(self) -> str:
        lines = [
            f"machine: {self.machine}",
            f"budget: {self.budget['false_triggers']:g} false trigger per "
            f"{self.budget['period_days']:g} days at {self.budget['events_per_day']:,.0f} "
            f"events/day over {self.detectors} detectors -> ARL0 {self.arl0:,.0f} events each",
            f"batches of {self.batch_size} events, keys from {self.customers:,} customers",
            "",
            "| scenario | detected | delay (events) | first alarm | right feature "
            "| false alarms before change |",
            "|---|---|---:|---|---|---:|",
        ]
        for r in self.scenarios:
            lines.append(
                f"| {r.scenario} | {'yes' if r.detected else 'no'} | "
                f"{'' if r.delay_events is None else f'{r.delay_events:,}'} | "
                f"{r.first_alarm or ''} | "
                f"{'n/a' if r.right_feature is None else ('yes' if r.right_feature else 'NO')} | "
                f"{r.false_alarms_before_change} |"
            )
        lines += [
            "",
            f"long stationary stream: {self.stationary_events:,} events, "
            f"{self.stationary_false_alarms} false alarms = "
            f"{self.false_alarms_per_million:.2f} per million "
            f"(budget allows {self.budget_false_alarms_per_million:.2f} per million, "
            "summed over detectors)",
            f"monitor cost: {self.us_per_event:.2f} us per event",
        ]
        return "\n".join(lines)


def _monitor(profile: dict, budget: MonitorBudget) -> DriftMonitor:
    return DriftMonitor(profile, NUMERIC, CATEGORICAL, budget)


def _batches(
    n: int, batch: int, rng: np.random.Generator, customers: int, mutate: Mutation | None
) -> list[tuple[pd.DataFrame, np.ndarray]]:
    out = []
    for start in range(0, n, batch):
        frame = stationary_events(min(batch, n - start), rng, customers)
        if mutate is not None:
            frame = mutate(frame, rng)
        out.append((frame, model_scores(frame)))
    return out


def run_scenario(
    scenario: Scenario,
    profile: dict,
    budget: MonitorBudget,
    *,
    before: int,
    max_after: int,
    batch: int,
    customers: int,
    seed: int,
) -> ScenarioResult:
    rng = np.random.default_rng(seed)
    monitor = _monitor(profile, budget)
    false_alarms = 0
    clock = 0
    for frame, scores in _batches(before, batch, rng, customers, None):
        times = np.full(len(frame), clock, dtype=np.int64)
        update = monitor.update(frame[NUMERIC + CATEGORICAL], scores, times, frame["customer"])
        false_alarms += len(update.alarms)
        clock += 1000
    target = scenario.feature
    first_alarm: str | None = None
    delay: int | None = None
    after_alarms = 0
    seen = 0
    while seen < max_after:
        n = min(batch, max_after - seen)
        frame = stationary_events(n, rng, customers)
        if scenario.mutate is not None:
            frame = scenario.mutate(frame, rng)
        scores = model_scores(frame)
        times = np.full(n, clock, dtype=np.int64)
        update = monitor.update(frame[NUMERIC + CATEGORICAL], scores, times, frame["customer"])
        clock += 1000
        for alarm in sorted(update.alarms, key=lambda a: a.event_index):
            after_alarms += 1
            if first_alarm is None:
                first_alarm = f"{alarm.feature}/{alarm.detector}"
            if delay is None and alarm.feature == target:
                delay = alarm.event_index - before
        seen += n
        if delay is not None or (target is None and seen >= max_after):
            break
    right = None if target is None else first_alarm is not None and first_alarm.startswith(target)
    return ScenarioResult(
        scenario=scenario.name,
        description=scenario.description,
        changed_at=before,
        events=before + seen,
        detected=delay is not None,
        delay_events=delay,
        first_alarm=first_alarm,
        right_feature=right,
        false_alarms_before_change=false_alarms,
        alarms_after_change=after_alarms,
    )


def run_drift_bench(
    *,
    stationary_events_total: int = 1_000_000,
    before: int = 20_000,
    max_after: int = 200_000,
    batch: int = 2000,
    customers: int = 1_000_000,
    events_per_day: float = 100_000.0,
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
) -> DriftBenchResult:
    """Every scenario, then the long stationary stream (false alarms and cost)."""
    rng = np.random.default_rng(seed)
    sample = stationary_events(50_000, rng, customers)
    profile = build_reference_profile(
        sample[NUMERIC + CATEGORICAL], model_scores(sample), NUMERIC, CATEGORICAL
    )
    profile["n_customers"] = int(sample["customer"].nunique())
    budget = MonitorBudget(false_triggers=1.0, period_days=30.0, events_per_day=events_per_day)
    probe = _monitor(profile, budget)
    result = DriftBenchResult(
        machine=f"{platform.machine()} {platform.processor() or ''} "
        f"python {platform.python_version()}".strip(),
        batch_size=batch,
        customers=customers,
        budget=asdict(budget),
        detectors=probe.n_detectors,
        arl0=probe.arl0,
    )
    for i, scenario in enumerate(SCENARIOS):
        if progress:
            progress(f"scenario {scenario.name}")
        result.scenarios.append(
            run_scenario(
                scenario,
                profile,
                budget,
                before=before,
                max_after=max_after,
                batch=batch,
                customers=customers,
                seed=seed + 1 + i,
            )
        )
    if progress:
        progress(f"stationary stream of {stationary_events_total:,} events")
    monitor = _monitor(profile, budget)
    stream_rng = np.random.default_rng(seed + 100)
    alarms = 0
    spent = 0.0
    done = 0
    while done < stationary_events_total:
        n = min(batch, stationary_events_total - done)
        frame = stationary_events(n, stream_rng, customers)
        scores = model_scores(frame)
        times = np.full(n, done, dtype=np.int64)
        features = frame[NUMERIC + CATEGORICAL]
        keys = frame["customer"].to_numpy()
        started = time.perf_counter()
        update = monitor.update(features, scores, times, keys)
        spent += time.perf_counter() - started
        alarms += len(update.alarms)
        done += n
    result.stationary_events = done
    result.stationary_false_alarms = alarms
    result.false_alarms_per_million = alarms * 1e6 / done
    result.budget_false_alarms_per_million = probe.n_detectors * 1e6 / probe.arl0
    result.us_per_event = spent * 1e6 / max(1, done)
    return result
