"""Child processes that die with their parent (brokers and workers started by tests)."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _resolve_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up in the parent: dlopen in a forked child can deadlock."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _resolve_prctl()


def die_with_parent(signal_number: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``signal_number`` when the parent dies.

    Best effort: None where ``prctl`` is unavailable (``atexit`` remains the net).  The
    kernel ties this to the *thread* that forked, so start children from a long-lived
    thread (the main thread in the CLI and in pytest).
    """
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:  # pragma: no cover - runs in the forked child
        prctl(_PR_SET_PDEATHSIG, signal_number, 0, 0, 0)

    return preexec
