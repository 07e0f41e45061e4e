"""Drift detectors of ``driftline.core.drift``: the vectorized CUSUM against a plain loop,
detection power on synthetic shifts, and the divergences / test statistics against scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, power_divergence

from driftline.core.drift import (
    BernoulliCusum,
    CategoricalWindowTest,
    CusumBank,
    EventWindow,
    FeatureBinner,
    TimeWindow,
    bernoulli_cusum_threshold,
    chi2_statistic,
    cusum_threshold,
    g_statistic,
    jensen_shannon,
    lindley_path,
    pad_shares,
    psi,
    smooth_shares,
    variance_increments,
)
from driftline.model.profile import OTHER, assign_bins


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
@given(cusum_cases())
def test_vectorized_cusum_equals_the_loop(case: tuple) -> None:
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


def test_vectorized_cusum_matches_loop_on_continuous_values() -> None:
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


def test_bernoulli_cusum_matches_the_loop() -> None:
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
