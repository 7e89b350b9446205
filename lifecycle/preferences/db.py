"""Connecting to the preference store: SQLite in WAL mode under the state dir by default, PostgreSQL (or
any SQLAlchemy URL) from `annotate.store_url`; the schema is brought up to date with Alembic on open.

    engine = connect("sqlite:////abs/path/preferences.db")   # or postgresql+psycopg://user@host/db
    with write(engine) as session: ...                       # one serialised write transaction

SQLite: WAL lets readers run beside the single writer; write transactions start with BEGIN IMMEDIATE so
two writers queue on `busy_timeout` instead of failing half-way. A committed transaction is in the WAL
file before the commit returns, so an acknowledged vote survives a kill -9 of the server
(synchronous=NORMAL; `synchronous=FULL` in the URL's query adds an fsync per commit against power loss).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session

from lifecycle.errors import ConfigError

log = logging.getLogger("lifecycle.preferences")
MIGRATIONS = Path(__file__).with_name("migrations")


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{(Path(state_dir) / 'preferences' / 'preferences.db').resolve()}"


def store_url(configured: str | None, state_dir: Path) -> str:
    """`annotate.store_url`, else the SQLite file under the state dir."""
    return configured or default_url(state_dir)


def connect(url: str, migrate: bool = True) -> Engine:
    """An engine on `url` with the schema at the newest revision."""
    try:
        parsed = make_url(url)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy raises several types for a malformed URL
        raise ConfigError(f"annotate.store_url: not a database URL ({err})") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    synchronous = "FULL" if sqlite and parsed.query.get("synchronous") == "FULL" else "NORMAL"
    if sqlite:
        parsed = parsed.difference_update_query(["synchronous"])
    engine = create_engine(parsed, pool_pre_ping=not sqlite,
                           connect_args={"timeout": 30, "check_same_thread": False} if sqlite else {})
    if sqlite:
        _sqlite_setup(engine, synchronous)
    if migrate:
        upgrade(engine)
    return engine


def _sqlite_setup(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")


_MIGRATING = threading.Lock()  # Alembic's `context`/`op` are module-level proxies: one migration at a time


def upgrade(engine: Engine) -> None:
    from alembic import command  # 0.6 s to import: only where the schema is migrated
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _MIGRATING, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def write(engine: Engine) -> Iterator[Session]:
    """A write transaction: committed on success, rolled back on error. On SQLite it holds the write
    lock from its first statement, so read-then-write logic (assignment, quotas) is race-free."""
    with engine.connect() as conn:
        conn.info["write"] = True
        try:
            with Session(bind=conn) as session, conn.begin():
                yield session
                session.flush()
        finally:
            conn.info.pop("write", None)


@contextmanager
def read(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session
