"""Replay a real event log (CSV or Parquet) into the input topic.

A column mapping turns the file's columns into event fields.  Presets:
  --mapping cdnow   the CDNOW master file (customer_id, date, number_of_cds,
                    dollar_value): every row a purchase, dates moved forward by whole
                    28-year calendar cycles into the contract's 2000..2100 range
  --mapping events  a file that already has the event field names
Or give your own: --column customer_id=cust --column event_time=ts
                  --constant event_type=purchase ...
Events are sent in event-time order, as fast as possible or --speedup times faster than
they happened (86400: one day per second).
"""

from __future__ import annotations

import argparse
import signal
import threading

from driftline.commands._flags import add_bootstrap, add_topics
from driftline.replay import CDNOW_MAPPING, ColumnMapping, event_file_mapping, load_events, replay

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap(parser)
    add_topics(parser, output=False)
    parser.add_argument("file", help="CSV or Parquet event log")
    parser.add_argument("--mapping", choices=["cdnow", "events", "custom"], default="events")
    parser.add_argument(
        "--column", action="append", default=[], help="field=source_column (custom mapping)"
    )
    parser.add_argument(
        "--constant", action="append", default=[], help="field=value (custom mapping)"
    )
    parser.add_argument("--time-format", default=None, help="strptime format of the time column")
    parser.add_argument(
        "--speedup", type=float, default=None, help="event-time speed-up (default: max speed)"
    )
    parser.add_argument("--rate", type=float, default=None, help="cap in events per second")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def mapping_from_args(args: argparse.Namespace) -> ColumnMapping:
    if args.mapping == "cdnow":
        return CDNOW_MAPPING
    if args.mapping == "events":
        return event_file_mapping(args.file)
    return ColumnMapping.from_strings(args.column, args.constant, time_format=args.time_format)


def run(args: argparse.Namespace) -> int:
    events = load_events(args.file, mapping_from_args(args))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    count = replay(
        args.bootstrap_servers,
        args.input_topic,
        events,
        speedup=args.speedup,
        rate=args.rate,
        limit=args.limit,
        progress=not args.no_progress,
        stop=stop,
    )
    print(f"replayed {count} events from {args.file} to {args.input_topic}")
    return 0
