"""Children bound to this process: every long-lived process the project starts (a run's or the annotation
app's own Prefect API, `lifecycle ui`'s servers, torchrun) ends when the process that started it ends,
however that ends (exit, SIGTERM, SIGINT, SIGKILL), and takes everything it started with it.

    proc = start_bound([sys.executable, "-m", "uvicorn", ...], stdout=log)   # a subprocess.Popen
    stop(proc)                       # SIGTERM to the command and all it started; SIGKILL after a grace period

How: the command runs under a watchdog, `python -m lifecycle.children PPID GRACE_S -- COMMAND...`, in a
session of its own by default (a terminal's Ctrl-C reaches the starting process, which stops its children
itself). The watchdog waits until the command exits or process PPID ends (pidfds; a look every 0.2 s
where there are none), and then signals every process that carries its mark in the environment (`MARK`:
the command and its descendants, also those in sessions of their own, such as torchrun's workers) and
the command's process group: SIGTERM, and SIGKILL to what is left after GRACE_S. A SIGTERM or SIGINT to the watchdog
does the same with that signal. The command gets a parent-death signal from the watchdog, so it cannot
outlive a SIGKILLed watchdog either.

Why a watchdog and not the parent-death signal straight from the starting process: Linux sends that
signal when the *thread* that forked the child ends, and Prefect runs tasks (torchrun's launch) and
FastAPI runs handlers in worker threads; the watchdog watches the process, whichever thread started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

MARK = "LIFECYCLE_BOUND_TO"  # environment variable set for a bound command: its watchdog's token
GRACE_S = 5.0  # from SIGTERM to SIGKILL
_PR_SET_PDEATHSIG = 1
_STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def start_bound(argv: list[str], grace_s: float = GRACE_S, session: bool = True, **popen: Any) -> subprocess.Popen:
    """`subprocess.Popen(argv, **popen)`, bound to this process (see the module docstring); from any thread.
    The Popen is the watchdog's: its exit status is the command's (128 + N when a signal N ended it).
    `session=False`: the watchdog stays in this process group, so a terminal's Ctrl-C reaches it too, and
    it passes the SIGINT on to the command."""
    watchdog = [sys.executable, "-m", "lifecycle.children", str(os.getpid()), str(grace_s), "--", *argv]
    return subprocess.Popen(watchdog, start_new_session=session, **popen)


def stop(proc: subprocess.Popen, timeout_s: float = GRACE_S + 5) -> None:
    """Stop a bound command and what it started (SIGTERM, then SIGKILL); return once it is reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()  # the command then gets its parent-death signal
            proc.wait()


def watch(ppid: int, grace_s: float, argv: list[str]) -> int:
    """The watchdog: run `argv` until it exits or process `ppid` ends, then stop it and all it started."""
    token, child, signum = uuid.uuid4().hex, None, signal.SIGTERM
    for sig in _STOPS:
        signal.signal(sig, _raise_stop)
    try:
        if os.getppid() != ppid:  # the parent ended before the handlers were in place
            return 1
        child = subprocess.Popen(argv, env=os.environ | {MARK: token}, process_group=0,
                                 preexec_fn=_dies_with(os.getpid()))
        _wait(ppid, child.pid)
    except _Stop as stop_signal:
        signum = stop_signal.signum
    _ignore_stops()
    _end(child, token, signum, grace_s)
    if child is None:
        return 128 + signum
    code = child.wait()
    return code if code >= 0 else 128 - code


def marked(token: str, var: str = MARK) -> list[int]:
    """The processes whose environment carries var=token (Linux: /proc; elsewhere none)."""
    needle, found = f"{var}={token}".encode(), []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/environ", "rb") as environ:  # OSError: gone
                if needle in environ.read().split(b"\0"):  # meanwhile, or another user's; a zombie's reads empty
                    found.append(int(name))
    return found


def _raise_stop(signum: int, _frame: object) -> None:
    _ignore_stops()
    raise _Stop(signum)


def _ignore_stops() -> None:
    """From here on the watchdog finishes its clean-up, whatever else it is sent (SIGKILL still ends it)."""
    for sig in _STOPS:
        signal.signal(sig, signal.SIG_IGN)


def _dies_with(parent: int) -> Callable[[], None]:
    prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None

    def preexec() -> None:  # in the child, between fork and exec
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the watchdog ended before the signal was set (prctl(2))
            os._exit(1)
    return preexec


def _wait(ppid: int, pid: int) -> None:
    """Until process `pid` (a child, left unreaped) exits or the parent `ppid` ends."""
    try:
        fds = [os.pidfd_open(ppid), os.pidfd_open(pid)]
    except (AttributeError, OSError):  # no pidfds (not Linux >= 5.3), or the parent is gone already
        fds = []
    while _running(pid) and os.getppid() == ppid:
        if not fds:
            time.sleep(0.2)
        elif fds[0] in select.select(fds, [], [])[0]:
            return


def _running(pid: int) -> bool:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None  # no reaping: pid stays ours


def _end(child: subprocess.Popen | None, token: str, signum: int, grace_s: float) -> None:
    """`signum` to everything marked and to the child's process group, SIGKILL to what is left after
    `grace_s`. The child is not reaped before the end, so its pid (the group's id) cannot be reused."""
    deadline = time.monotonic() + grace_s
    for sig in (signum, signal.SIGKILL):
        targets = [-child.pid] if child else []
        for pid in targets + marked(token):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        while sig != signal.SIGKILL and time.monotonic() < deadline and (
                (child and _running(child.pid)) or marked(token)):
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), float(sys.argv[2]), sys.argv[4:]))
