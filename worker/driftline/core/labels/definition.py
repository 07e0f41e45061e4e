"""The churn label, declared once in the feature spec's ``[label]`` table.

    [label]
    name = "churned"
    kind = "silence"           # positive when NO target event follows within the horizon
    target_event = "purchase"  # ("occurrence": positive when one DOES follow)
    horizon = "90d"
    lookback = "90d"           # training rows: customers active within lookback of a cutoff

A prediction (or training row) at time ``t`` for a customer looks at the customer's
``target_event`` events with times in ``(t, t + horizon]``: for ``silence`` the label is 1
when there is none (CDNOW-like logs: no purchase within 90 days), for ``occurrence`` when
there is one (subscriptions: a ``cancel_request`` within 60 days).  The same definition
builds training sets (``core.offline.training_set``) and resolves live predictions
(``core.labels.resolver``), so what a model is trained to predict is what its live
predictions are judged against.

This module imports nothing of ``core.spec`` (``core.spec`` parses the table with
``parse_label`` and keeps the result on ``FeatureSpec.label``), so both can import it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: core.spec imports this module
    from collections.abc import Callable

    from driftline.core.spec import FeatureSpec

    ParseDuration = Callable[[str | int], int]

KIND_SILENCE = "silence"
KIND_OCCURRENCE = "occurrence"
LABEL_KINDS: tuple[str, ...] = (KIND_SILENCE, KIND_OCCURRENCE)
_DAY_MS = 86_400_000
_KEYS = ("name", "kind", "target_event", "horizon", "lookback")


@dataclass(frozen=True)
class ChurnDefinition:
    """The label: 1 when, after a cutoff (or prediction) at ``t``, a ``target_event``
    does not (``kind = "silence"``) or does (``"occurrence"``) follow in
    ``(t, t + horizon_ms]``.

    Only customers with an event within ``lookback_ms`` before a training cutoff get a
    training row: a customer long gone before the cutoff is not a prediction anyone needs.
    The lookback can be no longer than the state's idle eviction (``FeatureSpec``
    refuses it): training rows are the customers a tick scores, and a tick cannot score
    a customer the worker has evicted, so a longer lookback would promise rows that are
    not there.  The defaults are the CDNOW-like churn label: no purchase within 90 days.
    """

    horizon_ms: int = 90 * _DAY_MS
    target_event: str = "purchase"
    lookback_ms: int = 90 * _DAY_MS
    kind: str = KIND_SILENCE
    name: str = "churned"

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {self.kind!r}")
        if self.horizon_ms <= 0 or self.lookback_ms <= 0:
            raise ValueError("label horizon and lookback must be positive")

    def label_of(self, target_followed: bool) -> int:
        """The label when a target event did (or did not) follow within the horizon."""
        return int(target_followed) if self.kind == KIND_OCCURRENCE else int(not target_followed)

    def describe(self) -> str:
        """For people: 'churned = no purchase within 90d'."""
        days = f"{self.horizon_ms / _DAY_MS:g}d"
        if self.kind == KIND_SILENCE:
            return f"{self.name} = no {self.target_event} within {days}"
        return f"{self.name} = a {self.target_event} within {days}"


def label_definition(spec: FeatureSpec) -> ChurnDefinition:
    """The spec's label (its ``[label]`` table), or the default CDNOW-like churn label for
    specs that declare none, its lookback cut to the spec's idle eviction (the customers a
    tick can score)."""
    if spec.label is not None:
        return spec.label
    default = ChurnDefinition()
    return replace(default, lookback_ms=min(default.lookback_ms, spec.eviction_after_ms))


def check_lookback(label: ChurnDefinition, eviction_after_ms: int) -> str | None:
    """Why ``label``'s lookback cannot be used with a state that evicts customers idle for
    ``eviction_after_ms``, or None when it can.  Training rows are the customers a tick
    scores; an evicted customer is in no tick, so a lookback past the eviction would
    silently train on fewer customers than it says."""
    if label.lookback_ms <= eviction_after_ms:
        return None
    return (
        f"the label's lookback ({label.lookback_ms / _DAY_MS:g}d) is longer than the state's "
        f"idle eviction ({eviction_after_ms / _DAY_MS:g}d): the worker keeps no customer idle "
        "that long, so no tick scores them and no training row can hold them; shorten the "
        "lookback or set [state] idle_eviction to at least the lookback"
    )


def parse_label(
    table: object,
    where: str,
    *,
    event_types: tuple[str, ...],
    parse_duration_ms: ParseDuration,
    error: type[ValueError],
    eviction_after_ms: int,
) -> ChurnDefinition:
    """The ``[label]`` table as a ``ChurnDefinition``; ``error(message)`` says which key
    is wrong and why.  (``core.spec`` passes its duration parser, ``SpecError`` and the
    state's idle eviction, which is the default lookback and its upper bound.)"""
    if not isinstance(table, Mapping):
        raise error(f"{where}: [label] must be a table")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise error(f"{where}: [label] has unknown keys {unknown}; known: {list(_KEYS)}")
    missing = [k for k in ("kind", "target_event", "horizon") if k not in table]
    if missing:
        raise error(f"{where}: [label] needs {missing} (e.g. kind = \"silence\", "
                    "target_event = \"purchase\", horizon = \"90d\")")  # fmt: skip
    name = table.get("name", "churned")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise error(f"{where}: [label] name must be snake_case, got {name!r}")
    kind = table["kind"]
    if kind not in LABEL_KINDS:
        raise error(
            f"{where}: [label] kind must be one of {list(LABEL_KINDS)} ('silence': positive "
            f"when no target event follows within the horizon; 'occurrence': when one does), "
            f"got {kind!r}"
        )
    target = table["target_event"]
    if target not in event_types:
        raise error(
            f"{where}: [label] target_event {target!r} is not an event type; known: "
            f"{list(event_types)}"
        )
    durations: dict[str, int] = {}
    for key, default in (("horizon", None), ("lookback", eviction_after_ms)):
        raw = table.get(key, default)
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise error(f'{where}: [label] {key} must be a duration such as "90d", got {raw!r}')
        try:
            durations[key] = parse_duration_ms(raw)
        except ValueError as problem:
            raise error(f"{where}: [label] {key}: {problem}") from None
        if durations[key] <= 0:
            raise error(f"{where}: [label] {key} must be positive, got {raw!r}")
    label = ChurnDefinition(
        horizon_ms=durations["horizon"],
        target_event=str(target),
        lookback_ms=durations["lookback"],
        kind=str(kind),
        name=name,
    )
    too_long = check_lookback(label, eviction_after_ms)
    if too_long is not None:
        raise error(f"{where}: [label] lookback: {too_long}")
    return label
