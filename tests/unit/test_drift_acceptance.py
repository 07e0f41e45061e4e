"""Stationary acceptance on a stream nobody tuned the monitor on.

The independent generator (``tests/support/independent_events.py``: its own segments,
rates, categories, weekly seasonality, bursty and silent customers, a renewing population)
is never used to calibrate anything.  A model is trained on its first 330 days exactly as
``driftline train`` does; the next ~120 days are served through the state engine, the
model and the monitor with customer keys, as the worker runs them.  Nothing changed in
the stream, so every alarm is false: the budget (1 false trigger per 30 days) bounds them,
and no retrain request may be sent.  The long run (10^7 events, streamed chunk by chunk) is
``python -m tests.support.drift_acceptance stream``; figures in docs/drift-detection.md.
"""

from __future__ import annotations

import pytest

from support.drift_acceptance import independent_frame, serve_stationary


@pytest.mark.parametrize("seed", [3])
def test_a_stationary_independent_stream_sends_no_retrain_request(seed: int) -> None:
    events = independent_frame(seed, customers=2000, days=450)
    verdict = serve_stationary(events, f"independent seed {seed}", train_days=330)
    print(verdict.line())
    assert verdict.events > 200_000
    assert verdict.requests == 0
    assert len(verdict.alarms) <= verdict.days / 30, verdict.alarms
