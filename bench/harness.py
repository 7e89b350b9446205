"""What `evaluate.harness` adds to the evaluate stage on the offline test task (tests/harness_fixtures.py: ten
three-way multiple-choice questions, acc and acc_norm) and the tiny model the unit tests build: importing
lm-eval after what the stage imports anyway (lifecycle.evaluate.metrics: torch, transformers, accelerate), the
pre-flight's task check (our folder alone), lm-eval's built-in task index (what a built-in or unknown name
costs the check), and lm-eval on one model (HFLM on the loaded model, `simple_evaluate`: the first call
builds the JSONL's datasets cache, later ones read it). Prints one JSON line (seconds; `per_model_s` is the
median of --repeat calls after the first); results in docs/BENCHMARKS.md, "Standard benchmarks
(lm-evaluation-harness)".

    HF_HUB_OFFLINE=1 python bench/harness.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="lm-eval calls on the same model after the first")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-harness-"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "hf-datasets"))  # before datasets is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from lifecycle.config import load_config
    from lifecycle.evaluate.harness import check_harness, run_harness, task_manager
    from lifecycle.evaluate.metrics import load_model
    from tests.harness_fixtures import TASK, write_task
    from tests.unit.test_rag_answer import save_tiny_policy

    torch.set_num_threads(1)
    tasks = write_task(work / "tasks")
    cfg = load_config(ROOT / "conf", overrides=[f"evaluate.harness.tasks=[{TASK}]",
                                                f"evaluate.harness.include_path={tasks}"])
    model, tokenizer = load_model(save_tiny_policy(work / "model"), torch.device("cpu"), None)
    found: dict[str, float] = {}
    started = time.perf_counter()
    import lm_eval.evaluator  # noqa: F401  what run_harness imports (lm_eval.simple_evaluate, HFLM)
    from lm_eval.models.huggingface import HFLM  # noqa: F401

    found["import_lm_eval_s"] = time.perf_counter() - started
    started = time.perf_counter()
    check_harness(cfg)
    found["check_own_folder_s"] = time.perf_counter() - started
    started = time.perf_counter()
    task_manager(cfg.evaluate.harness.model_copy(update={"tasks": ["hellaswag"]}))
    found["index_builtin_tasks_s"] = time.perf_counter() - started
    runs = [run_harness(model, tokenizer, cfg.evaluate.harness, cfg.evaluate.intervals)["seconds"]
            for _ in range(args.repeat + 1)]
    found["first_model_s"], found["per_model_s"] = runs[0], statistics.median(runs[1:])
    print(json.dumps({k: round(v, 3) for k, v in found.items()} | {"task": TASK, "examples": 10,
                                                                   "repeat": args.repeat}))


if __name__ == "__main__":
    main()
