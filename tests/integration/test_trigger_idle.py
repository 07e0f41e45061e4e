"""A replay that ends in the middle of a drift incident sends no retrain request while the
worker idles; the incident fires when events show it lasted long enough.

Seen on a real replay: the request arrived ten minutes after the replay had ended, because
the trigger counted the persistence on the wall clock and re-judged the last update while
idle (``tick``).  The trigger now counts it in event time (``docs/drift-detection.md``,
"Restarts, idle streams, alerts"), which does not advance while no events arrive, so an
idle worker can complete no persistence: the same events give the same requests whether
they are replayed at full speed, at real-time speed or arrive live.

The stream: a simulated history and 3000 live events as usual, then 9000 drifted events
(``test_drift_worker.drifted``) whose event times are squeezed into 4 s, against a
persistence of 10 s.  The worker reads them all, then idles for longer than the
persistence on the wall clock: the old trigger sent its request then, this one may not.
Then 3000 more drifted events over the next 60 s of event time arrive: one request, sent
on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_drift_worker import drifted, samples

from driftline.commands.train import register, train_on_events
from driftline.core.drift.trigger import RetrainRequest
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import ModelRegistry
from driftline.simulate import Population, frame_to_events

pytestmark = pytest.mark.integration

PERSISTENCE_S = 10.0


def squeezed(events: list[dict[str, Any]], start_ms: int, span_ms: int) -> Iterator[dict[str, Any]]:
    """The events, drifted, in their order, with event times spread over ``span_ms``.

    Squeezed into seconds, ``drifted`` (purchases stop) moves no recency feature, so every
    event also becomes a support ticket or a failed payment: churn signals, which move the
    scores (prediction drift) within seconds of event time."""
    for i, event in enumerate(events):
        changed = drifted(event)
        changed["event_type"] = ("support_ticket", "payment_failed")[i % 2]
        for field in ("amount", "quantity"):
            changed.pop(field, None)
        yield {**changed, "event_time": start_ms + i * span_ms // len(events)}


def test_a_replay_ending_mid_incident_sends_nothing_while_idle(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    tmp_path: Path,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    population = Population(n_customers=400, seed=31)
    history = population.generate_history(days=240)
    registry = ModelRegistry(tmp_path / "models")
    result = train_on_events(
        history, spec, horizon_days=60, n_estimators=20, cv_folds=3, progress=False
    )
    register(result, registry, "churn", spec)
    settings = worker_settings
    settings.registry = str(registry.root)
    settings.drift = True
    settings.retrain_topic = topic_factory(1, "retrain")
    settings.retrain_persistence_s = PERSISTENCE_S
    live = list(population.stream_events(max_events=15_000))
    start_ms = int(live[2999]["event_time"]) + 1
    replay = list(squeezed(live[3000:12_000], start_ms, 4_000))
    resumed = list(squeezed(live[12_000:], start_ms + 4_001, 60_000))
    with worker_in_thread(settings, spec) as worker:
        produce(settings.bootstrap_servers, settings.input_topic, frame_to_events(history))
        produce(settings.bootstrap_servers, settings.input_topic, live[:3000])
        produce(settings.bootstrap_servers, settings.input_topic, replay)
        total = len(history) + 3000 + len(replay)
        scored = consume_all(settings.output_topic, expected=total, timeout=90)
        assert len(scored) >= total
        # The replay is over and read: the worker idles (polls without records, ticks)
        # for longer than the persistence on the wall clock.
        time.sleep(PERSISTENCE_S + 5.0)
        idle = consume_all(settings.retrain_topic, expected=0, timeout=10)
        assert idle == [], "a retrain request was sent while the stream was idle"
        # Not blindness: the monitor saw the drift and the trigger holds an open incident,
        # shorter than the persistence in event time.
        trigger = worker.processor.trigger
        assert trigger.incident_since_ms is not None and not trigger.incident_fired
        assert trigger.event_clock_ms - trigger.incident_since_ms < PERSISTENCE_S * 1000
        exposition = worker.metrics.render().decode()
        assert any(s.value == 2 for s in samples(exposition, "driftline_feature_drift_state"))
        # Events resume: once they show the drift lasted 10 s of event time, one request.
        produce(settings.bootstrap_servers, settings.input_topic, resumed)
        requests = consume_all(settings.retrain_topic, expected=1, timeout=60)
    assert len(requests) == 1, f"{len(requests)} requests"
    request = msgspec.json.decode(requests[0].value(), type=RetrainRequest)
    assert request.window_end_ms - request.window_start_ms >= PERSISTENCE_S * 1000
    assert request.window_end_ms > start_ms + 4_000  # on the resumed events
