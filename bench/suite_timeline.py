"""Where the test suite's wall time goes, per worker and module: a pytest plugin that records each test's
start, end and CPU seconds (the worker's own and its waited-for children's), and a report of the modules
by worker with their wall and CPU time. Wall time well above CPU time is a module waiting (sleeps, servers
starting, polling); with both workers waiting, a core is idle.

    PYTHONPATH=bench HF_HUB_OFFLINE=1 .venv/bin/pytest -p suite_timeline -n 2 --dist loadfile \\
        --no-loadscope-reorder -q   # appends to .suite-timeline/<worker>.tsv: remove it before a new run
    python bench/suite_timeline.py         # the report; --min-wall S hides shorter modules
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

OUT = Path(os.environ.get("SUITE_TIMELINE_DIR", ".suite-timeline"))
_started: dict[str, tuple[float, float]] = {}
_recording = [True]


def pytest_configure(config: object) -> None:
    """Record in the processes that run tests: not in pytest-xdist's controller, which only hears of them."""
    distributed = getattr(getattr(config, "option", None), "numprocesses", None)
    _recording[0] = not distributed or hasattr(config, "workerinput")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    if _recording[0]:
        _started[nodeid] = (time.time(), _cpu_seconds())


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    if not _recording[0]:
        return
    start, cpu = _started.pop(nodeid)
    OUT.mkdir(exist_ok=True)
    with open(OUT / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.tsv", "a") as out:
        out.write(f"{nodeid}\t{start:.2f}\t{time.time():.2f}\t{_cpu_seconds() - cpu:.2f}\n")


def report(folder: Path, min_wall: float) -> None:
    rows = [(path.stem, *line.rstrip("\n").split("\t")) for path in sorted(folder.glob("*.tsv"))
            for line in path.read_text().splitlines()]
    if not rows:
        raise SystemExit(f"no timeline in {folder}: run the suite with -p suite_timeline first")
    t0 = min(float(r[2]) for r in rows)
    modules: dict[tuple[str, str], list[float]] = defaultdict(lambda: [float("inf"), 0.0, 0.0])
    for worker, nodeid, start, end, cpu in rows:
        entry = modules[(worker, nodeid.split("::")[0])]
        entry[0], entry[1] = min(entry[0], float(start)), max(entry[1], float(end))
        entry[2] += float(cpu)
    print(f"{'worker':8} {'start':>6} {'end':>6} {'wall':>6} {'cpu':>6}  module")
    for (worker, module), (start, end, cpu) in sorted(modules.items(), key=lambda item: item[1][0]):
        if end - start >= min_wall:
            print(f"{worker:8} {start - t0:6.0f} {end - t0:6.0f} {end - start:6.0f} {cpu:6.0f}  {module}")
    for worker in sorted({r[0] for r in rows}):
        mine = [(float(r[2]), float(r[3]), float(r[4])) for r in rows if r[0] == worker]
        busy, cpu = sum(e - s for s, e, _ in mine), sum(c for _, _, c in mine)
        print(f"{worker}: ends at {max(e for _, e, _ in mine) - t0:.0f} s, in tests {busy:.0f} s, CPU {cpu:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=OUT, help="where the plugin wrote its files")
    parser.add_argument("--min-wall", type=float, default=8.0, help="hide modules shorter than this (seconds)")
    args = parser.parse_args()
    report(args.dir, args.min_wall)


if __name__ == "__main__":
    main()
