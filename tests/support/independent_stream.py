"""The independent generator's renewing population, drawn chunk by chunk.

``drift_acceptance.independent_frame`` draws a whole run at once: fine for a few million
events, but 10^7 events as one table (and its features) took ~17 GB.  This draws the same
kind of stream (the same generator, segments, weekly seasonality, bursts, silent customers,
the same renewing population with a mean lifetime of ``LIFETIME_DAYS``) one chunk of
``chunk_days`` at a time, so memory is bounded by a chunk.  It is not the same sequence of
events as ``independent_frame`` for a seed (the random draws come in another order), only
the same law.

Used only for acceptance (``python -m tests.support.drift_acceptance stream`` and
``... write FILE``), never to calibrate anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .independent_events import DAY_MS, PLANS, REGIONS, IndependentEvents

if TYPE_CHECKING:
    from driftline.benchmarks.drift_streams import StreamReport

#: Mean customer lifetime of the renewing population (days), as drift_acceptance's.
LIFETIME_DAYS = 90.0


class RenewingStream:
    """``customers`` slots over ``days`` days, ~1.2 events per slot per day."""

    def __init__(self, seed: int, customers: int, days: float, chunk_days: float = 1.0) -> None:
        self.seed = seed
        self.customers = customers
        self.days = float(days)
        self.chunk_days = float(chunk_days)
        self.spacing_ms = DAY_MS / (customers * 1.2)
        self.generator = IndependentEvents(seed, customers=customers, spacing_ms=self.spacing_ms)
        rng = np.random.default_rng(seed + 1)
        self.rng = rng
        life_ms = LIFETIME_DAYS * DAY_MS
        start = self.generator.start_ms
        # Enough renewals that a slot practically never runs out (mean days / lifetime).
        renewals_max = int(self.days / LIFETIME_DAYS * 2) + 12
        # Renewal times per slot: the first at the stationary residual life, then lifetimes.
        self.renewals = start + np.cumsum(
            rng.exponential(life_ms, (customers, renewals_max)), axis=1
        )
        self.signups = np.column_stack(
            [start - rng.exponential(life_ms, customers), self.renewals]
        ).astype(np.int64)
        shape = (customers, renewals_max + 1)
        self.age = rng.integers(16, 95, shape).astype(float)
        self.income = np.round(rng.lognormal(10.6, 0.6, shape), 2)
        self.plan = rng.integers(0, len(PLANS), shape)
        self.region = rng.integers(0, len(REGIONS), shape)
        self.slot_ids = np.array(self.generator.ids)
        self._next_id = 0

    @property
    def events_per_day(self) -> float:
        return DAY_MS / self.spacing_ms

    def _frame(self, customer: np.ndarray, times: np.ndarray, types: np.ndarray) -> pd.DataFrame:
        """One chunk's rows as an event table (``generate_history``'s columns)."""
        n = len(customer)
        rng = self.rng
        generation = (self.renewals[customer] <= times[:, None]).sum(axis=1)
        who = (customer, generation)
        buying = np.isin(types, ("purchase", "refund"))
        present = rng.random((n, 4))
        tenure = (times - self.signups[who]) / (30.44 * DAY_MS)
        ids = np.char.add(np.char.add(self.slot_ids[customer], "-"), generation.astype(str))
        first = self._next_id
        self._next_id += n
        return pd.DataFrame(
            {
                "event_id": np.char.add(
                    f"s{self.seed}-", np.arange(first, first + n).astype(str)
                ).astype(object),
                "customer_id": ids.astype(object),
                "event_time": times.astype(np.int64),
                "event_type": types.astype(str),
                "amount": np.where(buying, np.round(rng.gamma(2.0, 30.0, n), 2), np.nan),
                "quantity": np.where(buying, rng.integers(1, 6, n), np.nan).astype(float),
                "age": np.where(present[:, 0] < 0.5, self.age[who], np.nan),
                "income": np.where(present[:, 1] < 0.4, self.income[who], np.nan),
                "tenure_months": np.where(present[:, 2] < 0.5, np.round(tenure, 3), np.nan),
                "plan_type": np.where(
                    present[:, 3] < 0.6, np.array(PLANS, dtype=object)[self.plan[who]], None
                ),
                "region": np.array(REGIONS, dtype=object)[self.region[who]],
            }
        )

    def chunks(self) -> Iterator[pd.DataFrame]:
        """The stream in event-time order, one table per ``chunk_days``.

        Events a chunk's weekday rule or bursts put after the chunk's last arrival are
        held back and merged into the next chunk, so the chunks together are in order."""
        per_chunk = max(1, int(self.chunk_days * DAY_MS / self.spacing_ms))
        end = self.generator.start_ms + int(self.days * DAY_MS)
        origin = self.generator.start_ms
        carry: pd.DataFrame | None = None
        while origin < end:
            customer, times, types = self.generator.times_and_types(per_chunk, origin)
            frame = self._frame(customer, times, types)
            if carry is not None and len(carry):
                frame = pd.concat([carry, frame], ignore_index=True)
                frame = frame.sort_values("event_time", kind="stable", ignore_index=True)
            origin = self.generator.base_end_ms
            held = frame["event_time"].to_numpy() > origin
            carry = frame[held]
            yield frame[~held].reset_index(drop=True)
        if carry is not None and len(carry):
            yield carry.reset_index(drop=True)


def serve_stream(
    seed: int,
    customers: int,
    days: float,
    train_days: float,
    *,
    chunk_days: float = 1.0,
    budget_days: float = 30.0,
    progress_every: int = 1_000_000,
    log: Callable[[str], object] = print,
) -> StreamReport:
    """Train on the stream's first ``train_days`` as ``driftline train`` does, then serve
    the whole stream (the history warms the state) through the state engine, the model and
    the monitor, chunk by chunk; returns the bench's per-feature report."""
    from driftline.benchmarks.drift_streams import StreamTally, monitor_stream, split_history
    from driftline.commands.train import train_on_events
    from driftline.core.spec import load_default_spec

    stream = RenewingStream(seed, customers, days, chunk_days)
    end_ms = stream.generator.start_ms + int(train_days * DAY_MS)
    history, chunks = split_history(stream.chunks(), end_ms)
    log(f"training on {len(history):,} events of {train_days:g} days")
    result = train_on_events(
        history, load_default_spec(), horizon_days=60, n_estimators=60, progress=False
    )
    del history
    profile = result.reference_profile

    def report(tally: StreamTally, seconds: float) -> None:
        from driftline.benchmarks.drift_streams import peak_rss_mb, rss_mb

        log(
            f"  {tally.events:,} served, {sum(tally.alarms.values())} alarms "
            f"{dict(tally.detector_alarms)}, {tally.requests} retrain requests, "
            f"{seconds:.0f} s, RSS {rss_mb():,.0f} MB (peak {peak_rss_mb():,.0f} MB)"
        )

    return monitor_stream(
        chunks,
        result.pipeline,
        profile,
        stream=f"independent renewing stream, seed {seed}, {customers:,} customer slots",
        budget_days=budget_days,
        progress=report,
        progress_every=progress_every,
    )


def stream_main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.drift_acceptance stream``: the volume acceptance."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="stationary acceptance, streamed")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=560)
    parser.add_argument("--train-days", type=float, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-days", type=float, default=1.0)
    parser.add_argument("--progress-every", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    report = serve_stream(
        args.seed,
        args.customers,
        args.days,
        args.train_days,
        chunk_days=args.chunk_days,
        progress_every=args.progress_every,
        log=lambda line: print(line, flush=True),
    )
    print(report.to_table(), flush=True)
    sys.stdout.flush()
    return 0


def write_main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.drift_acceptance write FILE``: the stream as an event file
    (Parquet when FILE ends in .parquet, else CSV) for ``driftline bench drift
    --events FILE``.  Written chunk by chunk."""
    import argparse

    parser = argparse.ArgumentParser(description="write the independent stream to a file")
    parser.add_argument("file")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=float, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    stream = RenewingStream(args.seed, args.customers, args.days)
    n = write_events(stream.chunks(), args.file)
    print(f"{args.file}: {n:,} events of {args.customers:,} customer slots over {args.days:g} days")
    return 0


def write_events(chunks: Iterable[pd.DataFrame], path: str) -> int:
    """Write event tables to ``path``: Parquet (``.parquet``) or CSV, the formats
    ``driftline replay`` and ``driftline train`` read; returns the number of events."""
    n = 0
    if str(path).endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        for chunk in chunks:
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
            n += len(chunk)
        if writer is not None:
            writer.close()
        return n
    with open(path, "w", encoding="utf-8", newline="") as out:
        for i, chunk in enumerate(chunks):
            chunk.to_csv(out, index=False, header=i == 0)
            n += len(chunk)
    return n
