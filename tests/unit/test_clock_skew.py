"""Future-dated events never move a partition's clock (issue #13, item 2).

The unit tests run the rule of ``driftline.core.clock_skew`` through the real
``ScoringProcessor`` (decode, future, watermark, state) and against a plain per-event
implementation of the rule written here from the module's docstring; the Kafka test is
tests/integration/test_future_events.py.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.core.clock_skew import QUORUM, WINDOW, ClockSkewPolicy, StreamClock
from driftline.core.events import REASON_FUTURE
from driftline.core.spec import FeatureSpec
from driftline.core.state import NO_TIME
from driftline.core.watermark import PartitionWatermark
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.sklearn import Scorer
from driftline.processor import RawBatch, ScoringProcessor

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_796_000_000_000  # 2026-11-29, the test's wall clock
YEAR_2090 = 3_786_000_000_000


def reference_rule(
    times: list[int], nows: list[int], policy: ClockSkewPolicy, accepted: int = NO_TIME
) -> list[bool]:
    """The module docstring's rule, one event at a time, with plain Python lists."""
    window_t: list[int] = []
    window_lag: list[int] = []
    step = max(policy.max_replay_jump_ms, policy.max_clock_skew_ms)
    out = []
    for t, now in zip(times, nows, strict=True):
        future = t > now + policy.max_clock_skew_ms
        if window_t and not future:
            lags = sorted(window_lag)
            replaying = lags[(len(lags) - 1) // 2] > policy.max_replay_jump_ms
            quorum = sorted(window_t)[-QUORUM] if len(window_t) >= QUORUM else NO_TIME
            front = max(accepted, quorum)
            future = replaying and front != NO_TIME and t > front + step
        if not future:
            accepted = max(accepted, t)
        out.append(future)
        window_t = [*window_t, t][-WINDOW:]
        window_lag = [*window_lag, now - t][-WINDOW:]
    return out


def run_batches(
    times: np.ndarray, cuts: list[int], policy: ClockSkewPolicy, now: int = NOW
) -> tuple[np.ndarray, PartitionWatermark]:
    """The rule and the watermark over ``times`` cut into micro-batches at ``cuts``."""
    clock = StreamClock(policy)
    watermark = PartitionWatermark(HOUR)
    masks = []
    for part in np.split(times, cuts):
        verdict = clock.classify(part, watermark.max_event_time_ms, now)
        watermark.classify(part[~verdict.future])
        masks.append(verdict.future)
    return np.concatenate(masks), watermark


def test_live_future_events_are_refused_and_do_not_make_later_events_late() -> None:
    """The issue's case: one event 2 days ahead and one in 2090 among live traffic."""
    rng = np.random.default_rng(1)
    times = NOW - rng.integers(0, 10 * 60_000, 3000)  # up to 10 min old
    times[500] = NOW + 2 * DAY
    times[1700] = YEAR_2090
    future, watermark = run_batches(times, [250, 1000, 2500], ClockSkewPolicy())
    assert np.flatnonzero(future).tolist() == [500, 1700]
    late = times[~future] < PartitionWatermark(HOUR).watermark_ms  # nothing is late
    assert not late.any()
    assert watermark.max_event_time_ms <= NOW
    # The watermark alone needs QUORUM events to move its front: one outlier cannot
    # carry it (see test_watermark_quorum), but a burst of them could.  Without the rule,
    # three +2-day events in a row would have made the rest late.
    burst = times.copy()
    burst[500:503] = NOW + 2 * DAY
    plain = PartitionWatermark(HOUR)
    assert plain.classify(burst).sum() > 2000
    future, _ = run_batches(burst, [250, 1000, 2500], ClockSkewPolicy())
    assert np.flatnonzero(future).tolist() == [500, 501, 502, 1700]


def test_skew_within_the_allowance_is_accepted() -> None:
    times = np.array([NOW - 1000, NOW + HOUR - 1, NOW + HOUR, NOW + HOUR + 1])
    future, _ = run_batches(times, [], ClockSkewPolicy(max_clock_skew_ms=HOUR))
    assert future.tolist() == [False, False, False, True]


def test_a_live_partition_quiet_for_weeks_takes_its_next_event() -> None:
    """Live (small lag) partitions are judged by the wall clock only."""
    policy = ClockSkewPolicy()
    clock = StreamClock(policy)
    old = np.arange(NOW - 30 * DAY, NOW - 30 * DAY + 20 * 1000, 1000)
    assert not clock.classify(old, NO_TIME, NOW - 30 * DAY + 60_000).future.any()
    fresh = np.array([NOW - 5000, NOW - 1000])
    assert not clock.classify(fresh, int(old.max()), NOW).future.any()


def day_stream(days: int, per_day: int, start: int) -> np.ndarray:
    """A replayed day-resolution log (like CDNOW): ``per_day`` events at each midnight."""
    return np.repeat(start + DAY * np.arange(days, dtype=np.int64), per_day)


def test_replay_uses_the_streams_own_clock() -> None:
    """A replay of old, day-resolution events: nothing of the log is future, but an event
    days ahead of the replayed stream is, although it is long past by the wall clock."""
    start = 1_735_689_600_000  # 2025-01-01
    times = day_stream(200, 5, start)
    outliers = {300: start + 120 * DAY, 600: NOW - DAY, 800: YEAR_2090, 900: start + 182 * DAY}
    for at, when in outliers.items():
        times[at] = when
    policy = ClockSkewPolicy()
    future, watermark = run_batches(times, [100, 101, 555, 900], policy)
    assert np.flatnonzero(future).tolist() == sorted(outliers)
    assert watermark.max_event_time_ms == start + 199 * DAY
    # And nothing else is late either: the stream steps by one day.
    assert not PartitionWatermark(HOUR).classify(times[~future]).any()


def test_a_replay_gap_longer_than_the_jump_loses_at_most_a_quorum() -> None:
    start = 1_735_689_600_000
    times = np.concatenate([day_stream(10, 4, start), day_stream(10, 4, start + 15 * DAY)])
    future, _ = run_batches(times, [7, 41], ClockSkewPolicy())
    assert 0 < future.sum() <= QUORUM
    assert not future[45:].any()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [-3 * DAY, -HOUR, -60_000, 0, 0, 0, DAY, 2 * DAY, 40 * DAY, 90 * 365 * DAY]
        ),
        min_size=1,
        max_size=120,
    ),
    st.lists(st.integers(0, 120), max_size=6),
    st.sampled_from([NOW - 400 * DAY, NOW - 3 * HOUR]),
    st.sampled_from([ClockSkewPolicy(), ClockSkewPolicy(HOUR // 2, 2 * DAY)]),
)
def test_the_batch_rule_is_the_per_event_rule_wherever_batches_are_cut(
    steps: list[int], cuts: list[int], base: int, policy: ClockSkewPolicy
) -> None:
    """Vectorised == sequential, and the same for every way of cutting the stream."""
    times = np.array([base + sum(steps[: i + 1]) // 7 + s for i, s in enumerate(steps)])
    times = np.clip(times, 946_684_800_000, 4_102_444_800_000)
    expected = reference_rule(times.tolist(), [NOW] * len(times), policy)
    whole, _ = run_batches(times, [], policy)
    cut, _ = run_batches(times, sorted({c for c in cuts if 0 < c < len(times)}), policy)
    assert whole.tolist() == expected
    assert cut.tolist() == expected


def test_many_hidden_future_events_are_still_decided_exactly() -> None:
    """A staircase of future events, each ahead of the last, forces the exact loop."""
    start = NOW - 500 * DAY
    times = np.concatenate(
        [day_stream(30, 2, start), start + 29 * DAY + DAY * np.arange(2, 40, 2), [start + 30 * DAY]]
    )
    policy = ClockSkewPolicy()
    expected = reference_rule(times.tolist(), [NOW] * len(times), policy)
    got, _ = run_batches(times, [], policy)
    assert got.tolist() == expected
    assert sum(expected) >= 10


def test_shared_cdnow_replay_has_no_future_event_but_the_injected_ones(
    require_shared: Callable[..., Path],
) -> None:
    """The real CDNOW log (1997-98, moved by the replay's 28-year calendar shift), split
    over 4 partitions by customer: no event is future, and injected ones are caught."""
    from driftline.commands.train import read_event_file

    events, _shift = read_event_file(require_shared("data", "cdnow", "cdnow_master.csv"), "cdnow")
    times = events["event_time"]
    if pd.api.types.is_datetime64_any_dtype(times):
        times = pd.to_datetime(times, utc=True).astype("datetime64[ms, UTC]").astype("int64")
    times = times.to_numpy(dtype=np.int64)
    partition = events["customer_id"].map(lambda c: zlib.crc32(c.encode()) % 4).to_numpy()
    rng = random.Random(3)
    policy = ClockSkewPolicy()
    for p in range(4):
        mine = times[partition == p].copy()
        injected = sorted(rng.sample(range(200, len(mine)), 3))
        mine[injected[0]] += 3 * DAY
        mine[injected[1]] = NOW - DAY
        mine[injected[2]] = YEAR_2090
        cuts = sorted(rng.sample(range(1, len(mine)), 40))
        future, _ = run_batches(mine, cuts, policy)
        assert np.flatnonzero(future).tolist() == injected, f"partition {p}"


def test_dead_lettered_as_future_by_the_processor(model: LoadedModel, spec: FeatureSpec) -> None:
    """Through ``ScoringProcessor``: reason ``future``, nothing late, nothing else lost,
    and the watermark (persisted in the changelog) never holds the future times."""
    processor = ScoringProcessor(spec, Scorer(model), clock=lambda: NOW / 1000)
    events = [
        {
            "event_id": f"e{i}",
            "customer_id": f"c{i % 13}",
            "event_time": NOW - 600_000 + i * 100,
            "event_type": "login",
        }
        for i in range(400)
    ]
    events[50]["event_time"] = NOW + 2 * DAY
    events[300]["event_time"] = YEAR_2090
    values = [msgspec.json.encode(e) for e in events]
    keys = [e["customer_id"].encode() for e in events]
    results = [
        processor.process(
            RawBatch(
                "events",
                values[lo:hi],
                keys[lo:hi],
                np.zeros(hi - lo, np.int32),
                np.arange(lo, hi, dtype=np.int64),
            )
        )
        for lo, hi in ((0, 200), (200, 400))
    ]
    rejected = [
        (r.index + lo, r.reason)
        for result, lo in zip(results, (0, 200), strict=True)
        for r in result.rejected
    ]
    assert rejected == [(50, REASON_FUTURE), (300, REASON_FUTURE)]
    assert sum(len(r.prediction_values) for r in results) == 398
    assert processor.watermarks[0].max_event_time_ms == NOW - 600_000 + 399 * 100
    messages = [r.message for r in results for r in r.rejected]
    assert all("past" in m and "clock" in m for m in messages), messages


def test_the_worker_flags_and_their_environment_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from driftline.cli import build_parser
    from driftline.commands._flags import apply_env_defaults
    from driftline.commands.worker import settings_from_args

    parser = build_parser()
    apply_env_defaults(parser)
    settings = settings_from_args(parser.parse_args(["worker"]))
    assert (settings.max_clock_skew_ms, settings.max_replay_jump_ms) == (600_000, DAY)
    args = parser.parse_args(["worker", "--max-clock-skew", "90s", "--max-replay-jump", "2h"])
    assert (args.max_clock_skew, args.max_replay_jump) == (90_000, 2 * HOUR)
    monkeypatch.setenv("DRIFTLINE_MAX_CLOCK_SKEW", "2h")
    monkeypatch.setenv("DRIFTLINE_MAX_REPLAY_JUMP", "3d")
    parser = build_parser()
    apply_env_defaults(parser)
    settings = settings_from_args(parser.parse_args(["worker"]))
    assert (settings.max_clock_skew_ms, settings.max_replay_jump_ms) == (2 * HOUR, 3 * DAY)
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--max-clock-skew", "soon"])
