"""Shared by the annotation app's tests (unit, integration, browser): a small config, comparison items, and
the app served by a real uvicorn server in a thread on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from lifecycle.config.preferences import AnnotateConfig
from lifecycle.preferences.store import NewItem


def annotate_config(**changes: Any) -> AnnotateConfig:
    values: dict[str, Any] = {"store_url": None, "host": "127.0.0.1", "port": 8765, "public_url": None,
                              "gold_every": 0, "assignment_ttl_s": 900, "max_body_bytes": 4096,
                              "max_reason_chars": 50, "rate_limit_per_minute": 600, "rate_limit_burst": 120}
    return AnnotateConfig(**{**values, **changes})


def comparison_items(n: int, prompt: str = "question") -> list[NewItem]:
    return [NewItem(({"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{prompt} {i}"}),
                    f"answer {i}, the short one", f"answer {i}, the much longer one") for i in range(n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The base URL of `app` served by uvicorn in a thread, until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="annotate-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
