"""Engines and sessions for SQLite (embedded default) and PostgreSQL (scale-out).

SQLite runs in WAL mode with a busy timeout so the SCP and worker processes can share one
file; foreign keys are enforced. One engine per process, created once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["make_engine", "make_sessionmaker", "DatabaseUnreachable", "database_errors", "SQLITE_BUSY_TIMEOUT_MS",
           "SQLITE_BEGIN"]

SQLITE_BUSY_TIMEOUT_MS = 30_000
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


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite the folder is created and WAL + busy timeout set."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # Let SQLAlchemy drive transactions (BEGIN emitted in _sqlite_begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=FULL")  # each commit survives power loss, not only a crash
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(connection) -> None:  # type: ignore[no-untyped-def]
    # Take the write lock at BEGIN: two processes never deadlock upgrading read locks,
    # and the busy timeout applies (a deferred transaction that upgrades fails at once).
    connection.exec_driver_sql(SQLITE_BEGIN)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
