"""An acknowledged vote survives kill -9 of the annotation server: the app runs in its own process (uvicorn
via run_server, SQLite in WAL mode), voters get their acknowledgements, the process is SIGKILLed mid-stream,
and every acknowledged vote is in the reopened store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from lifecycle.preferences.db import default_url, read
from lifecycle.preferences.schema import Vote
from lifecycle.preferences.store import NewBatch, PreferenceStore
from tests.annotate_fixtures import comparison_items, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def wait_healthy(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with status {proc.returncode}"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{base}/healthz did not answer within 60 s")


def test_acknowledged_votes_survive_kill_9(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    store = PreferenceStore.open(url)
    store.publish_batch(NewBatch("b1", "human", votes_per_item=3), comparison_items(200))
    tokens = [store.add_annotator(f"person-{i}") for i in range(4)]
    store.engine.dispose()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "tests/integration/annotate_runner.py", url, str(port)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    acknowledged: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def annotate(token: str) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
            try:
                while not stop.is_set() and (item := http.get("/api/next").json()["item"]) is not None:
                    body = {"vote_id": str(uuid.uuid4()), "item_id": item["item_id"], "choice": "left"}
                    if http.post("/api/votes", json=body).status_code == 200:
                        with lock:
                            acknowledged.append(body["vote_id"])
            except httpx.HTTPError:  # the server was killed under us: that request was never acknowledged
                pass

    try:
        wait_healthy(base, proc)
        threads = [threading.Thread(target=annotate, args=(t,)) for t in tokens]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 60:
            assert proc.poll() is None and time.monotonic() < deadline, "the voters got no acknowledgements"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: votes in flight, no shutdown, no checkpoint
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with read(PreferenceStore.open(url).engine) as s:
        stored = set(s.scalars(select(Vote.id)))
    assert len(acknowledged) >= 60 and set(acknowledged) <= stored
    assert len(stored) - len(acknowledged) <= len(tokens)  # at most the one in flight per voter
