"""Drift benchmark on event streams: false alarms per feature against the budget.

``driftline bench drift`` judges the monitor on iid draws of a synthetic law
(:mod:`driftline.bench_drift`).  Served features are nothing like that: windowed counts are
serially dependent, profile fields repeat on every event of a customer, and the week has a
shape.  This module runs the monitor on a whole *stream* of events as the worker serves it:

1. the stream's history period trains a model exactly as ``driftline train`` does
   (:func:`~driftline.commands.train.train_on_events`: reference profile and serving
   calibration included);
2. every event, from the first, goes through the online state engine (``FeatureState``,
   the partition watermark dropping late events), chunk by chunk, so memory stays bounded
   by a chunk and the state, never the stream;
3. events after the reference period are scored and fed to the monitor in micro-batches
   with their customer keys, and the retrain trigger watches the monitor's updates.

The stream has nothing changed in it, so every alarm is a false alarm.  The report gives per
feature the alarms, their rate per 10^6 served events and what the budget allows: each
detector gets ``ARL0 = D * T * r / B`` events (``FalseAlarmBudget``), so a feature with
``d`` detectors may raise ``d * 10^6 / ARL0`` false alarms per 10^6 events, and the whole
monitor ``D * 10^6 / ARL0`` (``B`` per ``T`` days at ``r`` events a day).

Streams: the product's simulator (``SteadyPopulation``, a renewing population whose mix
does not move) and any event file ``driftline replay`` reads (Parquet or CSV), e.g. the
independent generator's stream written by ``python -m tests.support.drift_acceptance
write FILE``.
"""

from __future__ import annotations

import itertools
import json
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftline.core.drift.monitor import DriftMonitor, DriftUpdate, MonitorBudget
from driftline.core.drift.trigger import RetrainPolicy, RetrainTrigger
from driftline.core.events import EventBatch
from driftline.core.spec import DAY_MS, FeatureSpec, load_default_spec
from driftline.core.state import FeatureState
from driftline.core.watermark import PartitionWatermark
from driftline.model.profile import profiled_features
from driftline.model.training import positive_scores

#: Name of the score's stream in alarms and in the report.
SCORE = "__score__"
#: Events per monitor update (a worker's micro-batch).
BATCH = 2000


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Resident set size now, in MB (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * resource.getpagesize() / 2**20


def detectors_per_feature(monitor: DriftMonitor) -> dict[str, int]:
    """How many of the monitor's budgeted detectors watch each feature (module docstring
    of :mod:`driftline.core.drift.monitor`): mean, variance and missing for a numeric
    feature, category mix, unseen and missing for a categorical one, mean and variance for
    the score.  They sum to ``monitor.n_detectors``, the ``D`` of the budget."""
    out = {name: 3 for name in monitor.numeric}
    out.update({name: 3 for name in monitor.categorical})
    out[SCORE] = 2
    if sum(out.values()) != monitor.n_detectors:
        raise ValueError(
            f"detector count {sum(out.values())} differs from the monitor's "
            f"{monitor.n_detectors}: update detectors_per_feature"
        )
    return out


@dataclass
class FeatureRow:
    """One feature's false alarms against its share of the budget."""

    feature: str
    detectors: int
    alarms: int
    drift_episodes: int
    per_million: float
    budget_per_million: float
    budget_alarms: float  # what the budget allows over the events served
    #: Alarms by detector (``mean``, ``variance``, ``missing``, ``category_mix``...).
    by_detector: dict[str, int] = field(default_factory=dict)

    @property
    def within(self) -> bool:
        return self.alarms <= self.budget_alarms


@dataclass
class StreamReport:
    """What the monitor said about a stationary stream."""

    stream: str
    events: int
    days: float
    customers: int
    budget: dict[str, float]
    detectors: int
    arl0: float
    rows: list[FeatureRow] = field(default_factory=list)
    retrain_requests: int = 0
    drift_episodes: int = 0
    drift_events: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0  # training included (it holds the history)
    end_rss_mb: float = 0.0  # while serving: bounded by a chunk and the state

    @property
    def alarms(self) -> int:
        return sum(r.alarms for r in self.rows)

    @property
    def budget_alarms(self) -> float:
        return sum(r.budget_alarms for r in self.rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_table(self) -> str:
        b = self.budget
        lines = [
            f"stream: {self.stream}",
            f"served {self.events:,} events of {self.customers:,} customers over "
            f"{self.days:.1f} days in {self.seconds:.0f} s (peak RSS {self.peak_rss_mb:,.0f} MB, "
            f"{self.end_rss_mb:,.0f} MB at the end)",
            f"budget: {b['false_triggers']:g} false trigger per {b['period_days']:g} days at "
            f"{b['events_per_day']:,.0f} events/day over {self.detectors} detectors -> "
            f"ARL0 {self.arl0:,.0f} events each",
            "",
            "| feature | detectors | alarms | per 10^6 events | budget per 10^6 "
            "| budget over the run | DRIFT episodes | alarms by detector |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            flag = "" if r.within else " (over)"
            lines.append(
                f"| {r.feature} | {r.detectors} | {r.alarms}{flag} | {r.per_million:.3f} | "
                f"{r.budget_per_million:.3f} | {r.budget_alarms:.2f} | {r.drift_episodes} | "
                + ", ".join(f"{d} {n}" for d, n in sorted(r.by_detector.items()))
                + " |"
            )
        total_pm = self.alarms * 1e6 / max(1, self.events)
        lines += [
            f"| all | {self.detectors} | {self.alarms} | {total_pm:.3f} | "
            f"{self.detectors * 1e6 / self.arl0:.3f} | {self.budget_alarms:.2f} | "
            f"{self.drift_episodes} | |",
            "",
            f"retrain requests: {self.retrain_requests}; events served while any feature or "
            f"the score was in DRIFT: {self.drift_events:,}",
        ]
        return "\n".join(lines)


class StreamTally:
    """Counts alarms, DRIFT episodes and retrain requests over a monitor's updates."""

    def __init__(self, monitor: DriftMonitor, model: str = "bench") -> None:
        self.monitor = monitor
        self.detectors = detectors_per_feature(monitor)
        self.alarms: Counter[str] = Counter()
        self.detector_alarms: Counter[tuple[str, str]] = Counter()
        self.episodes: Counter[str] = Counter()
        self.trigger = RetrainTrigger(RetrainPolicy(), model, "bench", "bench")
        self.requests = 0
        self.events = 0
        self.drift_events = 0
        self._in_drift: set[str] = set()

    def observe(self, update: DriftUpdate, n_events: int) -> None:
        for alarm in update.alarms:
            self.alarms[alarm.feature] += 1
            self.detector_alarms[(alarm.feature, alarm.detector)] += 1
        now = set(update.drifted) | ({SCORE} if update.prediction.state == 2 else set())
        for name in now - self._in_drift:
            self.episodes[name] += 1
        self._in_drift = now
        self.events += n_events
        if now:
            self.drift_events += n_events
        if self.trigger.observe(update) is not None:
            self.requests += 1

    def report(self, stream: str, days: float, customers: int, seconds: float) -> StreamReport:
        m = self.monitor
        rows = []
        for name, d in self.detectors.items():
            per_million = self.alarms[name] * 1e6 / max(1, self.events)
            rows.append(
                FeatureRow(
                    feature=name,
                    detectors=d,
                    alarms=self.alarms[name],
                    drift_episodes=self.episodes[name],
                    by_detector={
                        d: n for (f, d), n in sorted(self.detector_alarms.items()) if f == name
                    },
                    per_million=per_million,
                    budget_per_million=d * 1e6 / m.arl0,
                    budget_alarms=d * self.events / m.arl0,
                )
            )
        return StreamReport(
            stream=stream,
            events=self.events,
            days=days,
            customers=customers,
            budget=asdict(m.budget),
            detectors=m.n_detectors,
            arl0=m.arl0,
            rows=rows,
            retrain_requests=self.requests,
            drift_episodes=sum(self.episodes.values()),
            drift_events=self.drift_events,
            seconds=seconds,
            peak_rss_mb=peak_rss_mb(),
            end_rss_mb=rss_mb(),
        )


def make_monitor(profile: dict[str, Any], budget_days: float = 30.0) -> DriftMonitor:
    """The worker's monitor for ``profile`` with the budget of 1 false trigger per
    ``budget_days`` days at the reference's events per day."""
    spec = load_default_spec()
    budget = MonitorBudget(events_per_day=float(profile["events_per_day"]), period_days=budget_days)
    numeric, categorical = profiled_features(
        profile, spec.numeric_features, spec.categorical_features
    )
    return DriftMonitor(profile, numeric, categorical, budget)


@dataclass
class Served:
    """One chunk's events after ``after_ms`` as the worker serves them."""

    features: pd.DataFrame
    scores: np.ndarray
    keys: np.ndarray
    times: np.ndarray


class StreamServer:
    """The online state engine, the model and nothing else: features of a stream fed
    chunk by chunk in event-time order (one partition), scored after ``after_ms``."""

    def __init__(self, pipeline: Any, after_ms: int, spec: FeatureSpec | None = None) -> None:
        self.spec = spec or load_default_spec()
        self.pipeline = pipeline
        self.after_ms = int(after_ms)
        self.state = FeatureState(self.spec, capacity=1024)
        self.watermark = PartitionWatermark(self.spec.allowed_lateness_ms)
        self.late = 0
        self.customers: set[str] = set()

    def feed(self, events: pd.DataFrame) -> Served:
        """Apply one chunk (sorted by event time) to the state; return what is served."""
        batch = EventBatch.from_frame(events)
        is_late = self.watermark.classify(batch.event_time_ms)
        self.late += int(is_late.sum())
        on_time = batch.take(np.flatnonzero(~is_late))
        features = self.state.update(on_time)
        live = np.flatnonzero(on_time.event_time_ms > self.after_ms)
        frame = features.iloc[live][self.spec.feature_names].reset_index(drop=True)
        keys = on_time.customer_id[live]
        self.customers.update(keys.tolist())
        scores = positive_scores(self.pipeline, frame) if len(frame) else np.empty(0)
        return Served(frame, scores, keys, on_time.event_time_ms[live])


def monitor_stream(
    chunks: Iterable[pd.DataFrame],
    pipeline: Any,
    profile: dict[str, Any],
    *,
    stream: str,
    budget_days: float = 30.0,
    batch: int = BATCH,
    progress: Callable[[StreamTally, float], None] | None = None,
    progress_every: int = 1_000_000,
) -> StreamReport:
    """Serve ``chunks`` (event tables in event-time order, from the stream's first event)
    through the state engine, the model and the monitor; report per feature."""
    started = time.monotonic()
    server = StreamServer(pipeline, int(profile["window_ms"][1]))
    monitor = make_monitor(profile, budget_days)
    tally = StreamTally(monitor)
    first = last = None
    next_progress = progress_every
    for chunk in chunks:
        served = server.feed(chunk)
        if len(served.times):
            first = int(served.times[0]) if first is None else first
            last = int(served.times[-1])
        for lo in range(0, len(served.times), batch):
            hi = min(len(served.times), lo + batch)
            rows = served.features.iloc[lo:hi].reset_index(drop=True)
            update = monitor.update(
                rows, served.scores[lo:hi], served.times[lo:hi], served.keys[lo:hi]
            )
            tally.observe(update, hi - lo)
        if progress is not None and tally.events >= next_progress:
            next_progress += progress_every
            progress(tally, time.monotonic() - started)
    days = 0.0 if first is None or last is None else (last - first) / DAY_MS
    return tally.report(stream, days, len(server.customers), time.monotonic() - started)


def split_history(
    chunks: Iterable[pd.DataFrame], end_ms: int
) -> tuple[pd.DataFrame, Iterator[pd.DataFrame]]:
    """The events of a chunked stream before ``end_ms`` as one table (to train on), and
    an iterator over the whole stream again: the history first, then the remaining chunks
    (the history is served too, to warm the state, as a worker backfilled on it is)."""
    source = iter(chunks)
    head: list[pd.DataFrame] = []
    rest: pd.DataFrame | None = None
    end = int(end_ms)
    for chunk in source:
        if chunk.empty:
            continue
        times = chunk["event_time"].to_numpy(dtype=np.int64)
        if times[-1] < end:
            head.append(chunk)
            continue
        cut = int(np.searchsorted(times, end))
        head.append(chunk.iloc[:cut])
        rest = chunk.iloc[cut:]
        break
    history = pd.concat(head, ignore_index=True) if head else pd.DataFrame()
    held = [history]  # released once served, so the caller's ``del`` frees it

    def again() -> Iterator[pd.DataFrame]:
        table = held.pop()
        for lo in range(0, len(table), 200_000):
            yield table.iloc[lo : lo + 200_000]
        del table
        if rest is not None and len(rest):
            yield rest
        yield from source

    return history, again()


# --------------------------------------------------------------------------- the streams


def simulator_chunks(
    customers: int, seed: int, days: float, start_ms: int
) -> Iterator[pd.DataFrame]:
    """The product simulator's renewing population (the demo's world): the pre-log
    accounts, then ``days`` of events from ``start_ms``, one table a day."""
    from driftline.simulate_steady import SteadyPopulation

    population = SteadyPopulation(n_customers=customers, seed=seed, start_ms=start_ms)
    yield population.account_history()
    until = start_ms + int(days * DAY_MS)
    yield from population.stream_frames(chunk_ms=DAY_MS, until_ms=until, profile_first=False)


def file_chunks(events: pd.DataFrame, chunk_days: float = 1.0) -> Iterator[pd.DataFrame]:
    """An event table (``driftline replay``'s reader) in event-time order, by days."""
    ordered = events.sort_values("event_time", kind="stable", ignore_index=True)
    times = ordered["event_time"].to_numpy(dtype=np.int64)
    if not len(times):
        return
    step = max(1, int(chunk_days * DAY_MS))
    edges = np.arange(int(times[0]), int(times[-1]) + step + 1, step)
    cuts = np.searchsorted(times, edges)
    for lo, hi in itertools.pairwise(cuts.tolist()):
        if hi > lo:
            yield ordered.iloc[lo:hi]


def run_stream_bench(
    chunks: Iterable[pd.DataFrame],
    train_end_ms: int,
    stream: str,
    *,
    horizon_days: int = 60,
    n_estimators: int = 60,
    budget_days: float = 30.0,
    batch: int = BATCH,
    progress: Callable[[str], None] | None = None,
) -> StreamReport:
    """Train on the stream before ``train_end_ms`` as ``driftline train`` does (its
    latest 30 days are the reference), then serve the whole stream and report the false
    alarms after the reference period per feature (module docstring)."""
    from driftline.commands.train import train_on_events

    history, again = split_history(chunks, train_end_ms)
    if progress:
        progress(f"training on {len(history):,} events before the cut")
    result = train_on_events(
        history,
        load_default_spec(),
        horizon_days=horizon_days,
        n_estimators=n_estimators,
        progress=False,
    )
    del history

    def tick(tally: StreamTally, seconds: float) -> None:
        if progress:
            progress(f"{tally.events:,} events served, {sum(tally.alarms.values())} alarms")

    return monitor_stream(
        again,
        result.pipeline,
        result.reference_profile,
        stream=stream,
        budget_days=budget_days,
        batch=batch,
        progress=tick,
    )


def simulator_stream_bench(
    *,
    customers: int = 2000,
    days: float = 300.0,
    train_days: float = 200.0,
    seed: int = 7,
    start_ms: int = 1_735_689_600_000,
    progress: Callable[[str], None] | None = None,
) -> StreamReport:
    """:func:`run_stream_bench` on the product simulator's steady population."""
    return run_stream_bench(
        simulator_chunks(customers, seed, days, start_ms),
        start_ms + int(train_days * DAY_MS),
        f"simulator (SteadyPopulation), {customers:,} customer slots, seed {seed}",
        progress=progress,
    )


def file_stream_bench(
    path: str,
    *,
    mapping: str | None = None,
    train_days: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> StreamReport:
    """:func:`run_stream_bench` on an event file (Parquet or CSV, or a raw log
    with ``mapping``); ``train_days`` from its first event, default 60 % of its span."""
    from driftline.commands.train import read_event_file

    events, _shift = read_event_file(path, mapping)
    times = events["event_time"].to_numpy(dtype=np.int64)
    first, last = int(times.min()), int(times.max())
    end = first + (int(0.6 * (last - first)) if train_days is None else int(train_days * DAY_MS))
    return run_stream_bench(file_chunks(events), end, f"events file {path}", progress=progress)


def run_from_args(args: Any) -> int:
    """``driftline bench drift --stream simulator | --events FILE`` (``commands.bench``)."""
    import sys

    from driftline.commands._errors import CommandError

    def say(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    try:
        if isinstance(args.events, str):
            report = file_stream_bench(
                args.events, mapping=args.mapping, train_days=args.train_days, progress=say
            )
        else:
            report = simulator_stream_bench(
                customers=args.customers,
                days=args.days,
                train_days=200.0 if args.train_days is None else args.train_days,
                seed=args.seed,
                progress=say,
            )
    except ValueError as error:  # UsageError of training, unreadable files
        raise CommandError(str(error)) from error
    print(report.to_json() if args.json else report.to_table())
    return 0
