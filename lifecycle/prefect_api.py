"""The process of a run's own Prefect API (`lifecycle.runtime.EmbeddedApi` starts it):

    python -m lifecycle.prefect_api PORT

Prefect's server app (`prefect.server.api.server:create_app`, as Prefect's temporary server runs it) under
uvicorn on 127.0.0.1:PORT, on the SQLite database under PREFECT_HOME. A state dir's first run would spend
about 6 s of CPU on Prefect's hundred-odd schema migrations before the API answers; instead its database
starts as a copy of an empty, migrated one, made once per Prefect version and kept in the user's cache
(lifecycle/db_template.py); `lifecycle ui`'s Prefect server starts from the same copy. Where that cache
cannot be written, Prefect migrates each new database itself.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from lifecycle import db_template


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite+aiosqlite:///PATH` URL; None for any other database."""
    prefix = "sqlite+aiosqlite:///"
    return Path(url.removeprefix(prefix)) if url.startswith(prefix) and ":memory:" not in url else None


def seed_from_template(db: Path) -> bool:
    """A missing `db` becomes a copy of Prefect's template, if there is one."""
    return db_template.seed(db, "prefect")


def seed_database(db: Path) -> None:
    """A missing `db` becomes a copy of the template; with no template yet, Prefect migrates `db` (its
    settings name it) and a copy of the result becomes the template."""
    if seed_from_template(db) or db.exists():
        return
    from prefect.server.database import provide_database_interface

    asyncio.run(provide_database_interface().create_db())
    db_template.keep(db, "prefect", wal=True)


def main(argv: list[str]) -> int:
    [port] = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # into its api.log
    import uvicorn
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    db = sqlite_file(PREFECT_API_DATABASE_CONNECTION_URL.value() or "")
    if db is not None:
        seed_database(db)
    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=int(port),
                log_level="error", lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
