"""The preferences stage for real, on the tiny SFT model of the session's chain (tests/integration/conftest.py):
- simulated: the pipeline runs through `preferences` unattended; the set is TRL-format, content-hashed,
  logged to MLflow as a dataset, every vote marked synthetic; a re-run is a cache hit;
- import: HH-RLHF transcripts read directly, a bad row refused with its line number;
- human: the flow pauses, people vote through the annotation app's API, the last vote resumes the flow
  run by itself and the set is exported; a timeout fails the stage and keeps every vote, and the same
  command then goes on waiting for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.deployments import run_deployment

from flows.pipeline import pipeline
from lifecycle.preferences.resume import on_batch_complete
from lifecycle.cli import main
from lifecycle.config import load_config
from lifecycle.errors import LifecycleError
from lifecycle.preferences.app import create_app
from lifecycle.preferences.db import default_url
from lifecycle.preferences.export import read_snapshot
from lifecycle.preferences.store import PreferenceStore
from lifecycle.tracking import tracking_uri
from tests.conftest import CONF
from tests.integration.conftest import OVERRIDES, copy_state
from tests.integration.test_parent_run import wait_for_state

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def state(sft_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir with a trained (tiny) SFT model, shared by the tests below."""
    return copy_state(sft_trained, tmp_path_factory.mktemp("prefs") / "state")


def run(state: Path, *extra: str) -> dict:
    return pipeline(overrides=[*OVERRIDES, *extra], state_dir=str(state), conf_dir=str(CONF), until="preferences")


def test_simulated_preferences_are_exported_hashed_and_tracked(state: Path) -> None:
    out = run(state)["preferences"]
    rows = read_snapshot(Path(out["path"]) / "preferences.jsonl")
    assert rows and all(r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == "assistant" for r in rows)
    assert all(r["chosen"] != r["rejected"] and r["source"] == "simulated" for r in rows)
    client = MlflowClient(tracking_uri(state))
    stage_run = client.get_run(out["run_id"])
    assert stage_run.data.tags["lifecycle.preferences.synthetic"] == "true"
    set_hash = stage_run.data.tags["lifecycle.preference_set_hash"]
    assert json.loads((Path(out["path"]) / "stats.json").read_text())["hash"] == set_hash
    assert out["digest"] == set_hash[:16]  # what the next stage keys on: the set's content, not the config
    inputs = stage_run.inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [set_hash[:16]]  # logged as a dataset, named by its content
    metrics = stage_run.data.metrics
    assert metrics["preferences/votes"] == 3 * metrics["preferences/items"]  # three simulated judges
    assert metrics["preferences/rows"] == len(rows)
    assert "preferences/krippendorff_alpha" in metrics or "preferences/majority_agreement" in metrics
    assert run(state)["preferences"]["cached"]


def test_imported_hh_rlhf_transcripts(state: Path, tmp_path: Path) -> None:
    hh = tmp_path / "hh.jsonl"
    hh.write_text("\n".join(json.dumps(r) for r in [
        {"chosen": "\n\nHuman: What does json.dumps do?\n\nAssistant: It serialises an object to JSON.",
         "rejected": "\n\nHuman: What does json.dumps do?\n\nAssistant: No idea."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!"},
    ]) + "\n")
    out = run(state, "preferences.mode=import", f"preferences.import.files=[{hh}]")["preferences"]
    rows = read_snapshot(Path(out["path"]) / "preferences.jsonl")
    assert len(rows) == 1 and rows[0]["prompt"] == [{"role": "user", "content": "What does json.dumps do?"}]
    assert rows[0]["chosen"][0]["content"] == "It serialises an object to JSON."
    assert out["metrics"]["refused_rows"] == 1
    assert "hh.jsonl line 2" in (Path(out["path"]) / "refused.txt").read_text()


def vote_through_the_app(store: PreferenceStore, names: list[str], stop: threading.Event,
                         max_votes: int | None = None, leave_when_done: bool = False) -> int:
    """People signing in with their tokens and voting (always the left answer): until `stop`, `max_votes`,
    or (`leave_when_done`) nothing is left for them."""
    client = TestClient(create_app(store, load_config(CONF).annotate, on_complete=on_batch_complete))
    cast = 0
    tokens = [store.add_annotator(n) for n in names]
    while not stop.is_set():
        progress = False
        for token in tokens:
            headers = {"Authorization": f"Bearer {token}"}
            item = client.get("/api/next", headers=headers).json()["item"]
            if item is None:
                continue
            answer = client.post("/api/votes", headers=headers, json={
                "vote_id": str(uuid.uuid4()), "item_id": item["item_id"], "choice": "left"})
            assert answer.status_code == 200, answer.text
            cast += 1
            progress = True
            if max_votes is not None and cast >= max_votes:
                return cast
        if not progress:
            if leave_when_done:
                return cast
            time.sleep(0.2)
    return cast


def wait_for_batch(store_url: str, stop: threading.Event, not_run: str | None = None) -> PreferenceStore:
    """The store, once a flow run (other than `not_run`) waits for an open batch."""
    while not stop.is_set():
        try:
            store = PreferenceStore.open(store_url)
            if any(b.flow_run_id not in (None, not_run) and b.status == "open" for b in store.batches()):
                return store
        except Exception:  # the flow has not created the store yet
            pass
        time.sleep(0.2)
    raise AssertionError("no batch was published")


def test_the_flow_waits_for_people_and_goes_on_by_itself(state: Path) -> None:
    human = ["preferences.mode=human", "preferences.human.votes_per_item=2", "preferences.human.gold_items=1",
             "preferences.human.min_agreement=-1", "preferences.human.poll_interval_s=1"]
    stop = threading.Event()
    votes: list[int] = []

    def a_few_people_vote_then_leave() -> None:
        votes.append(vote_through_the_app(wait_for_batch(default_url(state), stop), ["ann", "bob"], stop, 2))

    early = threading.Thread(target=a_few_people_vote_then_leave, daemon=True)
    early.start()
    with pytest.raises(LifecycleError, match="every vote is kept"):
        run(state, *human, "preferences.human.timeout_s=8")
    early.join(timeout=30)
    store = PreferenceStore.open(default_url(state))
    batch, = [b for b in store.batches() if b.source == "human"]
    assert votes == [2] and store.progress(batch.id).votes + len(
        [j for j in store.judgements(batch.id) if j.gold]) == 2  # the timeout kept them

    people = threading.Thread(target=lambda: votes.append(vote_through_the_app(
        wait_for_batch(default_url(state), stop, not_run=batch.flow_run_id), ["cai", "dee"], stop)), daemon=True)
    people.start()
    try:
        out = run(state, *human, "preferences.human.timeout_s=300")["preferences"]
    finally:
        stop.set()
        people.join(timeout=30)
    progress = store.progress(batch.id)
    assert progress.done and progress.status == "exported"
    rows = read_snapshot(Path(out["path"]) / "preferences.jsonl")
    assert rows and {r["source"] for r in rows} == {"human"}
    tags = MlflowClient(tracking_uri(state)).get_run(out["run_id"]).data.tags
    assert tags["lifecycle.preferences.resumed_by"].startswith("the annotation app")
    assert tags["lifecycle.preferences.synthetic"] == "false"


@pytest.mark.slow
def test_under_a_runner_the_stage_suspends_and_resumes_under_the_same_parent_run(state: Path) -> None:
    """A deployment's flow run frees its process while people vote; the last vote resumes it, the runner
    re-executes it from the top (inputs from the cache, the batch found by its id) under the same MLflow
    parent run. A runner process and two flow-run processes, each step seen by polling: most of a minute."""
    human = ["preferences.mode=human", "preferences.round=2", "preferences.human.votes_per_item=1",
             "preferences.human.gold_items=0", "preferences.human.min_agreement=-1"]
    settings = {"overrides": [*OVERRIDES, *human], "state_dir": str(state), "conf_dir": str(CONF)}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen([sys.executable, str(ROOT / "tests" / "integration" / "preferences_runner.py")],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    try:
        with get_client(sync_client=True) as client:
            for _ in range(240):
                try:
                    client.read_deployment_by_name("preferences/probe")
                    break
                except Exception:  # the runner has not registered it yet
                    time.sleep(0.5)
        flow_run = run_deployment("preferences/probe", timeout=0, parameters={"settings": settings})
        assert wait_for_state(flow_run.id, {"Suspended"}, timeout=240) == "Suspended"  # its process is free
        parents = [r for r in MlflowClient(tracking_uri(state)).search_runs(
            [MlflowClient(tracking_uri(state)).get_experiment_by_name("llm-lifecycle").experiment_id],
            filter_string=f"tags.`prefect.flow_run_id` = '{flow_run.id}'")]
        assert len(parents) == 1 and parents[0].info.status == "RUNNING"
        store = wait_for_batch(default_url(state), stop)
        assert vote_through_the_app(store, ["eve"], stop, leave_when_done=True) > 0  # the last vote resumes it
        assert wait_for_state(flow_run.id, {"Completed", "Failed", "Crashed"}, timeout=240) == "Completed"
    finally:
        stop.set()
        runner.terminate()
        runner.wait(timeout=30)
    client = MlflowClient(tracking_uri(state))
    after = client.get_run(parents[0].info.run_id)
    assert after.info.status == "FINISHED" and after.data.tags["lifecycle.resumed"] == "1"
    stage = client.search_runs([after.info.experiment_id], filter_string=(
        f"tags.`mlflow.parentRunId` = '{after.info.run_id}' and tags.`lifecycle.stage` = 'preferences'"))
    assert len(stage) == 1 and stage[0].data.tags["lifecycle.preferences.synthetic"] == "false"


def test_a_person_resumes_with_the_votes_so_far(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lifecycle preferences resume` goes on with an incomplete batch; the export keeps what has votes."""
    human = ["preferences.mode=human", "preferences.round=3", "preferences.human.votes_per_item=3",
             "preferences.human.gold_items=0", "preferences.human.poll_interval_s=1"]
    stop = threading.Event()

    def vote_twice_then_resume() -> None:
        store = wait_for_batch(default_url(state), stop)
        vote_through_the_app(store, ["fay"], stop, max_votes=2)
        for _ in range(120):  # the CLI waits a few seconds for the run to be paused; retry until it is
            if main(["preferences", "resume", "--note", "enough for today", "--state-dir", str(state),
                     "--conf", str(CONF)]) == 0:
                return
            time.sleep(1)

    person = threading.Thread(target=vote_twice_then_resume, daemon=True)
    person.start()
    try:
        out = run(state, *human)["preferences"]
    finally:
        stop.set()
        person.join(timeout=30)
    assert len(read_snapshot(Path(out["path"]) / "preferences.jsonl")) <= 2  # one vote each on two items
    tags = MlflowClient(tracking_uri(state)).get_run(out["run_id"]).data.tags
    assert tags["lifecycle.preferences.resumed_by"] == "lifecycle preferences resume"
