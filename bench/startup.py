"""What does a `lifecycle` process pay before and around the work: `--help`, the imports, Prefect's
temporary API server, and a run whose every stage is a cache hit. Prints one JSON line (seconds,
medians of --repeat fresh processes; results in docs/BENCHMARKS.md, "Start-up cost").

    python bench/startup.py                                   # --help, imports, the temporary server
    python bench/startup.py --state-dir STATE --profile quickstart   # + the fully cached run on STATE
    python bench/startup.py --checkout ../old --state-dir OLD_STATE  # the same for another checkout

STATE must hold a finished run of the same checkout and profile (cache keys hash the stages' code), so
every stage of the measured runs is a cache hit; the script fails if one is not. Each measured run adds
its runs to STATE's MLflow and Prefect databases: give it a state dir of its own (not a `cp` of one: the
stored outputs, index.json and MLflow's database hold absolute paths into the original).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {name: f"import {name}" for name in ("torch", "transformers", "datasets", "great_expectations", "lancedb",
                                            "sentence_transformers", "sklearn", "mlflow", "prefect",
                                            "prefect.server.api.server")} | {"trl": "from trl import SFTConfig"}
CACHED_RUN_IMPORTS = ("import lifecycle.config, lifecycle.data.sources, lifecycle.runtime, lifecycle.stages, "
                      "flows.pipeline")  # what `lifecycle run` imports before the flow starts
SERVER = """
import sys, time
started = time.perf_counter()
if sys.argv[1] == "prefect":  # what Prefect does at the first flow call: import its server package, start, poll
    from prefect.server.api.server import SubprocessASGIServer
    server = SubprocessASGIServer()
    server.start()
    print("SECONDS", time.perf_counter() - started, flush=True)
    server.stop()
else:  # lifecycle run since it came: lifecycle.runtime.start_embedded_api, before prefect is imported
    from lifecycle.runtime import start_embedded_api

    api = start_embedded_api()
    api.wait()
    print("SECONDS", time.perf_counter() - started)
"""


def timed(args: list[str], checkout: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=checkout, capture_output=True, text=True, check=True,
                          env=os.environ | {"PYTHONPATH": str(checkout)} | (env or {}))
    return time.perf_counter() - started, done.stdout + done.stderr


def median(repeat: int, args: list[str], checkout: Path, env: dict[str, str] | None = None) -> float:
    return round(statistics.median(timed(args, checkout, env)[0] for _ in range(repeat)), 2)


def imports(repeat: int, checkout: Path) -> dict[str, float]:
    """Seconds to import each module in a fresh interpreter, less the interpreter's own start-up."""
    python = median(repeat, [sys.executable, "-c", "pass"], checkout)
    found = {name: median(repeat, [sys.executable, "-c", statement], checkout) for name, statement in HEAVY.items()}
    found["cached run (flows.pipeline and the CLI's modules)"] = median(
        repeat, [sys.executable, "-c", CACHED_RUN_IMPORTS], checkout)
    return {name: round(seconds - python, 2) for name, seconds in found.items()}


def server(repeat: int, checkout: Path, prefect_home: Path) -> dict[str, float]:
    """Seconds until the temporary API answers, on an existing database: Prefect's own start (its server
    package imported in the calling process, then the subprocess) and lifecycle's early start."""
    env = {"PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": ""}
    out = {}
    for way in ("prefect", "lifecycle"):
        try:
            runs = [float(re.search(r"SECONDS (\S+)", timed([sys.executable, "-c", SERVER, way], checkout, env)[1])[1])
                    for _ in range(repeat)]
        except subprocess.CalledProcessError:  # a checkout from before lifecycle started its own
            continue
        out[way] = round(statistics.median(runs), 2)
    return out


def cached_run(repeat: int, checkout: Path, state: Path, profile: str | None) -> float:
    args = [sys.executable, "-m", "lifecycle.cli", "run", "--state-dir", str(state)]
    args += ["--profile", profile] if profile else []
    times = []
    for _ in range(repeat):
        seconds, output = timed(args, checkout, {"PREFECT_API_URL": "", "PREFECT_HOME": str(state / "prefect")})
        computed = [parts[0] for parts in map(str.split, output.splitlines()) if parts[1:2] == ["computed"]]
        if computed:
            raise SystemExit(f"not a fully cached run: {computed} computed; run once more on {state} first")
        times.append(seconds)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--state-dir", type=Path, help="a finished run's state (a copy): measure the cached run")
    parser.add_argument("--profile", default="quickstart")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    result = {"checkout": str(checkout), "load_before": os.getloadavg()[0], "repeat": args.repeat,
              "help_s": median(args.repeat, [sys.executable, "-m", "lifecycle.cli", "--help"], checkout),
              "import_s": imports(args.repeat, checkout)}
    with tempfile.TemporaryDirectory() as tmp:
        home = args.state_dir / "prefect" if args.state_dir else Path(tmp) / "prefect"
        if not args.state_dir:  # a first start creates the database; measure the ones after it
            server(1, checkout, home)
        result["server_s"] = server(args.repeat, checkout, home)
    if args.state_dir:
        result["cached_run_s"] = cached_run(args.repeat, checkout, args.state_dir.resolve(), args.profile)
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
