"""Drift detectors of ``driftline.core.drift``: the vectorized CUSUM against a plain loop,
detection power on synthetic shifts, and the divergences / test statistics against scipy."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, norm, power_divergence

from driftline.core.drift import (
    BernoulliCusum,
    CategoricalWindowTest,
    CusumBank,
    EventWindow,
    FeatureBinner,
    TimeWindow,
    bernoulli_cusum_threshold,
    chi2_statistic,
    cusum,
    cusum_threshold,
    g_statistic,
    jensen_shannon,
    lindley_path,
    pad_shares,
    psi,
    smooth_shares,
    variance_increments,
)
from driftline.core.drift.calibration import DEGENERATE_H, discrete_cusum_threshold
from driftline.core.drift.cusum import NATIVE_SCAN, kish_design_effect
from driftline.core.drift.monitor import RankScores
from driftline.model.profile import OTHER, assign_bins, build_reference_profile

#: Both scans: the C recursion (when built) and the numpy closed form with re-scans.
SCANS = [
    pytest.param(True, id="c-scan", marks=pytest.mark.skipif(not NATIVE_SCAN, reason="not built")),
    pytest.param(False, id="numpy-scan"),
]


@contextmanager
def scan_path(native: bool) -> Iterator[None]:
    saved, cusum.NATIVE_SCAN = cusum.NATIVE_SCAN, native
    try:
        yield
    finally:
        cusum.NATIVE_SCAN = saved


def test_the_c_cusum_scan_is_built() -> None:
    assert NATIVE_SCAN, "driftline.core.drift._cusum_kernel is missing: was a C compiler there?"


def loop_cusum(
    batch: np.ndarray,
    k: np.ndarray,
    h: np.ndarray,
    upper: np.ndarray,
    lower: np.ndarray,
    restart: bool,
) -> dict[str, np.ndarray]:
    """The textbook per-event recursion, the specification the vectorized bank must meet."""
    n, size = batch.shape
    upper, lower = upper.copy(), lower.copy()
    first = np.full(size, -1)
    n_alarms = np.zeros(size, dtype=int)
    direction = np.zeros(size, dtype=int)
    peak = np.maximum(upper, lower) if n == 0 else np.full(size, -np.inf)
    for t in range(n):
        for j in range(size):
            z = batch[t, j]
            if not math.isnan(z):
                upper[j] = max(0.0, upper[j] + z - k[j])
                lower[j] = max(0.0, lower[j] - z - k[j])
            peak[j] = max(peak[j], upper[j], lower[j])
            if max(upper[j], lower[j]) > h[j]:
                if first[j] < 0:
                    first[j] = t
                    direction[j] = 1 if upper[j] > h[j] else -1
                n_alarms[j] += 1 if restart or n_alarms[j] == 0 else 0
                if restart:
                    upper[j] = lower[j] = 0.0
    return {
        "upper": upper,
        "lower": lower,
        "first": first,
        "n_alarms": n_alarms,
        "direction": direction,
        "peak": peak,
    }


# Values on a grid of 1/4 with thresholds at odd multiples of 1/8: every sum is exact in
# floating point and never ties with h, so the vectorized and loop results must be identical.
quarter = st.integers(-16, 16).map(lambda i: i / 4)
cell = st.one_of(quarter, st.just(math.nan))


@st.composite
def cusum_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    size = draw(st.integers(1, 4))
    rows = draw(st.integers(0, 25))
    batches = np.array(
        draw(st.lists(st.lists(cell, min_size=size, max_size=size), min_size=rows, max_size=rows)),
        dtype=np.float64,
    ).reshape(rows, size)
    k = np.array(
        draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=size, max_size=size))
    )
    h = np.array(
        draw(
            st.lists(st.integers(0, 24).map(lambda i: i / 4 + 0.125), min_size=size, max_size=size)
        )
    )
    split = draw(st.integers(0, rows))
    return batches, k, h, np.array([split]), draw(st.booleans())


@settings(max_examples=300, deadline=None)
@pytest.mark.parametrize("native", SCANS)
@given(cusum_cases())
def test_vectorized_cusum_equals_the_loop(native: bool, case: tuple) -> None:
    with scan_path(native):
        _check_against_the_loop(case)


def _check_against_the_loop(case: tuple) -> None:
    batch, k, h, split, restart = case
    bank = CusumBank([f"s{j}" for j in range(batch.shape[1])], k, h=h, restart_on_alarm=restart)
    # Two batches, so the carried-over state (and a restart at a batch end) is exercised.
    upper, lower = np.zeros(len(k)), np.zeros(len(k))
    for part in (batch[: split[0]], batch[split[0] :]):
        expected = loop_cusum(part, k, h, upper, lower, restart)
        result = bank.update(part)
        np.testing.assert_array_equal(bank.upper, expected["upper"])
        np.testing.assert_array_equal(bank.lower, expected["lower"])
        np.testing.assert_array_equal(result.first_alarm, expected["first"])
        np.testing.assert_array_equal(result.n_alarms, expected["n_alarms"])
        np.testing.assert_array_equal(result.direction, expected["direction"])
        np.testing.assert_array_equal(result.alarm, expected["first"] >= 0)
        np.testing.assert_array_equal(result.peak, expected["peak"])
        np.testing.assert_array_equal(result.statistic, np.maximum(bank.upper, bank.lower))
        upper, lower = expected["upper"], expected["lower"]


@pytest.mark.parametrize("native", SCANS)
def test_vectorized_cusum_matches_loop_on_continuous_values(native: bool) -> None:
    with scan_path(native):
        _check_continuous_values()


def _check_continuous_values() -> None:
    rng = np.random.default_rng(7)
    batch = rng.standard_normal((400, 5)) + np.array([0.0, 0.3, -0.6, 1.0, 0.0])
    batch[rng.random(batch.shape) < 0.1] = np.nan
    k, h = np.full(5, 0.5), np.array([2.0, 3.0, 4.0, 5.0, 100.0])
    bank = CusumBank(list("abcde"), h=h)
    result = bank.update(batch)
    expected = loop_cusum(batch, k, h, np.zeros(5), np.zeros(5), restart=True)
    np.testing.assert_allclose(bank.upper, expected["upper"], atol=1e-9)
    np.testing.assert_array_equal(result.n_alarms, expected["n_alarms"])
    assert result.n_alarms[3] > 1 and result.n_alarms[4] == 0


def test_lindley_closed_form_with_initial_state() -> None:
    x = np.array([[-1.0], [2.0], [-0.5], [-3.0], [1.0]])
    # S: 3 -> 2 -> 4 -> 3.5 -> 0.5 -> 1.5
    np.testing.assert_allclose(lindley_path(x, np.array([3.0]))[:, 0], [2, 4, 3.5, 0.5, 1.5])


def test_missing_values_skip_instead_of_reset() -> None:
    bank = CusumBank(["a"], h=100.0)
    bank.update(np.array([[2.0], [2.0]]))
    before = bank.statistic.copy()
    bank.update(np.full((10, 1), np.nan))
    np.testing.assert_array_equal(bank.statistic, before)
    assert before[0] == pytest.approx(3.0)


def test_state_dict_round_trips_through_json() -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((300, 3)) + 0.4
    whole = CusumBank(["x", "y", "z"], k=[0.5, 0.25, 0.5], h=[4.0, 5.0, 6.0])
    whole.update(data)
    first = CusumBank(["x", "y", "z"], k=[0.5, 0.25, 0.5], h=[4.0, 5.0, 6.0])
    first.update(data[:123])
    resumed = CusumBank.from_state_dict(json.loads(json.dumps(first.state_dict())))
    resumed.update(data[123:])
    np.testing.assert_allclose(resumed.statistic, whole.statistic, atol=1e-12)
    np.testing.assert_array_equal(resumed.n_alarms, whole.n_alarms)

    rates = BernoulliCusum(["m"], p0=0.1, h=3.0)
    rates.update((rng.random((50, 1)) < 0.3).astype(float))
    copy = BernoulliCusum.from_state_dict(json.loads(json.dumps(rates.state_dict())))
    np.testing.assert_array_equal(copy.statistic, rates.statistic)
    np.testing.assert_array_equal(copy.p1, rates.p1)
    with pytest.raises(ValueError):
        CusumBank.from_state_dict(rates.state_dict())


def test_reset_mask() -> None:
    bank = CusumBank(["a", "b"], h=100.0)
    bank.update(np.array([[3.0, -3.0]]))
    bank.reset(np.array([True, False]))
    np.testing.assert_allclose(bank.statistic, [0.0, 2.5])


def detection_delays(shifted: np.ndarray, bank: CusumBank) -> np.ndarray:
    result = bank.update(shifted)
    return np.where(result.alarm, result.first_alarm + 1, np.iinfo(np.int64).max)


def test_detects_a_one_sigma_mean_shift_within_tens_of_events() -> None:
    rng = np.random.default_rng(11)
    streams = 500
    h = cusum_threshold(1e5)  # ~ one false alarm per 100k events per stream
    bank = CusumBank([f"f{j}" for j in range(streams)], h=h)
    warmup = bank.update(rng.standard_normal((1000, streams)))
    delays = detection_delays(rng.standard_normal((400, streams)) + 1.0, bank)
    # Siegmund-type delay (h + 1.166) / (1 - k) ~ 23 events for h ~ 10.3.
    assert warmup.n_alarms.sum() <= 20
    assert np.median(delays) < 40
    assert np.quantile(delays, 0.95) < 80
    assert (delays < 400).all()


def test_variance_cusum_detects_a_doubling_of_variance() -> None:
    rng = np.random.default_rng(12)
    streams = 500
    mean_bank = CusumBank([f"f{j}" for j in range(streams)], h=cusum_threshold(1e5))
    spread_bank = CusumBank(
        [f"f{j}" for j in range(streams)], h=cusum_threshold(1e5, increments="chi2")
    )
    z = rng.standard_normal((600, streams)) * math.sqrt(2.0)
    spread = spread_bank.update(variance_increments(z))
    mean = mean_bank.update(z)
    assert np.median(np.where(spread.alarm, spread.first_alarm, 10**6)) < 200
    assert spread.alarm.mean() > 0.95
    assert (spread.direction[spread.alarm] == 1).all()
    # The mean detector is not built for this and fires much later, if at all.
    assert np.median(np.where(mean.alarm, mean.first_alarm, 10**6)) > np.median(
        np.where(spread.alarm, spread.first_alarm, 10**6)
    )


def test_bernoulli_cusum_detects_a_rate_jump() -> None:
    rng = np.random.default_rng(13)
    streams = 400
    p0 = 0.02
    h = bernoulli_cusum_threshold(1e5, p0, 0.04)
    bank = BernoulliCusum([f"m{j}" for j in range(streams)], p0, h=h)
    assert bank.p1 == pytest.approx(0.04)  # max(2 p0, p0 + 0.02)
    calm = bank.update((rng.random((2000, streams)) < p0).astype(float))
    assert calm.n_alarms.sum() <= 20
    bank.reset()
    jump = bank.update((rng.random((2000, streams)) < 0.08).astype(float))
    assert jump.alarm.mean() > 0.99
    assert np.median(jump.first_alarm) < 300


@pytest.mark.parametrize("native", SCANS)
def test_bernoulli_cusum_matches_the_loop(native: bool) -> None:
    with scan_path(native):
        _check_bernoulli_against_the_loop()


def _check_bernoulli_against_the_loop() -> None:
    rng = np.random.default_rng(14)
    x = (rng.random((300, 3)) < [0.05, 0.2, 0.5]).astype(np.float64)
    x[rng.random(x.shape) < 0.1] = np.nan
    bank = BernoulliCusum(["a", "b", "c"], [0.05, 0.1, 0.3], h=[1.0, 3.0, 1.5])
    result = bank.update(x)
    state, alarms = np.zeros(3), np.zeros(3, dtype=int)
    for row in x:
        for j, value in enumerate(row):
            if math.isnan(value):
                continue
            step = bank.step_one[j] if value == 1 else bank.step_zero[j]
            state[j] = max(0.0, state[j] + step)
            if state[j] > bank.h[j]:
                alarms[j] += 1
                state[j] = 0.0
    np.testing.assert_allclose(bank.statistic, state, atol=1e-9)
    np.testing.assert_array_equal(result.n_alarms, alarms)
    assert alarms.min() > 0


def test_bernoulli_cusum_skips_missing_and_floors_zero_rate() -> None:
    bank = BernoulliCusum(["a"], p0=0.0, h=50.0)
    assert bank.p0[0] == pytest.approx(1e-4)
    bank.update(np.array([[1.0], [np.nan]]))
    assert bank.statistic[0] == pytest.approx(math.log(bank.p1[0] / bank.p0[0]))


# ------------------------------------------------------------------------- divergences


def test_psi_equals_hand_computed_value() -> None:
    # q = (0.3, 0.7) vs p = (0.5, 0.5): (0.3-0.5) ln(0.6) + (0.7-0.5) ln(1.4) = 0.2 ln(7/3).
    value = psi(np.array([0.5, 0.5]), np.array([30, 70]), eps=0.0)
    assert value == pytest.approx(0.2 * math.log(7 / 3), rel=1e-12)
    # An empty bin with the documented smoothing s' = (s + eps) / (1 + B eps).
    eps = 1e-4
    p = (np.array([0.2, 0.3, 0.5]) + eps) / (1 + 3 * eps)
    q = (np.array([0.0, 0.4, 0.6]) + eps) / (1 + 3 * eps)
    expected = float(np.sum((q - p) * np.log(q / p)))
    assert psi(np.array([0.2, 0.3, 0.5]), np.array([0, 40, 60]), eps=eps) == pytest.approx(
        expected, rel=1e-12
    )


def test_divergences_on_padded_features_match_scipy() -> None:
    rng = np.random.default_rng(5)
    reference, mask = pad_shares([[0.1, 0.2, 0.7], [0.25, 0.25, 0.25, 0.25], [1.0]])
    counts = np.zeros_like(reference, dtype=np.int64)
    counts[0, :3] = [0, 5, 95]
    counts[1, :4] = rng.integers(0, 50, 4)
    counts[2, :1] = [17]
    js = jensen_shannon(reference, counts)
    for row, bins in enumerate([3, 4, 1]):
        expected = jensenshannon(reference[row, :bins], counts[row, :bins], base=2) ** 2
        assert js[row] == pytest.approx(expected, abs=1e-12)
        alone = psi(reference[row, :bins], counts[row, :bins])
        assert psi(reference, counts, mask)[row] == pytest.approx(alone, rel=1e-12)
    assert js.min() >= 0.0 and js.max() <= 1.0
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0, 9])) == pytest.approx(1.0)
    assert np.isnan(psi(reference, np.zeros_like(counts), mask)).all()
    assert np.isnan(jensen_shannon(reference, np.zeros_like(counts))).all()


def test_g_and_chi2_match_scipy() -> None:
    rng = np.random.default_rng(9)
    shares = smooth_shares(np.array([0.5, 0.3, 0.15, 0.05, 0.0]))
    counts = rng.multinomial(200, [0.4, 0.3, 0.2, 0.05, 0.05])
    expected = counts.sum() * shares
    g_scipy = power_divergence(counts, expected, lambda_="log-likelihood").statistic
    assert g_statistic(counts, shares) == pytest.approx(g_scipy, rel=1e-10)
    assert chi2_statistic(counts, shares) == pytest.approx(
        chisquare(counts, expected).statistic, rel=1e-10
    )
    many = rng.multinomial(50, shares, size=7)
    np.testing.assert_allclose(
        g_statistic(many, shares), [g_statistic(row, shares) for row in many], rtol=1e-12
    )


# --------------------------------------------------------------------------- windows


def test_event_windows_do_not_depend_on_batch_boundaries() -> None:
    rng = np.random.default_rng(21)
    edges = [[-1.0, 0.0, 1.0], [0.5], [-2.0, -1.0, 0.0, 1.0, 2.0]]
    values = rng.standard_normal((1000, 3))
    values[rng.random(values.shape) < 0.05] = np.nan
    binner = FeatureBinner(edges)
    bins = binner(values)
    np.testing.assert_array_equal(
        bins[~np.isnan(values[:, 0]), 0], assign_bins(values[~np.isnan(values[:, 0]), 0], edges[0])
    )
    one = EventWindow(300, binner.n_bins).update(bins)
    windows = EventWindow(300, binner.n_bins)
    pieces = [windows.update(part) for part in np.split(bins, [7, 450, 451, 899])]
    split = [w for piece in pieces for w in piece]
    assert [(w.start, w.end) for w in one] == [(0, 300), (300, 600), (600, 900)]
    for a, b in zip(one, split, strict=True):
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.n_missing, b.n_missing)
    first = bins[:300]
    for feature in range(3):
        observed = first[:, feature][first[:, feature] >= 0]
        np.testing.assert_array_equal(
            one[0].counts[feature, : binner.n_bins[feature]],
            np.bincount(observed, minlength=binner.n_bins[feature]),
        )
        assert one[0].n_missing[feature] == (first[:, feature] < 0).sum()


def test_time_windows_follow_event_time_and_drop_late_events() -> None:
    window = TimeWindow(10.0, [2], allowed_lateness_seconds=2.0)
    bins = np.array([[0], [1], [1], [0], [1]])
    times = np.array([1_000, 9_000, 11_500, 8_000, 15_000])
    # Watermark after 11.5 s is 9.5 s: window [0, 10 s) stays open and 8 s is not late.
    assert window.update(bins[:3], times[:3]) == []
    # Event at 15 s moves the watermark to 13 s >= 10 s: window [0, 10 s) closes.
    done = window.update(bins[3:], times[3:])
    assert [(w.start, w.end, w.n_events) for w in done] == [(0, 10_000, 3)]
    np.testing.assert_array_equal(done[0].counts, [[2, 1]])
    late = window.update(np.array([[0]]), np.array([5_000]))
    assert late == [] and window.n_late == 1
    rest = window.flush()
    assert [(w.start, w.n_events) for w in rest] == [(10_000, 2)]


def test_time_windows_do_not_depend_on_batch_boundaries() -> None:
    rng = np.random.default_rng(4)
    times = np.sort(rng.integers(0, 60_000, 500)) + rng.integers(-1500, 1500, 500)
    bins = rng.integers(-1, 4, (500, 2))
    whole = TimeWindow(5.0, [4, 4], allowed_lateness_seconds=1.0)
    a = whole.update(bins, times) + whole.flush()
    parts = TimeWindow(5.0, [4, 4], allowed_lateness_seconds=1.0)
    b = [
        w for s in np.split(np.arange(500), [1, 100, 333]) for w in parts.update(bins[s], times[s])
    ]
    b += parts.flush()
    assert whole.n_late == parts.n_late > 0
    assert [(w.start, w.n_events) for w in a] == [(w.start, w.n_events) for w in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.counts, y.counts)


def test_categorical_window_test_counts_and_statistics() -> None:
    reference = {"gold": 0.5, "silver": 0.3, "bronze": 0.2, OTHER: 0.0}
    test = CategoricalWindowTest(reference, window_size=10, alpha=0.01, n_resamples=5000)
    values = ["gold"] * 4 + [None, float("nan")] + ["silver", "tin", "bronze", "gold", "lead"]
    values += ["gold"] * 3
    results = test.update(values)
    assert len(results) == 1
    counts = results[0].counts
    # 9 observed values, then the 10th ("gold"); two values carry over to the next window.
    assert counts == {"gold": 6, "silver": 1, "bronze": 1, OTHER: 2}
    observed = np.array([counts[c] for c in test.categories])
    expected = 10 * test.reference
    g = power_divergence(observed, expected, lambda_="log-likelihood").statistic
    assert results[0].g == pytest.approx(g, rel=1e-10)
    assert results[0].chi2 == pytest.approx(chisquare(observed, expected).statistic, rel=1e-10)
    assert results[0].alarm  # two unseen categories against a share of ~0
    assert test.update(["gold"] * 7) == []
    assert [r.index for r in test.update(["gold"])] == [1]


def test_categorical_window_test_alarms_on_a_shift_and_not_before() -> None:
    rng = np.random.default_rng(8)
    reference = {"a": 0.6, "b": 0.25, "c": 0.1, OTHER: 0.05}
    test = CategoricalWindowTest(reference, window_size=200, alpha=0.001)
    names = np.array(["a", "b", "c", "zz"])
    calm = test.update(names[rng.choice(4, 20_000, p=[0.6, 0.25, 0.1, 0.05])])
    shifted = test.update(names[rng.choice(4, 2_000, p=[0.45, 0.3, 0.15, 0.1])])
    assert sum(r.alarm for r in calm) <= 2
    assert sum(r.alarm for r in shifted) >= 8


def test_categorical_window_test_state_round_trips_through_json() -> None:
    reference = {"a": 0.7, "b": 0.3}
    rng = np.random.default_rng(6)
    values = np.array(["a", "b", "c"])[rng.choice(3, 500, p=[0.6, 0.3, 0.1])]
    whole = CategoricalWindowTest(reference, window_size=40, alpha=0.01, n_resamples=2000)
    expected = whole.update(values)
    first = CategoricalWindowTest(reference, window_size=40, alpha=0.01, n_resamples=2000)
    head = first.update(values[:77])
    resumed = CategoricalWindowTest.from_state_dict(json.loads(json.dumps(first.state_dict())))
    assert resumed.threshold == first.threshold
    tail = resumed.update(values[77:])
    assert [(r.index, r.g, r.alarm) for r in head + tail] == [
        (r.index, r.g, r.alarm) for r in expected
    ]


# ---------------------------------------------------------------- rank scores (monitor input)


def law_moments(table: RankScores, values: np.ndarray) -> tuple[float, float]:
    """Mean and second moment of ``values`` under the reference law of the bins."""
    return float(table.probs @ values), float(table.probs @ values**2)


@pytest.mark.parametrize(
    "shares",
    [
        [0.1] * 10,  # deciles of a continuous feature
        [0.6, 0.2, 0.15, 0.05],  # a count with many zeros: skewed
        [0.02, 0.03, 0.9, 0.05],  # one dominant tie in the middle
        [3.0, 1.0, 1.0],  # unnormalized: shares are divided by their sum
    ],
)
def test_rank_scores_are_standardized_under_the_reference_law(shares: list[float]) -> None:
    edges = list(range(len(shares) - 1))
    table = RankScores.from_profile(edges, shares)
    assert table.probs.sum() == pytest.approx(1.0)
    for values in (table.z, table.v):
        mean, second = law_moments(table, values)
        assert mean == pytest.approx(0.0, abs=1e-12)
        assert second == pytest.approx(1.0, abs=1e-12)
    # z follows the bin order (mid-ranks increase), and v is the standardized z**2.
    assert np.all(np.diff(table.z) > 0)
    w = table.z**2
    expected_v = (w - table.probs @ w) / math.sqrt(table.probs @ (w - table.probs @ w) ** 2)
    np.testing.assert_allclose(table.v, expected_v, atol=1e-12)
    # Bounded: no single event can push a CUSUM by more than a few units.
    assert np.abs(table.z).max() < 4.0


def test_rank_scores_are_the_mid_rank_normal_scores() -> None:
    # Two equal bins: mid-ranks 1/4 and 3/4, symmetric scores, standardized to -1 and +1.
    table = RankScores.from_profile([0.0], [0.5, 0.5])
    np.testing.assert_allclose(table.z, [-1.0, 1.0], atol=1e-12)
    # z**2 is constant: the spread stream carries nothing and is all zeros.
    np.testing.assert_array_equal(table.v, [0.0, 0.0])
    # Deciles: the raw scores are PhiInv(0.05), ..., PhiInv(0.95) divided by their sd.
    deciles = RankScores.from_profile(list(range(9)), [0.1] * 10)
    q = norm.ppf(np.arange(0.05, 1.0, 0.1))
    np.testing.assert_allclose(deciles.z, q / math.sqrt(np.mean(q**2)), atol=1e-12)
    assert deciles.z[-1] == pytest.approx(1.7536, abs=1e-4)


def test_rank_scores_of_a_discrete_feature_from_a_real_profile() -> None:
    """Quantile edges of a count are deduplicated; bins and scores still line up."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.7, 5000).astype(np.float64)
    profile = build_reference_profile(
        pd.DataFrame({"n": counts}), rng.random(5000), ["n"], [], n_bins=10
    )["numeric"]["n"]
    assert len(profile["edges"]) < 9  # deduplicated: fewer bins than deciles
    table = RankScores.from_profile(profile["edges"], profile["shares"])
    assert len(table.z) == len(profile["edges"]) + 1
    # Under the reference the per-event z (looked up through the frozen bins) is exactly
    # centred and scaled: the empirical moments of the same sample are 0 and 1.
    z = table.z[assign_bins(counts, profile["edges"])]
    assert z.mean() == pytest.approx(0.0, abs=1e-9)
    assert z.var() == pytest.approx(1.0, abs=1e-9)
    assert np.all(np.diff(table.z) > 0)


def test_rank_scores_of_a_constant_reference_score_outliers() -> None:
    # Everything in the middle bin: below it -3, above it +3, the bin itself 0.
    table = RankScores.from_profile([0.0, 1.0], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(table.z, [-3.0, 0.0, 3.0])
    np.testing.assert_array_equal(table.v, [3.0, 0.0, 3.0])
    np.testing.assert_array_equal(table.probs, [0.0, 1.0, 0.0])
    # Everything in the first bin: only larger values exist, all +3.
    first = RankScores.from_profile([5.0], [1.0, 0.0])
    np.testing.assert_array_equal(first.z, [0.0, 3.0])
    np.testing.assert_array_equal(first.v, [0.0, 3.0])


@pytest.mark.parametrize("shares", [[], [0.0, 0.0, 0.0], [math.nan, 0.5, 0.5], [0.5, 0.5]])
def test_rank_scores_without_a_usable_reference_are_all_zero(shares: list[float]) -> None:
    # Two edges need three shares: empty, all-zero, NaN and wrong-length shares alike mean
    # "never observed"; the streams then carry zeros (and their threshold is degenerate).
    table = RankScores.from_profile([1.0, 2.0], shares)
    for values in (table.probs, table.z, table.v):
        np.testing.assert_array_equal(values, np.zeros(3))
    assert discrete_cusum_threshold(table.z, table.probs, 500.0) == DEGENERATE_H


# ---------------------------------------------------------------- design effect


def test_kish_design_effect_values() -> None:
    assert kish_design_effect(np.arange(100)) == 1.0  # distinct keys
    for copies in (2, 5, 13):
        keys = np.repeat(np.array([f"c{i}" for i in range(7)], dtype=object), copies)
        assert kish_design_effect(keys) == pytest.approx(copies)
    assert kish_design_effect(None) == 1.0
    assert kish_design_effect(np.array([], dtype=object)) == 1.0
    # By hand: m = (3, 1, 2), n = 6: (9 + 1 + 4) / 6.
    assert kish_design_effect(np.array(["a", "b", "a", "c", "a", "c"])) == pytest.approx(14 / 6)
    # Order does not matter, and one customer holding everything gives deff = n.
    assert kish_design_effect(np.array(["a", "c", "c", "a", "b", "a"])) == pytest.approx(14 / 6)
    assert kish_design_effect(np.array(["x"] * 40)) == pytest.approx(40.0)


def test_bernoulli_weight_scales_the_log_likelihood_increments() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((300, 1)) < 0.15).astype(np.float64)
    full = BernoulliCusum(["m"], 0.05, 0.1, h=1e9)
    weighted = BernoulliCusum(["m"], 0.05, 0.1, h=1e9)
    full_result = full.update(x)
    weighted_result = weighted.update(x, 0.25)
    increments = np.where(x > 0.5, full.step_one, full.step_zero)
    expected = lindley_path(0.25 * increments, np.zeros(1))
    assert weighted.state[0] == pytest.approx(expected[-1, 0])
    assert weighted_result.peak[0] == pytest.approx(expected.max())
    assert weighted.state[0] < full.state[0] and full_result.peak[0] > 0
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError):
            weighted.update(x, bad)


# ---------------------------------------------------------------- window test with keys


REFERENCE = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.04, OTHER: 0.01}


def clustered_windows(
    rng: np.random.Generator, windows: int, size: int, copies: int, shares: dict[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """``windows`` windows of ``size`` values: ``size / copies`` customers per window, each
    with one constant category repeated ``copies`` times, shuffled within the window."""
    per_window = size // copies
    names = np.array(list(shares), dtype=object)
    categories = names[rng.choice(len(names), (windows, per_window), p=list(shares.values()))]
    customers = np.arange(windows * per_window).reshape(windows, per_window)
    values = np.repeat(categories, copies, axis=1)
    keys = np.repeat(customers, copies, axis=1)
    order = np.argsort(rng.random((windows, size)), axis=1)
    rows = np.arange(windows)[:, None]
    return values[rows, order].reshape(-1), keys[rows, order].reshape(-1)


def test_window_design_effect_divides_g_by_the_copies() -> None:
    rng = np.random.default_rng(11)
    values, keys = clustered_windows(rng, 20, 200, 4, REFERENCE)
    test = CategoricalWindowTest(REFERENCE, window_size=200, alpha=0.02, seed=1)
    plain = CategoricalWindowTest(REFERENCE, window_size=200, alpha=0.02, seed=1)
    # Batches that straddle window ends: the keys must stay aligned with their values.
    with_keys, without = [], []
    for start in range(0, len(values), 333):
        stop = start + 333
        with_keys += test.update(values[start:stop], keys[start:stop])
        without += plain.update(values[start:stop])
    assert len(with_keys) == len(without) == 20
    for a, b in zip(with_keys, without, strict=True):
        assert a.design_effect == pytest.approx(4.0)
        assert a.g == b.g and a.counts == b.counts  # raw G untouched
        assert a.statistic == pytest.approx(a.g / 4.0)
        assert a.alarm == (a.g / 4.0 > a.threshold)
        assert b.design_effect == 1.0 and b.statistic == pytest.approx(b.g)
    # Without keys these copies look like 200 independent values: G is 4x too large.
    assert sum(r.alarm for r in without) > sum(r.alarm for r in with_keys)


def test_window_keys_skip_missing_values_and_must_align() -> None:
    test = CategoricalWindowTest(REFERENCE, window_size=4, alpha=0.05, seed=1)
    values = np.array(["a", None, "a", "b", np.nan, "b"], dtype=object)
    keys = np.array(["k1", "k9", "k1", "k2", "k9", "k2"], dtype=object)
    (result,) = test.update(values, keys)
    # Observed values a, a, b, b from customers k1, k1, k2, k2: (4 + 4) / 4.
    assert result.design_effect == pytest.approx(2.0)
    with pytest.raises(ValueError):
        test.update(values, keys[:-1])


def test_window_with_distinct_keys_equals_no_keys() -> None:
    rng = np.random.default_rng(12)
    names = np.array(list(REFERENCE))
    values = names[rng.choice(len(names), 50 * 400, p=list(REFERENCE.values()))]
    keyed = CategoricalWindowTest(REFERENCE, window_size=50, alpha=0.02, seed=3)
    plain = CategoricalWindowTest(REFERENCE, window_size=50, alpha=0.02, seed=3)
    a = keyed.update(values, np.arange(values.size))
    b = plain.update(values)
    assert [r.alarm for r in a] == [r.alarm for r in b]
    assert all(r.design_effect == 1.0 and r.statistic == r.g for r in a)


def test_window_mix_shift_still_alarms_with_keys() -> None:
    rng = np.random.default_rng(13)
    shifted = {"a": 0.3, "b": 0.3, "c": 0.3, "d": 0.08, OTHER: 0.02}
    test = CategoricalWindowTest(REFERENCE, window_size=500, alpha=0.001, seed=2)
    before, keys_before = clustered_windows(rng, 10, 500, 2, REFERENCE)
    after, keys_after = clustered_windows(rng, 10, 500, 2, shifted)
    quiet = test.update(before, keys_before)
    loud = test.update(after, keys_after + keys_before.max() + 1)
    assert not any(r.alarm for r in quiet)
    assert all(r.alarm for r in loud)
    assert all(r.design_effect == pytest.approx(2.0) for r in loud)


def test_window_state_round_trip_keeps_the_open_windows_keys() -> None:
    values = np.array(["a", "b"] * 50, dtype=object)
    keys = np.array([f"c{i % 10}" for i in range(100)], dtype=object)  # 10 customers x 10
    test = CategoricalWindowTest(REFERENCE, window_size=100, alpha=0.02, seed=3)
    assert test.update(values[:50], keys[:50]) == []
    restored = CategoricalWindowTest.from_state_dict(json.loads(json.dumps(test.state_dict())))
    (a,) = test.update(values[50:], keys[50:])
    (b,) = restored.update(values[50:], keys[50:])
    assert a.design_effect == b.design_effect == pytest.approx(10.0)
    assert a == b


def test_window_state_round_trip_with_integer_keys() -> None:
    values = np.array(["a", "b"] * 50, dtype=object)
    keys = np.arange(100) % 10  # 10 customers x 10 events, customers in both halves
    test = CategoricalWindowTest(REFERENCE, window_size=100, alpha=0.02, seed=3)
    test.update(values[:50], keys[:50])
    restored = CategoricalWindowTest.from_state_dict(json.loads(json.dumps(test.state_dict())))
    (a,) = test.update(values[50:], keys[50:])
    (b,) = restored.update(values[50:], keys[50:])
    assert a.design_effect == pytest.approx(10.0)
    assert b.design_effect == pytest.approx(10.0)  # got 5.0: "3" and 3 are two customers
