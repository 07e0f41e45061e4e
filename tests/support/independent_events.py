"""A second, independent generator of valid customer events, for the fuzz tests.

Written apart from ``driftline.simulate`` (and sharing nothing with it), so that the
decoder is not only ever fed what the product's own simulator happens to produce: its
own customer segments and rates, its own categories (with non-ASCII text), weekly
seasonality, bursty and silent customers, both ``event_time`` encodings (epoch millis
and RFC 3339 with assorted offsets and fractions), optional fields absent, null or at
their limits, and unknown extra properties (which the contract ignores).

Everything is a pure function of the seed (``numpy.random.Generator``), and vectorised
where it matters, so 100,000 events take well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np

DAY_MS = 86_400_000

#: The contract's event types, spelled out here rather than imported.
EVENT_TYPES = (
    "purchase",
    "login",
    "support_ticket",
    "payment_failed",
    "plan_change",
    "refund",
    "page_view",
    "cancel_request",
)
PLANS = ("gratis", "plus", "pro", "équipe", "企業")
REGIONS = ("apac", "emea", "latam", "na", "São Paulo", "Zürich", "東京")


@dataclass(frozen=True, slots=True)
class Segment:
    """A kind of customer: share of the population, events per day by type, burstiness."""

    name: str
    share: float
    rates: dict[str, float]
    burst_prob: float = 0.0
    silent: bool = False


SEGMENTS = (
    Segment("browser", 0.40, {"page_view": 3.0, "login": 0.8, "purchase": 0.05}),
    Segment(
        "buyer",
        0.25,
        {"purchase": 0.6, "login": 1.2, "page_view": 2.0, "refund": 0.03, "plan_change": 0.01},
    ),
    Segment(
        "troubled",
        0.10,
        {"support_ticket": 0.5, "payment_failed": 0.2, "login": 0.4, "cancel_request": 0.05},
    ),
    Segment("bursty", 0.15, {"page_view": 0.5, "purchase": 0.2, "login": 0.3}, burst_prob=0.3),
    Segment("silent", 0.10, {"login": 0.02, "purchase": 0.005}, silent=True),
)
#: Weekly seasonality, Monday first: weekends are busier for this shop.
WEEKDAY_FACTOR = np.array([0.8, 0.85, 0.9, 0.95, 1.1, 1.4, 1.3])


class IndependentEvents:
    """Valid events of ``customers`` customers over ``days`` days from ``start_ms``."""

    def __init__(
        self,
        seed: int,
        customers: int = 3000,
        start_ms: int = 1_767_225_600_000,
        spacing_ms: float = 600.0,
    ):
        self.rng = np.random.default_rng(seed)
        #: Mean time between two events of the whole population.
        self.spacing_ms = spacing_ms
        self.seed = seed
        self.start_ms = start_ms
        #: Where the last ``times_and_types`` call's arrivals ended.
        self.base_end_ms = start_ms
        shares = np.array([s.share for s in SEGMENTS])
        self.segment = self.rng.choice(len(SEGMENTS), size=customers, p=shares / shares.sum())
        self.ids = [f"u{seed}-{i:06d}" for i in range(customers)]
        self.age = self.rng.integers(16, 95, customers).astype(float)
        self.income = np.round(self.rng.lognormal(10.6, 0.6, customers), 2)
        self.plan = self.rng.integers(0, len(PLANS), customers)
        self.region = self.rng.integers(0, len(REGIONS), customers)
        self.signup_ms = start_ms - self.rng.integers(0, 2000, customers) * DAY_MS

    def times_and_types(
        self, n: int, origin_ms: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` (customer, time, type) rows in time order, drawn from the rates.

        The arrivals start at ``origin_ms`` (default ``start_ms``); where they end is kept
        in ``base_end_ms``, the next chunk's origin when a long stream is drawn in chunks.
        A few events of a chunk land after it (moved by the weekday, up to an hour): a
        streaming caller holds those back and merges them with the next chunk.
        """
        rng = self.rng
        weights = np.array([sum(SEGMENTS[s].rates.values()) for s in self.segment])
        customer = rng.choice(len(self.ids), size=n, p=weights / weights.sum())
        # Arrival times: a Poisson stream whose rate follows the weekday.
        gaps = rng.exponential(1.0, n)
        origin = self.start_ms if origin_ms is None else int(origin_ms)
        times = origin + np.cumsum(gaps * self.spacing_ms).astype(np.int64)
        self.base_end_ms = int(times[-1]) if n else origin
        weekday = ((times // DAY_MS) + 3) % 7  # 1970-01-01 was a Thursday
        keep = rng.random(n) < WEEKDAY_FACTOR[weekday] / WEEKDAY_FACTOR.max()
        # An event dropped by the weekday's rate moves up to 6000 mean gaps later (an hour
        # at the default spacing): busier days keep more of their events in place.
        times = np.where(keep, times, times + rng.integers(0, int(6000 * self.spacing_ms), n))
        times.sort()
        # Bursts: some events of bursty customers are repeated within seconds.
        bursty = np.array([SEGMENTS[s].burst_prob for s in self.segment])[customer]
        burst = rng.random(n) < bursty
        follower = np.flatnonzero(burst[:-1]) + 1
        customer[follower] = customer[follower - 1]
        times[follower] = times[follower - 1] + rng.integers(0, 5000, follower.size)
        times = np.maximum.accumulate(times)
        # Silent customers appear rarely: most of their draws go to a browser instead.
        silent = np.array([SEGMENTS[s].silent for s in self.segment])[customer]
        drop = silent & (rng.random(n) < 0.9)
        browsers = np.flatnonzero(self.segment == 0)
        customer[drop] = rng.choice(browsers, size=int(drop.sum()))
        types = np.empty(n, dtype=object)
        for seg_index, seg in enumerate(SEGMENTS):
            rows = np.flatnonzero(self.segment[customer] == seg_index)
            names = list(seg.rates)
            p = np.array(list(seg.rates.values()))
            types[rows] = np.array(names, dtype=object)[
                rng.choice(len(names), rows.size, p=p / p.sum())
            ]
        return customer, times, types

    def events(self, n: int) -> list[dict[str, Any]]:
        """``n`` valid events as dicts, ready for any JSON encoder."""
        customer, times, types = self.times_and_types(n)
        rng = self.rng
        fmt = rng.random(n)
        present = rng.random((n, 7))
        out = []
        for i in range(n):
            c = int(customer[i])
            t = int(times[i])
            event: dict[str, Any] = {
                "event_id": f"x{self.seed}-{i:07d}",
                "customer_id": self.ids[c],
                "event_time": t if fmt[i] < 0.7 else _rfc3339(t, int(fmt[i] * 1000) % 5),
                "event_type": str(types[i]),
            }
            kind = types[i]
            if kind in ("purchase", "refund") or present[i, 0] < 0.05:
                event["amount"] = round(float(rng.gamma(2.0, 30.0)), 2)
                event["quantity"] = int(rng.integers(1, 6))
            if present[i, 1] < 0.5:
                event["age"] = float(self.age[c])
            if present[i, 2] < 0.4:
                event["income"] = float(self.income[c])
            if present[i, 3] < 0.5:
                event["tenure_months"] = round((t - int(self.signup_ms[c])) / (30.44 * DAY_MS), 3)
            if present[i, 4] < 0.6:
                event["plan_type"] = PLANS[int(self.plan[c])]
            if present[i, 5] < 0.6:
                event["region"] = REGIONS[int(self.region[c])]
            if present[i, 6] < 0.05:
                event["amount"] = None  # explicit null: absent
            elif present[i, 6] > 0.93:
                event["client"] = {"app": "ios", "build": int(present[i, 6] * 1e4), "tags": ["β"]}
            out.append(event)
        return out


def _rfc3339(ms: int, style: int) -> str:
    """One of several RFC 3339 spellings of the same instant."""
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    if style == 0:
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if style == 1:
        return when.isoformat()  # +00:00, microseconds
    if style == 2:
        return when.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    if style == 3:
        return when.astimezone(timezone(timedelta(hours=-8))).isoformat(timespec="milliseconds")
    return when.replace(microsecond=(when.microsecond // 1000) * 1000).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
