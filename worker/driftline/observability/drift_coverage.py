"""Say which scored events the drift monitor never looked at.

The monitor compares live events with the model's reference period; events older than
its start are history (a backfill warming the state up, a replay of an old log) and are
skipped.  Silently, that looks like a healthy monitor: of the CDNOW log replayed from its
first day, 63 799 of 69 659 events (92 %) precede the reference period of the model
``driftline train --mapping cdnow --cutoffs 3`` registers.  So the worker counts them
(``driftline_drift_unmonitored_events_total{reason="before_reference_period"}``) and logs
it: one line at the first such event, then a summary at most every ``interval_s`` while
the count grows, never a line per event or per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from driftline.core.state import NO_TIME
from driftline.observability.drift_metrics import DriftMetrics

log = logging.getLogger(__name__)

#: Seconds between two summary lines while events keep preceding the reference period.
SUMMARY_INTERVAL_S = 60.0


class UnmonitoredEvents:
    """Counts events not drift-monitored (before the reference period); logs rarely."""

    def __init__(
        self,
        metrics: DriftMetrics | None,
        *,
        interval_s: float = SUMMARY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.clock = clock
        self.log = logger
        #: Events skipped since the worker started (all model versions).
        self.total = 0
        self._logged_total = 0
        self._logged_at: float | None = None

    def record(self, model: str, version: str, n_events: int, since_ms: int) -> None:
        """``n_events`` of one batch were scored but precede ``since_ms``, the start of the
        model's reference period."""
        if n_events <= 0:
            return
        if self.metrics is not None:
            self.metrics.count_unmonitored(model, version, n_events)
        self.total += n_events
        now = self.clock()
        if self._logged_at is None:
            self.log.warning(
                "drift: events before the reference period of model %s %s (starts %s) are "
                "scored but not drift-monitored; --drift-from-start monitors them "
                "(counted in driftline_drift_unmonitored_events_total)",
                model,
                version,
                _day(since_ms),
            )
        elif now - self._logged_at >= self.interval_s and self.total > self._logged_total:
            self.log.info(
                "drift: %d events not monitored so far (%d since the last summary): they "
                "precede the reference period of model %s %s (starts %s)",
                self.total,
                self.total - self._logged_total,
                model,
                version,
                _day(since_ms),
            )
        else:
            return
        self._logged_at = now
        self._logged_total = self.total


def _day(ms: int) -> str:
    """An epoch-ms time as an ISO date-time (UTC), for the log."""
    if ms == NO_TIME:
        return "at the first event"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
