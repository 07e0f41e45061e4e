"""The demo's status line: what the worker's own /metrics says, one line a second.

Events in, predictions out, dead letters, latency of the events scored since the last
line, customers in state, the model, the drift state, and (``StallWatch``) whether
consumption has stalled while events wait.
"""

from __future__ import annotations

import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from driftline.commands._demo_drift import drift_view
from driftline.commands._demo_stall import StallWatch
from driftline.demo_world import Injection


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        body: bytes = response.read()
    return body.decode()


def scrape(port: int, text: str | None = None) -> dict[str, float]:
    text = metrics_text(port) if text is None else text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if sample.name == "driftline_model_info":
                values[
                    f"model={sample.labels.get('model')} {sample.labels.get('model_version')}"
                ] = 1
            elif (
                sample.name.endswith("_bucket")
                and family.name == "driftline_event_to_prediction_seconds"
            ):
                values[f"{key}:{sample.labels['le']}"] = sample.value
            else:
                values[key] = values.get(key, 0.0) + sample.value
    return values


_BUCKET = "driftline_event_to_prediction_seconds_bucket:"


def _quantile(values: dict[str, float], q: float, since: dict[str, float] | None = None) -> float:
    """Latency quantile (bucket bound) of the histogram, or of what it gained ``since``
    an earlier scrape: the last seconds, not the warm-up's backlog."""
    since = since or {}
    buckets = sorted(
        (float(k[len(_BUCKET) :]), v - since.get(k, 0.0))
        for k, v in values.items()
        if k.startswith(_BUCKET)
    )
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan")
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def print_status(
    port: int,
    injection: Injection | None = None,
    last: dict[str, float] | None = None,
    watch: StallWatch | None = None,
    produced: int = 0,
    extra: str = "",
) -> float:
    """One status line; ``last`` holds the previous scrape (updated here), so latency is
    that of the events scored since.  Returns the seconds ``watch`` says consumption has
    stalled while ``produced`` records were handed to the producer (0 without one)."""
    try:
        text = metrics_text(port)
    except OSError:
        text = None
    consumed = None if text is None else scrape(port, text)
    stalled_s = 0.0
    if watch is not None:
        events = None if consumed is None else consumed.get("driftline_events_consumed_total")
        stalled_s = watch.observe(time.monotonic(), events, produced)
    if text is None or consumed is None:
        if watch is not None and watch.shown(stalled_s):
            sys.stdout.write(f"\rworker /metrics not answering{watch.status(stalled_s)}   ")
            sys.stdout.flush()
        return stalled_s
    v = consumed
    drift = drift_view(text).line()
    if injection is not None and injection.applied_at_ms is not None:
        drift += f" [{injection.scenario} injected]"
    model = next((k for k in v if k.startswith("model=")), "model=?")
    since = dict(last) if last is not None else None
    if last is not None:
        last.clear()
        last.update(v)
    p50, p99 = _quantile(v, 0.5, since) * 1e3, _quantile(v, 0.99, since) * 1e3
    line = (
        f"\revents in {v.get('driftline_events_consumed_total', 0):>9.0f} | "
        f"predictions {v.get('driftline_predictions_produced_total', 0):>9.0f} | "
        f"dead letters {v.get('driftline_dead_letters_total', 0):>6.0f} | "
        f"latency p50 <= {p50:.0f} ms, p99 <= {p99:.0f} ms | "
        f"customers {v.get('driftline_customers_in_state', 0):>6.0f} | {model} | {drift}"
        f"{' | ' + extra if extra else ''}"
        f"{watch.status(stalled_s) if watch is not None else ''}   "
    )
    sys.stdout.write(line)
    sys.stdout.flush()
    return stalled_s
