"""The data stages on `run.engine: local` and `run.engine: ray` at growing corpus sizes: seconds per step
(ingest clean-up + MinHash, tokenizer training + packing, embedding of every chunk) and the speed-up, with
the outputs checked equal. Prints one JSON line per corpus size, then the Ray cluster's start-up time
(paid once per `lifecycle run`, not per step). Results in docs/BENCHMARKS.md ("Data stages on Ray").

    python bench/engine_scale.py --corpus '../shared/data/corpus/gutenberg/*.txt' --sizes 2 6 13 --num-cpus 2 --no-embed
    python bench/engine_scale.py --corpus '../shared/data/corpus/gutenberg/*.txt' --sizes 1 --num-cpus 2 \
        --set rag_index.embed.shard_size=512

Each size takes the first N files of the glob (sorted). Everything runs in this process against a Prefect
API of its own (the shards on Ray are Prefect task runs, as in a pipeline run).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="a glob of text files")
    parser.add_argument("--sizes", type=int, nargs="+", required=True, help="numbers of files per measurement")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="the local Ray cluster's CPUs")
    parser.add_argument("--no-embed", action="store_true", help="leave out the embedding step")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. rag_index.embed.shard_size=512 (repeatable)")
    args = parser.parse_args()
    files = sorted(glob.glob(args.corpus))
    if len(files) < max(args.sizes):
        sys.exit(f"{args.corpus} matches {len(files)} files; --sizes asks for {max(args.sizes)}")

    from lifecycle.runtime import prepare_environment, start_embedded_api

    scratch = Path(tempfile.mkdtemp(prefix="engine-scale-"))
    prepare_environment(scratch)
    api = start_embedded_api()
    if api:
        api.wait()
    from lifecycle.engine import Engine, start_ray

    started = time.perf_counter()
    start_ray(None, args.num_cpus)
    ray_start = time.perf_counter() - started
    engines = {"local": Engine(), "ray": Engine("ray", None, args.num_cpus)}
    for size in args.sizes:
        result: dict = {"files": size, "bytes": sum(Path(f).stat().st_size for f in files[:size])}
        outputs = {}
        for name, engine in engines.items():
            seconds, outputs[name] = run_steps(files[:size], engine, scratch / f"{size}-{name}", not args.no_embed,
                                               args.overrides)
            result[name] = seconds
        assert outputs["local"] == outputs["ray"], f"outputs differ at {size} files"
        result["documents"], result["tokens"], result["chunks"] = outputs["local"][:3]
        result["speedup"] = {step: round(result["local"][step] / result["ray"][step], 2) for step in result["local"]}
        print(json.dumps(result), flush=True)
    print(json.dumps({"ray_start_s": round(ray_start, 1), "num_cpus": args.num_cpus, "cpu_count": os.cpu_count()}))


def run_steps(files: list[str], engine, out: Path, embed: bool, overrides: list[str]) -> tuple[dict[str, float], tuple]:
    """Seconds per step on `engine`, and what the outputs must agree on."""
    import hashlib

    import numpy as np

    from lifecycle.config import find_conf_dir, load_config
    from lifecycle.data.ingest import ingest_documents, read_documents
    from lifecycle.rag.index import build_index
    from lifecycle.tokenizer import load_blocks, train_and_pack

    cfg = load_config(find_conf_dir(str(ROOT / "conf")), overrides=[
        "ingest.sources=[{name: corpus, kind: files, paths: " + json.dumps(files) + "}]", *overrides])
    seconds: dict[str, float] = {}
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    stats = ingest_documents(cfg.ingest, out, engine)
    seconds["ingest"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    tok = train_and_pack(cfg.tokenize, out, out, engine)
    seconds["tokenize"] = round(time.perf_counter() - t0, 2)
    blocks = hashlib.sha256(np.asarray(load_blocks(out)["train"]["input_ids"]).tobytes()).hexdigest()
    chunks, vectors = 0, ""
    if embed:
        info = build_index(read_documents(out), cfg.rag_index, str(out / "lancedb"), "docs", engine=engine)
        seconds["embed"] = round(info.embed_seconds, 2)
        chunks = info.embedded_chunks
        import lancedb

        rows = lancedb.connect(info.uri).open_table("docs").to_arrow().sort_by("chunk_id")
        stacked = np.stack(rows["vector"].to_numpy(zero_copy_only=False))
        vectors = hashlib.sha256(np.round(stacked, 5).tobytes()).hexdigest()
    return seconds, (int(stats["documents"]), int(tok["train_tokens"]), chunks, blocks, vectors)


if __name__ == "__main__":
    main()
