"""Open a database by URL: ``sqlite:///path/to/file.db`` or ``postgresql://user:pass@host/db``.

SQLite runs in WAL mode with ``synchronous=FULL`` (an acknowledged commit survives power loss and
``kill -9``), foreign keys on and a busy timeout. Its transactions are issued by us, not by the driver:
reads take a deferred ``BEGIN``, writers (engines from :func:`writer`) ``BEGIN IMMEDIATE``, which takes the
database's single write lock up front, so writers queue instead of failing to upgrade a read lock and the
audit chain stays linear across connections and processes.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

_WRITE_OPTION = "bastion_write"
_SINGLE_STATEMENT_OPTION = "bastion_single_statement"
_SQLITE_PRAGMAS = ("busy_timeout=5000", "synchronous=FULL", "foreign_keys=ON")


class DatabaseUrlError(ValueError):
    """The database URL is unusable. The message never contains the URL (it may hold a password)."""


def async_url(url: str) -> URL:
    """The SQLAlchemy async-driver URL for a ``sqlite:///`` or ``postgresql://`` URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError("the database URL is not a valid URL") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite", "aiosqlite"):
        if parsed.database in (None, "", ":memory:") or (parsed.database or "").startswith("file:"):
            # Every pooled connection would see its own empty in-memory database.
            raise DatabaseUrlError("SQLite needs a file path: sqlite:///path/to/file.db")
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg2", "asyncpg"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise DatabaseUrlError(f"unsupported database scheme {backend!r}: use sqlite:/// or postgresql://")


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``. Nothing is connected yet, except that a missing SQLite file is created
    with mode 0600 (its WAL and shared-memory files inherit that mode)."""
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        return _sqlite_engine(target)
    # No pool_pre_ping: it costs a round trip per checkout; a connection found dead invalidates the pool,
    # so after a server restart one operation fails (closed) and the next reconnects.
    return create_async_engine(target, hide_parameters=True)


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool) whose transactions are write transactions."""
    return engine.execution_options(**{_WRITE_OPTION: True})


def single_statement_reader(engine: AsyncEngine) -> AsyncEngine:
    """The same engine for connections that run one read-only statement, without BEGIN and ROLLBACK (the
    statement is its own snapshot): two round trips fewer on the hot path."""
    if engine.dialect.name == "sqlite":
        # Not isolation_level: resetting it would hand transaction control back to the sqlite3 module.
        return engine.execution_options(**{_SINGLE_STATEMENT_OPTION: True})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _sqlite_engine(target: URL) -> AsyncEngine:
    path = target.database or ""
    if not os.path.exists(path):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            pass  # another process created it first
        except OSError as exc:
            raise DatabaseUrlError(f"cannot create the SQLite database {path}: {exc.strerror}") from None
        else:
            # Switch to WAL (a persistent setting) before any pooled connection exists: switching needs
            # an exclusive lock and SQLite answers "locked" without waiting when connections race for it.
            with closing(sqlite3.connect(path)) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
    engine = create_async_engine(target, hide_parameters=True)
    event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Stop the sqlite3 module from opening transactions on its own (it skips them before SELECTs);
    # _sqlite_on_begin opens them instead.
    setattr(dbapi_connection, "isolation_level", None)  # noqa: B010 - not in the DBAPI protocol type
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.execute("PRAGMA journal_mode")
        mode = cursor.fetchone()
        if mode is None or str(mode[0]).lower() != "wal":  # a database created elsewhere
            cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    options: dict[str, Any] = dict(connection.get_execution_options())
    if options.get(_WRITE_OPTION):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif not options.get(_SINGLE_STATEMENT_OPTION):
        connection.exec_driver_sql("BEGIN")
