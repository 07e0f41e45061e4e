"""Parsing ``DRIFTLINE_*`` environment values strictly.

A typo in a deployment file must stop the command with a message naming the variable,
not turn into a default: ``DRIFTLINE_DRIFT=ture`` read as False would silently run a
worker without drift monitoring.
"""

from __future__ import annotations

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_bool(raw: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case, surrounding blanks
    ignored); anything else raises ``ValueError``."""
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{raw!r} is not a boolean: use true/false, 1/0, yes/no or on/off")
