"""The deployment files, each checked by its real tool, and against each other.

hadolint on the Dockerfiles, `docker compose config` on the compose file,
kubernetes-validate on the manifests, promtool on every PromQL expression of
the Grafana dashboard. Then what no single tool sees: every ACTIONSTREAM_*
variable set anywhere is a real `actionstream serve` flag, grace periods
nest, ports and names agree between files. Running the images is
test_deploy_image.py's job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from actionstream.service.endpoint.workers import STOP_MARGIN_S

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
GRAFANA = DEPLOY / "grafana"
BIN = Path(sys.executable).parent


def _run(*cmd: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)


@cache
def _serve_variables() -> frozenset[str]:
    """The ACTIONSTREAM_* variables `actionstream serve --help` says it reads."""
    shown = _run(BIN / "actionstream", "serve", "--help")
    assert shown.returncode == 0, shown.stderr
    names = frozenset(re.findall(r"env\s+var:\s+(ACTIONSTREAM_[A-Z0-9_]+)", shown.stdout))
    assert {"ACTIONSTREAM_PORT", "ACTIONSTREAM_GRACE_SECONDS"} <= names, shown.stdout
    return names


def _assert_serve_variables(names: object, where: str) -> None:
    assert isinstance(names, (list, dict, set))
    ours = {n for n in names if str(n).startswith("ACTIONSTREAM_")}
    unknown = ours - _serve_variables()
    assert not unknown, f"{where} sets {sorted(unknown)}, which `actionstream serve` does not read"


# --- Dockerfile -------------------------------------------------------------


def test_dockerfiles_are_clean_under_hadolint() -> None:
    dockerfiles = [DEPLOY / "Dockerfile", DEPLOY / "tests" / "prometheus.Dockerfile"]
    lint = _run(BIN / "hadolint", *dockerfiles)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_the_image_sets_only_real_serve_variables() -> None:
    env = _dockerfile_env()
    _assert_serve_variables(env, "deploy/Dockerfile")
    exposed = re.search(r"^EXPOSE (\d+) (\d+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert exposed is not None
    assert exposed.groups() == (env["ACTIONSTREAM_PORT"], env["ACTIONSTREAM_METRICS_PORT"])


# --- compose ----------------------------------------------------------------


@cache
def _compose() -> dict[str, Any]:
    """deploy/compose.yaml as compose itself resolves it (with its default variables)."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    for name in ("BIND_ADDRESS", "ACTIONSTREAM_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT"):
        env.pop(name, None)
    resolved = _run(
        BIN / "docker-compose", "-f", DEPLOY / "compose.yaml", "config", "--format", "json", env=env
    )
    assert resolved.returncode == 0, resolved.stderr
    config: dict[str, Any] = json.loads(resolved.stdout)
    return config


def test_compose_config_is_valid() -> None:
    check = _run(BIN / "docker-compose", "-f", DEPLOY / "compose.yaml", "config", "-q")
    assert check.returncode == 0, check.stderr


def test_compose_services_fit_together() -> None:
    services = _compose()["services"]
    assert set(services) == {"actionstream", "prometheus", "grafana"}
    for name, service in services.items():
        # The shipped scrape config and the Grafana data source say localhost.
        assert service["network_mode"] == "host", name
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name} mounts {volume['source']}"

    actionstream = services["actionstream"]["environment"]
    _assert_serve_variables(actionstream, "compose's actionstream service")
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"localhost:{actionstream['ACTIONSTREAM_METRICS_PORT']}"]
    # Past the server's grace and (with ACTIONSTREAM_WORKERS above 1) its supervisor's.
    stop_grace = float(services["actionstream"]["stop_grace_period"].rstrip("s"))
    assert stop_grace > float(actionstream["ACTIONSTREAM_GRACE_SECONDS"]) + STOP_MARGIN_S

    prometheus = services["prometheus"]
    mounts = {v["target"]: Path(v["source"]) for v in prometheus["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/prometheus"] == DEPLOY / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


# --- Grafana ----------------------------------------------------------------


def _grafana_mounts() -> dict[str, Path]:
    grafana = _compose()["services"]["grafana"]
    return {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}


def test_grafana_provisioning_points_at_the_shipped_files() -> None:
    mounts = _grafana_mounts()
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == GRAFANA / "provisioning"

    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert sources["apiVersion"] == 1
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["uid"] == "prometheus" and source["isDefault"] is True
    # Grafana expands $VARIABLES in provisioning files from its environment.
    grafana_env = _compose()["services"]["grafana"]["environment"]
    variable = source["url"].lstrip("$").strip("{}")
    port = _compose()["services"]["prometheus"]["command"][-1].rsplit(":", 1)[1]
    assert grafana_env[variable] == f"http://localhost:{port}"

    providers = yaml.safe_load((provisioning / "dashboards" / "actionstream.yaml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"


def _dashboard() -> dict[str, Any]:
    path = GRAFANA / "dashboards" / "actionstream.json"
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus" and target["expr"]


def _expressions() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _dashboard()["panels"] for t in p["targets"]]


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    exprs = " ".join(expr for _, expr in _expressions())
    for needed in (
        "actionstream_active_streams",
        "rate(actionstream_frames_received_total",
        "rate(actionstream_frames_processed_total",
        "rate(actionstream_frames_rejected_total",
        "histogram_quantile(0.5, sum by (le) (rate(actionstream_frame_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(actionstream_frame_latency_seconds_bucket",
        "actionstream_inference_seconds_bucket",
        "rate(actionstream_frames_dropped_total",
        "actionstream_batch_size_bucket",
    ):
        assert needed in exprs, needed


def test_every_dashboard_series_is_one_the_service_exports() -> None:
    from prometheus_client import CollectorRegistry

    from actionstream.service.telemetry.connections import Connections
    from actionstream.service.telemetry.metrics import Metrics
    from actionstream.service.telemetry.worker_restarts import WorkerRestarts

    registry = CollectorRegistry()
    Metrics(registry)
    # And those the server's process or a --workers supervisor adds.
    registry.register(Connections(lambda: [], 0, 1))
    registry.register(WorkerRestarts())
    # Labelled families have no samples until used: name the series by their type.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    suffixes |= {"gauge": ("",), "info": ("_info",)}
    exported = {f.name + end for f in registry.collect() for end in suffixes[f.type]}
    used = set(re.findall(r"actionstream_[a-z_]+", " ".join(e for _, e in _expressions())))
    assert used <= exported, sorted(used - exported)


# Grafana's built-in variables the dashboard may use, as Grafana would fill them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def test_every_dashboard_expression_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed; `make test` installs Debian's prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules = []
    for i, (title, expr) in enumerate(_expressions()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{title}: unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = _run(promtool, "check", "rules", path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(rules)} rules found" in check.stdout


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The check above can fail: a dashboard typo would be caught."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    path = tmp_path / "broken.yml"
    broken = {"record": "dashboard:broken", "expr": "sum(rate(actionstream_frames_total[1m])"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [broken]}]}))
    assert _run(promtool, "check", "rules", path).returncode != 0


# --- Kubernetes -------------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    """{kind/name: resource} for every document in deploy/k8s/."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def test_manifests_pass_kubernetes_schema_validation() -> None:
    files = sorted(K8S.glob("*.yaml"))
    check = _run(BIN / "kubernetes-validate", "--strict", *files)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("passed") == len(_manifests()), check.stdout


def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path: Path) -> None:
    """The validation above can fail: a probe without its port is refused."""
    deployment = _manifests()["Deployment/actionstream"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpc"] = {"service": ""}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    assert _run(BIN / "kubernetes-validate", "--strict", path).returncode != 0


def test_the_kubernetes_scrape_job_finds_the_pods_under_the_job_the_alerts_name() -> None:
    # Debian's promtool is built without Kubernetes discovery, so this one is checked
    # against the manifests and the rules by hand: the alerts select job="actionstream",
    # and ActionstreamDown can only fire on a job of that name.
    config = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "actionstream" and job["kubernetes_sd_configs"] == [{"role": "pod"}]
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert 'up{job="actionstream"} == 0' in rules
    assert config["rule_files"] == ["alerts.yml"]
    keep = {
        r["source_labels"][0]: r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    pod = _manifests()["Deployment/actionstream"]["spec"]["template"]
    [container] = pod["spec"]["containers"]
    label = keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == label
    port = keep["__meta_kubernetes_pod_container_port_name"]
    assert port in {p["name"] for p in container["ports"]} and port == "metrics"


def test_manifests_fit_together() -> None:
    manifests = _manifests()
    deployment = manifests["Deployment/actionstream"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    _assert_serve_variables(env, "deploy/k8s/deployment.yaml")
    effective = {**_dockerfile_env(), **env}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": int(effective["ACTIONSTREAM_PORT"]),
        "metrics": int(effective["ACTIONSTREAM_METRICS_PORT"]),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    # The kubelet's service links for the Service "actionstream" would set
    # ACTIONSTREAM_PORT=tcp://<ip>:50051 over the image's, and the server would not start.
    assert pod["spec"]["enableServiceLinks"] is False
    # Scraped by the actionstream job alone (kubernetes.yml): annotations would have the
    # usual annotation-driven job scrape each pod a second time.
    assert not any(k.startswith("prometheus.io/") for k in pod["metadata"].get("annotations", {}))

    # The kubelet's SIGKILL comes after preStop, the server's own grace, and (with
    # ACTIONSTREAM_WORKERS above 1) the time its supervisor gives workers after that.
    grace = float(env["ACTIONSTREAM_GRACE_SECONDS"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + grace + STOP_MARGIN_S

    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    # The image's user (USER 10001:10001), which runAsNonRoot can check only by number.
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert "USER 10001:10001" in (DEPLOY / "Dockerfile").read_text()

    labels = pod["metadata"]["labels"]
    for key in ("Service/actionstream", "Service/actionstream-pods"):
        service = manifests[key]["spec"]
        assert service["selector"].items() <= labels.items(), key
        assert [p["targetPort"] for p in service["ports"]] == ["grpc"], key
    assert (
        manifests["PodDisruptionBudget/actionstream"]["spec"]["selector"]["matchLabels"]
        == (deployment["spec"]["selector"]["matchLabels"])
    )
    hpa = manifests["HorizontalPodAutoscaler/actionstream"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "actionstream",
    }
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


# --- The Prometheus Operator ------------------------------------------------

OPERATOR = K8S / "prometheus-operator"


def test_the_pod_monitor_scrapes_the_pods_under_the_job_the_alerts_name() -> None:
    # No schema here for the operator's resources (kubernetes-validate knows the core
    # API only), so they are checked against the manifests and kubernetes.yml by hand.
    monitor = yaml.safe_load((OPERATOR / "podmonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    spec = monitor["spec"]
    pod = _manifests()["Deployment/actionstream"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    # The job label is the value of the pod label jobLabel names: the one the rules select.
    assert labels[spec["jobLabel"]] == "actionstream"
    assert 'up{job="actionstream"} == 0' in (DEPLOY / "prometheus" / "alerts.yml").read_text()
    [endpoint] = spec["podMetricsEndpoints"]
    [container] = pod["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    assert endpoint["port"] == "metrics"
    # What the plain scrape job drops, dropped here too.
    plain = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())
    [job] = plain["scrape_configs"]
    dropped = {
        tuple(r["source_labels"]): r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "drop"
    }
    assert {
        tuple(r["sourceLabels"]): r["regex"]
        for r in endpoint["relabelings"]
        if r["action"] == "drop"
    } == dropped


def test_the_prometheus_rule_holds_the_alert_rules_as_written(tmp_path: Path) -> None:
    # Generated from alerts.yml: a rule changed there and not here would fire in one
    # set-up and not the other.
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gen_prometheus_rule import prometheus_rule
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    committed = (OPERATOR / "prometheusrule.yaml").read_text()
    assert committed == prometheus_rule(alerts), "run `make prometheus-rule`"
    resource = yaml.safe_load(committed)
    assert (resource["apiVersion"], resource["kind"]) == (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
    )
    assert resource["spec"]["groups"] == yaml.safe_load(alerts)["groups"]
    # The groups as the operator hands them to Prometheus: a rule file promtool accepts.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make prometheus-tools)")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": resource["spec"]["groups"]}))
    check = _run(promtool, "check", "rules", rules)
    assert check.returncode == 0, check.stdout + check.stderr
