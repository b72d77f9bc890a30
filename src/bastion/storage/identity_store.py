"""Consumers, roles and API keys in SQLite or PostgreSQL, every change audited in its own transaction.

Callers get frozen dataclasses, never ORM objects. Errors they may show a client are ``IdentityError``
subclasses with safe messages; a failing database is ``StoreUnavailable`` (the driver's text stays in the
chained cause, for the log only).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from typing import Any, Final

from sqlalchemy import Select, bindparam, delete, func, select, text, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bastion.identity.keys import KeyHasher, KeyLevel, display_prefix, generate_key
from bastion.storage import audit
from bastion.storage.audit import AuditActor, AuditEntry, AuditVerification, canonical_json
from bastion.storage.engine import single_statement_reader, writer
from bastion.storage.models import ApiKeyRow, AuditRow, ConsumerRow, RoleRow

__all__ = [
    "DEFAULT_KEY_OVERLAP",
    "DEFAULT_KEY_TTL",
    "UNSET",
    "AdminRole",
    "ApiKeyRecord",
    "AuditActor",
    "AuditEntry",
    "AuditVerification",
    "Conflict",
    "Consumer",
    "ConsumerStatus",
    "IdentityError",
    "IdentityStore",
    "InvalidRequest",
    "KeyAuthRecord",
    "NotFound",
    "Role",
    "StoreUnavailable",
]

DEFAULT_KEY_TTL: Final = timedelta(days=90)
DEFAULT_KEY_OVERLAP: Final = timedelta(hours=24)
_MAX_LIST = 1000
_MAX_ITEMS = 100
_MAX_METADATA_BYTES = 16384
_ROLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_PERMISSION = re.compile(r"[A-Za-z0-9_.:*/-]{1,200}")
_PLAN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")

# Role membership inside the consumers.roles JSON array, per dialect (used in joins and counts).
_ROLE_OF_CONSUMER = {
    "sqlite": "roles.name IN (SELECT value FROM json_each(consumers.roles))",
    "postgresql": "roles.name IN (SELECT json_array_elements_text(consumers.roles))",
}
_CONSUMERS_WITH_ROLE = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(consumers.roles) WHERE value = :role)",
    "postgresql": "EXISTS (SELECT 1 FROM json_array_elements_text(consumers.roles) AS r(v) WHERE r.v = :role)",
}


class IdentityError(ValueError):
    """A refused request. The message is safe to show the client."""


class NotFound(IdentityError):
    pass


class Conflict(IdentityError):
    pass


class InvalidRequest(IdentityError):
    pass


class StoreUnavailable(Exception):
    """The database failed or is unreachable. Callers fail closed (503)."""

    def __init__(self) -> None:
        super().__init__("the identity store is unavailable")


class ConsumerStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class AdminRole(StrEnum):
    """Roles on the admin API (not the gateway's RBAC roles)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class _Unset(Enum):
    UNSET = "UNSET"


UNSET: Final = _Unset.UNSET


@dataclass(frozen=True, slots=True)
class Consumer:
    id: str
    name: str
    status: ConsumerStatus
    roles: tuple[str, ...]
    admin_role: AdminRole | None
    metadata: dict[str, Any]
    allowed_cidrs: tuple[str, ...]
    plan: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    permissions: tuple[str, ...]
    description: str


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A key as the admin API shows it: no plaintext, no digest."""

    key_id: str
    consumer_id: str
    level: KeyLevel
    scopes: tuple[str, ...]
    display_prefix: str
    description: str
    allowed_cidrs: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    predecessor_id: str | None
    successor_id: str | None
    last_used_at: datetime | None

    def state(self, now: datetime) -> str:
        """``revoked``, ``expired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.expires_at else "active"


@dataclass(frozen=True, slots=True)
class KeyAuthRecord:
    """What the gateway needs to authenticate a request carrying a key.

    Rotation overlap needs no rule of its own: rotating sets the predecessor's ``expires_at`` to the end of
    the overlap, so ``expires_at`` alone decides; ``successor_id`` tells a key is being phased out.
    ``scopes`` empty means every permission of the consumer."""

    key_id: str
    digest: bytes = field(repr=False)
    level: KeyLevel
    scopes: frozenset[str]
    expires_at: datetime
    revoked_at: datetime | None
    successor_id: str | None
    key_allowed_cidrs: tuple[str, ...]
    consumer_id: str
    consumer_name: str
    consumer_status: ConsumerStatus
    consumer_roles: tuple[str, ...]
    admin_role: AdminRole | None
    plan: str | None
    consumer_allowed_cidrs: tuple[str, ...]
    permissions: frozenset[str]

    def rejection_reason(self, now: datetime) -> str | None:
        """None when the key may be used at ``now``; otherwise the reason, for the log only (clients get
        one code for every reason)."""
        if self.revoked_at is not None:
            return "key revoked"
        if now >= self.expires_at:
            return "key expired"
        if self.consumer_status is not ConsumerStatus.ACTIVE:
            return "consumer disabled"
        return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AuditedStore:
    """Tables behind an AsyncEngine whose changes are audited: read sessions, write transactions that hold
    the audit chain's lock, and the clock. ``clock`` returns timezone-aware UTC (tests inject it)."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._reads = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        self._writes = async_sessionmaker(writer(engine), expire_on_commit=False, autoflush=False)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        with _translated_errors():
            async with self._reads() as session:
                yield session

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction holding the audit chain's lock: writers are serialised, so the checks made
        inside (uniqueness, existence) cannot race and the chain stays linear."""
        with _translated_errors():
            async with self._writes.begin() as session:
                await audit.lock_chain(await session.connection())
                yield session

    async def _audit(self, session: AsyncSession, actor: AuditActor, action: str, target: str,
                     before: dict[str, Any] | None, after: dict[str, Any] | None, now: datetime) -> None:
        _check_actor(actor)
        await audit.append(session, actor=actor, action=action, target=target, before=before, after=after,
                           now=now)


class IdentityStore(AuditedStore):
    """Consumers, roles, API keys and the audit log."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], datetime] = _utcnow) -> None:
        super().__init__(engine, clock=clock)
        self._auth_query: Select[*tuple[Any, ...]] | None = None
        self._auth_engine = single_statement_reader(engine)

    # -- consumers -----------------------------------------------------------------------------------

    async def create_consumer(
        self,
        name: str,
        *,
        actor: AuditActor,
        roles: Sequence[str] = (),
        admin_role: AdminRole | str | None = None,
        status: ConsumerStatus | str = ConsumerStatus.ACTIVE,
        metadata: Mapping[str, Any] | None = None,
        allowed_cidrs: Sequence[str] = (),
        plan: str | None = None,
    ) -> Consumer:
        now = self._now()
        row = ConsumerRow(
            id=str(uuid.uuid4()), name=_consumer_name(name), status=_status(status), roles=_role_names(roles),
            admin_role=_admin_role(admin_role), meta=_metadata(metadata), allowed_cidrs=_cidrs(allowed_cidrs),
            plan=_plan(plan), created_at=now, updated_at=now,
        )
        async with self._write() as session:
            await _check_name_free(session, row.name)
            await _check_roles_exist(session, row.roles)
            session.add(row)
            await session.flush()
            consumer = _consumer(row)
            await self._audit(session, actor, "consumer.create", f"consumer:{row.id}", None,
                              _consumer_snapshot(consumer), now)
        return consumer

    async def get_consumer(self, consumer_id: str) -> Consumer | None:
        async with self._read() as session:
            row = await session.get(ConsumerRow, consumer_id)
            return None if row is None else _consumer(row)

    async def get_consumer_by_name(self, name: str) -> Consumer | None:
        async with self._read() as session:
            row = (await session.scalars(select(ConsumerRow).where(ConsumerRow.name == name))).first()
            return None if row is None else _consumer(row)

    async def list_consumers(self, *, after_name: str | None = None, limit: int = 100) -> list[Consumer]:
        """Consumers ordered by name; pass the last name seen as ``after_name`` for the next page."""
        query = select(ConsumerRow).order_by(ConsumerRow.name).limit(_limit(limit))
        if after_name is not None:
            query = query.where(ConsumerRow.name > after_name)
        async with self._read() as session:
            return [_consumer(row) for row in (await session.scalars(query)).all()]

    async def update_consumer(
        self,
        consumer_id: str,
        *,
        actor: AuditActor,
        name: str | _Unset = UNSET,
        status: ConsumerStatus | str | _Unset = UNSET,
        roles: Sequence[str] | _Unset = UNSET,
        admin_role: AdminRole | str | _Unset | None = UNSET,
        metadata: Mapping[str, Any] | _Unset | None = UNSET,
        allowed_cidrs: Sequence[str] | _Unset = UNSET,
        plan: str | _Unset | None = UNSET,
    ) -> Consumer:
        """Change the fields given; the others keep their values."""
        now = self._now()
        async with self._write() as session:
            row = await _consumer_row(session, consumer_id)
            before = _consumer_snapshot(_consumer(row))
            if not isinstance(name, _Unset):
                new_name = _consumer_name(name)
                if new_name != row.name:
                    await _check_name_free(session, new_name)
                row.name = new_name
            if not isinstance(status, _Unset):
                row.status = _status(status)
            if not isinstance(roles, _Unset):
                row.roles = _role_names(roles)
                await _check_roles_exist(session, row.roles)
            if not isinstance(admin_role, _Unset):
                row.admin_role = _admin_role(admin_role)
            if not isinstance(metadata, _Unset):
                row.meta = _metadata(metadata)
            if not isinstance(allowed_cidrs, _Unset):
                row.allowed_cidrs = _cidrs(allowed_cidrs)
            if not isinstance(plan, _Unset):
                row.plan = _plan(plan)
            row.updated_at = now
            await session.flush()
            consumer = _consumer(row)
            await self._audit(session, actor, "consumer.update", f"consumer:{row.id}", before,
                              _consumer_snapshot(consumer), now)
        return consumer

    async def delete_consumer(self, consumer_id: str, *, actor: AuditActor) -> None:
        """Delete a consumer and, with it, all its keys."""
        now = self._now()
        async with self._write() as session:
            row = await _consumer_row(session, consumer_id)
            before = _consumer_snapshot(_consumer(row))
            key_ids = (await session.scalars(
                select(ApiKeyRow.key_id).where(ApiKeyRow.consumer_id == consumer_id).order_by(ApiKeyRow.key_id)
            )).all()
            before["key_ids"] = list(key_ids)
            await session.execute(delete(ApiKeyRow).where(ApiKeyRow.consumer_id == consumer_id))
            await session.delete(row)
            await session.flush()
            await self._audit(session, actor, "consumer.delete", f"consumer:{consumer_id}", before, None, now)

    # -- roles ---------------------------------------------------------------------------------------

    async def put_role(
        self, name: str, permissions: Iterable[str], *, actor: AuditActor, description: str = ""
    ) -> Role:
        """Create the role or replace its permissions and description."""
        now = self._now()
        name = _role_name(name)
        new = Role(name=name, permissions=_permissions(permissions, "permission"),
                   description=_description(description))
        async with self._write() as session:
            row = await session.get(RoleRow, name)
            before = None if row is None else _role_snapshot(_role(row))
            if row is None:
                session.add(RoleRow(name=name, permissions=list(new.permissions), description=new.description))
            else:
                row.permissions = list(new.permissions)
                row.description = new.description
            await session.flush()
            await self._audit(session, actor, "role.create" if before is None else "role.update", f"role:{name}",
                              before, _role_snapshot(new), now)
        return new

    async def get_role(self, name: str) -> Role | None:
        async with self._read() as session:
            row = await session.get(RoleRow, name)
            return None if row is None else _role(row)

    async def list_roles(self) -> list[Role]:
        async with self._read() as session:
            return [_role(row) for row in (await session.scalars(select(RoleRow).order_by(RoleRow.name))).all()]

    async def delete_role(self, name: str, *, actor: AuditActor) -> None:
        """Delete a role no consumer holds (Conflict otherwise: take it from them first)."""
        now = self._now()
        async with self._write() as session:
            row = await session.get(RoleRow, name)
            if row is None:
                raise NotFound("no such role")
            clause = text(_CONSUMERS_WITH_ROLE[self._engine.dialect.name]).bindparams(role=name)
            holders = (await session.execute(select(ConsumerRow.id).where(clause).limit(1))).first()
            if holders is not None:
                raise Conflict(f"role {name!r} is still granted to consumers")
            before = _role_snapshot(_role(row))
            await session.delete(row)
            await session.flush()
            await self._audit(session, actor, "role.delete", f"role:{name}", before, None, now)

    # -- API keys ------------------------------------------------------------------------------------

    async def create_key(
        self,
        consumer_id: str,
        level: KeyLevel | str,
        *,
        actor: AuditActor,
        hasher: KeyHasher,
        max_ttl: timedelta,
        ttl: timedelta | None = None,
        scopes: Iterable[str] = (),
        allowed_cidrs: Sequence[str] = (),
        description: str = "",
    ) -> tuple[str, ApiKeyRecord]:
        """Issue a key. Returns the plaintext, to be shown once: only its HMAC digest is stored.
        Every key expires: after ``ttl`` (default 90 days, at most ``max_ttl``)."""
        now = self._now()
        lifetime = _ttl(ttl, max_ttl)
        level = _level(level)
        scope_list = _permissions(scopes, "scope")
        cidrs = _cidrs(allowed_cidrs)
        note = _description(description)
        async with self._write() as session:
            await _consumer_row(session, consumer_id)
            plaintext, row = _new_key_row(consumer_id, level, scope_list, cidrs, note, now, lifetime, hasher)
            session.add(row)
            await session.flush()
            record = _key(row)
            await self._audit(session, actor, "key.create", f"key:{row.key_id}", None, _key_snapshot(record), now)
        return plaintext, record

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        async with self._read() as session:
            row = await session.get(ApiKeyRow, key_id)
            return None if row is None else _key(row)

    async def list_keys(self, consumer_id: str | None = None, *, limit: int = _MAX_LIST) -> list[ApiKeyRecord]:
        """Keys, newest first, of one consumer or of all."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.key_id).limit(_limit(limit))
        if consumer_id is not None:
            query = query.where(ApiKeyRow.consumer_id == consumer_id)
        async with self._read() as session:
            return [_key(row) for row in (await session.scalars(query)).all()]

    async def rotate_key(
        self,
        key_id: str,
        *,
        actor: AuditActor,
        hasher: KeyHasher,
        max_ttl: timedelta,
        overlap: timedelta = DEFAULT_KEY_OVERLAP,
        ttl: timedelta | None = None,
    ) -> tuple[str, ApiKeyRecord]:
        """Issue a successor with the same consumer, level, scopes, CIDRs and description, and let the old
        key live on for ``overlap`` (never longer than it would have). ``ttl`` defaults to the old key's
        original lifetime, capped at ``max_ttl``. Returns the successor's plaintext, shown once."""
        if overlap < timedelta(0):
            raise InvalidRequest("the overlap cannot be negative")
        now = self._now()
        async with self._write() as session:
            old = await _key_row(session, key_id)
            if old.revoked_at is not None:
                raise InvalidRequest("a revoked key cannot be rotated")
            if old.successor_id is not None:
                raise Conflict("the key has already been rotated")
            if old.expires_at <= now:
                raise InvalidRequest("an expired key cannot be rotated")
            lifetime = _ttl(ttl if ttl is not None else min(old.expires_at - old.created_at, max_ttl), max_ttl)
            before = _key_snapshot(_key(old))
            plaintext, new = _new_key_row(old.consumer_id, KeyLevel(old.level), tuple(old.scopes),
                                          tuple(old.allowed_cidrs), old.description, now, lifetime, hasher)
            new.predecessor_id = old.key_id
            old.successor_id = new.key_id
            old.expires_at = min(old.expires_at, now + overlap)
            session.add(new)
            await session.flush()
            predecessor, successor = _key(old), _key(new)
            await self._audit(session, actor, "key.rotate", f"key:{key_id}", before,
                              {**_key_snapshot(predecessor), "successor": _key_snapshot(successor)}, now)
        return plaintext, successor

    async def revoke_key(self, key_id: str, *, actor: AuditActor) -> ApiKeyRecord:
        """Revoke now. Revoking a revoked key changes nothing (but is still audited)."""
        now = self._now()
        async with self._write() as session:
            row = await _key_row(session, key_id)
            before = _key_snapshot(_key(row))
            if row.revoked_at is None:
                row.revoked_at = now
                await session.flush()
            record = _key(row)
            await self._audit(session, actor, "key.revoke", f"key:{key_id}", before, _key_snapshot(record), now)
        return record

    async def find_key_for_auth(self, key_id: str) -> KeyAuthRecord | None:
        """The key, its consumer and the consumer's effective permissions, in one query (one row per role).
        Validity (revoked, expired, consumer disabled) is the caller's decision: see ``rejection_reason``."""
        query = self._auth_query
        if query is None:
            query = self._auth_query = _auth_query(self._engine.dialect.name)
        with _translated_errors():
            async with self._auth_engine.connect() as connection:
                rows = (await connection.execute(query, {"key_id": key_id})).all()
        if not rows:
            return None
        first = rows[0]
        permissions: set[str] = set()
        for row in rows:
            if row.permissions:
                permissions.update(row.permissions)
        return KeyAuthRecord(
            key_id=first.key_id, digest=bytes(first.digest), level=KeyLevel(first.level),
            scopes=frozenset(first.scopes), expires_at=first.expires_at, revoked_at=first.revoked_at,
            successor_id=first.successor_id, key_allowed_cidrs=tuple(first.allowed_cidrs),
            consumer_id=first.consumer_id, consumer_name=first.consumer_name,
            consumer_status=ConsumerStatus(first.consumer_status), consumer_roles=tuple(first.consumer_roles),
            admin_role=None if first.admin_role is None else AdminRole(first.admin_role), plan=first.plan,
            consumer_allowed_cidrs=tuple(first.consumer_allowed_cidrs), permissions=frozenset(permissions),
        )

    async def record_last_used(self, batch: Mapping[str, datetime]) -> None:
        """Store last-use times gathered by the gateway, in one batched UPDATE (not audited: it is usage,
        not a change). A time never moves backwards."""
        if not batch:
            return
        if any(used.tzinfo is None for used in batch.values()):
            raise ValueError("last-use times must be timezone-aware")
        params = [{"b_key_id": key_id, "b_time": used.astimezone(UTC)} for key_id, used in batch.items()]
        statement = (
            update(ApiKeyRow)
            .where(ApiKeyRow.key_id == bindparam("b_key_id"))
            .where(ApiKeyRow.last_used_at.is_(None) | (ApiKeyRow.last_used_at < bindparam("b_time")))
            .values(last_used_at=bindparam("b_time"))
        )
        with _translated_errors():
            async with writer(self._engine).begin() as connection:
                await connection.execute(statement, params)

    # -- audit ---------------------------------------------------------------------------------------

    async def list_audit(self, after_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Entries with ``seq > after_seq``, oldest first."""
        query = (select(AuditRow).where(AuditRow.seq > after_seq).order_by(AuditRow.seq)
                 .limit(_limit(limit)))
        async with self._read() as session:
            return [audit.to_entry(row) for row in (await session.scalars(query)).all()]

    async def latest_audit_seq(self) -> int:
        """The newest audit entry's sequence number (0 when empty): every identity change bumps it, so
        gateway nodes poll it to notice changes made elsewhere (another node, the CLI)."""
        async with self._read() as session:
            value = await session.scalar(select(func.max(AuditRow.seq)))
            return int(value or 0)

    async def verify_audit_chain(self) -> AuditVerification:
        async with self._read() as session:
            return await audit.verify(session)


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Database failures as client-safe errors; the driver's text stays in ``__cause__`` for the log."""
    try:
        yield
    except IntegrityError as exc:
        raise Conflict("the change conflicts with existing data") from exc
    except DataError as exc:
        raise InvalidRequest("the request contains a value the store cannot hold") from exc
    except (DBAPIError, PoolTimeout, OSError) as exc:  # OSError covers refused connections and timeouts
        raise StoreUnavailable from exc


# -- queries ---------------------------------------------------------------------------------------------


def _auth_query(dialect: str) -> Select[*tuple[Any, ...]]:
    return (
        select(
            ApiKeyRow.key_id, ApiKeyRow.digest, ApiKeyRow.level, ApiKeyRow.scopes, ApiKeyRow.expires_at,
            ApiKeyRow.revoked_at, ApiKeyRow.successor_id, ApiKeyRow.allowed_cidrs, ApiKeyRow.consumer_id,
            ConsumerRow.name.label("consumer_name"), ConsumerRow.status.label("consumer_status"),
            ConsumerRow.roles.label("consumer_roles"), ConsumerRow.admin_role, ConsumerRow.plan,
            ConsumerRow.allowed_cidrs.label("consumer_allowed_cidrs"), RoleRow.permissions,
        )
        .select_from(ApiKeyRow)
        .join(ConsumerRow, ConsumerRow.id == ApiKeyRow.consumer_id)
        .outerjoin(RoleRow, text(_ROLE_OF_CONSUMER[dialect]))
        .where(ApiKeyRow.key_id == bindparam("key_id"))
    )


async def _consumer_row(session: AsyncSession, consumer_id: str) -> ConsumerRow:
    row = await session.get(ConsumerRow, consumer_id)
    if row is None:
        raise NotFound("no such consumer")
    return row


async def _key_row(session: AsyncSession, key_id: str) -> ApiKeyRow:
    row = await session.get(ApiKeyRow, key_id)
    if row is None:
        raise NotFound("no such key")
    return row


async def _check_name_free(session: AsyncSession, name: str) -> None:
    taken = (await session.scalars(select(ConsumerRow.id).where(ConsumerRow.name == name))).first()
    if taken is not None:
        raise Conflict(f"a consumer named {name!r} already exists")


async def _check_roles_exist(session: AsyncSession, roles: Sequence[str]) -> None:
    if not roles:
        return
    known = set((await session.scalars(select(RoleRow.name).where(RoleRow.name.in_(roles)))).all())
    missing = [role for role in roles if role not in known]
    if missing:
        raise InvalidRequest(f"unknown role(s): {', '.join(missing)}")


def _new_key_row(consumer_id: str, level: KeyLevel, scopes: Sequence[str], cidrs: Sequence[str],
                 description: str, now: datetime, lifetime: timedelta, hasher: KeyHasher) -> tuple[str, ApiKeyRow]:
    key = generate_key(level)
    row = ApiKeyRow(
        key_id=key.key_id, consumer_id=consumer_id, level=level.value, scopes=list(scopes),
        digest=hasher.digest(key.plaintext), display_prefix=display_prefix(key.key_id, level),
        description=description, allowed_cidrs=list(cidrs), created_at=now, expires_at=now + lifetime,
        revoked_at=None, predecessor_id=None, successor_id=None, last_used_at=None,
    )
    return key.plaintext, row


# -- rows to records and audit snapshots (no secrets, no digests) ----------------------------------------


def _consumer(row: ConsumerRow) -> Consumer:
    return Consumer(
        id=row.id, name=row.name, status=ConsumerStatus(row.status), roles=tuple(row.roles),
        admin_role=None if row.admin_role is None else AdminRole(row.admin_role), metadata=dict(row.meta),
        allowed_cidrs=tuple(row.allowed_cidrs), plan=row.plan, created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _role(row: RoleRow) -> Role:
    return Role(name=row.name, permissions=tuple(row.permissions), description=row.description)


def _key(row: ApiKeyRow) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row.key_id, consumer_id=row.consumer_id, level=KeyLevel(row.level), scopes=tuple(row.scopes),
        display_prefix=row.display_prefix, description=row.description, allowed_cidrs=tuple(row.allowed_cidrs),
        created_at=row.created_at, expires_at=row.expires_at, revoked_at=row.revoked_at,
        predecessor_id=row.predecessor_id, successor_id=row.successor_id, last_used_at=row.last_used_at,
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else audit.format_time(value)


def _consumer_snapshot(consumer: Consumer) -> dict[str, Any]:
    return {
        "id": consumer.id, "name": consumer.name, "status": consumer.status.value, "roles": list(consumer.roles),
        "admin_role": None if consumer.admin_role is None else consumer.admin_role.value,
        "metadata": consumer.metadata, "allowed_cidrs": list(consumer.allowed_cidrs), "plan": consumer.plan,
    }


def _role_snapshot(role: Role) -> dict[str, Any]:
    return {"name": role.name, "permissions": list(role.permissions), "description": role.description}


def _key_snapshot(key: ApiKeyRecord) -> dict[str, Any]:
    # Deliberately field by field: a new secret-bearing field must never reach the audit log by default.
    return {
        "key_id": key.key_id, "consumer_id": key.consumer_id, "level": key.level.value,
        "scopes": list(key.scopes), "display_prefix": key.display_prefix, "description": key.description,
        "allowed_cidrs": list(key.allowed_cidrs), "created_at": _iso(key.created_at),
        "expires_at": _iso(key.expires_at), "revoked_at": _iso(key.revoked_at),
        "predecessor_id": key.predecessor_id, "successor_id": key.successor_id,
    }


# -- input validation (messages are shown to clients) ----------------------------------------------------


def _check_actor(actor: AuditActor) -> None:
    for value, size in ((actor.actor, 200), (actor.client_ip, 64), (actor.request_id, 128)):
        if value is not None and (not isinstance(value, str) or len(value) > size or not value.isprintable()):
            raise InvalidRequest("the audit actor, client address or request id is too long or not printable")
    if not actor.actor:
        raise InvalidRequest("changes need an actor for the audit log")


def _limit(limit: int) -> int:
    if limit < 1:
        raise InvalidRequest("limit must be at least 1")
    return min(limit, _MAX_LIST)


def _consumer_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or name.strip() != name or not name.isprintable():
        raise InvalidRequest("a consumer name is 1-200 printable characters without surrounding spaces")
    return name


def _role_name(name: str) -> str:
    if not isinstance(name, str) or not _ROLE_NAME.fullmatch(name):
        raise InvalidRequest("a role name is 1-100 letters, digits, '_', '.', ':' or '-'")
    return name


def _role_names(roles: Sequence[str]) -> list[str]:
    if isinstance(roles, str):
        raise InvalidRequest("roles must be a list of role names")
    names = sorted({_role_name(role) for role in roles})
    if len(names) > _MAX_ITEMS:
        raise InvalidRequest(f"at most {_MAX_ITEMS} roles")
    return names


def _permissions(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidRequest(f"{what}s must be a list")
    result = set()
    for value in values:
        if not isinstance(value, str) or not _PERMISSION.fullmatch(value):
            raise InvalidRequest(f"a {what} is 1-200 letters, digits or '_.:*/-' (e.g. orders:read)")
        result.add(value)
    if len(result) > _MAX_ITEMS:
        raise InvalidRequest(f"at most {_MAX_ITEMS} {what}s")
    return tuple(sorted(result))


def _status(status: ConsumerStatus | str) -> str:
    try:
        return ConsumerStatus(status).value
    except ValueError:
        raise InvalidRequest("status must be 'active' or 'disabled'") from None


def _admin_role(role: AdminRole | str | None) -> str | None:
    if role is None:
        return None
    try:
        return AdminRole(role).value
    except ValueError:
        raise InvalidRequest("admin_role must be 'admin', 'operator', 'auditor' or null") from None


def _level(level: KeyLevel | str) -> KeyLevel:
    try:
        return KeyLevel(level)
    except ValueError:
        raise InvalidRequest("level must be 'read', 'write' or 'admin'") from None


def _plan(plan: str | None) -> str | None:
    if plan is not None and (not isinstance(plan, str) or not _PLAN.fullmatch(plan)):
        raise InvalidRequest("a plan name is 1-100 letters, digits, '_', '.', ':' or '-'")
    return plan


def _description(description: str) -> str:
    if not isinstance(description, str) or len(description) > 1000 or not description.isprintable():
        raise InvalidRequest("a description is at most 1000 printable characters")
    return description


def _cidrs(values: Sequence[str]) -> list[str]:
    if isinstance(values, str):
        raise InvalidRequest("allowed_cidrs must be a list")
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value, strict=False)))
        except (TypeError, ValueError):
            raise InvalidRequest(f"not an IP address or CIDR: {str(value)[:64]!r}") from None
    if len(networks) > _MAX_ITEMS:
        raise InvalidRequest(f"at most {_MAX_ITEMS} CIDRs")
    return sorted(set(networks))


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(key, str) for key in metadata):
        raise InvalidRequest("metadata must be an object with string keys")
    try:
        encoded = canonical_json(dict(metadata))
    except (TypeError, ValueError):
        raise InvalidRequest("metadata must be plain JSON (objects, arrays, strings, numbers, booleans, null)") \
            from None
    if len(encoded.encode("utf-8")) > _MAX_METADATA_BYTES:
        raise InvalidRequest(f"metadata is limited to {_MAX_METADATA_BYTES} bytes of JSON")
    return dict(json.loads(encoded))  # exactly what the database will give back


def _ttl(ttl: timedelta | None, max_ttl: timedelta) -> timedelta:
    if max_ttl <= timedelta(0):
        raise InvalidRequest("the maximum key lifetime must be positive")
    if ttl is None:
        return min(DEFAULT_KEY_TTL, max_ttl)
    if ttl <= timedelta(0):
        raise InvalidRequest("a key's lifetime must be positive")
    if ttl > max_ttl:
        raise InvalidRequest(f"a key's lifetime is at most {_days(max_ttl)} (asked: {_days(ttl)})")
    return ttl


def _days(value: timedelta) -> str:
    days = value.total_seconds() / 86400
    return f"{days:g} days" if days >= 1 else f"{math.ceil(value.total_seconds() / 3600)} hours"
