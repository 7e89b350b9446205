"""The test suite's CPU by module, every process included: a pytest plugin that moves the worker into a
cpuacct cgroup of the module's own when the module starts, so the module's tests and every process they
start (servers, `lifecycle run`, torchrun's workers, Chromium), also those killed by a signal or never
waited for, are charged to it; and a report of the groups. Linux with the cgroup v1 cpuacct controller
mounted and writable (root in this machine's container); bench/suite_timeline.py counts only what a
worker waits for.

    PYTHONPATH=bench PYTEST_ADDOPTS="-p suite_cpu" make test   # groups under /sys/fs/cgroup/cpuacct/suite
    python bench/suite_cpu.py                                   # the report; --clear removes the groups
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/cpuacct/suite")
_module: list[str] = []


def pytest_runtest_setup(item) -> None:  # noqa: ANN001 - pytest's Item
    name = item.module.__name__
    if _module[-1:] != [name]:
        _module.append(name)
        group = ROOT / name
        group.mkdir(parents=True, exist_ok=True)
        (group / "cgroup.procs").write_text(str(os.getpid()))  # children forked from now on start in it too


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=30, help="modules listed")
    parser.add_argument("--clear", action="store_true", help="remove the groups (their processes have ended)")
    args = parser.parse_args()
    groups = [g for g in ROOT.iterdir() if g.is_dir()] if ROOT.is_dir() else []
    if args.clear:
        for group in groups:
            group.rmdir()
        return
    seconds = sorted(((int((g / "cpuacct.usage").read_text()) / 1e9, g.name) for g in groups), reverse=True)
    unit = sum(s for s, name in seconds if name.startswith("tests.unit."))
    print(f"{sum(s for s, _ in seconds):.0f} CPU s in {len(seconds)} modules (unit tests {unit:.0f} s)")
    for s, name in seconds[:args.top]:
        print(f"{s:8.1f}  {name}")


if __name__ == "__main__":
    main()
