"""An acknowledged vote survives kill -9 of the annotation server: the app runs in its own process (uvicorn
via run_server, SQLite in WAL mode), 50 concurrent voters get their acknowledgements, the process is SIGKILLed
mid-stream, and every acknowledged vote is in the reopened store; the votes that got no answer, retried
against a restarted server, count once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
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


def start_server(url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "tests/integration/annotate_runner.py", url, str(port)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, f"http://127.0.0.1:{port}"


def test_acknowledged_votes_from_50_concurrent_clients_survive_kill_9_and_retries_count_once(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    store = PreferenceStore.open(url)
    store.publish_batch(NewBatch("b1", "human", votes_per_item=3), comparison_items(200))
    tokens = [store.add_annotator(f"person-{i}") for i in range(50)]
    store.engine.dispose()
    proc, base = start_server(url)
    acknowledged: list[str] = []
    in_flight: dict[str, dict[str, str]] = {}  # token -> the vote whose POST got no answer
    errors: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def annotate(token: str) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            body = None
            try:
                while not stop.is_set() and (item := http.get("/api/next").json()["item"]) is not None:
                    body = {"vote_id": str(uuid.uuid4()), "item_id": item["item_id"], "choice": "left"}
                    answer = http.post("/api/votes", json=body)
                    with lock:
                        if answer.status_code == 200:
                            acknowledged.append(body["vote_id"])
                        else:
                            errors.append(f"{answer.status_code}: {answer.text}")
                    body = None
            except httpx.HTTPError:  # the server was killed under us: that request was never acknowledged
                if body is not None:
                    with lock:
                        in_flight[token] = body

    try:
        wait_healthy(base, proc)
        threads = [threading.Thread(target=annotate, args=(t,), daemon=True) for t in tokens]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 150:
            assert proc.poll() is None and time.monotonic() < deadline, "the voters got no acknowledgements"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: votes in flight, no shutdown, no checkpoint
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and errors == []
    with read(PreferenceStore.open(url).engine) as s:
        stored = set(s.scalars(select(Vote.id)))
    assert len(acknowledged) >= 150 and set(acknowledged) <= stored  # nothing acknowledged was lost
    assert stored - set(acknowledged) <= {b["vote_id"] for b in in_flight.values()}  # nor made up

    proc, base = start_server(url)  # the clients retry the votes that got no answer
    try:
        wait_healthy(base, proc)
        for token, body in in_flight.items():
            answer = httpx.post(f"{base}/api/votes", json=body, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == ("replayed" if body["vote_id"] in stored else "created")
    finally:
        proc.kill()
        proc.wait(10)
    with read(PreferenceStore.open(url).engine) as s:
        votes = s.execute(select(Vote.id, Vote.item_id, Vote.annotator_id)).all()
    assert {v.id for v in votes} == set(acknowledged) | {b["vote_id"] for b in in_flight.values()}
    assert len(votes) == len({(v.item_id, v.annotator_id) for v in votes})  # one vote per annotator and item
    assert max(Counter(v.item_id for v in votes).values()) <= 3
