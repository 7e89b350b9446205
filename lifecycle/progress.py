"""Progress for long loops: a tqdm bar on an interactive terminal, and periodic log lines always
(so Prefect's run logs, which capture the `lifecycle` logger, show progress too)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, logger: logging.Logger | None = None,
             every_s: float = 10.0) -> Iterator[T]:
    """Iterate `items`, showing a bar on a TTY and logging `desc: i/total` at most every `every_s` seconds."""
    log = logger or logging.getLogger("lifecycle")
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = tqdm(items, desc=desc, total=total, disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True)
    last = time.monotonic()
    i = 0
    for i, item in enumerate(bar, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            log.info("%s: %d/%s", desc, i, total if total is not None else "?")
    bar.close()
    log.info("%s: done (%d)", desc, i)
