"""The demo's simulated world: one steady population, its history, then its live stream.

The model is trained on a history and its drift reference describes the days after the
training cutoff; what the demo serves must be that same world going on, or the monitor
reports drift that nobody injected.  So, here:

* **One population.**  A :class:`~driftline.simulate_steady.SteadyPopulation` (constant
  churn hazard, leavers replaced, accounts older than the log) generates the history and
  then keeps going: the same customers in the state the history left them in, the same
  per-customer rates, the same event clock.
* **Anchored in the past.**  The history ends ``headroom_days`` before today (UTC
  midnight) and the live stream continues from that instant, faster than real time (the
  demo's rate divided by the population's events per day).  It never runs ahead of the
  wall clock: once it reaches the present it waits for it (an event from the future is
  dead-lettered by the worker).  :func:`headroom_days` sizes the gap to the run.
* **The worker is warmed on the history** by the demo (it replays the history into the
  input topic first), so windowed features such as ``purchases_90d`` start where the
  history ended instead of at zero.

A change is injected with :class:`Injection` (``driftline demo --inject SCENARIO --at
90s``): from then on the live generator behaves differently; see :data:`SCENARIOS`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from driftline.demo_concept import CONCEPT_CHURN, CONCEPT_MECHANISM, ConceptPopulation
from driftline.simulate import DAY_MS, HOUR_MS
from driftline.simulate_steady import SteadyPopulation

__all__ = [
    "HISTORY_DAYS",
    "SCENARIOS",
    "DemoWorld",
    "Injection",
    "headroom_days",
    "history_end_ms",
]

#: Days of history the demo's model is trained on.
HISTORY_DAYS = 365
#: Fewest days between the end of the history and today: a run of unknown length (Ctrl-C)
#: at the default rate stays faster than real time for about 20 minutes.
MIN_HEADROOM_DAYS = 1_000
#: A lower bound of the steady population's events per customer per day (it is ~1.25),
#: so the headroom computed from it is an upper bound.
MIN_EVENTS_PER_CUSTOMER_DAY = 1.0
#: The region value the ``new-region`` scenario introduces (not in the reference).
NEW_REGION = "central"

SCENARIOS: dict[str, str] = {
    "age": "covariate shift: every customer's age is reported 20 years older",
    "spend": "order values are 2.5 times what they were",
    "new-region": f"40 % of the customers are now in a new region, {NEW_REGION!r}",
    "rate-drop": "customers buy a quarter as often as before",
    "concept": "concept drift: the churn warning (tickets, payment failures, fewer "
    "purchases) now comes from customers who stay, churners leave silently; inputs look "
    "as before (runs the closed loop: outcomes, quality, alert, retrain)",
}


def headroom_days(
    customers: int, rate: float, duration_s: float | None, minimum: int = MIN_HEADROOM_DAYS
) -> int:
    """Days of event time a run needs before it would reach the present (whole days)."""
    if duration_s is None:
        return minimum
    days_per_second = rate / (customers * MIN_EVENTS_PER_CUSTOMER_DAY)
    return max(minimum, math.ceil(duration_s * days_per_second * 1.25) + 1)


def history_end_ms(headroom: int, now_s: float | None = None) -> int:
    """UTC midnight ``headroom`` days before today: where the history ends."""
    now_ms = int((time.time() if now_s is None else now_s) * 1000)
    return (now_ms // DAY_MS - headroom) * DAY_MS


@dataclasses.dataclass
class Injection:
    """A scenario applied to the live generator once ``at_s`` seconds of live have passed."""

    scenario: str
    at_s: float
    applied_at_ms: int | None = None  # event time of the first changed chunk

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; known: {', '.join(SCENARIOS)}")
        if self.at_s < 0:
            raise ValueError("--at must be >= 0")


class DemoWorld:
    """The population, its history (pre-log accounts included) and its live stream."""

    def __init__(
        self,
        customers: int,
        seed: int,
        end_ms: int,
        history_days: int = HISTORY_DAYS,
        *,
        concept: bool = False,
    ) -> None:
        self.history_days = history_days
        start_ms = end_ms - history_days * DAY_MS
        # The concept scenario's world churns faster and can swap its warning (see
        # demo_concept); every other scenario runs in the default steady world.
        self.population: SteadyPopulation = (
            ConceptPopulation(
                n_customers=customers,
                seed=seed,
                start_ms=start_ms,
                churn_rate=CONCEPT_CHURN[0],
                horizon_days=CONCEPT_CHURN[1],
                mechanism=CONCEPT_MECHANISM,
            )
            if concept
            else SteadyPopulation(n_customers=customers, seed=seed, start_ms=start_ms)
        )
        self.end_ms = end_ms
        self._moved: np.ndarray | None = None  # slots in the new region (new-region)

    def history(self, progress: bool = False) -> pd.DataFrame:
        """The pre-log accounts and ``history_days`` of events, in event-time order."""
        population = self.population
        if population.clock_ms != population.start_ms:
            raise RuntimeError("the history is generated once, before the live stream")
        accounts = population.account_history()
        days = population.generate_history(self.history_days, progress=progress)
        return pd.concat([accounts, days], ignore_index=True)

    def live_frames(
        self,
        *,
        injection: Injection | None = None,
        stop: threading.Event | None = None,
        chunk_ms: int = HOUR_MS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> Iterator[pd.DataFrame]:
        """Live event tables continuing the history, one per ``chunk_ms`` of event time.

        ``injection`` is applied to the first chunk generated ``injection.at_s`` seconds
        (``clock``) after the first one.  A chunk ending after the wall clock (``wall``)
        waits for it, so no event is from the future.
        """
        started = clock()
        population = self.population
        while stop is None or not stop.is_set():
            due = injection is not None and injection.applied_at_ms is None
            if due and injection is not None and clock() - started >= injection.at_s:
                self.apply(injection.scenario)
                injection.applied_at_ms = population.clock_ms
            ahead_s = (population.clock_ms + chunk_ms) / 1000 - wall()
            if ahead_s > 0:
                if stop is not None:
                    stop.wait(min(ahead_s, 1.0))
                else:
                    time.sleep(min(ahead_s, 1.0))
                continue
            t1 = population.clock_ms + chunk_ms
            for frame in population.stream_frames(chunk_ms, until_ms=t1, profile_first=False):
                yield self._transform(frame)

    def apply(self, scenario: str) -> None:
        """Change the generator from now on (see :data:`SCENARIOS`)."""
        population = self.population
        m = population.mechanism
        if scenario == "age":
            population._age0 += 20.0
            population._last_profile[:] = -np.inf  # every next event carries the new age
        elif scenario == "spend":
            population.drift(order_value=tuple(v * 2.5 for v in m.order_value))
        elif scenario == "new-region":
            rng = np.random.default_rng(population.seed + 1)
            self._moved = rng.random(population.n_customers) < 0.4
            population._last_profile[:] = -np.inf
        elif scenario == "concept":
            if not isinstance(population, ConceptPopulation):
                raise ValueError("the concept scenario needs DemoWorld(..., concept=True)")
            population.swap_warning()
        elif scenario == "rate-drop":
            population.drift(
                purchase_rate=tuple(r / 4 for r in m.purchase_rate),
                min_purchase_rate=m.min_purchase_rate / 4,
            )
        else:  # pragma: no cover - Injection checks the name
            raise ValueError(f"unknown scenario {scenario!r}")

    def _transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self._moved is None:
            return frame
        slot_of = {c: i for i, c in enumerate(self.population.customer_ids.tolist())}
        slots = frame["customer_id"].map(slot_of).to_numpy()
        moved = self._moved[slots] & frame["region"].notna().to_numpy()
        frame.loc[moved, "region"] = NEW_REGION
        return frame


def summary(world: DemoWorld, history: pd.DataFrame) -> dict[str, Any]:
    """Numbers about the history the demo prints (and the tests check the live against)."""
    times = history["event_time"].to_numpy(dtype=np.int64)
    last30 = times > world.end_ms - 30 * DAY_MS
    return {
        "events": len(history),
        "customers": int(history["customer_id"].nunique()),
        "events_per_day_last_30d": float(last30.sum()) / 30.0,
        "end_ms": world.end_ms,
    }
