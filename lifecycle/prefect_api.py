"""The process of a run's own Prefect API (`lifecycle.runtime.EmbeddedApi` starts it):

    python -m lifecycle.prefect_api PORT

Prefect's server app (`prefect.server.api.server:create_app`, as Prefect's temporary server runs it) under
uvicorn on 127.0.0.1:PORT, on the SQLite database under PREFECT_HOME. A state dir's first run would spend
about 6 s of CPU on Prefect's hundred-odd schema migrations before the API answers; instead its database
starts as a copy of an empty, migrated one, made once per Prefect version and kept in the user's cache
(`template_path`); `lifecycle ui`'s Prefect server starts from the same copy. Where that cache cannot be
written, Prefect migrates each new database itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import sys
from importlib.metadata import version
from pathlib import Path

log = logging.getLogger("lifecycle.prefect_api")


def template_path() -> Path:
    """Where the empty, migrated database of the installed Prefect version is kept."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "llm-lifecycle" / f"prefect-{version('prefect')}.db"


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite+aiosqlite:///PATH` URL; None for any other database."""
    prefix = "sqlite+aiosqlite:///"
    return Path(url.removeprefix(prefix)) if url.startswith(prefix) and ":memory:" not in url else None


def seed_from_template(db: Path) -> bool:
    """A missing `db` becomes a copy of the template, if there is one (copied whole, then renamed)."""
    template = template_path()
    if db.exists() or not template.is_file():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    shutil.copyfile(template, partial)
    os.replace(partial, db)
    log.info("Prefect database %s: a copy of %s", db, template)
    return True


def seed_database(db: Path) -> None:
    """A missing `db` becomes a copy of the template; with no template yet, Prefect migrates `db` (its
    settings name it) and a copy of the result becomes the template (written whole, then renamed: a
    concurrent reader sees none or all of it)."""
    if seed_from_template(db) or db.exists():
        return
    from prefect.server.database import provide_database_interface

    asyncio.run(provide_database_interface().create_db())
    template = template_path()
    partial = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(db)) as con:  # reads through Prefect's write-ahead log
            con.execute("VACUUM INTO ?", (str(partial),))
        with contextlib.closing(sqlite3.connect(partial)) as con:  # in WAL mode already, as Prefect keeps it:
            con.execute("PRAGMA journal_mode = WAL")  # its first connections need not race to switch it
        os.replace(partial, template)
        log.info("Prefect database %s: migrated; kept empty as %s", db, template)
    except (OSError, sqlite3.Error) as err:  # no cache to keep it in: the next fresh state dir migrates again
        log.warning("Prefect's empty database not cached at %s: %s", template, err)
        partial.unlink(missing_ok=True)


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
