"""infra/ kept correct without a container engine: prefect.yaml in step with the code; both Dockerfiles pass hadolint
and share one layout (non-root user, paths, every package copied); compose.yaml passes the Compose Specification
schema and its wiring holds (loopback ports, secrets from the environment, dependencies, URLs, pool); Prometheus'
scrape config passes promtool and reaches the served app's /metrics with its key, and Grafana's provisioned
dashboard is well formed on the provisioned data source (its queries run against a real Prometheus in
tests/integration/test_serve_metrics.py); the Kubernetes work-pool template renders to a GPU Job that passes
Kubernetes' schema, with the Dockerfiles' UID. The same topology runs without containers in
tests/integration/test_production.py."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from lifecycle.config import find_conf_dir, load_config
from tasks.graph import GRAPH

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PREFECT_SPEC = yaml.safe_load((INFRA / "prefect.yaml").read_text())
DEPLOYMENTS = PREFECT_SPEC["deployments"]
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
COMPOSE = yaml.safe_load((INFRA / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
TEMPLATE = json.loads((INFRA / "k8s" / "work-pool-template.json").read_text())
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY", re.I)
REFERENCE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")  # ${VAR}, ${VAR:-default}, ${VAR:?message}


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_matches_flow(deployment: dict) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    module, _, name = deployment["entrypoint"].partition(":")
    flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
    params = deployment["parameters"]
    flow.validate_parameters(params)  # raises on unknown or mistyped parameters
    profile = params.get("profile", params.get("settings", {}).get("profile", "default"))
    load_config(find_conf_dir(ROOT / "conf"), None if profile == "default" else profile)
    GRAPH.plan(params.get("until"), params.get("from_stage"))
    for schedule in deployment.get("schedules", []):
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])


def tool(name: str) -> str:
    """An executable installed with the dev dependencies (the venv's bin/ even when it is not on PATH)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"{name} is not installed (a dev dependency: pip install -c constraints.txt -e '.[dev]')")
    return found


# --- Dockerfiles ---------------------------------------------------------------------------------------------

def instructions(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    current = ""
    for line in (INFRA / dockerfile).read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if not current.strip():
            continue
        word, _, rest = current.strip().partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
        current = ""
    return stages


def image_user(dockerfile: str) -> tuple[int, int]:
    users = [args for word, args in instructions(dockerfile)[-1] if word == "USER"]
    uid, _, gid = users[-1].partition(":")
    return int(uid), int(gid)


def packages() -> list[str]:
    """Top-level packages that pyproject's setuptools `packages.find` includes."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({p.split(".")[0].rstrip("*") for p in patterns})


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    done = subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(INFRA / dockerfile)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_layout(dockerfile: str) -> None:
    *build, final = instructions(dockerfile)
    env = dict(kv.split("=", 1) for args in (a for w, a in final if w == "ENV") for kv in shlex.split(args))
    assert env["LIFECYCLE_HOME"] == "/state" and env["LIFECYCLE_REPO"] == "/app"
    assert ("WORKDIR", "/app") in final and ("VOLUME", '["/state"]') in final
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["lifecycle"]
    uid, gid = image_user(dockerfile)
    assert uid >= 1000 and gid >= 1000, "the image must not run as root or a system user"
    runs = " ".join(a for w, a in final if w == "RUN")
    assert f"--uid {uid} --gid {gid}" in runs and f"install -d -o {uid} -g {gid} /state" in runs
    copied = {s for stage in build for w, a in stage if w == "COPY" and not a.startswith("--") for s in a.split()[:-1]}
    assert {*packages(), "conf", "infra", "pyproject.toml", "constraints.txt"} <= copied
    pip_runs = [a for stage in build for w, a in stage if w == "RUN" and "pip install" in a]
    assert pip_runs and all("-c constraints.txt" in a or "--no-deps" in a for a in pip_runs)
    for word, args in (i for stage in [*build, final] for i in stage if i[0] in ("ENV", "ARG")):
        assert not SECRETISH.search(args), f"{dockerfile}: a secret baked into the image: {word} {args}"


def test_cpu_image_takes_torch_from_the_cpu_index() -> None:
    runs = " ".join(a for stage in instructions("Dockerfile") for w, a in stage if w == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs and "grep -E '^torch==' constraints.txt" in runs
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch==")]
    assert len(pins) == 1, "the CPU image installs the torch version constraints.txt pins"


def test_images_share_one_uid() -> None:
    assert image_user("Dockerfile") == image_user("Dockerfile.cuda")


def dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches decides; `!pattern` re-includes."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch(path, pattern.lstrip("!")) or path.startswith(pattern.lstrip("!") + "/"):
            ignored = not negated
    return ignored


def test_dockerignore_sends_what_the_images_copy() -> None:
    ignores = [[line for line in (INFRA / f"{name}.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")] for name in DOCKERFILES]
    assert ignores[0] == ignores[1], "both images copy the same files"
    for dockerfile in DOCKERFILES:
        for stage in instructions(dockerfile):
            for source in (a.split()[:-1] for w, a in stage if w == "COPY" and not a.startswith("--")):
                assert not any(dockerignored(ignores[0], s) for s in source), (dockerfile, source)
    assert dockerignored(ignores[0], ".venv") and dockerignored(ignores[0], "lifecycle/__pycache__")


# --- compose ---------------------------------------------------------------------------------------------------

ENV = {"POSTGRES_PASSWORD": "pw", "OBJECT_STORE_ACCESS_KEY": "key", "OBJECT_STORE_SECRET_KEY": "secret"}


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message} with ENV as the environment."""
    def one(m: re.Match) -> str:
        name, op, arg = m.groups()
        if name in ENV:
            return ENV[name]
        assert op not in (":?", "?"), f"${{{name}}} is required"
        return arg if op in (":-", "-") else ""
    return REFERENCE.sub(one, value)


def strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def argv(service: str) -> list[str]:
    return [interpolate(a) for a in SERVICES[service].get("command", [])]


def flag(service: str, name: str) -> str:
    return next(a.split("=", 1)[1] for a in argv(service) if a.startswith(f"--{name}="))


def test_compose_matches_the_compose_spec(tmp_path: Path) -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is a dev dependency")

    def check(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                               str(path)], capture_output=True, text=True)

    done = check(INFRA / "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    typo = tmp_path / "compose.yaml"  # the check catches a misspelled key
    typo.write_text((INFRA / "compose.yaml").read_text().replace("depends_on:", "depend_on:", 1))
    assert check(typo).returncode != 0


def test_compose_publishes_on_loopback_only() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_compose_takes_secrets_from_the_environment() -> None:
    for text in strings(COMPOSE):
        for name, op, _ in REFERENCE.findall(text):
            assert not SECRETISH.search(name) or op == ":?", f"${{{name}}} must be required (${{{name}:?...}})"
        if (parts := urlsplit(text)).password:
            assert REFERENCE.fullmatch(parts.password), f"a password written into {text}"
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRETISH.search(key):
                assert REFERENCE.fullmatch(str(value)), f"{name}: {key} is written in the file"


def test_compose_dependencies_wait_for_readiness() -> None:
    for name, service in SERVICES.items():
        one_shot = service.get("restart") == "no"
        assert one_shot or "healthcheck" in service, f"{name} runs on without a health check"
        for target, spec in service.get("depends_on", {}).items():
            assert target in SERVICES, f"{name} depends on a missing service {target}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits for {target}'s missing health check"
            else:
                assert spec["condition"] == "service_completed_successfully" and SERVICES[target]["restart"] == "no"


def test_compose_wiring() -> None:
    pools = {d["work_pool"]["name"] for d in DEPLOYMENTS}
    worker = SERVICES["worker"]
    assert pools == {worker["command"][worker["command"].index("--pool") + 1]}
    constraints = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert SERVICES["prefect"]["image"] == f"prefecthq/prefect:{constraints['prefect']}-python3.11"
    # the servers on their Postgres databases, with the drivers the image and the Prefect image have
    prefect_db = urlsplit(interpolate(SERVICES["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]))
    mlflow_db = urlsplit(flag("mlflow", "backend-store-uri"))
    assert (prefect_db.scheme, prefect_db.path) == ("postgresql+asyncpg", "/prefect")
    assert (mlflow_db.scheme, mlflow_db.path) == ("postgresql+psycopg", "/mlflow")
    assert prefect_db.hostname == mlflow_db.hostname == "postgres"
    assert SERVICES["postgres"]["environment"]["POSTGRES_DB"] == "prefect"
    assert re.search(r"CREATE DATABASE mlflow\b", (INFRA / "postgres-init.sql").read_text())
    # MLflow's artifacts in the bucket that create-bucket makes, on the object store service
    assert flag("mlflow", "artifacts-destination").startswith(f"s3://{argv('create-bucket')[0]}/")
    for name in ("mlflow", "create-bucket"):
        endpoint = urlsplit(SERVICES[name]["environment"]["MLFLOW_S3_ENDPOINT_URL"])
        assert endpoint.hostname in SERVICES and any(str(p).endswith(f":{endpoint.port}")
                                                     for p in SERVICES[endpoint.hostname]["ports"])
    assert SERVICES["mlflow"]["environment"]["AWS_ACCESS_KEY_ID"] == SERVICES["objectstore"]["environment"][
        "AWS_ACCESS_KEY_ID"]
    # the worker reaches both servers, and MLflow accepts its Host header and the browser's
    allowed = flag("mlflow", "allowed-hosts").split(",")
    for name in ("worker", "deploy"):
        assert urlsplit(SERVICES[name]["environment"]["PREFECT_API_URL"]).netloc == "prefect:4200"
    assert urlsplit(worker["environment"]["MLFLOW_TRACKING_URI"]).netloc in allowed
    assert all(port.rsplit(":", 1)[0] in allowed for port in SERVICES["mlflow"]["ports"])  # 127.0.0.1:5000
    assert worker["volumes"] == ["state:/state"]


def test_create_bucket_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto", reason="moto is a dev dependency")
    import boto3

    spec = importlib.util.spec_from_file_location("create_bucket", INFRA / "create_bucket.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        assert module.create_bucket("lifecycle-artifacts") is True
        assert module.create_bucket("lifecycle-artifacts") is False
        assert module.main(["lifecycle-artifacts"]) == 0
        assert [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]] == ["lifecycle-artifacts"]


# --- Kubernetes ------------------------------------------------------------------------------------------------

def validate_k8s(resource: dict) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency")
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def render_job(values: dict | None = None) -> dict:
    """The Job a Kubernetes worker submits for a flow run: the template with the variables' defaults (and
    `values`) applied the way Prefect applies them, then the worker's own env and command filled in."""
    from prefect.utilities.templating import apply_values

    defaults = {k: v["default"] for k, v in TEMPLATE["variables"]["properties"].items() if "default" in v}
    run = {"name": "weekly-retrain", "labels": {"prefect.io/flow-run-id": "1"}, "env": {"PREFECT__FLOW_RUN_ID": "1"}}
    manifest = apply_values(TEMPLATE["job_configuration"], defaults | run | (values or {}))["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    container.setdefault("args", ["prefect", "flow-run", "execute"])  # the worker's default command
    return manifest


def test_work_pool_template_is_a_prefect_base_job_template() -> None:
    import jsonschema
    from prefect.server.schemas.actions import validate_base_job_template

    validate_base_job_template(TEMPLATE)  # what the server checks: every placeholder is a declared variable
    variables = TEMPLATE["variables"]
    jsonschema.Draft7Validator.check_schema(variables)
    for name, schema in variables["properties"].items():
        if "default" in schema:
            jsonschema.validate(schema["default"], schema)
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(TEMPLATE["job_configuration"])))
    assert used == set(variables["properties"]), "every variable is used by the job"


def test_work_pool_job_requests_gpus_as_the_image_user() -> None:
    manifest = render_job()
    pod = manifest["spec"]["template"]["spec"]
    # Prefect's worker requires these (it puts parallelism/completions in the pod spec; the API server drops them)
    assert (pod.pop("parallelism"), pod.pop("completions"), pod["restartPolicy"]) == (1, 1, "Never")
    validate_k8s(manifest)
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"
    gpus = TEMPLATE["variables"]["properties"]["gpus"]["default"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus == 1
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    uid, gid = image_user("Dockerfile.cuda")
    assert {k: pod["securityContext"][k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup")} == {
        "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid, "fsGroup": gid}
    # the flow-run command runs as is, not as arguments of the image's `lifecycle` entrypoint
    assert container["command"] == ["/usr/bin/env"] and container["args"][0] == "prefect"
    assert {"configMapRef": {"name": "lifecycle-endpoints"}} in container["envFrom"]
    claim = yaml.safe_load((INFRA / "k8s" / "state-pvc.yaml").read_text())["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if mounts.get(v["name"]) == "/state")
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    # deployments override the variables per run
    pod = render_job({"gpus": 4, "node_selector": {"pool": "h100"}})["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == {"pool": "h100"}


@pytest.mark.parametrize("name", ["pretrain-job.yaml", "state-pvc.yaml"])
def test_kubernetes_manifest_passes_the_schema(name: str) -> None:
    resource = yaml.safe_load((INFRA / "k8s" / name).read_text())
    validate_k8s(resource)
    import kubernetes_validate

    resource["metadata"]["nmae"] = "typo"  # strict validation catches what the API server would drop
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(resource)


def test_pretrain_job_runs_as_the_image_user_on_a_gpu() -> None:
    pod = yaml.safe_load((INFRA / "k8s" / "pretrain-job.yaml").read_text())["spec"]["template"]["spec"]
    uid, gid = image_user("Dockerfile.cuda")
    context = pod["securityContext"]
    assert (context["runAsNonRoot"], context["runAsUser"], context["fsGroup"]) == (True, uid, gid)
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert container["args"][0] == "run"  # a `lifecycle` subcommand: the image's entrypoint stays
    claim = yaml.safe_load((INFRA / "k8s" / "state-pvc.yaml").read_text())["metadata"]["name"]
    assert {"name": "state", "persistentVolumeClaim": {"claimName": claim}} in pod["volumes"]


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("needs promtool (Debian's `prometheus` package; .ci/run installs it)")
    done = subprocess.run([promtool, "check", "config", "--syntax-only", str(INFRA / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_served_app_with_its_key() -> None:
    serve, prometheus = SERVICES["serve"], SERVICES["prometheus"]
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    [target] = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "serve" and serve["command"][serve["command"].index("--port") + 1] == port
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    # the key serve reads (serve.server.api_key_env) is the secret Prometheus reads from a file
    key_env = load_config(find_conf_dir(None)).serve.server.api_key_env
    assert key_env in serve["environment"]
    [secret] = prometheus["secrets"]
    assert COMPOSE["secrets"][secret] == {"environment": key_env}
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"] if v.startswith("./")}
    assert (INFRA / mounted["/etc/prometheus/prometheus.yml"]).resolve() == INFRA / "prometheus" / "prometheus.yml"


def test_grafana_dashboard_is_provisioned_on_the_prometheus_data_source() -> None:
    grafana = SERVICES["grafana"]
    mounted = {v.split(":")[1]: (INFRA / v.split(":")[0]).resolve() for v in grafana["volumes"]}
    provisioning = mounted["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and urlsplit(source["url"]).hostname == "prometheus"
    assert any(p.endswith(f":{urlsplit(source['url']).port}") for p in SERVICES["prometheus"]["ports"])
    [provider] = yaml.safe_load((provisioning / "dashboards" / "lifecycle.yaml").read_text())["providers"]
    dashboards = mounted[provider["options"]["path"]]
    [path] = dashboards.glob("*.json")
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " ".join(p["title"] for p in panels).lower()
    for signal in ("latency", "error rate", "traffic split", "thumbs up", "first token", "tokens per second"):
        assert signal in titles, f"the dashboard has no {signal} panel"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"] and len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"] and "lifecycle_serve_" in target["expr"]


def test_automations_file_builds_prefect_automations(tmp_path: Path) -> None:
    from uuid import uuid4

    from lifecycle.errors import ConfigError
    from lifecycle.ops.automations import automation, read_spec

    spec = read_spec(INFRA / "automations.yaml")
    built = [automation(found, uuid4(), uuid4()) for found in spec["automations"]]  # Prefect's models validate them
    failed = next(a for a in built if a.name == "lifecycle-flow-run-failed")
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert [type(a).__name__ for a in failed.actions] == ["SendNotification"]
    collect = next(a for a in built if a.name == "lifecycle-drift-collect-preferences")
    assert collect.trigger.expect == {"lifecycle.drift.detected"}
    assert collect.trigger.match["lifecycle.collect-preferences"] == ["true"]  # Prefect keeps labels as lists
    [run] = collect.actions
    assert type(run).__name__ == "RunDeployment" and "prompts_file" in run.parameters["settings"]["overrides"][-1]
    bad = tmp_path / "automations.yaml"
    bad.write_text("notification_block: ops\nautomations:\n  - name: x\n    trigger: {}\n")
    with pytest.raises(ConfigError, match=r"automations\[0\] \(x\) lacks notify or run_deployment"):
        read_spec(bad)
    bad.write_text("notification_block: ops\nautomations:\n  - {name: y, trigger: {}, run_deployment: {}}\n")
    with pytest.raises(ConfigError, match=r"automations\[0\] \(y\) run_deployment lacks `deployment`"):
        read_spec(bad)
