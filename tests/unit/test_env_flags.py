"""DRIFTLINE_* environment values are parsed strictly: a typo is an error, not a default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from driftline.cli import build_parser
from driftline.commands._env import parse_bool
from driftline.commands._flags import apply_env_defaults


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("TRUE", True),
        (" Yes ", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
        ("0", False),
    ],
)
def test_usual_boolean_words(raw: str, value: bool) -> None:
    assert parse_bool(raw) is value


@pytest.mark.parametrize("raw", ["ture", "", "2", "enabled", "y es"])
def test_anything_else_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(raw)


def test_env_boolean_sets_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_DRIFT", "Yes")
    monkeypatch.setenv("DRIFTLINE_ADAPTIVE_BATCH", "off")
    parser = build_parser()
    apply_env_defaults(parser)
    args = parser.parse_args(["worker"])
    assert args.drift is True and args.adaptive_batch is False
    assert parser.parse_args(["worker", "--adaptive-batch"]).adaptive_batch is True  # flag wins


def run_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *argv],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_misspelt_boolean_stops_the_command_with_one_line() -> None:
    done = run_cli({"DRIFTLINE_DRIFT": "ture"}, "worker", "--registry", "/nonexistent")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "DRIFTLINE_DRIFT" in lines[0] and "'ture' is not a boolean" in lines[0]


def test_another_commands_variable_is_not_this_ones_business() -> None:
    """DRIFTLINE_DRIFT belongs to the worker: `schemas` runs whatever its value."""
    done = run_cli({"DRIFTLINE_DRIFT": "ture"}, "schemas", "--help")
    assert done.returncode == 0, done.stderr


def test_a_bad_top_level_variable_stops_every_command() -> None:
    done = run_cli({"DRIFTLINE_LOG_LEVEL": "chatty"}, "topics", "--bootstrap-servers", "x:1")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "driftline: environment variable DRIFTLINE_LOG_LEVEL: 'chatty' is not one of "
        "DEBUG, INFO, WARNING, ERROR"
    )


def test_a_value_outside_the_choices_is_refused() -> None:
    done = run_cli({"DRIFTLINE_MODEL_RUNTIME": "tensorflow"}, "worker")
    assert done.returncode == 2
    assert "DRIFTLINE_MODEL_RUNTIME" in done.stderr and "tensorflow" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
