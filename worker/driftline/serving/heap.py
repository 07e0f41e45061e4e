"""Keep the cyclic garbage collector's full passes off the lookup path.

A full (generation 2) collection walks every container object the process holds: the
modules of FastAPI, pydantic, scikit-learn and pandas, the model, the replica.  Measured
in ``driftline bench serve`` (2026-12-05), one such pass stopped the service for ~250 ms
in a 30-second run at 1,000 GET/s, which alone set the p99.  Objects alive once the
service has started, and again once the replica has caught up, live as long as the
process: ``gc.freeze`` moves them to the permanent generation, which collections skip, so
a full pass walks only what came after.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable


def freeze_long_lived_objects() -> None:
    """Collect once, then exempt everything still alive from later collections."""
    gc.collect()
    gc.freeze()


def freeze_when(ready: Callable[[float], bool], stop: threading.Event) -> threading.Thread:
    """Freeze again once ``ready(timeout)`` says so (the replica has caught up): the
    state read during the catch-up lives as long as the process too."""

    def wait_then_freeze() -> None:
        while not stop.is_set():
            if ready(1.0):
                freeze_long_lived_objects()
                return

    thread = threading.Thread(target=wait_then_freeze, name="serve-heap-freeze", daemon=True)
    thread.start()
    return thread
