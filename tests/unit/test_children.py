"""Children bound to their process (lifecycle.children): a command started from a thread that has ended
lives on, and it and everything it started (also in a session of its own, like torchrun's workers) end
when the process that started it ends, however it ends; `stop` ends them all, and SIGKILLs a command that
ignores SIGTERM; bound in the caller's process group, Ctrl-C at a terminal reaches it through the watchdog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.children import start_bound, stop
from tests.process_fixtures import MARK, find, left_behind, mark, processes, wait_for  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
# a command that starts a grandchild in a session of its own, then waits
TREE = [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '600'], start_new_session=True); "
        "time.sleep(600)"]
# a process that starts TREE from a thread, waits until that thread is gone, says so and waits (a shell's
# background job inherits SIGINT ignored: the process sets Python's handler, as a terminal's process has it)
PARENT = f"""
import os, signal, sys, threading, time
from lifecycle.children import start_bound
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal, also when pytest runs in the background
tid = []
def start():
    tid.append(threading.get_native_id())
    start_bound({TREE!r})
thread = threading.Thread(target=start)
thread.start()
thread.join()
while os.path.exists(f"/proc/self/task/{{tid[0]}}"):  # the thread that started it has ended
    time.sleep(0.01)
print("thread gone", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_child_started_from_a_thread_ends_with_its_process(sig: signal.Signals, mark: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, env=os.environ | {MARK: mark},
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdout.readline() == "thread gone\n"
    wait_for(lambda: find(mark, "sleep 600"), "grandchild")
    assert find(mark, "import subprocess")  # the command outlived the thread that started it
    parent.send_signal(sig)
    parent.wait()
    assert left_behind(mark) == {}


def test_ctrl_c_at_a_terminal_reaches_a_command_bound_in_the_same_process_group(mark: str) -> None:
    # as launch_torchrun waits for torchrun: here the waiting process never sees the SIGINT itself
    waiter = subprocess.Popen([sys.executable, "-c", f"""
import signal
from lifecycle.children import start_bound
signal.signal(signal.SIGINT, signal.SIG_IGN)
proc = start_bound({TREE!r}, session=False)
print("started", flush=True)
print(proc.wait(), flush=True)
"""], cwd=ROOT, env=os.environ | {MARK: mark}, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert waiter.stdout is not None and waiter.stdout.readline() == "started\n"
    wait_for(lambda: find(mark, "sleep 600"), "grandchild")
    os.killpg(waiter.pid, signal.SIGINT)  # what a terminal sends its foreground job on Ctrl-C
    assert waiter.stdout.readline() == f"{128 + signal.SIGINT}\n"
    waiter.wait()
    assert left_behind(mark) == {}


def test_stop_ends_the_command_and_all_it_started_and_the_status_is_the_commands(mark: str) -> None:
    env = os.environ | {MARK: mark}
    assert start_bound([sys.executable, "-c", "raise SystemExit(3)"], env=env).wait() == 3
    proc = start_bound(TREE, env=env)
    wait_for(lambda: find(mark, "sleep 600"), "grandchild")
    stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM and left_behind(mark) == {}

    stubborn = start_bound([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                            "signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"], grace_s=0.5, env=env,
                           stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    stop(stubborn)
    assert stubborn.returncode == 128 + signal.SIGKILL and left_behind(mark) == {}


def test_the_watchdog_starts_nothing_when_its_parent_is_gone_already(mark: str) -> None:
    # it was told to watch pid 1, but its parent is this process: as if that parent had died meanwhile
    done = subprocess.run([sys.executable, "-m", "lifecycle.children", "1", "5", "--", "sleep", "600"], cwd=ROOT,
                          env=os.environ | {MARK: mark}, timeout=60)
    assert done.returncode == 1 and processes(mark) == {}
