"""`run.engine: ray`: the data stages (ingest clean-up and MinHash signatures, tokenization, embedding) run
their shards as Prefect task runs on a local 2-worker Ray cluster through prefect-ray, and their outputs
are the same as the default in-process path's. Both runs go through the real CLI (each process starts its
own Prefect API and, for ray, its own Ray cluster)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pytest

from lifecycle.tokenizer import load_blocks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHARDS = ["ingest.shard_size=40", "tokenize.batch_size=25", "rag_index.embed.shard_size=64",
          "rag_index.ann.min_rows=100000"]  # several shards per stage on the tiny corpus; exact search only
CLEAN_ENV = ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LIFECYCLE_HOME")


def run_cli(state: Path, overrides: list[str], *until: str) -> dict[str, str]:
    """`lifecycle run --until U...` in a fresh process on `state`; {stage: output path}."""
    args = [sys.executable, "-m", "lifecycle.cli", "run", "--state-dir", str(state)]
    for stage in until:
        args += ["--until", stage]
    for item in overrides:
        args += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith("  ")]
    return {parts[0]: parts[2] for parts in lines if len(parts) >= 3 and parts[1] in ("cached", "computed")}


def digest(values: list) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def table_rows(path: str) -> tuple[list[dict], np.ndarray]:
    info = json.loads((Path(path) / "index.json").read_text())
    rows = sorted(lancedb.connect(info["uri"]).open_table(info["table"]).to_arrow().to_pylist(),
                  key=lambda r: r["chunk_id"])
    vectors = np.array([r.pop("vector") for r in rows], dtype=np.float32)
    return rows, vectors


def shard_task_runs(state: Path) -> dict[str, int]:
    """Completed task runs per name prefix in the run's Prefect database."""
    with sqlite3.connect(state / "prefect" / "prefect.db") as db:
        rows = db.execute("SELECT name FROM task_run WHERE state_type = 'COMPLETED'").fetchall()
    found: dict[str, int] = {}
    for (name,) in rows:
        prefix = name.rsplit("-", 1)[0]
        found[prefix] = found.get(prefix, 0) + 1
    return found


def test_ray_engine_matches_local(tmp_path: Path, tiny_overrides: list[str]) -> None:
    """Two `lifecycle run` processes (the data stages and rag_index, for each engine), one of them starting
    a Ray cluster with its workers: about a minute, most of it process and cluster start-up."""
    overrides = tiny_overrides + SHARDS
    ray = overrides + ["run.engine=ray", "run.ray.num_cpus=2"]
    outputs = {}
    for name, settings in (("local", overrides), ("ray", ray)):
        state = tmp_path / name
        outputs[name] = run_cli(state, settings, "tokenize", "rag_index")

    local, remote = outputs["local"], outputs["ray"]
    assert {"ingest", "validate", "tokenize", "rag_index"} <= local.keys() == remote.keys()
    for stage in ("ingest", "validate", "tokenize", "rag_index"):  # the engine is in no stage's key
        assert Path(local[stage]).name == Path(remote[stage]).name, stage

    from lifecycle.data.ingest import read_documents

    docs = read_documents(local["ingest"])
    assert len(docs) > 40 and digest(docs) == digest(read_documents(remote["ingest"]))
    assert json.loads((Path(local["ingest"]) / "stats.json").read_text()) == json.loads(
        (Path(remote["ingest"]) / "stats.json").read_text())

    for split, blocks in load_blocks(Path(local["tokenize"])).items():
        assert len(blocks) > 0
        theirs = load_blocks(Path(remote["tokenize"]))[split]
        assert digest(blocks["input_ids"][:]) == digest(theirs["input_ids"][:]), split
    for path in (Path(local["tokenize"]) / "tokenizer").iterdir():
        assert path.read_bytes() == (Path(remote["tokenize"]) / "tokenizer" / path.name).read_bytes(), path.name

    local_rows, local_vectors = table_rows(local["rag_index"])
    remote_rows, remote_vectors = table_rows(remote["rag_index"])
    assert len(local_rows) > 64 and local_rows == remote_rows
    np.testing.assert_allclose(local_vectors, remote_vectors, rtol=0, atol=1e-6)

    runs = shard_task_runs(tmp_path / "ray")  # each shard was a Prefect task run on the cluster
    assert runs.get("minhash", 0) >= 2 and runs.get("tokenize-train", 0) >= 2 and runs.get("embed-chunks", 0) >= 2
    assert any(name.startswith("clean-") and count >= 2 for name, count in runs.items())
    assert not {"minhash", "tokenize-train", "embed-chunks"} & shard_task_runs(tmp_path / "local").keys()
