"""One contract for the identity store, run against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bastion.identity.keys import KeyHasher, KeyLevel, parse_key
from bastion.storage.audit import GENESIS_HASH, AuditActor
from bastion.storage.engine import DatabaseUrlError, async_url, create_engine
from bastion.storage.identity_store import (
    DEFAULT_KEY_TTL,
    Conflict,
    ConsumerStatus,
    IdentityError,
    IdentityStore,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
)
from bastion.storage.migrate import current_revision, head_revision, migrate
from bastion.storage.models import AuditRow, Base

T = TypeVar("T")
PG_SERVER = os.environ.get("BASTION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TABLES = ("consumers", "roles", "api_keys", "audit_log")
HASHER = KeyHasher(b"contract-test-pepper-0123456789abcdef")
MAX_TTL = timedelta(days=365)
ADMIN = AuditActor("admin@example.com", "192.0.2.10", "req-1")
START = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


# -- PostgreSQL: a uniquely-named database per test session ------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return async_url(url).set(drivername="postgresql", database=name).render_as_string(hide_password=False)


def postgres_unavailable_reason() -> str | None:
    async def probe() -> None:
        connection = await asyncpg.connect(async_url(PG_SERVER).set(drivername="postgresql")
                                           .render_as_string(hide_password=False), timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL at {async_url(PG_SERVER)!r} is unreachable: {type(exc).__name__}: {exc}"
    return None


def require_postgres() -> None:
    """Skip when PostgreSQL is down, except in CI, where that is a failure."""
    reason = postgres_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    print(reason)
    pytest.skip(reason)


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(async_url(PG_SERVER).set(drivername="postgresql")
                                       .render_as_string(hide_password=False))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextmanager
def temporary_postgres_database() -> Iterator[str]:
    """A fresh database (URL), dropped on exit."""
    require_postgres()
    name = f"bastion_test_{uuid.uuid4().hex[:16]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(PG_SERVER, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with temporary_postgres_database() as url:
        asyncio.run(migrate(url))
        yield url


# -- the backend under test --------------------------------------------------------------------------------


@dataclass
class FakeClock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Backend:
    name: str
    url: str
    sqlite_path: Path | None = None
    clock: FakeClock = field(default_factory=FakeClock)

    def run(self, body: Callable[[IdentityStore], Awaitable[T]]) -> T:
        async def main() -> T:
            engine = create_engine(self.url)
            try:
                return await body(IdentityStore(engine, clock=self.clock))
            finally:
                await engine.dispose()

        return asyncio.run(main())

    async def dump(self, engine: AsyncEngine) -> str:
        """Every row of every table as text, and for SQLite the raw bytes of its files, decoded loosely."""
        parts = []
        async with engine.connect() as connection:
            for table in (*TABLES, "alembic_version"):
                rows = (await connection.execute(text(f"SELECT * FROM {table}"))).all()
                parts.append(f"{table}: {[tuple(row) for row in rows]!r}")
        if self.sqlite_path is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                path = Path(f"{self.sqlite_path}{suffix}")
                if path.exists():
                    parts.append(path.read_bytes().decode("latin-1"))
            with sqlite3.connect(self.sqlite_path) as connection:
                for table in TABLES:
                    parts.append(repr(connection.execute(f"SELECT * FROM {table}").fetchall()))
        return "\n".join(parts)


async def _truncate(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            # CASCADE: later migrations add tables referencing these (e.g. oauth_clients -> consumers).
            await connection.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "identity.db"
        url = f"sqlite:///{path}"
        asyncio.run(migrate(url))
        return Backend("sqlite", url, sqlite_path=path)
    url = request.getfixturevalue("postgres_url")
    asyncio.run(_truncate(url))
    return Backend("postgresql", url)


# -- migrations --------------------------------------------------------------------------------------------


def _tables(connection: Any) -> set[str]:
    from sqlalchemy import inspect

    return set(inspect(connection).get_table_names())


def _schema_diff(connection: Any) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migrations_run_from_empty_and_are_idempotent(kind: str, tmp_path: Path) -> None:
    def check(url: str) -> None:
        assert asyncio.run(current_revision(url)) is None
        asyncio.run(migrate(url))
        asyncio.run(migrate(url))  # a second run is a no-op
        assert asyncio.run(current_revision(url)) == head_revision() == "0002"

        async def inspect_schema() -> tuple[set[str], list[Any]]:
            engine = create_engine(url)
            try:
                async with engine.connect() as connection:
                    return await connection.run_sync(_tables), await connection.run_sync(_schema_diff)
            finally:
                await engine.dispose()

        tables, diff = asyncio.run(inspect_schema())
        assert set(TABLES) | {"alembic_version"} <= tables
        assert diff == []  # the migration creates exactly what the models describe

    if kind == "sqlite":
        check(f"sqlite:///{tmp_path / 'fresh.db'}")
        assert (tmp_path / "fresh.db").stat().st_mode & 0o077 == 0  # no access for group and others
    else:
        with temporary_postgres_database() as url:
            check(url)


def test_concurrent_migrations(tmp_path: Path) -> None:
    async def main(url: str) -> None:
        await asyncio.gather(*(migrate(url) for _ in range(4)))

    url = f"sqlite:///{tmp_path / 'race.db'}"
    asyncio.run(main(url))
    assert asyncio.run(current_revision(url)) == head_revision()


# -- consumers and roles -----------------------------------------------------------------------------------


def test_consumer_crud(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        await store.put_role("orders-reader", ["orders:read"], actor=ADMIN)
        created = await store.create_consumer(
            "shop-frontend", actor=ADMIN, roles=["orders-reader"], metadata={"team": "web", "tier": 2},
            allowed_cidrs=["10.0.0.1", "192.0.2.0/24"], plan="gold", admin_role="operator")
        assert created.status is ConsumerStatus.ACTIVE
        assert created.roles == ("orders-reader",)
        assert created.metadata == {"team": "web", "tier": 2}
        assert created.allowed_cidrs == ("10.0.0.1/32", "192.0.2.0/24")
        assert created.created_at == created.updated_at == START
        assert created.created_at.tzinfo is not None
        assert await store.get_consumer(created.id) == created
        assert await store.get_consumer_by_name("shop-frontend") == created
        assert await store.get_consumer(str(uuid.uuid4())) is None
        assert await store.get_consumer_by_name("nobody") is None

        second = await store.create_consumer("alice@example.com", actor=ADMIN)
        assert [c.name for c in await store.list_consumers()] == ["alice@example.com", "shop-frontend"]
        assert [c.name for c in await store.list_consumers(after_name="alice@example.com")] == ["shop-frontend"]
        assert [c.name for c in await store.list_consumers(limit=1)] == ["alice@example.com"]

        backend.clock.advance(timedelta(minutes=5))
        updated = await store.update_consumer(created.id, actor=ADMIN, status="disabled", admin_role=None,
                                              plan=None)
        assert updated.status is ConsumerStatus.DISABLED and updated.admin_role is None and updated.plan is None
        assert updated.roles == created.roles and updated.metadata == created.metadata  # untouched fields kept
        assert updated.updated_at == START + timedelta(minutes=5) and updated.created_at == START
        assert await store.get_consumer(created.id) == updated

        _, key = await store.create_key(second.id, KeyLevel.READ, actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        await store.delete_consumer(second.id, actor=ADMIN)
        assert await store.get_consumer(second.id) is None
        assert await store.get_key(key.key_id) is None  # keys go with their consumer
        with pytest.raises(NotFound):
            await store.delete_consumer(second.id, actor=ADMIN)
        with pytest.raises(NotFound):
            await store.update_consumer(second.id, actor=ADMIN, plan="x")

    backend.run(body)


def test_role_crud(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        role = await store.put_role("billing", ["invoices:write", "invoices:read", "invoices:read"], actor=ADMIN,
                                    description="Billing team")
        assert role.permissions == ("invoices:read", "invoices:write")
        assert await store.get_role("billing") == role
        replaced = await store.put_role("billing", ["invoices:read"], actor=ADMIN)
        assert replaced.permissions == ("invoices:read",) and replaced.description == ""
        await store.put_role("admin", ["*"], actor=ADMIN)
        assert [r.name for r in await store.list_roles()] == ["admin", "billing"]

        with pytest.raises(InvalidRequest, match="unknown role"):
            await store.create_consumer("c1", actor=ADMIN, roles=["billing", "ghost"])
        consumer = await store.create_consumer("c1", actor=ADMIN, roles=["billing"])
        with pytest.raises(Conflict, match="still granted"):
            await store.delete_role("billing", actor=ADMIN)
        await store.update_consumer(consumer.id, actor=ADMIN, roles=[])
        await store.delete_role("billing", actor=ADMIN)
        assert await store.get_role("billing") is None
        with pytest.raises(NotFound):
            await store.delete_role("billing", actor=ADMIN)

    backend.run(body)


def test_names_are_unique_and_errors_are_client_safe(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        first = await store.create_consumer("mobile-app", actor=ADMIN)
        other = await store.create_consumer("web-app", actor=ADMIN)
        with pytest.raises(Conflict) as caught:
            await store.create_consumer("mobile-app", actor=ADMIN)
        message = str(caught.value)
        assert "already exists" in message
        for leak in ("UNIQUE", "INSERT", "constraint", "sqlite", "asyncpg", "consumers"):
            assert leak.lower() not in message.lower()
        with pytest.raises(Conflict):
            await store.update_consumer(other.id, actor=ADMIN, name="mobile-app")
        await store.update_consumer(first.id, actor=ADMIN, name="mobile-app")  # keeping one's own name is fine
        assert isinstance(caught.value, IdentityError) and isinstance(caught.value, ValueError)
        assert len(await store.list_audit()) == 3  # refused changes leave no audit entry

    backend.run(body)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": ""}, "consumer name"),
    ({"name": " padded"}, "consumer name"),
    ({"name": "tab\there"}, "consumer name"),
    ({"status": "sleeping"}, "status"),
    ({"admin_role": "root"}, "admin_role"),
    ({"allowed_cidrs": ["10.0.0.0/33"]}, "CIDR"),
    ({"allowed_cidrs": "10.0.0.0/8"}, "list"),
    ({"roles": ["bad role"]}, "role name"),
    ({"metadata": {"n": float("nan")}}, "plain JSON"),
    ({"metadata": {"blob": "x" * 20000}}, "16384"),
    ({"plan": "gold plan"}, "plan"),
])
def test_invalid_consumer_input(backend: Backend, kwargs: dict[str, Any], message: str) -> None:
    async def body(store: IdentityStore) -> None:
        arguments = {"name": "valid", **kwargs}
        name = arguments.pop("name")
        with pytest.raises(InvalidRequest, match=message):
            await store.create_consumer(name, actor=ADMIN, **arguments)

    backend.run(body)


def test_bad_actor_refuses_the_change(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        for actor in (AuditActor(""), AuditActor("x" * 201), AuditActor("ok", request_id="r\x00")):
            with pytest.raises(InvalidRequest, match="actor"):
                await store.create_consumer("someone", actor=actor)
        assert await store.get_consumer_by_name("someone") is None  # rolled back with the audit entry
        assert await store.list_audit() == []

    backend.run(body)


# -- keys --------------------------------------------------------------------------------------------------


def test_key_plaintext_is_returned_once_and_never_stored(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        await store.put_role("reader", ["orders:read"], actor=ADMIN)
        consumer = await store.create_consumer("leaky", actor=ADMIN, roles=["reader"])
        plaintexts = []
        for level in KeyLevel:
            plaintext, record = await store.create_key(consumer.id, level, actor=ADMIN, hasher=HASHER,
                                                       max_ttl=MAX_TTL, scopes=["orders:read"])
            parsed = parse_key(plaintext)
            assert parsed is not None and parsed.key_id == record.key_id and parsed.level is level
            assert record.display_prefix == plaintext[:18]
            assert plaintext not in repr(record)
            plaintexts.append(plaintext)
        rotated, _ = await store.rotate_key(record.key_id, actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        plaintexts.append(rotated)

        dump = await backend.dump(store.engine)
        assert "leaky" in dump  # the dump does see the data
        for plaintext in plaintexts:
            secret = plaintext[18:45]
            assert plaintext not in dump
            assert secret not in dump
            assert plaintext[18:] not in dump

    backend.run(body)


def test_find_key_for_auth(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        await store.put_role("orders-reader", ["orders:read"], actor=ADMIN)
        await store.put_role("orders-writer", ["orders:read", "orders:write"], actor=ADMIN)
        await store.put_role("unused", ["admin:all"], actor=ADMIN)
        consumer = await store.create_consumer("pos", actor=ADMIN, roles=["orders-reader", "orders-writer"],
                                               plan="silver", allowed_cidrs=["10.0.0.0/8"], admin_role="auditor")
        plaintext, record = await store.create_key(consumer.id, "write", actor=ADMIN, hasher=HASHER,
                                                   max_ttl=MAX_TTL, scopes=["orders:read"],
                                                   allowed_cidrs=["10.1.0.0/16"])
        auth = await store.find_key_for_auth(record.key_id)
        assert auth is not None
        assert auth.permissions == frozenset({"orders:read", "orders:write"})
        assert auth.scopes == frozenset({"orders:read"})
        assert auth.level is KeyLevel.WRITE
        assert auth.consumer_id == consumer.id and auth.consumer_name == "pos"
        assert auth.consumer_status is ConsumerStatus.ACTIVE and auth.plan == "silver"
        assert auth.admin_role is not None and auth.admin_role.value == "auditor"
        assert auth.consumer_roles == ("orders-reader", "orders-writer")
        assert auth.key_allowed_cidrs == ("10.1.0.0/16",) and auth.consumer_allowed_cidrs == ("10.0.0.0/8",)
        assert auth.expires_at == START + DEFAULT_KEY_TTL and auth.revoked_at is None
        assert HASHER.verify(plaintext, auth.digest)
        assert auth.digest.hex() not in repr(auth)
        assert auth.rejection_reason(START) is None

        bare = await store.create_consumer("no-roles", actor=ADMIN)
        _, bare_key = await store.create_key(bare.id, "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        bare_auth = await store.find_key_for_auth(bare_key.key_id)
        assert bare_auth is not None and bare_auth.permissions == frozenset() and bare_auth.scopes == frozenset()
        assert await store.find_key_for_auth("000000000000") is None

        await store.update_consumer(consumer.id, actor=ADMIN, status="disabled")
        disabled = await store.find_key_for_auth(record.key_id)
        assert disabled is not None and disabled.rejection_reason(START) == "consumer disabled"

    backend.run(body)


def test_key_expiry_default_and_max_ttl(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        consumer = await store.create_consumer("ttl", actor=ADMIN)
        _, default = await store.create_key(consumer.id, "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        assert default.expires_at == START + timedelta(days=90)
        _, short = await store.create_key(consumer.id, "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL,
                                          ttl=timedelta(hours=1))
        assert short.expires_at == START + timedelta(hours=1)
        _, capped = await store.create_key(consumer.id, "read", actor=ADMIN, hasher=HASHER,
                                           max_ttl=timedelta(days=30))
        assert capped.expires_at == START + timedelta(days=30)  # the default never exceeds the maximum
        with pytest.raises(InvalidRequest, match="at most 365 days"):
            await store.create_key(consumer.id, "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL,
                                   ttl=timedelta(days=366))
        with pytest.raises(InvalidRequest, match="positive"):
            await store.create_key(consumer.id, "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL,
                                   ttl=timedelta(0))
        with pytest.raises(InvalidRequest, match="level"):
            await store.create_key(consumer.id, "superuser", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        with pytest.raises(NotFound):
            await store.create_key(str(uuid.uuid4()), "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)

        backend.clock.advance(timedelta(hours=1))
        auth = await store.find_key_for_auth(short.key_id)
        assert auth is not None and auth.rejection_reason(backend.clock()) == "key expired"
        assert short.state(backend.clock()) == "expired" and default.state(backend.clock()) == "active"

    backend.run(body)


def test_rotation(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        consumer = await store.create_consumer("rotating", actor=ADMIN)
        _, old = await store.create_key(consumer.id, "write", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL,
                                        ttl=timedelta(days=30), scopes=["a:b"], allowed_cidrs=["10.0.0.0/8"],
                                        description="ci")
        backend.clock.advance(timedelta(days=10))
        now = backend.clock()
        plaintext, new = await store.rotate_key(old.key_id, actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        assert (new.level, new.scopes, new.allowed_cidrs, new.description) == (
            old.level, old.scopes, old.allowed_cidrs, old.description)
        assert new.consumer_id == consumer.id and new.predecessor_id == old.key_id
        assert new.expires_at == now + timedelta(days=30)  # a fresh expiry, the original lifetime
        predecessor = await store.get_key(old.key_id)
        assert predecessor is not None and predecessor.successor_id == new.key_id
        assert predecessor.expires_at == now + timedelta(hours=24)

        new_auth = await store.find_key_for_auth(new.key_id)
        old_auth = await store.find_key_for_auth(old.key_id)
        assert new_auth is not None and old_auth is not None
        assert HASHER.verify(plaintext, new_auth.digest)
        assert old_auth.successor_id == new.key_id
        backend.clock.advance(timedelta(hours=23))
        assert old_auth.rejection_reason(backend.clock()) is None  # both valid during the overlap
        assert new_auth.rejection_reason(backend.clock()) is None
        backend.clock.advance(timedelta(hours=1))
        assert old_auth.rejection_reason(backend.clock()) == "key expired"
        assert new_auth.rejection_reason(backend.clock()) is None

        with pytest.raises(Conflict, match="already been rotated"):
            await store.rotate_key(old.key_id, actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        # The overlap never extends a key's life, and the lifetime is capped by the current maximum.
        _, short = await store.create_key(consumer.id, "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL,
                                          ttl=timedelta(hours=2))
        _, short_next = await store.rotate_key(short.key_id, actor=ADMIN, hasher=HASHER,
                                               max_ttl=timedelta(hours=1), overlap=timedelta(days=2))
        assert (await store.get_key(short.key_id)).expires_at == short.expires_at  # type: ignore[union-attr]
        assert short_next.expires_at == backend.clock() + timedelta(hours=1)
        await store.revoke_key(short_next.key_id, actor=ADMIN)
        with pytest.raises(InvalidRequest, match="revoked"):
            await store.rotate_key(short_next.key_id, actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)

    backend.run(body)


def test_revocation_is_immediate_and_idempotent(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        consumer = await store.create_consumer("revoked", actor=ADMIN)
        _, key = await store.create_key(consumer.id, "admin", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        revoked = await store.revoke_key(key.key_id, actor=ADMIN)
        assert revoked.revoked_at == START and revoked.state(START) == "revoked"
        auth = await store.find_key_for_auth(key.key_id)
        assert auth is not None and auth.rejection_reason(START) == "key revoked"
        backend.clock.advance(timedelta(minutes=1))
        again = await store.revoke_key(key.key_id, actor=ADMIN)
        assert again.revoked_at == START  # unchanged
        with pytest.raises(NotFound):
            await store.revoke_key("000000000000", actor=ADMIN)
        assert [k.key_id for k in await store.list_keys(consumer.id)] == [key.key_id]

    backend.run(body)


def test_list_keys(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        one = await store.create_consumer("one", actor=ADMIN)
        two = await store.create_consumer("two", actor=ADMIN)
        _, a = await store.create_key(one.id, "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        backend.clock.advance(timedelta(seconds=1))
        _, b = await store.create_key(two.id, "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL)
        assert [k.key_id for k in await store.list_keys()] == [b.key_id, a.key_id]
        assert [k.key_id for k in await store.list_keys(one.id)] == [a.key_id]
        assert await store.get_key(a.key_id) == a

    backend.run(body)


def test_record_last_used(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        consumer = await store.create_consumer("busy", actor=ADMIN)
        keys = [(await store.create_key(consumer.id, "read", actor=ADMIN, hasher=HASHER, max_ttl=MAX_TTL))[1]
                for _ in range(3)]
        audit_before = len(await store.list_audit())
        t1 = START + timedelta(seconds=5)
        await store.record_last_used({keys[0].key_id: t1, keys[1].key_id: t1, "000000000000": t1})
        await store.record_last_used({keys[0].key_id: t1 - timedelta(seconds=1)})  # never moves backwards
        await store.record_last_used({})
        by_id = {k.key_id: k for k in await store.list_keys(consumer.id)}
        assert by_id[keys[0].key_id].last_used_at == t1
        assert by_id[keys[1].key_id].last_used_at == t1
        assert by_id[keys[2].key_id].last_used_at is None
        assert len(await store.list_audit()) == audit_before  # usage is not audited

    backend.run(body)


# -- audit -------------------------------------------------------------------------------------------------


def test_every_mutation_writes_one_audit_entry_without_secrets(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        actor = AuditActor("ops@example.com", "2001:db8::1", "req-42")
        role = await store.put_role("r", ["x:read"], actor=actor)
        await store.put_role("r", ["x:read", "x:write"], actor=actor)
        consumer = await store.create_consumer("audited", actor=actor, roles=[role.name])
        await store.update_consumer(consumer.id, actor=actor, plan="gold")
        plain1, key = await store.create_key(consumer.id, "write", actor=actor, hasher=HASHER, max_ttl=MAX_TTL)
        plain2, successor = await store.rotate_key(key.key_id, actor=actor, hasher=HASHER, max_ttl=MAX_TTL)
        await store.revoke_key(successor.key_id, actor=actor)
        await store.delete_consumer(consumer.id, actor=actor)
        await store.delete_role("r", actor=actor)

        entries = await store.list_audit()
        assert [(e.action, e.target) for e in entries] == [
            ("role.create", "role:r"),
            ("role.update", "role:r"),
            ("consumer.create", f"consumer:{consumer.id}"),
            ("consumer.update", f"consumer:{consumer.id}"),
            ("key.create", f"key:{key.key_id}"),
            ("key.rotate", f"key:{key.key_id}"),
            ("key.revoke", f"key:{successor.key_id}"),
            ("consumer.delete", f"consumer:{consumer.id}"),
            ("role.delete", "role:r"),
        ]
        assert [e.seq for e in entries] == list(range(1, 10))
        assert all((e.actor, e.client_ip, e.request_id) == ("ops@example.com", "2001:db8::1", "req-42")
                   for e in entries)
        assert entries[0].prev_hash == GENESIS_HASH
        assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(entries))
        assert entries[0].before is None and entries[0].after == {"name": "r", "permissions": ["x:read"],
                                                                   "description": ""}
        assert entries[3].before is not None and entries[3].before["plan"] is None
        assert entries[3].after is not None and entries[3].after["plan"] == "gold"
        assert entries[5].after is not None and entries[5].after["successor"]["key_id"] == successor.key_id
        assert entries[7].before is not None and entries[7].before["key_ids"] == sorted(
            [key.key_id, successor.key_id])
        assert entries[7].after is None
        assert (await store.list_audit(after_seq=7))[0].seq == 8
        assert len(await store.list_audit(limit=2)) == 2

        text_ = repr(entries)
        for plaintext in (plain1, plain2):
            assert plaintext not in text_ and plaintext[18:45] not in text_
        auth_digest = HASHER.digest(plain1)
        assert auth_digest.hex() not in text_ and repr(auth_digest) not in text_
        assert "digest" not in text_

    backend.run(body)


async def _some_history(store: IdentityStore) -> None:
    for index in range(5):
        await store.create_consumer(f"c{index}", actor=ADMIN, metadata={"n": index, "ünï": "cödé"})


def test_audit_chain_detects_an_edit(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        await _some_history(store)
        result = await store.verify_audit_chain()
        assert result.ok and result.checked == 5 and result.first_bad_seq is None
        entries = await store.list_audit()
        assert result.last_seq == 5 and result.last_hash == entries[-1].hash
        async with store.engine.begin() as connection:
            after = dict(entries[2].after or {})
            after["name"] = "mallory"
            await connection.execute(update(AuditRow).where(AuditRow.seq == 3).values(after=after))
        result = await store.verify_audit_chain()
        assert not result.ok and result.first_bad_seq == 3 and result.checked == 2
        assert result.reason is not None and "hash" in result.reason

    backend.run(body)


def test_audit_chain_detects_a_deletion(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        await _some_history(store)
        async with store.engine.begin() as connection:
            await connection.execute(delete(AuditRow).where(AuditRow.seq == 3))
        result = await store.verify_audit_chain()
        assert not result.ok and result.first_bad_seq == 3
        assert result.reason is not None and "missing" in result.reason

    backend.run(body)


def test_audit_chain_detects_a_rewritten_entry_and_reordering(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        await _some_history(store)
        async with store.engine.begin() as connection:
            # Swap the contents of two entries, keeping seq: the links break.
            rows = {row.seq: row for row in (await connection.execute(select(AuditRow.__table__))).all()}
            for seq, source in ((2, 4), (4, 2)):
                values = {k: v for k, v in rows[source]._mapping.items() if k != "seq"}
                await connection.execute(update(AuditRow).where(AuditRow.seq == seq).values(**values))
        result = await store.verify_audit_chain()
        assert not result.ok and result.first_bad_seq == 2

    backend.run(body)


def test_empty_chain_verifies(backend: Backend) -> None:
    result = backend.run(lambda store: store.verify_audit_chain())
    assert result.ok and result.checked == 0 and result.last_hash == GENESIS_HASH


def test_concurrent_writers_keep_the_chain_linear(backend: Backend) -> None:
    async def body(store: IdentityStore) -> None:
        created = await asyncio.gather(*(
            store.create_consumer(f"concurrent-{index:02d}", actor=AuditActor(f"writer-{index}"))
            for index in range(20)
        ))
        assert len({c.id for c in created}) == 20
        result = await store.verify_audit_chain()
        assert result.ok and result.checked == 20
        entries = await store.list_audit()
        assert [e.seq for e in entries] == list(range(1, 21))
        assert {e.actor for e in entries} == {f"writer-{index}" for index in range(20)}

    backend.run(body)


# -- engine ------------------------------------------------------------------------------------------------


def test_unreachable_database_is_store_unavailable_without_secrets() -> None:
    async def body() -> None:
        engine = create_engine("postgresql://bastion:hunter2-secret@127.0.0.1:1/identity")
        assert "hunter2" not in repr(engine) and "hunter2" not in repr(engine.url)
        try:
            store = IdentityStore(engine)
            with pytest.raises(StoreUnavailable) as caught:
                await store.find_key_for_auth("abcdefabcdef")
            assert "hunter2" not in str(caught.value) and "127.0.0.1" not in str(caught.value)
            with pytest.raises(StoreUnavailable):
                await store.create_consumer("x", actor=ADMIN)
        finally:
            await engine.dispose()

    asyncio.run(body())


@pytest.mark.parametrize("url", ["mysql://u:pw-secret@h/db", "sqlite://", "sqlite:///:memory:", "not a url"])
def test_unsupported_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(DatabaseUrlError) as caught:
        create_engine(url)
    assert "pw-secret" not in str(caught.value)


def test_sqlite_pragmas(tmp_path: Path) -> None:
    async def body() -> list[Any]:
        engine = create_engine(f"sqlite:///{tmp_path / 'p.db'}")
        try:
            async with engine.connect() as connection:
                return [(await connection.execute(text(f"PRAGMA {name}"))).scalar()
                        for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")]
        finally:
            await engine.dispose()

    assert asyncio.run(body()) == ["wal", 2, 1, 5000]
