"""POST /alerts with a bearer token: Alertmanager's ``http_config.authorization`` gets in,
everything else gets 401, counted, and the token is never logged."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from test_alert_intake import alert, notification, request

from driftline.observability import HealthServer, WorkerMetrics
from driftline.observability.alerts import AlertIntake
from driftline.observability.bearer import BearerToken, load_token

TOKEN = "s3cr3t-t0ken-4-alertmanager"


@pytest.fixture
def intake() -> AlertIntake:
    return AlertIntake(CollectorRegistry(), token=BearerToken(TOKEN))


@pytest.fixture
def server(intake: AlertIntake) -> Iterator[HealthServer]:
    with HealthServer(WorkerMetrics(), "127.0.0.1", 0, alerts=intake) as running:
        yield running


def codes(intake: AlertIntake) -> dict[str, float]:
    return {
        s.labels["code"]: s.value
        for m in intake.requests.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


@pytest.mark.parametrize(
    "header",
    [
        None,
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer ",
        f"Basic {TOKEN}",
        TOKEN,
        f"Bearer {TOKEN.upper()}",
    ],
)
def test_no_or_wrong_token_is_401(
    server: HealthServer, intake: AlertIntake, header: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {} if header is None else {"Authorization": header}
    with caplog.at_level(logging.DEBUG):
        status, reply_headers, body = request(
            server, "POST", "/alerts", notification(alert()), headers
        )
    assert status == 401
    assert reply_headers.get("WWW-Authenticate") == "Bearer"
    assert json.loads(body) == {"error": "missing or wrong bearer token"}
    assert codes(intake) == {"401": 1}
    assert not intake.pending  # nothing reached the trigger
    assert TOKEN not in caplog.text


def test_the_right_token_is_accepted(
    server: HealthServer, intake: AlertIntake, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for scheme in ("Bearer", "bearer"):
            status, _, _ = request(
                server,
                "POST",
                "/alerts",
                notification(alert()),
                {"Authorization": f"{scheme} {TOKEN}"},
            )
            assert status == 202
    assert codes(intake) == {"202": 2}
    assert intake.pending
    assert TOKEN not in caplog.text


def test_without_a_token_configured_alerts_are_open_as_before() -> None:
    intake = AlertIntake(CollectorRegistry())
    with HealthServer(WorkerMetrics(), "127.0.0.1", 0, alerts=intake) as server:
        assert request(server, "POST", "/alerts", notification(alert()))[0] == 202


def test_metrics_and_health_need_no_token(server: HealthServer) -> None:
    assert request(server, "GET", "/metrics")[0] == 200
    assert request(server, "GET", "/healthz")[0] == 200


def test_token_sources(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text(f"{TOKEN}\n")
    from_file = load_token(None, str(file))
    assert from_file is not None and from_file.allows(f"Bearer {TOKEN}")
    assert TOKEN not in repr(from_file)
    assert load_token(None, None) is None
    with pytest.raises(ValueError, match="once"):
        load_token(TOKEN, str(file))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        load_token(None, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="whitespace"):
        BearerToken("two words")


def test_worker_with_an_unreadable_token_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "worker", "--alerts-token-file", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"driftline worker: alerts token file {missing}: No such file or directory"
    )
