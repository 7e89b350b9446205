"""Empty, migrated SQLite databases kept in the user's cache, one per library version, so a new state dir's
Prefect and MLflow databases start as copies instead of running every schema migration again (Prefect's
hundred-odd cost about 6 s of CPU, MLflow's about 1 s, in every fresh state dir and every test).

    db = state / "mlflow" / "mlflow.db"
    if not seed(db, "mlflow"):                # a copy of the kept template, when there is one
        build_the_database(db)                # the library's own migrations
        keep(db, "mlflow")                    # the result becomes the template (nothing kept on errors)

A database or a template is written whole, then linked or renamed into place (a concurrent reader sees
none or all of it), in the journal mode the library keeps its database in (Prefect: WAL; a rollback-mode
copy made its first connections race to switch and log "database is locked"). Where the cache cannot be
written, each new database migrates itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
from importlib.metadata import version
from pathlib import Path

log = logging.getLogger("lifecycle.db_template")


FORMAT = 2  # what a template holds (2: Prefect's with its block types registered); older ones are not read


def template_path(library: str) -> Path:
    """Where the empty, migrated database of the installed `library` version is kept."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "llm-lifecycle" / f"{library}-{version(library)}.v{FORMAT}.db"


def seed(db: Path, library: str) -> bool:
    """A missing `db` becomes a copy of `library`'s template, if there is one (copied whole, then renamed)."""
    template = template_path(library)
    if db.exists() or not template.is_file():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, partial)
    except OSError as err:  # a full disk is the state dir's, not the template's (copyfile names the source)
        partial.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror) from None
    if not put_in_place(partial, db):
        return False
    log.info("%s database %s: a copy of %s", library, db, template)
    return True


def put_in_place(partial: Path, db: Path) -> bool:
    """`partial` becomes `db` unless another process put one there first (then `partial` goes): a database
    some process already writes to is never replaced by an empty one."""
    try:
        os.link(partial, db)
    except FileExistsError:
        partial.unlink()
        return False
    except OSError:  # a file system without hard links: a rename, unless one is there by now
        if db.exists():
            partial.unlink()
            return False
        os.replace(partial, db)
        return True
    partial.unlink()
    return True


def keep(db: Path, library: str, wal: bool = False) -> None:
    """A copy of the freshly migrated, still empty `db` becomes `library`'s template (read through its
    write-ahead log, if any), in WAL mode if `wal`; a warning, and no template, when the cache cannot be
    written."""
    template = template_path(library)
    partial = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(db)) as con:
            con.execute("VACUUM INTO ?", (str(partial),))
        if wal:
            with contextlib.closing(sqlite3.connect(partial)) as con:
                con.execute("PRAGMA journal_mode = WAL")
        os.replace(partial, template)
        log.info("%s database %s: migrated; kept empty as %s", library, db, template)
    except (OSError, sqlite3.Error) as err:
        log.warning("%s's empty database not cached at %s: %s", library, template, err)
        partial.unlink(missing_ok=True)
