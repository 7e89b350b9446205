"""Does `torch.compile` pay back its compile time within a run? Our pretraining loop (Trainer.step, as in
`lifecycle bench pretrain`) eager and compiled in one process, interleaved rounds on random tokens; prints
one JSON line: both tokens/s (median rounds), the compile time (the compiled loop's warm-up minus as many
steady steps), the time saved per step, and the steps needed to earn the compile time back.

The compile time is cold (a new, empty inductor cache) unless --warm (torch's usual cache folder): a first
run on a fresh machine pays the cold time, later runs of the same shapes mostly hit the cache.

    python bench/compile_payback.py --layers 4 --heads 4 --dim 128 --context 383 --batch 8 --vocab-size 2048 \\
        --device cpu --threads 2 --steps 5 --rounds 15 --planned-steps 400    # the quickstart's pretraining shapes
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from lifecycle.bench import add_pretrain_args
from lifecycle.bench.pretrain import bench_config, run_ours
from lifecycle.train.distributed import DistInfo, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_pretrain_args(p)
    p.add_argument("--planned-steps", type=int, default=400, help="optimizer steps of the run to decide for")
    p.add_argument("--warm", action="store_true", help="use torch's inductor cache (default: a new, empty one)")
    args = p.parse_args()
    if not args.warm:  # torch reads the variable whenever it looks for its cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=resolve_device(args.device))
    blocks = np.random.default_rng(0).integers(0, args.vocab_size, size=(max(args.batch * 8, 64), args.context + 1))
    loops, warmup, seconds = {}, {}, {}
    for compiled in (False, True):
        a = copy.copy(args)
        a.compile = compiled
        name = "compiled" if compiled else "eager"
        loops[name] = run_ours(bench_config(a, ROOT / "conf"), a, dist, blocks)
        warmup[name] = next(loops[name])[0]
        seconds[name] = []
    for _ in range(args.rounds):
        for name, loop in loops.items():
            seconds[name].append(next(loop)[0] / args.steps)
    step = {k: statistics.median(v) for k, v in seconds.items()}
    compile_s = warmup["compiled"] - args.warmup * step["compiled"]
    saved = step["eager"] - step["compiled"]
    tokens = args.batch * args.context
    break_even = compile_s / saved if saved > 0 else None
    print(json.dumps({
        "eager_tokens_per_s": round(tokens / step["eager"], 1),
        "compiled_tokens_per_s": round(tokens / step["compiled"], 1),
        "speedup": round(step["eager"] / step["compiled"], 3), "compile_s": round(compile_s, 1),
        "eager_step_ms": round(1000 * step["eager"], 2), "compiled_step_ms": round(1000 * step["compiled"], 2),
        "saved_per_step_ms": round(1000 * saved, 2), "break_even_steps": round(break_even) if break_even else None,
        "planned_steps": args.planned_steps, "net_saving_s": round(args.planned_steps * saved - compile_s, 1),
        "pays_back": bool(break_even and break_even < args.planned_steps), "threads": torch.get_num_threads(),
        "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default"), "torch": torch.__version__,
        "round_step_ms": {k: [round(1000 * s, 1) for s in v] for k, v in seconds.items()},
        "load_avg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
