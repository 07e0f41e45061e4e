"""Benchmarks.  `driftline bench` (throughput), `driftline bench state` or `bench drift`.

throughput (default): the worker against pass-through, per-event scoring and the model.

Starts an embedded broker (or uses --bootstrap-servers), trains a RandomForest(100)
churn model on simulated history, loads the input topic once, then measures side by side:
(a) pass-through consume->produce, (b) the Driftline worker, (c) a per-event scoring loop
(one-row DataFrame predict_proba per event), (d) the model alone at the worker's batch
size; and prints events/s with the ratios b/a, b/c, b/d.  A benchmark, not a test:
numbers depend on the machine, the ratios much less.

state: bytes per customer in state (numpy columns, and all traced allocations), update
throughput at that state size (2,000-event batches, with and without the changelog
export), snapshot and restore speed at --customer-sizes, and the time to restore a
changelog partition through the broker at --changelog-sizes.

drift: the drift monitor on synthetic scenarios (mean shifts of 0.25/0.5/1 sd, a variance
change, a new category, a missing-rate jump, concept drift, a long stationary stream):
detection delay in events, whether the right feature was named, false alarms per million
stationary events against the budget, and the monitor's cost in microseconds per event.
"""

from __future__ import annotations

import argparse

from driftline.bench import run_bench

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "suite",
        nargs="?",
        default="throughput",
        choices=["throughput", "state", "drift"],
        help="what to measure",
    )
    parser.add_argument(
        "--customer-sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[10_000, 100_000, 1_000_000],
        help="state suite: customers in state, comma-separated (default: 10000,100000,1000000)",
    )
    parser.add_argument(
        "--changelog-sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1_000_000],
        help="state suite: sizes also restored through a changelog topic",
    )
    parser.add_argument("--events", type=int, default=100_000, help="events for (a), (b), (d)")
    parser.add_argument("--per-event-events", type=int, default=2_000, help="events for (c), slow")
    parser.add_argument("--batch-size", type=int, default=2000, help="worker micro-batch size")
    parser.add_argument("--partitions", type=int, default=4, help="input partitions")
    parser.add_argument("--customers", type=int, default=5_000, help="simulated customers")
    parser.add_argument(
        "--bootstrap-servers", default=None, help="use this broker, not an embedded one"
    )
    parser.add_argument(
        "--stationary-events",
        type=int,
        default=1_000_000,
        help="drift suite: length of the stationary stream for false alarms and cost",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    if args.suite == "drift":
        import sys

        from driftline.bench_drift import run_drift_bench

        drift = run_drift_bench(
            stationary_events_total=args.stationary_events,
            progress=None if args.json else lambda m: print(m, file=sys.stderr),
        )
        print(drift.to_json() if args.json else drift.to_table())
        return 0
    if args.suite == "state":
        from driftline.bench_state import run_state_bench, to_json, to_table

        figures = run_state_bench(args.customer_sizes, args.changelog_sizes)
        print(to_json(figures) if args.json else to_table(figures))
        return 0
    result = run_bench(
        events=args.events,
        per_event_events=args.per_event_events,
        batch_size=args.batch_size,
        partitions=args.partitions,
        customers=args.customers,
        bootstrap=args.bootstrap_servers,
        progress=not args.json,
    )
    print(result.to_json() if args.json else result.to_table())
    return 0
