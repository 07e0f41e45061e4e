"""Benchmarks: `driftline bench [throughput|latency|state|all|drift]`, one report per run.

Broker: Apache Kafka started for the run where Java 17+ is (--broker-kind auto, the
default; it says so when it falls back to Tansu), or --broker-kind kafka|tansu, or an
existing cluster with --bootstrap-servers.  The report names the broker that ran.

throughput (default): starts the broker (or uses --bootstrap-servers), trains a
RandomForest(100) churn model on simulated history, loads the input topic once, then
measures side by side: (a) pass-through consume->produce, the transport limit; (b) the
Driftline worker at-least-once and (b') exactly-once; (b0) the worker with a sequential
loop; (c) a per-event scoring loop (one-row DataFrame predict_proba per event); (d) the
model alone at the worker's batch size, the compute limit; and, with the `onnx` extra,
the worker and the model with the forest in ONNX Runtime.  Ratios and the worker's
per-stage breakdown (µs per event) follow.

latency: a worker process, and a separate producer process offering --rates events/s
for --duration seconds each; p50/p99/p99.9 from an event's send to its prediction read.

state: bytes per customer in state, update throughput at that state size (2,000-event
batches, with and without the changelog export), snapshot and restore speed at
--customer-sizes, and a changelog restore through the broker at --changelog-sizes.

all: the three, small by default (--events 20000, 5 s per rate, 10000 customers in
state), on one broker, with each target marked held or not: the worker at >= 0.75x the
model alone (its compute limit) and >= 100x the per-event loop, exactly-once at >= 0.85x
at-least-once, and p99 latency <= 50 ms at 5,000 events/s offered.  --json for
machines; the default output is markdown.  A benchmark, not a test: numbers depend on
the machine (it is printed), the ratios much less.

drift: the drift monitor on synthetic scenarios (mean shifts of 0.25/0.5/1 sd, a variance
change, a new category, a missing-rate jump, concept drift, a long stationary stream):
detection delay in events, whether the right feature was named, false alarms per million
stationary events against the budget, and the monitor's cost in microseconds per event.
On a stream instead of iid draws: `--stream simulator` (the product simulator's steady
population, --customers, --days, --train-days, --seed) or `--events FILE` (an event file
as `driftline replay` reads it, --mapping for a raw log; e.g. the independent generator's
stream from `python -m tests.support.drift_acceptance write FILE`): a model trained on
the stream's first --train-days as `driftline train` does, the rest served through the
state engine, the model and the monitor; per feature: alarms, false alarms per 10^6 events
against the budget, DRIFT episodes, and retrain requests.  No broker.

ticks: what a tick (re-scoring every customer in state) costs per customer.

serve: `driftline serve` beside a worker that scores a steady stream (--event-rate events/s
over --customers customers, from a separate producer process): p50/p99 of
GET /customers/{id} at each of --rates requests/s (default 250,500,1000; a load generator
in its own process, open loop), for --duration s each, against the target p99 <= 10 ms at
1,000/s; then the staleness: how long after an event is sent (and after the worker
scored it) the API answers with its prediction.  Needs the 'serve' extra.

explain: what reason codes (`driftline worker --explain K`) cost per event: the scoring
processor on the same live events in micro-batches of --batch-sizes, with the sklearn
runtime without reasons, with the top --explain-k reasons, and with the runtime a worker
without --explain picks (auto).  No broker.
"""

from __future__ import annotations

import argparse

from driftline.broker import BROKER_KINDS
from driftline.commands._errors import CommandError
from driftline.commands._kafka import add_kafka_client, connect

HELP = __doc__ or ""


def _ints(value: str) -> list[int]:
    return [int(x) for x in value.split(",") if x]


def _floats(value: str) -> list[float]:
    return [float(x) for x in value.split(",") if x]


def _count_or_file(value: str) -> int | str:
    """``--events``: a number of events, or (bench drift) an event file."""
    try:
        return int(value)
    except ValueError:
        return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "suite",
        nargs="?",
        default="throughput",
        choices=["throughput", "latency", "state", "all", "drift", "ticks", "explain", "serve"],
        help="what to measure (default: %(default)s)",
    )
    parser.add_argument(
        "--customer-sizes",
        type=_ints,
        default=None,
        help="state: customers in state, comma-separated (default: 10000,100000,1000000; "
        "all: 10000; ticks: 100000)",
    )
    parser.add_argument(
        "--changelog-sizes",
        type=_ints,
        default=None,
        help="state: sizes also restored through a changelog topic (default: 1000000; all: 10000)",
    )
    parser.add_argument(
        "--events",
        type=_count_or_file,
        default=None,
        help="events for the throughput rows (default: 100000; all: 20000); "
        "drift: an event file to run the monitor on (Parquet or CSV)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_ints,
        default=None,
        help="explain: micro-batch sizes, comma-separated (default: 500,2000)",
    )
    parser.add_argument(
        "--explain-k", type=int, default=3, help="explain: reasons per prediction (default: 3)"
    )
    parser.add_argument("--per-event-events", type=int, default=2_000, help="events for (c), slow")
    parser.add_argument("--batch-size", type=int, default=2000, help="largest worker batch")
    parser.add_argument("--partitions", type=int, default=4, help="input partitions")
    parser.add_argument("--customers", type=int, default=5_000, help="simulated customers")
    parser.add_argument(
        "--rates",
        type=_floats,
        default=None,
        help="latency: offered events/s, comma-separated (default: 1000,5000,20000); "
        "serve: offered GET /customers/{id} per second (default: 250,500,1000)",
    )
    parser.add_argument(
        "--event-rate",
        type=float,
        default=500.0,
        help="serve: events/s the worker scores meanwhile (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="latency: seconds per offered rate (default: 10; all: 5)",
    )
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    parser.add_argument(
        "--bootstrap-servers", default=None, help="use this cluster, not a local broker"
    )
    parser.add_argument(
        "--broker-kind",
        choices=("auto", *BROKER_KINDS, "both"),
        default="auto",
        help="local broker to start: auto (Apache Kafka where Java is, else Tansu), "
        "kafka, tansu, or both (the suite on each, then the two side by side) "
        "(default: %(default)s)",
    )
    add_kafka_client(parser)  # for the broker of --bootstrap-servers
    parser.add_argument(
        "--stationary-events",
        type=int,
        default=1_000_000,
        help="drift: length of the stationary stream for false alarms and cost",
    )
    parser.add_argument(
        "--stream",
        choices=("iid", "simulator"),
        default="iid",
        help="drift: iid draws of a synthetic law, or the simulator's stream (default: iid)",
    )
    parser.add_argument("--mapping", default=None, help="drift --events: raw log mapping (cdnow)")
    parser.add_argument("--days", type=float, default=300.0, help="drift --stream: days")
    parser.add_argument(
        "--train-days",
        type=float,
        default=None,
        help="drift streams: days trained on (default: 200 simulated, 60%% of a file)",
    )
    parser.add_argument("--seed", type=int, default=7, help="drift --stream: seed")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    if args.suite == "drift" and (args.stream != "iid" or isinstance(args.events, str)):
        from driftline.benchmarks.drift_streams import run_from_args

        return run_from_args(args)
    if args.suite == "ticks":
        from driftline.benchmarks.ticks import run_tick_bench, to_json, to_table

        figures = run_tick_bench(args.customer_sizes or [100_000], progress=not args.json)
        print(to_json(figures) if args.json else to_table(figures))
        return 0
    if args.suite == "explain":
        from driftline.benchmarks.explain import run_explain_bench
        from driftline.benchmarks.explain import to_json as explain_json
        from driftline.benchmarks.explain import to_table as explain_table

        if isinstance(args.events, str):
            raise CommandError(f"--events {args.events!r}: a number of events")
        found = run_explain_bench(
            args.batch_sizes or [500, 2000],
            k=args.explain_k,
            events=args.events or 20_000,
            progress=not args.json,
        )
        print(explain_json(found) if args.json else explain_table(found))
        return 0
    if args.suite == "serve":
        from driftline.benchmarks.serve import run_serve_bench

        if args.bootstrap_servers:
            connect(args)
        serve_report = run_serve_bench(
            rates=args.rates or [250.0, 500.0, 1000.0],
            duration_s=args.duration or 15.0,
            event_rate=args.event_rate,
            customers=args.customers,
            bootstrap=args.bootstrap_servers,
            broker_kind="kafka" if args.broker_kind == "both" else args.broker_kind,
            progress=not args.json,
        )
        print(serve_report.to_json() if args.json else serve_report.to_markdown())
        return 0
    if isinstance(args.events, str):
        raise CommandError(f"--events {args.events!r}: a number of events (a file: bench drift)")
    if args.suite == "drift":
        import sys

        from driftline.benchmarks.drift import run_drift_bench

        drift = run_drift_bench(
            stationary_events_total=args.stationary_events,
            progress=None if args.json else lambda m: print(m, file=sys.stderr),
        )
        print(drift.to_json() if args.json else drift.to_table())
        return 0
    from driftline.benchmarks.suite import run_suite, side_by_side

    if args.bootstrap_servers:
        connect(args)
    small = args.suite == "all"
    suites = {"throughput", "latency", "state"} if small else {args.suite}
    kinds = ["kafka", "tansu"] if args.broker_kind == "both" else [args.broker_kind]
    if args.bootstrap_servers and len(kinds) > 1:
        raise SystemExit("driftline bench: --broker-kind both starts local brokers; drop it")
    reports = {
        kind: run_suite(
            suites,
            events=args.events or (20_000 if small else 100_000),
            per_event_events=args.per_event_events,
            batch_size=args.batch_size,
            partitions=args.partitions,
            customers=args.customers,
            rates=args.rates or [1000.0, 5000.0, 20000.0],
            duration_s=args.duration or (5.0 if small else 10.0),
            state_sizes=args.customer_sizes
            or ([10_000] if small else [10_000, 100_000, 1_000_000]),
            changelog_sizes=args.changelog_sizes or ([10_000] if small else [1_000_000]),
            bootstrap=args.bootstrap_servers,
            broker_kind=kind,
            progress=not args.json,
            onnx=not args.no_onnx,
        )
        for kind in kinds
    }
    if len(reports) == 1:
        report = next(iter(reports.values()))
        print(report.to_json() if args.json else report.to_markdown())
    elif args.json:
        print("{" + ", ".join(f'"{k}": {r.to_json()}' for k, r in reports.items()) + "}")
    else:
        for report in reports.values():
            print(f"# On {report.broker}\n\n{report.to_markdown()}\n")
        print(f"# Side by side\n\n{side_by_side(reports)}")
    return 0
