"""``driftline demo --inject concept`` closes the loop by itself, on the session's broker.

The demo is run as a user runs it (a subprocess, ``--duration`` as the limit), against the
session broker (``--bootstrap-servers``, topics and groups under a prefix of its own),
with a short ``--at``: the churn warning changes hands 15 s into the live stream (1,000
customers at 2,000 events/s: ~1.9 simulated days per second).  What it prints is what is
checked, and then the registry it leaves:

* the realised ROC AUC of the first model, per completed week, fell below its alert
  threshold after the change (and was above it before);
* ModelPerformanceDegraded fired (Prometheus and Alertmanager when installed, else the
  demo's own evaluation; the output says which);
* a retrain promoted a challenger whose lineage is the first model and the alert's
  incident, the worker swapped to it, and its realised ROC AUC recovered (its first two
  completed weeks above its own alert threshold and above the first model's degraded
  weeks);
* the alert published retrain requests with reason ``quality``, and the promoted model
  answers one of them (the demo holds the worker's own drift trigger back for an hour);
* the demo said the loop closed and exited 0 before its ``--duration``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from driftline.model.registry import ModelRegistry

#: 2.5-4.5 minutes on a quiet 2-core machine: `make test` runs it (its second xdist worker
#: runs the rest meanwhile).
pytestmark = [pytest.mark.integration]

WINDOW = re.compile(
    r"^quality: churn (v\d+) week of (\S+): realised ROC AUC ([0-9.]+) from (\d+) labels "
    r"\((above|below) its alert threshold ([0-9.]+)(; predictions made after the change)?\)"
)
PROMOTED = re.compile(r"^retrain decision: promoted challenger (v\d+) over champion (v\d+)")
SWAPPED = re.compile(r"^worker swapped model: (v\d+) -> (v\d+)")
RECOVERED = re.compile(
    r"^AUC recovered: churn (v\d+) ([0-9.]+) over .* >= its alert threshold ([0-9.]+), "
    r"vs ([0-9.]+) for v0001"
)
DURATION = 420


def test_an_injected_concept_change_is_caught_retrained_promoted_and_recovers(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    workdir = tmp_path / "demo"
    started = time.monotonic()
    process = subprocess.run(
        [
            sys.executable, "-m", "driftline.cli", "demo",
            "--workdir", str(workdir),
            "--bootstrap-servers", kafka_bootstrap,
            "--topic-prefix", f"loop-{uuid.uuid4().hex[:8]}-",
            "--metrics-port", "0",
            "--customers", "1000",
            "--inject", "concept", "--at", "15s",
            "--duration", str(DURATION),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=DURATION + 240,
        check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    output = process.stdout.decode(errors="replace")
    (tmp_path / "demo-output.txt").write_text(output)  # the whole run, for a failure
    stamp = re.compile(r"^\[\s*\d+ s\] ")  # milestone lines: seconds of live stream
    lines = [stamp.sub("", line.strip()) for line in output.replace("\r", "\n").splitlines()]
    tail = "\n".join(line for line in lines if not line.startswith("events in"))[-5000:]
    assert process.returncode == 0, tail
    assert "the loop closed" in output, tail
    assert "worker exited with 0" in output, tail
    print(f"\ndemo --inject concept: {elapsed:.0f} s")
    print("\n".join(line for line in lines if not line.startswith(("events in", "  ")))[-3000:])

    # ---- the first model's live AUC fell below its threshold after the change
    windows = [m.groups() for line in lines if (m := WINDOW.match(line))]
    first = [w for w in windows if w[0] == "v0001"]
    below = [w for w in first if w[6] and w[4] == "below"]
    assert below, windows
    before = [float(w[2]) for w in first if not w[6]]
    threshold = float(first[0][5])
    assert all(auc >= threshold for auc in before), (before, threshold)
    # ---- the alert, the promotion, the swap, the recovery, in that order
    alert_at = next(i for i, line in enumerate(lines) if line.startswith("ALERT Model"))
    [(promoted_at, challenger, champion)] = [
        (i, *m.groups()) for i, line in enumerate(lines) if (m := PROMOTED.match(line))
    ]
    assert champion == "v0001"
    [(swap_at, old, new)] = [
        (i, *m.groups()) for i, line in enumerate(lines) if (m := SWAPPED.match(line))
    ]
    assert (old, new) == ("v0001", challenger)
    [(recovered_at, version, mean, new_threshold, degraded)] = [
        (i, *m.groups()) for i, line in enumerate(lines) if (m := RECOVERED.match(line))
    ]
    assert version == challenger and float(new_threshold) <= float(mean)
    assert float(mean) > float(degraded)
    new = [float(w[2]) for w in windows if w[0] == challenger][:2]
    assert abs(sum(new) / 2 - float(mean)) < 1e-3, (new, mean)
    # the mean of v0001's weeks below its threshold after the change (printed above)
    assert min(float(w[2]) for w in below) <= float(degraded) <= max(float(w[2]) for w in below)
    assert alert_at < promoted_at < swap_at < recovered_at

    # ---- the registry: the challenger is the champion, born of v0001 and the alert
    registry = ModelRegistry(workdir / "concept" / "models")
    assert registry.champion("churn").version == challenger
    lineage = registry.load("churn", challenger).metadata["lineage"]
    assert lineage["parent_version"] == "v0001" and lineage["incident_id"], lineage
    assert lineage["trigger"] == "request", lineage

    # ---- the promotion answered a request of the quality alert
    requests = [line for line in lines if line.startswith("retrain request ")]
    [answered] = [line for line in requests if lineage["incident_id"][:12] in line]
    assert ": quality (ModelPerformanceDegraded" in answered, requests
    print(f"promoted on: {answered}")
