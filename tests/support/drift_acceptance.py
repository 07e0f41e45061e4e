"""Stationary acceptance of the drift monitor on served features of whole event streams.

A model is trained on the first part of a stream exactly as ``driftline train`` does
(its reference profile and serving calibration included), then the rest of the same
stream, which nothing changed, is served: point-in-time features through the online
state engine (``history_features``), the model's scores, and the monitor over micro-batches
with customer keys, as the worker runs it.  What the monitor says about it is a false alarm.

Two generators: the product's simulator (``driftline.simulate``), and
``tests/support/independent_events.py``, written apart from it (other segments, rates,
categories, weekly seasonality, bursty and silent customers) and never used to tune the
monitor.  ``python -m tests.support.drift_acceptance`` runs the long version and prints
figures; ``... stream`` serves 10^7 events and more drawn chunk by chunk, in bounded memory
(``independent_stream.py``), and ``... write FILE`` writes that stream for
``driftline bench drift --events FILE``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from driftline.commands.train import train_on_events
from driftline.core.drift.monitor import DriftMonitor, DriftUpdate, MonitorBudget
from driftline.core.drift.trigger import RetrainPolicy, RetrainTrigger
from driftline.core.offline import history_features
from driftline.core.spec import DAY_MS, load_default_spec
from driftline.model.training import positive_scores

from .independent_events import PLANS, REGIONS, IndependentEvents

BATCH = 2000


#: Mean customer lifetime of the independent generator's renewing population (days).
LIFETIME_DAYS = 90.0
#: Most renewals one customer slot may see over a run.
MAX_RENEWALS = 16


def independent_frame(seed: int, customers: int, days: float) -> pd.DataFrame:
    """Events of the independent generator as an event table (``generate_history``'s
    columns), over about ``days`` days.

    The population renews itself: each customer slot is taken over by a new customer (new
    id, signup, age, income, plan, region; the same kind of activity) after an exponential
    lifetime, and the first customers' ages are drawn from the same law.  A fixed cohort
    would age (tenure grows by the length of the run), which is a real drift; a renewing
    population is stationary in every feature, so whatever the monitor says is a false
    alarm.
    """
    spacing_ms = 86_400_000 / (customers * 1.2)  # ~1.2 events per customer per day
    generator = IndependentEvents(seed, customers=customers, spacing_ms=spacing_ms)
    n = int(days * DAY_MS / spacing_ms)
    customer, times, types = generator.times_and_types(n)
    rng = np.random.default_rng(seed + 1)
    life_ms = LIFETIME_DAYS * DAY_MS
    start = generator.start_ms
    # Renewal times per slot: the first at the stationary residual life, then lifetimes.
    renewals = start + np.cumsum(rng.exponential(life_ms, (customers, MAX_RENEWALS)), axis=1)
    generation = (renewals[customer] <= times[:, None]).sum(axis=1)
    signups = np.column_stack([start - rng.exponential(life_ms, customers), renewals]).astype(
        np.int64
    )
    shape = (customers, MAX_RENEWALS + 1)
    age = rng.integers(16, 95, shape).astype(float)
    income = np.round(rng.lognormal(10.6, 0.6, shape), 2)
    plan = rng.integers(0, len(PLANS), shape)
    region = rng.integers(0, len(REGIONS), shape)
    who = (customer, generation)
    buying = np.isin(types, ("purchase", "refund"))
    amount = np.where(buying, np.round(rng.gamma(2.0, 30.0, n), 2), np.nan)
    present = rng.random((n, 4))
    tenure = (times - signups[who]) / (30.44 * DAY_MS)
    ids = np.char.add(np.char.add(np.array(generator.ids)[customer], "-"), generation.astype(str))
    return pd.DataFrame(
        {
            "event_id": [f"x{seed}-{i}" for i in range(n)],
            "customer_id": ids.astype(object),
            "event_time": times.astype(np.int64),
            "event_type": types.astype(str),
            "amount": amount,
            "quantity": np.where(buying, rng.integers(1, 6, n), np.nan).astype(float),
            "age": np.where(present[:, 0] < 0.5, age[who], np.nan),
            "income": np.where(present[:, 1] < 0.4, income[who], np.nan),
            "tenure_months": np.where(present[:, 2] < 0.5, np.round(tenure, 3), np.nan),
            "plan_type": np.where(
                present[:, 3] < 0.6, np.array(PLANS, dtype=object)[plan[who]], None
            ),
            "region": np.array(REGIONS, dtype=object)[region[who]],
        }
    )


def simulated_frame(seed: int, customers: int, days: float) -> pd.DataFrame:
    from driftline.simulate import Population

    return Population(n_customers=customers, seed=seed).generate_history(days=days)


@dataclass
class Verdict:
    """What the monitor said about a stationary stretch."""

    generator: str
    events: int
    days: float
    alarms: list[tuple[str, str, int]] = field(default_factory=list)
    requests: int = 0
    drift_events: int = 0  # events served while any feature was in DRIFT
    seconds: float = 0.0

    @property
    def alarmed_features(self) -> set[str]:
        return {feature for feature, _, _ in self.alarms}

    def line(self) -> str:
        return (
            f"{self.generator}: {self.events:,} stationary events over {self.days:.0f} days: "
            f"{len(self.alarms)} alarms ({', '.join(sorted(self.alarmed_features)) or 'none'}), "
            f"{self.requests} retrain requests, {self.drift_events:,} events served in DRIFT "
            f"({self.seconds:.0f} s)"
        )


def _served(
    events: pd.DataFrame, pipeline: object, after_ms: int
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """What the worker serves of ``events`` (sorted) after ``after_ms``: point-in-time
    features (late events dropped), scores, customer keys and event times."""
    spec = load_default_spec()
    features, late = history_features(events, spec)
    times = events["event_time"].to_numpy(dtype=np.int64)
    live = np.flatnonzero((times > after_ms) & ~late)
    frame = features.iloc[live][spec.feature_names].reset_index(drop=True)
    scores = positive_scores(pipeline, frame)
    keys = events["customer_id"].iloc[live].astype(str).to_numpy(dtype=object)
    return frame, scores, keys, times[live]


def _monitor(profile: dict, budget_days: float = 30.0) -> DriftMonitor:
    spec = load_default_spec()
    return DriftMonitor(
        profile,
        spec.numeric_features,
        spec.categorical_features,
        MonitorBudget(events_per_day=float(profile["events_per_day"]), period_days=budget_days),
    )


def _batches(monitor: DriftMonitor, served: tuple) -> Iterator[tuple[int, DriftUpdate]]:
    """Feed ``served`` in batches of BATCH; yield (end row, update)."""
    frame, scores, keys, times = served
    for lo in range(0, len(frame), BATCH):
        hi = min(len(frame), lo + BATCH)
        rows = frame.iloc[lo:hi].reset_index(drop=True)
        yield hi, monitor.update(rows, scores[lo:hi], times[lo:hi], keys[lo:hi])


def serve_stationary(
    events: pd.DataFrame,
    generator: str,
    *,
    train_days: float,
    horizon_days: int = 60,
    budget_days: float = 30.0,
) -> Verdict:
    """Train on ``events`` before ``train_days``, then serve everything after the model's
    reference period through the monitor (see the module docstring)."""
    started = time.monotonic()
    spec = load_default_spec()
    events = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    t0 = int(events["event_time"].iloc[0])
    train_end = t0 + int(train_days * DAY_MS)
    history = events[events["event_time"] < train_end]
    result = train_on_events(
        history, spec, horizon_days=horizon_days, n_estimators=60, progress=False
    )
    profile = result.reference_profile
    served = _served(events, result.pipeline, int(profile["window_ms"][1]))
    times = served[3]
    monitor = _monitor(profile, budget_days)
    trigger = RetrainTrigger(RetrainPolicy(), "churn", "acceptance", "acceptance")
    verdict = Verdict(generator, len(times), (times[-1] - times[0]) / DAY_MS)
    start = 0
    for stop, update in _batches(monitor, served):
        verdict.alarms += [(a.feature, a.detector, a.event_index) for a in update.alarms]
        if update.drifted or update.prediction.state == 2:
            verdict.drift_events += stop - start
        start = stop
        if trigger.observe(update) is not None:
            verdict.requests += 1
    verdict.seconds = time.monotonic() - started
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=400)
    parser.add_argument("--train-days", type=float, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--generator", choices=("independent", "simulator", "both"), default="both")
    args = parser.parse_args(argv)
    kinds = ["independent", "simulator"] if args.generator == "both" else [args.generator]
    for kind in kinds:
        for seed in args.seeds:
            make = independent_frame if kind == "independent" else simulated_frame
            events = make(seed, args.customers, args.days)
            verdict = serve_stationary(events, f"{kind} seed {seed}", train_days=args.train_days)
            print(verdict.line(), flush=True)
            for alarm in verdict.alarms[:20]:
                print("   ", alarm)
    return 0


# ---------------------------------------------------------------------- detection delays


#: Changes injected into the independent generator's live events, and the feature that
#: must be named first.  Each returns the modified live events.
def _shift_age(sd: float):
    def change(live: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        live["age"] = live["age"] + sd * 22.8  # the generator's age sd (uniform 16-94)
        return live

    return change


def _purchase_rate(live: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    drop = (live["event_type"] == "purchase").to_numpy() & (rng.random(len(live)) < 0.2)
    return live[~drop]


def _spend_scale(live: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    live["amount"] = live["amount"] * 1.5
    return live


def _new_category(live: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    new = live["plan_type"].notna().to_numpy() & (rng.random(len(live)) < 0.2)
    live.loc[new, "plan_type"] = "platinum"
    return live


def _missing_amounts(live: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A producer that stops sending ``amount`` on 30 % of purchases.  (A missing profile
    field in events changes no served feature: the customer's last known value stays.)"""
    live.loc[rng.random(len(live)) < 0.3, "amount"] = np.nan
    return live


SCENARIOS = {
    "age +0.25 sd": (_shift_age(0.25), {"age"}),
    "age +0.5 sd": (_shift_age(0.5), {"age"}),
    "age +1 sd": (_shift_age(1.0), {"age"}),
    "purchase rate -20 %": (
        _purchase_rate,
        {
            "purchases_7d",
            "purchases_30d",
            "purchases_90d",
            "items_30d",
            "spend_30d",
            "spend_90d",
            "days_since_last_purchase",
            "spend_90d_per_month",
            "__score__",
        },
    ),
    "spend x1.5": (
        _spend_scale,
        {
            "spend_30d",
            "spend_90d",
            "avg_order_value_90d",
            "max_order_value_90d",
            "last_order_value",
            "spend_90d_per_month",
        },
    ),
    "new plan (20 %)": (_new_category, {"plan_type"}),
    "amount missing on 30 %": (
        _missing_amounts,
        {
            "spend_30d",
            "spend_90d",
            "avg_order_value_90d",
            "max_order_value_90d",
            "last_order_value",
            "spend_90d_per_month",
        },
    ),
}


def detection_delays(seed: int, customers: int, days: float, train_days: float) -> list[str]:
    """Events from the change to the first alarm, per scenario, for one seed: the change
    starts 20 days into the served stream."""
    spec = load_default_spec()
    events = independent_frame(seed, customers, days)
    events = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    t0 = int(events["event_time"].iloc[0])
    result = train_on_events(
        events[events["event_time"] < t0 + int(train_days * DAY_MS)],
        spec,
        horizon_days=60,
        n_estimators=60,
        progress=False,
    )
    profile = result.reference_profile
    change_ms = int(profile["window_ms"][1]) + 20 * DAY_MS
    lines = []
    for name, (change, expected) in SCENARIOS.items():
        rng = np.random.default_rng(seed)
        before = events[events["event_time"] < change_ms]
        after = change(events[events["event_time"] >= change_ms].copy(), rng)
        changed = pd.concat([before, after], ignore_index=True)
        served = _served(changed, result.pipeline, int(profile["window_ms"][1]))
        monitor = _monitor(profile)
        start = int(np.searchsorted(served[3], change_ms))
        found = None
        early = 0
        for _, update in _batches(monitor, served):
            for alarm in update.alarms:
                if alarm.event_index < start:
                    early += 1
                elif found is None:
                    found = alarm
            if found is not None:
                break
        if found is None:
            lines.append(f"{name}\tseed {seed}\tnot detected\t\t")
        else:
            right = found.feature in expected
            lines.append(
                f"{name}\tseed {seed}\t{found.event_index - start}\t"
                f"{found.feature}/{found.detector}\t{'right' if right else 'WRONG'}\t"
                f"{early} alarms before"
            )
    return lines


def delays_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="detection delays on the independent generator")
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--days", type=float, default=450)
    parser.add_argument("--train-days", type=float, default=330)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    args = parser.parse_args(argv)
    for seed in args.seeds:
        for line in detection_delays(seed, args.customers, args.days, args.train_days):
            print(line, flush=True)
    return 0


def cdnow_replay(path: str, train_months: int = 6) -> str:
    """CDNOW's purchase log: a model trained on its first ``train_months`` months, then the
    rest of the log served through the monitor.  Its customers all joined in early 1997 and
    their activity decays: a real drift, which the monitor should report."""
    from driftline.commands.train import read_event_file

    spec = load_default_spec()
    events, shift_ms = read_event_file(path, "cdnow")
    events = events.sort_values("event_time", kind="stable").reset_index(drop=True)
    t0 = int(events["event_time"].iloc[0])
    train_end = t0 + int(train_months * 30.4 * DAY_MS)
    result = train_on_events(
        events[events["event_time"] < train_end],
        spec,
        horizon_days=60,
        n_estimators=60,
        calendar_shift_ms=shift_ms,
        progress=False,
    )
    profile = result.reference_profile
    served = _served(events, result.pipeline, int(profile["window_ms"][1]))
    scores, served_times = served[1], served[3]
    monitor = _monitor(profile)
    trigger = RetrainTrigger(RetrainPolicy(), "cdnow", "1", "acceptance")
    first: dict[str, int] = {}
    requests = []
    update = None
    for _, update in _batches(monitor, served):
        for alarm in update.alarms:
            first.setdefault(alarm.feature, alarm.event_index)
        if (request := trigger.observe(update)) is not None:
            requests.append(request)
    assert update is not None

    def day(ms: int) -> str:
        return str(pd.Timestamp(ms - shift_ms, unit="ms").date())

    lines = [
        f"CDNOW: trained on {day(t0)} .. {day(train_end)}, reference "
        f"{day(profile['window_ms'][0])} .. {day(profile['window_ms'][1])}; served "
        f"{len(served_times):,} events {day(int(served_times[0]))} .. "
        f"{day(int(served_times[-1]))}",
        f"  reference check: {'MISMATCH' if update.reference_mismatch else 'fits'} "
        f"(off: {', '.join(f'{f} {v:.2f}' for f, v in update.reference_off.items()) or 'none'})",
        f"  mean score: reference {profile['score']['mean']:.3f}, served {scores.mean():.3f}",
        f"  in DRIFT at the end: {', '.join(update.drifted) or 'none'}; score state "
        f"{update.prediction.state}",
        "  first alarm per feature (events after the reference): "
        + ", ".join(f"{f} {i:,}" for f, i in sorted(first.items(), key=lambda x: x[1])),
        f"  retrain requests: {len(requests)}"
        + (f" (first: {requests[0].reason}, {day(requests[0].window_end_ms)})" if requests else ""),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] in (["stream"], ["write"]):
        from .independent_stream import stream_main, write_main

        run = stream_main if sys.argv[1] == "stream" else write_main
        sys.exit(run(sys.argv[2:]))
    if sys.argv[1:2] == ["delays"]:
        sys.exit(delays_main(sys.argv[2:]))
    if sys.argv[1:2] == ["cdnow"]:
        print(
            cdnow_replay(
                sys.argv[2] if len(sys.argv) > 2 else "../shared/data/cdnow/cdnow_master.csv"
            )
        )
        sys.exit(0)
    sys.exit(main())
