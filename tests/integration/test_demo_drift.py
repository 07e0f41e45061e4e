"""``driftline demo`` with drift on, on the session's broker: a change injected is caught on
its feature and a retrain request follows; a stationary run stays quiet.

The demo is run as a user runs it (a subprocess, ``--duration``), against the session
broker (``--bootstrap-servers``, topics and groups under a prefix of their own), with a
short retrain persistence (the demo's own flag; the worker's default is production's).
Its status line is the drift state read from the worker's /metrics; retrain requests
are read back from the retrain-requests topic and printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

#: The drift part of a status line: ``drift DRIFT: a, b +2 | score OK [spend injected]``.
DRIFT = re.compile(
    r"\| drift (OK|WARN|DRIFT)(?:: ([^|]*?))?(?: \| score (OK|WARN|DRIFT))?"
    r"( \[\S+ injected\])?\s*$"
)
#: What buying a quarter as often moves (the ``rate-drop`` scenario): also the score, so
#: the retrain request does not depend on the importance-weighted share of features.
PURCHASE_FEATURES = {
    "purchases_7d",
    "purchases_30d",
    "purchases_90d",
    "days_since_last_purchase",
    "items_30d",
}


def run_demo(workdir: Path, bootstrap: str, *extra: str, timeout: float = 240) -> str:
    prefix = f"demo-{uuid.uuid4().hex[:8]}-"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "demo",
            "--workdir",
            str(workdir),
            "--bootstrap-servers",
            bootstrap,
            "--topic-prefix",
            prefix,
            "--metrics-port",
            "0",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=timeout,
        check=False,
    )
    output = process.stdout.decode(errors="replace")
    assert process.returncode == 0, output[-4000:]
    assert "worker exited with 0" in output, output[-4000:]
    return output


def status_lines(output: str) -> list[tuple[str, list[str], str | None, bool]]:
    """(state, top features, score state, injected yet) of each status line."""
    found = []
    for line in output.replace("\r", "\n").splitlines():
        if not line.startswith("events in"):
            continue
        match = DRIFT.search(line)
        assert match is not None, line
        state, top, score, injected = match.groups()
        names = [n.strip() for n in (top or "").split(",") if n.strip()]
        names = [n.split(" +")[0] for n in names]
        found.append((state, names, score, injected is not None))
    return found


def test_an_injected_rate_drop_is_caught_on_its_features_and_asks_for_a_retrain(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    output = run_demo(
        tmp_path / "demo",
        kafka_bootstrap,
        "--customers",
        "1000",
        "--duration",
        "60",
        "--inject",
        "rate-drop",
        "--at",
        "10s",
        "--retrain-persistence",
        "10",
    )
    lines = status_lines(output)
    after = [line for line in lines if line[3]]
    assert after, output[-3000:]
    caught = [
        top for state, top, _, _ in after if state == "DRIFT" and PURCHASE_FEATURES & set(top)
    ]
    assert caught, "\n".join(map(str, lines[-10:]))
    requests = [line for line in output.splitlines() if line.startswith("retrain request ")]
    assert requests, output[-3000:]
    assert "retrain requests: 0" not in output


def test_a_stationary_demo_stays_ok_and_asks_for_no_retrain(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Nothing injected: every status line OK (no feature, no score in WARN or DRIFT), no
    retrain request, and the worker counts its false-alarm budget in the demo's own events
    per day (its log says so).  Before the demo passed that budget to its worker, the
    worker counted in the reference's ~1,300 events per simulated day, which the demo
    streams in about a second: a budget of one false alarm per ~20 s of demo, and
    features went to DRIFT in stationary runs."""
    workdir = tmp_path / "demo"
    output = run_demo(workdir, kafka_bootstrap, "--customers", "1000", "--duration", "75")
    lines = status_lines(output)
    assert len(lines) > 30, output[-3000:]
    assert not any(line.startswith("retrain request ") for line in output.splitlines())
    assert "retrain requests: 0" in output, output[-3000:]
    assert all(state == "OK" for state, _, _, _ in lines), [x for x in lines if x[0] != "OK"]
    assert all(score == "OK" for _, _, score, _ in lines if score is not None), lines
    log = (workdir / "worker.log").read_text(errors="replace")
    budget = re.search(r"drift budget for churn \S+: .* of ([0-9.e+]+) events/day \((.*)\)", log)
    assert budget is not None, log[-3000:]
    assert float(budget.group(1)) == 1e7 and budget.group(2) == "--drift-events-per-day", budget
