"""``--tick``: daily by default on the Kafka engine, off on Faust (which refuses it)."""

from __future__ import annotations

import pytest

from driftline.cli import build_parser
from driftline.commands._errors import CommandError
from driftline.commands._flags import apply_env_defaults
from driftline.commands.worker import settings_from_args
from driftline.core.spec import DAY_MS
from driftline.engine.faust.worker import unsupported


def settings(*argv: str):
    parser = build_parser()
    apply_env_defaults(parser)
    return settings_from_args(parser.parse_args(["worker", *argv]))


def test_kafka_ticks_daily_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings().tick_ms == DAY_MS
    assert settings("--tick", "6h").tick_ms == 6 * 3_600_000
    assert settings("--tick", "off").tick_ms is None
    monkeypatch.setenv("DRIFTLINE_TICK", "off")
    assert settings().tick_ms is None
    with pytest.raises(CommandError, match="--tick"):
        settings("--tick", "5h")


def test_faust_does_not_tick_and_refuses_to_be_asked() -> None:
    quiet = settings("--engine", "faust")
    assert quiet.tick_ms is None
    assert not any("--tick" in m for m in unsupported(quiet))
    asked = settings("--engine", "faust", "--tick", "1d")
    assert any("--tick" in m and "Kafka engine only" in m for m in unsupported(asked))


def test_tick_from_takes_a_zoned_time_or_epoch_milliseconds() -> None:
    assert settings().tick_from_ms is None
    assert settings("--tick-from", "2024-03-10T00:00:00Z").tick_from_ms == 1_710_028_800_000
    assert settings("--tick-from", "2024-03-10T01:00:00+01:00").tick_from_ms == 1_710_028_800_000
    assert settings("--tick-from", "1710028800000").tick_from_ms == 1_710_028_800_000
    for bad in ("2024-03-10", "2024-03-10T00:00:00", "yesterday"):
        with pytest.raises(CommandError, match="--tick-from"):
            settings("--tick-from", bad)
