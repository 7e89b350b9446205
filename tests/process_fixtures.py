"""A test's processes, found through /proc by a mark in their environment: every descendant inherits it,
also one reparented to init after its parent died, so what a test started and what it left behind can be
listed without knowing the process tree.

    env = os.environ | {MARK: mark}                  # `mark`: the fixture, a fresh value per test
    wait_for(lambda: find(mark, "uvicorn"), "the server")
    assert left_behind(mark) == {}
    wait_until_answers(url, proc, log)                # a server process answers 200 at `url`, or the test fails
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from lifecycle.children import marked

MARK = "LIFECYCLE_TEST_MARK"
T = TypeVar("T")


@pytest.fixture
def mark() -> Iterator[str]:
    """A fresh mark; whatever still carries it when the test ends is killed (the failure is the test's)."""
    value = uuid.uuid4().hex
    yield value
    for pid in processes(value):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def processes(mark: str) -> dict[int, str]:
    """pid -> command line of the live processes carrying `mark` (a zombie's environment reads empty)."""
    found = {}
    for pid in marked(mark, MARK):
        with contextlib.suppress(OSError):  # gone meanwhile
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return found


def find(mark: str, *words: str) -> dict[int, str]:
    """The marked processes whose command line has all of `words`, the watchdogs of lifecycle.children aside."""
    return {pid: cmd for pid, cmd in processes(mark).items()
            if all(w in cmd for w in words) and "lifecycle.children" not in cmd}


def wait_for(what: Callable[[], T], description: str, timeout_s: float = 180) -> T:
    deadline = time.monotonic() + timeout_s
    while not (found := what()):
        assert time.monotonic() < deadline, f"no {description} within {timeout_s:.0f} s"
        time.sleep(0.05)
    return found


def left_behind(mark: str, timeout_s: float = 60) -> dict[int, str]:
    """The marked processes still running once none is, or `timeout_s` later (a bound child gets a few
    seconds to stop before it is killed)."""
    deadline = time.monotonic() + timeout_s
    while (found := processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def wait_until_answers(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Return once `url` answers 200; fail the test, with the end of the server's `log`, if `proc` exits first
    or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer in {timeout_s} s:\n{log.read_text()[-3000:]}")
