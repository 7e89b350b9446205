"""How much do Prefect, MLflow and the cache machinery cost next to the work itself?

Runs the data stages (ingest -> validate -> tokenize) three ways on the same config and prints one JSON line:
  bare_s      the library functions called directly (no Prefect, no MLflow)
  pipeline_s  `lifecycle run --until tokenize` in a fresh state dir (process wall time, incl. Prefect's
              temporary API server start, imports and MLflow logging)
  cached_s    the same command again: every stage is a cache hit
  stage_s     per-stage work time as logged to MLflow by the pipeline run

    python bench/pipeline_overhead.py --profile quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from lifecycle.config import find_conf_dir, load_config
from lifecycle.data.ingest import ingest_documents
from lifecycle.data.validate import validate_documents
from lifecycle.tokenizer import train_and_pack
from lifecycle.tracking import tracking_uri


def bare(profile: str | None, work: Path) -> float:
    cfg = load_config(find_conf_dir(), profile)
    start = time.perf_counter()
    stats = ingest_documents(cfg.ingest, work)
    validate_documents(cfg.validate_, work, stats, work)
    train_and_pack(cfg.tokenize, work, work)
    return time.perf_counter() - start


def cli(profile: str | None, state: Path) -> float:
    args = [sys.executable, "-m", "lifecycle.cli", "run", "--until", "tokenize", "--state-dir", str(state)]
    args += ["--profile", profile] if profile else []
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, "PREFECT_HOME": str(state / "prefect")})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quickstart")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare_s = bare(args.profile, root / "bare")
        pipeline_s = cli(args.profile, root / "state")
        cached_s = cli(args.profile, root / "state")
        client = MlflowClient(tracking_uri(root / "state"))
        exp = client.get_experiment_by_name(load_config(find_conf_dir(), args.profile).run.experiment)
        runs = client.search_runs([exp.experiment_id], "tags.`lifecycle.cache_hit` = 'false'")
        stage_s = {r.data.tags["lifecycle.stage"]: round(r.data.metrics[f"{r.data.tags['lifecycle.stage']}/seconds"], 2)
                   for r in runs}
    print(json.dumps({"profile": args.profile, "bare_s": round(bare_s, 2), "pipeline_s": round(pipeline_s, 2),
                      "cached_s": round(cached_s, 2), "stage_s": stage_s,
                      "overhead_s": round(pipeline_s - sum(stage_s.values()), 2)}))


if __name__ == "__main__":
    main()
