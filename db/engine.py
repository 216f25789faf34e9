"""Engines and sessions for SQLite (embedded default) and PostgreSQL (scale-out).

SQLite runs in WAL mode with a busy timeout so the SCP and worker processes can share one
file; foreign keys are enforced. One engine per process, created once.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, Executable, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import CursorResult, make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["make_engine", "make_sessionmaker", "DatabaseUnreachable", "DatabaseFileReplaced", "database_errors",
           "check_database_file", "rowcount", "SQLITE_BUSY_TIMEOUT_MS", "SQLITE_BEGIN"]

#: How long a SQLite transaction waits for another process's write lock before it fails: well
#: inside a C-STORE's time, so a peer hears 0xA701 (retry later) rather than timing out.
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: How every write transaction on SQLite begins (see _sqlite_begin_immediate).
SQLITE_BEGIN = "BEGIN IMMEDIATE"


class DatabaseUnreachable(RuntimeError):
    """``database.url`` names a database the node cannot use; the message says which (password
    hidden) and why, in one line."""


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn what connecting to ``url`` raises (server down, unknown database or role, a driver
    not installed, an unknown dialect) into one DatabaseUnreachable line naming
    ``database.url``; other errors pass through."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise DatabaseUnreachable(f"database.url {_shown(url)}: cannot connect: {_first_line(exc.orig or exc)}") from None
    except sa_exc.NoSuchModuleError:
        raise DatabaseUnreachable(f"database.url {_shown(url)}: no SQLAlchemy dialect {make_url(url).drivername!r} "
                                  "(use sqlite:///PATH or postgresql+psycopg://...)") from None
    except ModuleNotFoundError as exc:
        raise DatabaseUnreachable(f"database.url {_shown(url)}: its database driver is not installed "
                                  f"(no module {exc.name!r}): install it, or use sqlite:///PATH or "
                                  "postgresql+psycopg://...") from None


def _shown(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "(not a URL)"


def _first_line(error: BaseException) -> str:
    """The driver's reason on one line ("connection failed: ... database "x" does not exist")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else type(error).__name__)
    return re.sub(r"\s+", " ", text)[:300]


class DatabaseFileReplaced(sqlite3.OperationalError):
    """The SQLite file this engine opened was deleted or replaced while it ran: writing on
    would put rows into a file nobody will open again."""


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite the folder is created and WAL + busy timeout set, and
    every transaction first checks the file is still the one the engine opened
    (:func:`check_database_file`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database).resolve()
            event.listen(engine, "connect", lambda _dbapi, _record: _note_database_file(engine, path))
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # Let SQLAlchemy drive transactions (BEGIN emitted in _sqlite_begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=FULL")  # each commit survives power loss, not only a crash
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    # Take the write lock at BEGIN: two processes never deadlock upgrading read locks,
    # and the busy timeout applies (a deferred transaction that upgrades fails at once).
    check_database_file(connection.engine)
    connection.exec_driver_sql(SQLITE_BEGIN)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


_OPENED = "_egfr_sqlite_file"  # on the engine's pool (shared by its connections and option engines)


def _note_database_file(engine: Engine, path: Path) -> None:
    """At a connection's first connect: which file the engine opened (once per pool)."""
    if getattr(engine.pool, _OPENED, None) is None:
        setattr(engine.pool, _OPENED, (path, _file_identity(path)))


def check_database_file(engine: Engine) -> None:
    """Raise SQLAlchemy's OperationalError (orig: DatabaseFileReplaced) when the SQLite file
    ``engine`` opened is gone or another file now has its name; nothing for other databases.
    One ``stat`` per call."""
    opened = getattr(engine.pool, _OPENED, None)
    if opened is None:
        return
    path, identity = opened
    if _file_identity(path) != identity:
        reason = DatabaseFileReplaced(f"database file {path} was deleted or replaced while the node ran: restore it "
                                      "from backup (or run egfr-node init) and restart the node")
        raise sa_exc.OperationalError(SQLITE_BEGIN, None, reason)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def rowcount(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE in ``session``; how many rows it matched (SQLAlchemy types
    ``rowcount`` on the CursorResult such a statement returns, not on Result)."""
    return cast("CursorResult[Any]", session.execute(statement)).rowcount
