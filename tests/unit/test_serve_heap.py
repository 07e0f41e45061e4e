"""The serve process exempts its long-lived objects from full garbage collections: one
full pass over them stopped lookups for ~250 ms (docs/serving.md)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from driftline.serving.heap import freeze_long_lived_objects, freeze_when


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_objects_alive_at_the_freeze_are_skipped_by_later_collections() -> None:
    held = [[i] for i in range(10_000)]  # containers the collector would walk
    assert gc.get_freeze_count() == 0
    freeze_long_lived_objects()
    assert gc.get_freeze_count() >= len(held)


def test_the_second_freeze_waits_for_the_replica_to_be_ready() -> None:
    ready = threading.Event()
    stop = threading.Event()
    thread = freeze_when(ready.wait, stop)
    thread.join(1.5)
    assert thread.is_alive() and gc.get_freeze_count() == 0  # not ready: nothing frozen
    ready.set()
    thread.join(5)
    assert not thread.is_alive() and gc.get_freeze_count() > 0


def test_a_stopped_service_stops_waiting() -> None:
    stop = threading.Event()
    thread = freeze_when(threading.Event().wait, stop)
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and gc.get_freeze_count() == 0
