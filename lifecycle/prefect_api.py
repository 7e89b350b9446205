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
import gc
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

from lifecycle import db_template


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite+aiosqlite:///PATH` URL; None for any other database."""
    prefix = "sqlite+aiosqlite:///"
    return Path(url.removeprefix(prefix)) if url.startswith(prefix) and ":memory:" not in url else None


def seed_from_template(db: Path) -> bool:
    """A missing `db` becomes a copy of Prefect's template, if there is one."""
    return db_template.seed(db, "prefect")


def seed_database(db: Path) -> bool:
    """A missing `db` becomes a copy of the template; with no template yet, Prefect migrates `db` (its
    settings name it), registers its block types in it, and a copy of the result becomes the template.
    True when `db` is new (its block types registered), False when it was there."""
    if seed_from_template(db):
        return True
    if db.exists():
        return False
    asyncio.run(build_database())
    db_template.keep(db, "prefect", wal=True)
    return True


async def build_database() -> None:
    """Prefect's migrations and its block types (what its server registers at every start of a new database:
    about 0.9 s of CPU, so the template holds them too)."""
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    database = provide_database_interface()
    await database.create_db()
    async with await database.session() as session:  # as Prefect's server does: it commits its own transactions
        await run_block_auto_registration(session=session)


def main(argv: list[str]) -> int:
    [port] = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # into its api.log
    import uvicorn
    from prefect.settings import (
        PREFECT_API_BLOCKS_REGISTER_ON_START,
        PREFECT_API_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    from prefect.server.api.server import create_app  # its imports, with the cyclic collector paused
    gc.freeze()  # what the imports built lives as long as the process (about 20 % less start-up CPU)
    gc.enable()
    db = sqlite_file(PREFECT_API_DATABASE_CONNECTION_URL.value() or "")
    new = db is not None and seed_database(db)
    registered = temporary_settings({PREFECT_API_BLOCKS_REGISTER_ON_START: False}) if new else nullcontext()
    with registered:  # a new database has its block types already: the server need not register them again
        uvicorn.run(create_app, factory=True, host="127.0.0.1", port=int(port), log_level="error", lifespan="on")
    return 0


if __name__ == "__main__":
    gc.disable()  # imports build no garbage worth collecting: main() resumes the collector once they are done
    sys.exit(main(sys.argv[1:]))
