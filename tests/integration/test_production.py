"""Production mode without containers, on loopback: PostgreSQL (Debian's binaries, a throwaway cluster)
behind a real Prefect server and a real MLflow server, MLflow's artifacts on an S3-compatible store (the
`moto` server), `lifecycle deploy` registering every deployment of infra/prefect.yaml with its schedules,
and the quickstart deployment run (with the test's tiny parameters) by `lifecycle worker`. Then the flow
run, the MLflow runs, the artifacts in the bucket and the registry are checked on those servers; a failed flow
run notifies a webhook through infra/automations.yaml's automation; and hand promotions racing from several
machines leave one champion (the server's concurrency limit)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import CONF, ROOT
from tests.integration.conftest import OVERRIDES
from tests.process_fixtures import wait_until_answers

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUCKET = "lifecycle-artifacts"
# the tiny chain, shorter still: what is checked here is where runs, models and artifacts go, not how good they are
SHORT = [*OVERRIDES, "pretrain.max_steps=12", "pretrain.eval_every=0", "sft.trainer.max_steps=10",
         "sft.eval.max_pairs=2"]
AUTOMATIONS = ["lifecycle-flow-run-failed", "lifecycle-drift-detected", "lifecycle-drift-collect-preferences",
               "lifecycle-feedback-degraded"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def servers(tmp_path: Path, postgres_server: str) -> Iterator[dict[str, str]]:
    """Prefect and MLflow servers on fresh Postgres databases, and an S3 bucket on a moto server."""
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    suffix = tmp_path.name[-8:].replace("-", "_").lower()
    urls = {}
    with admin.connect() as conn:
        for db in ("prefect", "mlflow"):
            conn.execute(text(f'CREATE DATABASE "{db}_{suffix}"'))
            urls[db] = postgres_server.rsplit("/", 1)[0] + f"/{db}_{suffix}"
    ports = {name: free_port() for name in ("prefect", "mlflow", "s3")}
    s3 = f"http://127.0.0.1:{ports['s3']}"
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": s3}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set by earlier tests
        env.pop(name, None)
    commands = {
        "s3": ([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["s3"])], f"{s3}/moto-api/"),
        "prefect": ([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                     str(ports["prefect"])], f"http://127.0.0.1:{ports['prefect']}/api/health"),
        "mlflow": ([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", urls["mlflow"],
                    "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--host", "127.0.0.1", "--port",
                    str(ports["mlflow"]), "--workers", "1"], f"http://127.0.0.1:{ports['mlflow']}/health"),
    }
    server_env = {"prefect": env | {"PREFECT_API_DATABASE_CONNECTION_URL": urls["prefect"].replace(
        "postgresql+psycopg", "postgresql+asyncpg")}}
    procs = []
    try:
        for name, (argv, _) in commands.items():  # all three start at once, each on its own database or port
            with open(tmp_path / f"{name}.log", "wb") as out:
                procs.append(subprocess.Popen(argv, env=server_env.get(name, env), stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        for proc, (name, (_, health)) in zip(procs, commands.items(), strict=True):
            wait_until_answers(health, proc, tmp_path / f"{name}.log")
        import boto3

        boto3.client("s3", endpoint_url=s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield {"prefect": f"http://127.0.0.1:{ports['prefect']}/api", "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
               "s3": s3, "env": json.dumps(env)}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        admin.dispose()


class WebhookReceiver:
    """A loopback HTTP server recording the JSON bodies POSTed to it (the notification block's target)."""

    def __init__(self) -> None:
        received: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers.get("content-length", 0)))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                """No access log on stderr: the test reads what was posted."""

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout_s: float) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} notifications in {timeout_s} s"
            time.sleep(0.2)
        return list(self.received)

    def stop(self) -> None:
        self.server.shutdown()


def test_a_scheduled_deployment_runs_on_postgres_backed_servers(tmp_path: Path, servers: dict[str, str]) -> None:
    """Postgres, a Prefect server, an MLflow server and an S3 store, each its own process, then `lifecycle
    deploy`, a worker and the deployment's flow run through sft, and four promoting threads: about a minute."""
    env = json.loads(servers["env"]) | {"PREFECT_API_URL": servers["prefect"],
                                        "MLFLOW_TRACKING_URI": servers["mlflow"], "HF_HUB_OFFLINE": "1"}
    lifecycle = [sys.executable, "-m", "lifecycle.cli"]
    hook = WebhookReceiver()
    deployed = subprocess.run([*lifecycle, "deploy"], env=env | {"LIFECYCLE_NOTIFY_WEBHOOK_URL": hook.url}, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "automation lifecycle-flow-run-failed: created" in deployed.stdout and hook.url not in deployed.stdout
    assert "lifecycle-drift-collect-preferences: created, running preferences/collect-preferences" in deployed.stdout
    api = httpx.Client(base_url=servers["prefect"], timeout=30)
    found = {d["name"]: d for d in api.post("/deployments/filter", json={}).json()}
    assert {"weekly-retrain", "nightly-data-and-rag", "quickstart", "collect-preferences"} <= set(found)
    crons = {s["schedule"]["cron"] for s in found["weekly-retrain"]["schedules"]}
    assert crons == {"0 3 * * 0"} and found["weekly-retrain"]["pull_steps"][0][
        "prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)

    state = tmp_path / "state"
    params = {"profile": "default", "overrides": SHORT, "until": "sft", "state_dir": str(state),
              "conf_dir": str(CONF)}
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as out:
        worker = subprocess.Popen([*lifecycle, "worker", "--pool", "lifecycle-pool"], env=env, cwd=tmp_path,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "lifecycle-pipeline/quickstart",
                              "--params", json.dumps(params), "--watch", "--watch-timeout", "900"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=960)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    with pytest.raises(ProcessLookupError):  # `lifecycle worker` became the worker: nothing of it outlives it
        os.killpg(worker.pid, 0)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + worker_log.read_text()[-3000:]
    runs = api.post("/flow_runs/filter", json={"deployments": {"name": {"any_": ["quickstart"]}}}).json()
    assert [r["state_type"] for r in runs] == ["COMPLETED"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=servers["mlflow"], registry_uri=servers["mlflow"])
    experiment = client.get_experiment_by_name("llm-lifecycle")
    stages = {r.data.tags.get("lifecycle.stage") for r in client.search_runs([experiment.experiment_id])}
    assert {"ingest", "validate", "tokenize", "pretrain", "sft"} <= stages
    parent = client.search_runs([experiment.experiment_id], "tags.`lifecycle.role` = 'pipeline'")[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["prefect.flow_run_id"] == runs[0]["id"]
    assert {int(v.version) for v in client.search_model_versions("name = 'lifecycle-gpt'")} == {1}
    assert client.get_model_version_by_alias("lifecycle-gpt", "candidate").version == "1"
    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=servers["s3"], aws_access_key_id="testing",
                                           aws_secret_access_key="testing", region_name="us-east-1")
            .list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith("model.safetensors") for k in keys), keys[:20]
    assert any(k.endswith("config.json") for k in keys)
    assert not (state / "mlflow" / "mlflow.db").exists()  # nothing tracked locally: the server has it all

    # a failed flow run notifies through the webhook block (infra/automations.yaml); registering again updates
    fail = ("from prefect import flow\n@flow(name='doomed')\ndef doomed():\n"
            "    raise ValueError('the corpus is gone')\ntry:\n    doomed()\nexcept ValueError:\n    pass")
    subprocess.run([sys.executable, "-c", fail], env=env, check=True, timeout=120)
    [message] = hook.wait(1, 60)
    assert all(word in message["text"] for word in ("Flow doomed", "Failed", "the corpus is gone"))
    again = subprocess.run([sys.executable, "-m", "lifecycle.ops.automations",
                            str(ROOT / "infra" / "automations.yaml")], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert "lifecycle-flow-run-failed: updated, notifying through the notification block 'lifecycle-ops'" in (
        again.stdout)
    assert sorted(a["name"] for a in api.post("/automations/filter", json={}).json()
                  if a["name"].startswith("lifecycle-")) == sorted(AUTOMATIONS)
    check_monitoring_loop(tmp_path, servers, env, api, hook)
    hook.stop()

    # event chaining: a preference set exported by collect-preferences starts align-and-promote
    emit = ("from prefect.events import emit_event; emit_event(event='lifecycle.preference-set.exported', "
            "resource={'prefect.resource.id': 'lifecycle.preference-set.abc123'})")
    subprocess.run([sys.executable, "-c", emit], env=env, check=True, timeout=120)
    deadline, chained = time.monotonic() + 90, []
    while not chained and time.monotonic() < deadline:
        time.sleep(2)
        chained = api.post("/flow_runs/filter", json={"deployments": {"name": {"any_": ["align-and-promote"]}}}).json()
    assert chained and chained[0]["parameters"]["from_stage"] == "rlhf"

    # hand promotions racing from 4 machines (4 lock folders): the Prefect server's concurrency limit
    # serialises them, so there is one champion and each move replaced exactly the one before it
    versions = [client.create_model_version("lifecycle-gpt", source=f"s3://{BUCKET}/race").version for _ in range(4)]
    race = subprocess.run([sys.executable, str(ROOT / "tests" / "integration" / "promotion_race.py"),
                           str(tmp_path / "race"), "lifecycle-gpt", "1", *versions],
                          env=env | {"PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert race.returncode == 0, race.stdout[-3000:] + race.stderr[-3000:]
    found = json.loads(race.stdout.strip().splitlines()[-1])
    assert found["errors"] == [] and len(found["champions"]) == 1
    assert sorted(found["chain"]) == sorted(["1", *versions]) and found["chain"][-1] == "1"
    limits = api.post("/v2/concurrency_limits/filter", json={}).json()
    assert [(c["name"], c["limit"], c["active_slots"]) for c in limits if c["name"].startswith("promote-")] == [
        ("promote-lifecycle-gpt", 1, 0)]  # created on first use, every slot released


def check_monitoring_loop(tmp_path: Path, servers: dict[str, str], env: dict[str, str], api: httpx.Client,
                          hook: WebhookReceiver) -> None:
    """A window of drifted questions traced to the MLflow server, `lifecycle monitor` on it: the drift event
    reaches the server, whose automations (registered by `lifecycle deploy`) notify the webhook and create a
    collect-preferences flow run on the drifted-questions file; the Evidently report is in the monitor's run."""
    import mlflow
    from mlflow.entities import SpanType
    from mlflow.tracking import MlflowClient

    from lifecycle import names
    from lifecycle.monitor.window import read_window
    from lifecycle.rag.index import build_index
    from lifecycle.rag.search import write_current
    from lifecycle.serve.tracing import RequestTrace
    from tests.unit.test_monitor import DRIFTED
    from tests.unit.test_rag_index import make_docs, rag_config

    state = tmp_path / "monitored"
    write_current(state, build_index(make_docs(), rag_config(), str(state / "rag" / "lancedb"), "docs").to_dict())
    client = MlflowClient(tracking_uri=servers["mlflow"])
    experiment_id = client.get_experiment_by_name("llm-lifecycle").experiment_id
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(servers["mlflow"])
    since = int(time.time() * 1000) - 1
    try:
        for question in DRIFTED:
            trace = RequestTrace.start(experiment_id, {"messages": [{"role": "user", "content": question}]},
                                       {names.MODEL: "lifecycle-gpt/1"})
            trace.end(trace.span("retrieve", SpanType.RETRIEVER, {"query": question, "k": 3}), [])
            trace.finish({"answer": "..."})
        assert len(read_window(experiment_id, since, int(time.time() * 1000) + 1)) == len(DRIFTED)  # exported
    finally:
        mlflow.set_tracking_uri(before)
    done = subprocess.run([sys.executable, "-m", "lifecycle.cli", "monitor", "--state-dir", str(state), "--json"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outcome = json.loads(done.stdout[done.stdout.index("{"):])
    assert outcome["events"] == ["lifecycle.drift.detected"] and outcome["window"]["requests"] == len(DRIFTED)
    assert {"embedding_distance", "oov_share", "low_score_share"} <= {c["figure"] for c in outcome["crossed"]
                                                                      if c["crossed"]}
    prompts = Path(outcome["prompts_file"])
    assert {json.loads(line)["prompt"] for line in prompts.read_text().splitlines()} == set(DRIFTED)
    files = {a.path for a in client.list_artifacts(outcome["window"]["mlflow_run_id"], "monitor")}
    assert {"monitor/drift_report.html", "monitor/drifted_questions.jsonl", "monitor/summary.md"} <= files

    message = hook.wait(2, 60)[-1]["text"]
    assert "served questions drifted" in message and "embedding_distance" in message and str(prompts) in message
    deadline, runs = time.monotonic() + 60, []
    while not runs and time.monotonic() < deadline:
        time.sleep(1)
        runs = api.post("/flow_runs/filter", json={"deployments": {"name": {"any_": ["collect-preferences"]}}}).json()
    assert runs, "the drift automation created no collect-preferences flow run"
    overrides = runs[0]["parameters"]["settings"]["overrides"]
    assert overrides == ["preferences.mode=human", f"preferences.prompts.files=[{json.dumps(str(prompts))}]"]
