"""Bring a database's schema up to date: ``await migrate(url)`` at startup, before opening stores.

Alembic's API is synchronous; it runs on the async connection's greenlet via ``run_sync``, so the same
code serves SQLite and PostgreSQL. Concurrent starts are safe: SQLite's ``BEGIN IMMEDIATE`` and a
PostgreSQL advisory lock let one process migrate while the others wait, then find nothing to do.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from bastion.storage.engine import create_engine, writer

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x62737453636D61  # arbitrary, distinct from the audit chain's lock


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    command.upgrade(_config(connection), "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def migrate(url: str) -> None:
    """Upgrade the database at ``url`` to the newest schema (a no-op when it is current)."""
    engine = create_engine(url)
    try:
        async with writer(engine).begin() as connection:
            await connection.run_sync(_upgrade)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The schema revision of the database at ``url`` (None when it was never migrated)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_current)
    finally:
        await engine.dispose()
