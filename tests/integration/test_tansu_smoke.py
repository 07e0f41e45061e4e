"""The pip-only path stays honest: the worker end to end on the Tansu broker.

The suite runs on Apache Kafka; ``make demo`` runs on Tansu, so one end-to-end test runs
there on every run (the demo's own tests, ``test_demo_smoke.py``, start Tansu too), and
one test pins down the known gap that keeps the exactly-once checks on Kafka.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from test_worker import assert_scored_once_as_offline, live_events

from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import LoadedModel
from support.topic_reading import broker_filters_aborted_transactions, read_topic

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_every_event_is_scored_once_as_offline_on_tansu(
    tansu_bootstrap: str,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    worker_in_thread,
    exactly_once: bool,
) -> None:
    suffix = uuid.uuid4().hex[:10]
    settings = dataclasses.replace(
        worker_settings,
        bootstrap_servers=tansu_bootstrap,
        input_topic=f"events-{suffix}",
        output_topic=f"predictions-{suffix}",
        dead_letter_topic=f"dlq-{suffix}",
        group_id=f"g-{suffix}",
        exactly_once=exactly_once,
    )
    ensure_topics(
        tansu_bootstrap,
        [
            TopicSpec(settings.input_topic, 4),
            TopicSpec(settings.output_topic, 4),
            TopicSpec(settings.dead_letter_topic, 1),
        ],
    )
    events = live_events(2_000)
    with worker_in_thread(settings, spec):
        produce(tansu_bootstrap, settings.input_topic, events)
        messages = read_topic(
            tansu_bootstrap, settings.output_topic, exactly_once, expected=len(events), timeout=90
        )
    assert_scored_once_as_offline(messages, events, spec, loaded_model)


def test_tansu_still_shows_aborted_transactions_to_read_committed_readers(
    tansu_bootstrap: str,
) -> None:
    """Why strict exactly-once is checked on Kafka.  If this starts failing, Tansu has
    fixed it: the exactly-once checks can then be strict on Tansu too."""
    assert not broker_filters_aborted_transactions(tansu_bootstrap)
