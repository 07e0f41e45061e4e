"""Simulate a customer population with a known churn mechanism.

Each customer has a latent churn propensity set by its profile; churners slow their
purchases, open tickets and hit payment failures before they stop.  The same seed gives
the same events.  Two outputs:

  --history FILE   write DAYS of history (CSV or Parquet) for `driftline train`
  (default)        stream live events into the input topic, at --rate events/s or as fast
                   as possible, continuing in time from the history
"""

from __future__ import annotations

import argparse
import signal
import threading

from driftline.commands._flags import add_bootstrap, add_topics
from driftline.commands._kafka import connect
from driftline.event_producer import produce
from driftline.simulate import Population, write_history

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap(parser)
    add_topics(parser, output=False)
    parser.add_argument(
        "--customers", type=int, default=2000, help="population size (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--churn-rate", type=float, default=0.3, help="share of churners (default: %(default)s)"
    )
    parser.add_argument(
        "--days",
        type=float,
        default=365,
        help="days of history to generate first (default: %(default)s)",
    )
    parser.add_argument(
        "--history", default=None, help="write the history to this CSV/Parquet file and exit"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="events per second (default: as fast as possible)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="stop after this many events (default: endless)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if not args.history:
        connect(args)  # before the history is generated: no broker is one line, at once
    population = Population(n_customers=args.customers, seed=args.seed, churn_rate=args.churn_rate)
    history = population.generate_history(days=args.days, progress=not args.no_progress)
    if args.history:
        path = write_history(history, args.history)
        print(f"wrote {len(history)} events of {args.customers} customers to {path}")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    count = produce(
        args.bootstrap_servers,
        args.input_topic,
        population.stream_events(max_events=args.limit),
        rate=args.rate,
        limit=args.limit,
        progress=not args.no_progress,
        stop=stop,
    )
    print(f"produced {count} events to {args.input_topic}")
    return 0
