"""Alembic environment. ``bastion.storage.migrate`` passes an open connection in
``config.attributes["connection"]``; a config carrying ``sqlalchemy.url`` instead (a developer's own
``alembic`` invocation from a thread with no running event loop) is connected here with Bastion's engine
settings. No alembic.ini is needed or read."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from bastion.storage.engine import create_engine, writer
from bastion.storage.models import Base


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with writer(engine).begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported")
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: run migrations with bastion.storage.migrate.migrate(url)")
    asyncio.run(_run_url(url))


main()
