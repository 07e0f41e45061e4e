"""``driftline report``: HTML reports with plots, written beside the model in the registry.

Kept out of the worker's import path: matplotlib (the ``report`` extra) is imported only
when a report is drawn, so the worker image and its start-up never load it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from driftline import config
from driftline.commands._errors import CommandError
from driftline.commands._flags import add_bootstrap, add_spec, duration_ms, load_spec_arg
from driftline.commands._kafka import connect

HELP = """Write an HTML report (plots inline, no scripts, one file) beside a model.

  report model NAME [VERSION]   the version's held-out evaluation: ROC and PR curves against
                                the recency and majority baselines, calibration, confusion
                                matrix at the chosen threshold, importances, train vs test
                                distribution of every feature
  report drift                  reference vs live histograms of the drifted features and of
                                the score, with the detector readings: for a retrain request
                                (--request FILE, or --request-id ID read from the retrain
                                topic; --from/--to/--last widen its window), or on demand
                                (--model-name/--model-version, --from and --to, or --last)

Live values are recomputed from the input topic (or --events FILE) by the offline replay,
which computes exactly the worker's features, and scored with the model.  Reports go to
<registry>/<name>/<version>/reports/ (written atomically; the version's own files are never
touched), or to --out.  The path is printed; --json prints it with the request, its
"report" property filled.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report", metavar="KIND", required=True)
    model = sub.add_parser("model", help="a model version's evaluation")
    model.add_argument("name", help="model name in the registry")
    model.add_argument(
        "version",
        nargs="?",
        default="champion",
        help="e.g. v0003, latest or champion (default: champion, the version workers serve)",
    )
    _common(model)

    drift = sub.add_parser("drift", help="reference vs live for a retrain request or a window")
    which = drift.add_argument_group("what to compare")
    which.add_argument("--request", metavar="FILE", help="retrain request JSON ('-': stdin)")
    which.add_argument(
        "--request-id", metavar="ID", help="read this request (or incident) id from --retrain-topic"
    )
    which.add_argument(
        "--retrain-topic",
        default="retrain-requests",
        help="retrain-requests topic for --request-id (default: %(default)s)",
    )
    which.add_argument("--model-name", default=config.DEFAULT_MODEL_NAME, help="without a request")
    which.add_argument(
        "--model-version", default="champion", help="without a request (default: champion)"
    )
    which.add_argument(
        "--from", dest="start", metavar="TIME", help="window start (ISO or epoch ms)"
    )
    which.add_argument("--to", dest="end", metavar="TIME", help="window end (default: last event)")
    which.add_argument(
        "--last", type=duration_ms, metavar="DURATION", help="window = the last DURATION of events"
    )
    live = drift.add_argument_group("live events (the input topic, or --events)")
    live.add_argument("--events", metavar="PATH", help="event file (CSV/Parquet) instead of Kafka")
    live.add_argument(
        "--input-topic", default=config.INPUT_TOPIC, help="input topic (default: %(default)s)"
    )
    live.add_argument(
        "--read-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up reading a topic to its end after this long (default: %(default)g)",
    )
    add_bootstrap(drift)
    add_spec(drift)
    _common(drift)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=config.DEFAULT_REGISTRY,
        help="model registry directory (default: %(default)s)",
    )
    parser.add_argument("--out", metavar="PATH", help="write here instead of the registry")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401  # the report extra
    except ImportError:
        raise CommandError(
            "drawing reports needs matplotlib: pip install 'driftline[report]'"
        ) from None
    from driftline.reports.store import ReportError

    try:
        result = _model(args) if args.report == "model" else _drift(args)
    except ReportError as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["report"])
    return 0


def _registry_and_version(args: argparse.Namespace, name: str, version: str) -> tuple[Any, str]:
    from driftline.model.registry import ModelRegistry
    from driftline.reports.store import resolve_version

    registry = ModelRegistry(args.registry)
    try:
        return registry, resolve_version(registry, name, version)
    except ValueError as error:
        raise CommandError(str(error)) from None


def _write(args: argparse.Namespace, folder: Path, file_name: str, text: str) -> Path:
    from driftline.reports.store import write_report

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        return out
    return write_report(folder, file_name, text)


def _model(args: argparse.Namespace) -> dict[str, Any]:
    from driftline.reports import model_report
    from driftline.reports.store import read_evaluation, read_metadata

    registry, version = _registry_and_version(args, args.name, args.version)
    metadata = read_metadata(registry, args.name, version)
    arrays = read_evaluation(registry, args.name, version, metadata)
    text = model_report.build(args.name, version, metadata, arrays)
    path = _write(args, registry.path(args.name, version), "model.html", text)
    return {
        "report": str(path),
        "model": args.name,
        "version": version,
        "curves": arrays is not None,
    }


def _drift(args: argparse.Namespace) -> dict[str, Any]:
    from driftline.core.drift.trigger import RetrainRequest
    from driftline.model.fitting import positive_scores
    from driftline.model.registry import ModelRefused
    from driftline.reports import drift_report
    from driftline.reports.live import read_topic_events, window_features

    request = _request(args)
    name = request.model_name if request else args.model_name
    registry, version = _registry_and_version(
        args, name, request.model_version if request else args.model_version
    )
    spec = load_spec_arg(args)
    try:
        loaded = registry.load(name, version, expected_spec_digest=spec.digest)
    except ModelRefused as error:
        raise CommandError(f"cannot score the live events: {error}") from None
    if args.events:
        from driftline.commands._train_inputs import read_event_file

        try:
            events, _ = read_event_file(args.events)
        except (ValueError, OSError) as error:  # UsageError is a ValueError
            raise CommandError(str(error)) from None
        rejected, source = 0, str(args.events)
    else:
        connect(args)
        try:
            events, rejected = read_topic_events(
                args.bootstrap_servers, args.input_topic, args.read_timeout
            )
        except (TimeoutError, RuntimeError) as error:
            raise CommandError(f"reading {args.input_topic}: {error}") from None
        source = f"topic {args.input_topic}"
    if events.empty:
        raise CommandError(f"no events in {source}")
    start, end = _window(args, request, events)
    window = window_features(events, spec, start, end, loaded.feature_names, n_rejected=rejected)
    scores = (
        positive_scores(loaded.pipeline, window.features)
        if len(window.features)
        else np.empty(0, dtype=np.float64)
    )
    drifted = (
        sorted({d.feature for d in request.drifted_features} - {"__score__"}) if request else []
    )
    data = drift_report.compare_window(
        loaded.metadata.get("reference_profile") or {},
        loaded.metadata.get("feature_types") or {},
        window,
        scores,
        drifted,
    )
    text = drift_report.build(
        name, version, loaded.metadata, data, window, scores, start, end, request, source
    )
    file_name = f"drift-{request.incident_id[:16]}.html" if request else f"drift-{start}-{end}.html"
    path = _write(args, registry.path(name, version), file_name, text)
    result: dict[str, Any] = {"report": str(path), "model": name, "version": version}
    result["window_ms"] = [start, end]
    result["events_compared"] = len(scores)
    if request is not None:
        annotated: RetrainRequest = msgspec.structs.replace(request, report=str(path))
        result["request"] = msgspec.to_builtins(annotated)
    return result


def _request(args: argparse.Namespace) -> Any:
    """The retrain request named by --request / --request-id, or None (on demand)."""
    from driftline.core.drift.trigger import RetrainRequest

    if args.request and args.request_id:
        raise CommandError("give --request or --request-id, not both")
    if args.request:
        raw = sys.stdin.buffer.read() if args.request == "-" else Path(args.request).read_bytes()
        try:
            return msgspec.json.decode(raw, type=RetrainRequest)
        except msgspec.DecodeError as error:
            raise CommandError(f"{args.request}: not a retrain request: {error}") from None
    if args.request_id:
        from driftline.engine.kafka.retrain_history import read_retrain_requests

        connect(args)
        found = [
            r
            for r in read_retrain_requests(args.bootstrap_servers, args.retrain_topic)
            if args.request_id in (r.request_id, r.incident_id)
        ]
        if not found:
            raise CommandError(f"no request {args.request_id} on {args.retrain_topic}")
        return found[-1]
    return None


def _window(args: argparse.Namespace, request: Any, events: Any) -> tuple[int, int]:
    """(start, end) epoch ms: the request's window, or --from/--to/--last (which, with a
    request, widen or move its window: an incident fires minutes after it starts, and the
    days since may say more)."""
    from driftline.commands._train_inputs import parse_cutoff

    if request is not None and not (args.start or args.end or args.last):
        return int(request.window_start_ms), int(request.window_end_ms)
    last_event = int(events["event_time"].max())
    default_end = int(request.window_end_ms) if request is not None else last_event
    end = _time(args.end, parse_cutoff) if args.end else default_end
    if args.last is not None:
        if args.start:
            raise CommandError("give --from or --last, not both")
        return end - int(args.last), end
    if not args.start:
        if request is not None:
            return int(request.window_start_ms), end
        raise CommandError("without a request, give --from TIME or --last DURATION")
    start = _time(args.start, parse_cutoff)
    if start > end:
        raise CommandError(f"--from is after --to ({start} > {end})")
    return start, end


def _time(text: str, parse: Any) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return int(parse(text))
    except ValueError as error:
        raise CommandError(f"not a time: {text!r} ({error})") from None
