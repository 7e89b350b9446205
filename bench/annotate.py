"""How many votes a second does the annotation app take, and does it lose or double any under load?

Starts the app (uvicorn, one worker) over a fresh SQLite store in a subprocess on loopback, publishes one
batch (--items items x --votes-per-item votes), adds --clients annotators, then drives the server with that
many concurrent clients (asyncio + httpx, bearer tokens) for --seconds, each looping GET /api/next and
POST /api/votes. Prints one JSON line:
  votes_per_s                  acknowledged votes per second of driving
  vote_ms / next_ms            p50 and p95 latency of the vote POSTs / next GETs
  sent / acknowledged / stored votes POSTed, answered 200, and in the database afterwards
  doubles                      votes beyond an item's quota or a second vote by one annotator (must be 0)
  lost                         acknowledged but not stored (must be 0)
  server/client_cpu_ms_per_vote CPU time per acknowledged vote (next + vote) while driving: what limits
                               votes_per_s on a small machine, and less noisy than it when others share it

    python bench/annotate.py --seconds 20 --clients 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select

from lifecycle.config import find_conf_dir, load_config
from lifecycle.preferences.app import create_app, run_server
from lifecycle.preferences.db import read
from lifecycle.preferences.schema import Vote
from lifecycle.preferences.store import NewBatch, NewItem, PreferenceStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(url: str, port: int) -> None:
    """The server process: the app over the store at `url`, as `lifecycle annotate` runs it."""
    cfg = load_config(find_conf_dir()).annotate.model_copy(update={"store_url": url, "port": port,
                                                                   "rate_limit_per_minute": 0})  # throughput
    run_server(create_app(PreferenceStore.open(url), cfg), "127.0.0.1", port)


def prepare(url: str, items: int, votes_per_item: int, clients: int) -> list[str]:
    store = PreferenceStore.open(url)
    store.publish_batch(NewBatch("bench", "human", votes_per_item), [
        NewItem(({"role": "user", "content": f"Question {i}: " + "why is the sky blue? " * 8},),
                f"Answer {i}, first: " + "Rayleigh scattering. " * 12, f"Answer {i}, second: " + "dust. " * 20)
        for i in range(items)])
    return [store.add_annotator(f"bench-{i}") for i in range(clients)]


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p95 in milliseconds."""
    ordered = sorted(values) or [0.0]
    return {f"p{round(q * 100)}": round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
            for q in (0.50, 0.95)}


async def client(base: str, token: str, deadline: float, out: dict[str, list]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            shown = (await http.get("/api/next")).raise_for_status().json()
            out["next"].append(time.perf_counter() - start)
            if shown["item"] is None:
                return
            vote = {"vote_id": str(uuid.uuid4()), "item_id": shown["item"]["item_id"], "choice": "left"}
            start = time.perf_counter()
            out["sent"].append(vote["vote_id"])
            answer = await http.post("/api/votes", json=vote)
            out["vote"].append(time.perf_counter() - start)
            if answer.status_code == 200:
                out["acked"].append(vote["vote_id"])


async def drive(base: str, tokens: list[str], seconds: float) -> tuple[dict[str, list], float]:
    out: dict[str, list] = {"next": [], "vote": [], "sent": [], "acked": []}
    start = time.perf_counter()
    await asyncio.gather(*(client(base, t, start + seconds, out) for t in tokens))
    return out, time.perf_counter() - start


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"the server did not answer {base}/healthz within {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count(url: str, acked: list[str]) -> dict[str, int]:
    store = PreferenceStore.open(url)
    with read(store.engine) as s:
        stored = set(s.scalars(select(Vote.id)))
        per_item = s.scalars(select(func.count()).select_from(Vote).group_by(Vote.item_id)).all()
        pairs = s.scalar(select(func.count()).select_from(select(Vote.item_id, Vote.annotator_id).distinct()
                                                          .subquery()))
    quota = store.progress("bench").votes_per_item
    doubles = sum(max(0, n - quota) for n in per_item) + (len(stored) - pairs)
    return {"stored": len(stored), "doubles": doubles, "lost": len(set(acked) - stored)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--votes-per-item", type=int, default=3)
    parser.add_argument("--serve", nargs=2, metavar=("URL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'preferences.db'}"
        tokens = prepare(url, args.items, args.votes_per_item, args.clients)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, __file__, "--serve", url, str(port)], env=os.environ.copy())
        try:
            wait_healthy(base, proc)
            client_cpu, server_cpu = time.process_time(), cpu_seconds(proc.pid)
            out, elapsed = asyncio.run(drive(base, tokens, args.seconds))
            client_cpu, server_cpu = time.process_time() - client_cpu, cpu_seconds(proc.pid) - server_cpu
        finally:
            proc.terminate()
            proc.wait(30)
        counts = count(url, out["acked"])
    print(json.dumps({"clients": args.clients, "seconds": round(elapsed, 1),
                      "votes_per_s": round(len(out["acked"]) / elapsed, 1), "vote_ms": percentiles(out["vote"]),
                      "next_ms": percentiles(out["next"]), "sent": len(out["sent"]), "acknowledged": len(out["acked"]),
                      **counts, "server_cpu_ms_per_vote": round(server_cpu * 1000 / max(1, len(out["acked"])), 2),
                      "client_cpu_ms_per_vote": round(client_cpu * 1000 / max(1, len(out["acked"])), 2),
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
