"""kill -9 of a whole `lifecycle run --until evaluate` during each long stage after pretraining (sft, the
reward model, policy optimisation, rag_index embedding, evaluate; then DPO as the policy optimisation), each
time followed by the same command:
the killed stage leaves no committed output, registers no model version and writes no LanceDB table; the
next run resumes it from what the dead one saved (Trainer checkpoints, embedded shards, measured models)
and, at the end, the registry and the table hold what one clean run would (docs/RELIABILITY.md).
Pretraining's own kill test is tests/integration/test_orphans.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import lancedb
import pytest
from mlflow.tracking import MlflowClient

from lifecycle.manifest import SEAL
from lifecycle.store import ArtifactStore
from lifecycle.tracking import tracking_uri
from tests.integration.conftest import OVERRIDES, copy_state
from tests.integration.test_orphans import CLEAN_ENV, ROOT, command, prefect_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# each trainer saves a checkpoint halfway: the kill lands on the first one, the next run resumes from it
FAULTS = [*OVERRIDES, "evaluate.text_bytes=5000", "preferences.sampling.responses=3", "preferences.export.ties=both",
          "sft.trainer.max_steps=20", "sft.trainer.save_steps=10",
          "rlhf.reward.trainer.max_steps=20", "rlhf.reward.trainer.save_steps=10",
          "rlhf.policy.rloo.max_steps=6", "rlhf.policy.rloo.save_steps=3", "rag_index.embed.shard_size=16"]
MODELS = ("lifecycle-gpt-base", "lifecycle-gpt", "lifecycle-gpt-reward")


def the_command(state: Path, extra: tuple[str, ...] = ()) -> list[str]:
    cmd = command(state, [*FAULTS, *extra])
    cmd[cmd.index("--until") + 1] = "evaluate"
    return cmd


def run_until_killed(state: Path, saved: str, extra: tuple[str, ...] = ()) -> None:
    """Start the run; kill its whole process group (the run and its Prefect API server, as a lost machine
    would) as soon as `<state>/checkpoints/<saved>` matches."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    log = state.parent / f"killed-{saved.split('/')[0]}-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(the_command(state, extra), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 600
    while not list((state / "checkpoints").glob(saved)):
        assert proc.poll() is None, f"the run ended before writing {saved}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {saved} within 600 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def versions(state: Path) -> dict[str, int]:
    client = MlflowClient(tracking_uri(state), tracking_uri(state))
    return {name: len(client.search_model_versions(f"name = '{name}'")) for name in MODELS}


def committed(state: Path, stage: str) -> list[str]:
    """The keys of `stage` with a committed output (every file as its manifest says)."""
    store, folder = ArtifactStore(state / "artifacts"), state / "artifacts" / stage
    keys = [p.name for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
    assert all(store.lookup(stage, key) for key in keys), f"{stage}: a committed output is damaged"
    return keys


def stage_metrics(state: Path, stage: str, old: tuple[str, ...] = ()) -> dict[str, float]:
    """The metrics of the run that computed `stage`'s committed output (the one whose key is not in `old`)."""
    [key] = set(committed(state, stage)) - set(old)
    output = ArtifactStore(state / "artifacts").lookup(stage, key)
    return MlflowClient(tracking_uri(state)).get_run(output.run_id).data.metrics


def test_each_long_stage_resumes_after_kill_9_and_leaves_nothing_half_written(pretrained: Path, tmp_path: Path) -> None:
    """Eight `lifecycle run` processes, each starting its own Prefect API and loading the stages before the one
    it is killed in from the cache: a few minutes, most of it process start-up. Ingest .. pretrain come from
    the session's tiny chain (tests/integration/conftest.py)."""
    state = copy_state(pretrained, tmp_path / "state")
    table = state / "rag" / "lancedb"

    run_until_killed(state, f"sft/*/checkpoint-*/{SEAL}")
    assert not committed(state, "sft") and committed(state, "pretrain")
    assert versions(state) == {"lifecycle-gpt-base": 1, "lifecycle-gpt": 0, "lifecycle-gpt-reward": 0}

    run_until_killed(state, f"rlhf/*/reward/checkpoint-*/{SEAL}")
    assert stage_metrics(state, "sft")["sft/resumed"] == 1  # from the first run's checkpoint
    assert not committed(state, "rlhf")
    assert versions(state) == {"lifecycle-gpt-base": 1, "lifecycle-gpt": 1, "lifecycle-gpt-reward": 0}

    run_until_killed(state, f"rlhf/*/policy/checkpoint-*/{SEAL}")
    assert not committed(state, "rlhf")
    assert versions(state)["lifecycle-gpt-reward"] == 1  # registered before the kill: the re-run must adopt it

    run_until_killed(state, "rag_index/*/embed-*.npy")
    rlhf = stage_metrics(state, "rlhf")
    assert rlhf["rlhf/reward_model/resumed"] == 1 and rlhf["rlhf/resumed"] == 1
    assert versions(state) == {"lifecycle-gpt-base": 1, "lifecycle-gpt": 2, "lifecycle-gpt-reward": 1}
    assert not committed(state, "rag_index")
    assert "docs" not in lancedb.connect(table).list_tables().tables  # killed while embedding: no table yet

    run_until_killed(state, "evaluate/*/model-*.json")
    rag = stage_metrics(state, "rag_index")
    assert 0 < rag["rag_index/resumed_shards"] < rag["rag_index/embed_shards"]
    assert rag["rag_index/embedded_chunks"] == rag["rag_index/rows"]  # every chunk once, none twice
    assert not committed(state, "evaluate")

    done = run_to_the_end(state)
    assert "resuming: " in done and "model parts already done" in done
    evaluate = stage_metrics(state, "evaluate")
    assert 1 <= evaluate["evaluate/resumed_models"] < 3  # candidate, sft, base: at least one measured before

    assert versions(state) == {"lifecycle-gpt-base": 1, "lifecycle-gpt": 2, "lifecycle-gpt-reward": 1}
    tbl = lancedb.connect(table).open_table("docs")
    assert [v["version"] for v in tbl.list_versions()] == list(range(1, int(rag["rag_index/table_version"]) + 1))
    assert tbl.count_rows() == len({r["chunk_id"] for r in tbl.search().select(["chunk_id"]).limit(None).to_list()})
    assert not list((state / "checkpoints").glob("*/*/*"))  # every stage's checkpoints removed once it committed
    assert not list((state / "artifacts").glob("*/.tmp-*"))  # what the killed runs were building: removed
    client = MlflowClient(tracking_uri(state))
    experiment = client.get_experiment_by_name("llm-lifecycle").experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    found = prefect_states(state)
    assert [s for n, s in found["flow_run"] if n == "pipeline-default"] == ["CRASHED"] * 5 + ["COMPLETED"]

    # DPO as the policy optimisation, on the same state (pairs, SFT and base models cached): killed, then resumed
    dpo = ("rlhf.method=dpo", "rlhf.dpo.trainer.max_steps=10", "rlhf.dpo.trainer.save_steps=5")
    rloo = committed(state, "rlhf")
    run_until_killed(state, f"rlhf/*/dpo/checkpoint-*/{SEAL}", dpo)
    assert committed(state, "rlhf") == rloo and versions(state)["lifecycle-gpt"] == 2
    run_to_the_end(state, dpo)
    assert stage_metrics(state, "rlhf", tuple(rloo))["rlhf/resumed"] == 1
    assert versions(state) == {"lifecycle-gpt-base": 1, "lifecycle-gpt": 3, "lifecycle-gpt-reward": 1}
    assert not list((state / "checkpoints").glob("*/*/*")) and not list((state / "artifacts").glob("*/.tmp-*"))
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")


def run_to_the_end(state: Path, extra: tuple[str, ...] = ()) -> str:
    """The same command, left to finish; its output."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    done = subprocess.run(the_command(state, extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr
