"""The authorization server's tables: clients, authorization codes, refresh-token families, issued access-token
ids, revocations and signing keys, on the identity store's engine (SQLite or PostgreSQL).

Two kinds of writes, deliberately different:

- Admin changes (clients, signing keys) run like the IdentityStore's: one transaction holding the audit
  chain's lock, one audit entry each, snapshots without secrets or digests.
- Token traffic (codes, refresh tokens, access-token records, revocations) never touches the audit log:
  every audit entry empties every node's API-key cache. Its races are settled in the database: a code or a
  refresh token is consumed by a conditional ``UPDATE ... WHERE used_at IS NULL`` whose row count names the
  single winner; everything touching one refresh family runs under that family's lock (an advisory lock on
  PostgreSQL; SQLite writers are serialised by ``BEGIN IMMEDIATE``), so a family revoked by one request
  cannot gain a live token from a concurrent one; revocations are appended under one lock so that their ids
  become visible in order and a poller's cursor never skips one.
- Revoking all a client holds (its client or consumer was disabled, or is being deleted) is a sweep, not
  audited itself (the change that called for it is): it first waits for every token write in flight for the
  client (a row lock on the client, which each such write holds a share of through its foreign key), then
  revokes what it finds. A token write that comes after checks, once its row is in, whether the client and
  its consumer are still active, and revokes what it wrote if not: nothing issued around the change escapes.

Secrets, codes and refresh tokens are stored as HMAC digests under the key pepper (``KeyHasher``); the
plaintext exists only in the response that hands it out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from bastion.identity.keys import KeyHasher
from bastion.oauth.server.secrets import new_client_id, new_client_secret
from bastion.storage import audit
from bastion.storage.audit import AuditActor
from bastion.storage.engine import writer
from bastion.storage.identity_store import (
    AuditedStore,
    Conflict,
    IdentityError,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
    _limit,
    _permissions,
    _translated_errors,
)
from bastion.storage.models import (
    ConsumerRow,
    OAuthAccessTokenRow,
    OAuthAuthorizationCodeRow,
    OAuthClientRow,
    OAuthRefreshTokenRow,
    OAuthRevocationRow,
    OAuthSigningKeyRow,
    RoleRow,
)

__all__ = [
    "GRANT_TYPES",
    "AuditActor",
    "ClientAuthRecord",
    "ClientKind",
    "CodeRecord",
    "Conflict",
    "IdentityError",
    "InvalidRequest",
    "NotFound",
    "OAuthClient",
    "OAuthStore",
    "RefreshRecord",
    "RefreshRotation",
    "SigningKeyMaterial",
    "SigningKeyRecord",
    "StoreUnavailable",
]

GRANT_TYPES: Final = frozenset({"client_credentials", "authorization_code", "refresh_token"})
CLIENT_STATUSES: Final = frozenset({"active", "disabled"})

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_PRIVATE_USE_SCHEME = re.compile(r"[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+")  # reverse domain name (RFC 8252 7.1)
_CODE_CHALLENGE = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_MAX_REDIRECT_URI = 2000
_MAX_REDIRECT_URIS = 20
_MAX_SECRET_LENGTH = 256
_MAX_JTI = 128
_MAX_FAMILY_ID = 64
_IN_CHUNK = 500
_FAMILY_CHUNK = 200  # family locks per transaction of a sweep (each one is an entry in PostgreSQL's lock table)
# PostgreSQL advisory lock keys; any constants distinct from the audit chain's and the migration's.
_REVOCATION_LOCK = 0x6F61757468526576
_FAMILY_LOCK_NAMESPACE = b"bastion oauth refresh family\x00"


class ClientKind(StrEnum):
    CONFIDENTIAL = "confidential"
    PUBLIC = "public"


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """A client as the admin API shows it: no secret, no digest."""

    client_id: str
    consumer_id: str
    name: str
    kind: ClientKind
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]  # the most this client may be granted
    redirect_uris: tuple[str, ...]
    status: str  # "active" | "disabled"
    created_at: datetime
    updated_at: datetime
    secret_rotated_at: datetime | None
    previous_secret_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class ClientAuthRecord:
    client: OAuthClient
    consumer_name: str
    consumer_active: bool
    permissions: frozenset[str]  # union of the consumer's roles' permissions


@dataclass(frozen=True, slots=True)
class CodeRecord:
    client_id: str
    redirect_uri: str
    code_challenge: str
    scopes: tuple[str, ...]
    subject: str
    reused: bool  # True: this code had already been redeemed
    family_id: str | None  # the refresh family created by the first redemption
    # On reuse the store has already revoked that family: its access tokens (jti, exp), to broadcast.
    revoked_access_tokens: tuple[tuple[str, datetime], ...] = ()


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    family_id: str
    client_id: str
    subject: str
    scopes: tuple[str, ...]
    family_expires_at: datetime


@dataclass(frozen=True, slots=True)
class RefreshRotation:
    outcome: Literal["rotated", "reused", "invalid"]
    record: RefreshRecord | None  # set when rotated
    revoked_access_tokens: tuple[tuple[str, datetime], ...]  # (jti, exp) revoked because of reuse


@dataclass(frozen=True, slots=True)
class SigningKeyMaterial:
    """A freshly generated signing key, private part already encrypted (see ``keys.py``)."""

    kid: str
    algorithm: str
    encrypted_private_key: bytes = field(repr=False)
    public_jwk: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A stored signing key. ``encrypted_private_key`` is empty once the key is retired: it never signs again."""

    kid: str
    algorithm: str
    state: Literal["next", "active", "retired"]
    encrypted_private_key: bytes = field(repr=False)
    public_jwk: dict[str, Any]
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    keep_until: datetime | None


_INVALID_ROTATION: Final = RefreshRotation("invalid", None, ())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OAuthStore(AuditedStore):
    """The OAuth tables. Admin changes are audited like IdentityStore's (``_write``); token traffic uses
    ``_token_write``/``_token_read``, which take no audit lock and write no audit entry."""

    def __init__(self, engine: AsyncEngine, hasher: KeyHasher, *,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        super().__init__(engine, clock=clock)
        self._hasher = hasher
        self._writer = writer(engine)
        self._postgres = engine.dialect.name == "postgresql"

    # -- transactions --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _token_write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction for token traffic: no audit, no chain lock."""
        with _translated_errors():
            async with self._writer.begin() as connection:
                yield connection

    @asynccontextmanager
    async def _token_read(self) -> AsyncIterator[AsyncConnection]:
        with _translated_errors():
            async with self._engine.connect() as connection:
                yield connection

    async def _lock_family(self, connection: AsyncConnection, family_id: str) -> None:
        if self._postgres:
            key = int.from_bytes(hashlib.sha256(_FAMILY_LOCK_NAMESPACE + family_id.encode()).digest()[:8], "big",
                                 signed=True)
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    async def _client_active(self, connection: AsyncConnection, client_id: str) -> bool:
        """Whether the client and its consumer are active. Token writes ask after inserting their row: the
        insert waits for a sweep that holds the client's row (see ``_revoke_clients``), so a status changed
        before that sweep is seen here."""
        clients = OAuthClientRow
        found = (await connection.execute(
            select(clients.status, ConsumerRow.status).join(ConsumerRow, ConsumerRow.id == clients.consumer_id)
            .where(clients.client_id == client_id))).first()
        return found is not None and found[0] == "active" and found[1] == "active"

    async def _insert_revocations(self, connection: AsyncConnection, entries: Iterable[tuple[str, datetime]],
                                  now: datetime) -> None:
        """Append revocations (idempotent per jti). Taken last in any transaction, after every other lock."""
        wanted: dict[str, datetime] = {}
        for jti, expires_at in entries:
            if _aware(expires_at, "expires_at") > now:  # an expired token needs no revocation
                wanted[_jti(jti)] = expires_at
        if not wanted:
            return
        if self._postgres:
            # Serialise appends until commit: ids then become visible in the order they were taken.
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _REVOCATION_LOCK})
        jtis = list(wanted)
        for start in range(0, len(jtis), _IN_CHUNK):
            chunk = jtis[start:start + _IN_CHUNK]
            existing = (await connection.execute(
                select(OAuthRevocationRow.jti).where(OAuthRevocationRow.jti.in_(chunk)))).scalars().all()
            for jti in existing:
                del wanted[jti]
        if wanted:
            await connection.execute(insert(OAuthRevocationRow), [
                {"jti": jti, "expires_at": expires_at, "revoked_at": now} for jti, expires_at in wanted.items()])

    # -- clients -------------------------------------------------------------------------------------

    async def create_client(self, *, consumer_id: str, name: str, kind: ClientKind | str,
                            grant_types: Sequence[str], scopes: Sequence[str], redirect_uris: Sequence[str],
                            actor: AuditActor) -> tuple[OAuthClient, str | None]:
        """A new client and, for a confidential one, its secret (shown once, stored as a digest only)."""
        now = self._now()
        client_kind = _kind(kind)
        grants = _grant_types(grant_types)
        uris = _redirect_uris(redirect_uris)
        _check_client_shape(client_kind, grants, uris)
        secret = new_client_secret() if client_kind is ClientKind.CONFIDENTIAL else None
        row = OAuthClientRow(
            client_id=new_client_id(), consumer_id=consumer_id, name=_client_name(name), kind=client_kind.value,
            grant_types=list(grants), scopes=list(_permissions(scopes, "scope")), redirect_uris=list(uris),
            status="active", secret_digest=None if secret is None else self._hasher.digest(secret),
            previous_secret_digest=None, previous_secret_expires_at=None, secret_rotated_at=None,
            created_at=now, updated_at=now,
        )
        async with self._write() as session:
            if not isinstance(consumer_id, str) or await session.get(ConsumerRow, consumer_id) is None:
                raise NotFound("no such consumer")
            session.add(row)
            await session.flush()
            client = _client(row)
            await self._audit(session, actor, "oauth_client.create", f"oauth_client:{row.client_id}", None,
                              _client_snapshot(client), now)
        return client, secret

    async def get_client(self, client_id: str) -> OAuthClient | None:
        async with self._read() as session:
            row = await session.get(OAuthClientRow, client_id)
            return None if row is None else _client(row)

    async def list_clients(self, consumer_id: str | None = None, *, limit: int = 100) -> list[OAuthClient]:
        """Clients, oldest first, optionally of one consumer."""
        query = (select(OAuthClientRow).order_by(OAuthClientRow.created_at, OAuthClientRow.client_id)
                 .limit(_limit(limit)))
        if consumer_id is not None:
            query = query.where(OAuthClientRow.consumer_id == consumer_id)
        async with self._read() as session:
            return [_client(row) for row in (await session.scalars(query)).all()]

    async def update_client(self, client_id: str, *, actor: AuditActor, name: str | None = None,
                            grant_types: Sequence[str] | None = None, scopes: Sequence[str] | None = None,
                            redirect_uris: Sequence[str] | None = None, status: str | None = None) -> OAuthClient:
        """Change the fields given (None: keep). The kind of a client never changes."""
        now = self._now()
        async with self._write() as session:
            row = await _client_row(session, client_id)
            before = _client_snapshot(_client(row))
            if name is not None:
                row.name = _client_name(name)
            if grant_types is not None:
                row.grant_types = list(_grant_types(grant_types))
            if scopes is not None:
                row.scopes = list(_permissions(scopes, "scope"))
            if redirect_uris is not None:
                row.redirect_uris = list(_redirect_uris(redirect_uris))
            if status is not None:
                row.status = _client_status(status)
            _check_client_shape(ClientKind(row.kind), tuple(row.grant_types), tuple(row.redirect_uris))
            row.updated_at = now
            await session.flush()
            client = _client(row)
            await self._audit(session, actor, "oauth_client.update", f"oauth_client:{client_id}", before,
                              _client_snapshot(client), now)
        return client

    async def rotate_client_secret(self, client_id: str, *, actor: AuditActor,
                                   overlap: timedelta) -> tuple[OAuthClient, str]:
        """A new secret; the old one keeps working for ``overlap`` (zero: not at all). Only one previous
        secret is kept: rotating again during an overlap ends the older secret's at once."""
        if overlap < timedelta(0):
            raise InvalidRequest("the overlap cannot be negative")
        now = self._now()
        secret = new_client_secret()
        async with self._write() as session:
            row = await _client_row(session, client_id)
            if row.kind != ClientKind.CONFIDENTIAL.value:
                raise InvalidRequest("a public client has no secret")
            before = _client_snapshot(_client(row))
            if overlap > timedelta(0) and row.secret_digest is not None:
                row.previous_secret_digest = row.secret_digest
                row.previous_secret_expires_at = now + overlap
            else:
                row.previous_secret_digest = None
                row.previous_secret_expires_at = None
            row.secret_digest = self._hasher.digest(secret)
            row.secret_rotated_at = now
            row.updated_at = now
            await session.flush()
            client = _client(row)
            await self._audit(session, actor, "oauth_client.rotate_secret", f"oauth_client:{client_id}", before,
                              _client_snapshot(client), now)
        return client, secret

    async def delete_client(self, client_id: str, *, actor: AuditActor) -> list[tuple[str, datetime]]:
        """Delete the client with its codes and refresh tokens. Its unexpired access tokens are added to the
        revocation table and returned (jti, exp), for the caller to broadcast."""
        now = self._now()
        async with self._write() as session:
            # The row lock waits for token writes in flight for this client (their foreign key holds a share
            # lock on it) and makes later ones fail, so no access token escapes the list below.
            row = (await session.scalars(
                select(OAuthClientRow).where(OAuthClientRow.client_id == client_id).with_for_update())).first()
            if row is None:
                raise NotFound("no such client")
            before = _client_snapshot(_client(row))
            connection = await session.connection()
            tokens = [(jti, expires_at) for jti, expires_at in (await connection.execute(
                select(OAuthAccessTokenRow.jti, OAuthAccessTokenRow.expires_at)
                .where(OAuthAccessTokenRow.client_id == client_id, OAuthAccessTokenRow.expires_at > now)
                .order_by(OAuthAccessTokenRow.jti))).all()]
            for table in (OAuthAuthorizationCodeRow, OAuthRefreshTokenRow, OAuthAccessTokenRow):
                await connection.execute(delete(table).where(table.client_id == client_id))
            await connection.execute(delete(OAuthClientRow).where(OAuthClientRow.client_id == client_id))
            await self._insert_revocations(connection, tokens, now)
            before["revoked_access_tokens"] = len(tokens)
            await self._audit(session, actor, "oauth_client.delete", f"oauth_client:{client_id}", before, None,
                              now)
        return tokens

    async def _auth_lookup(self, client_id: str) -> tuple[ClientAuthRecord, OAuthClientRow] | None:
        if not isinstance(client_id, str) or len(client_id) > 64:
            return None
        async with self._read() as session:
            found = (await session.execute(
                select(OAuthClientRow, ConsumerRow.name, ConsumerRow.status, ConsumerRow.roles)
                .join(ConsumerRow, ConsumerRow.id == OAuthClientRow.consumer_id)
                .where(OAuthClientRow.client_id == client_id))).first()
            if found is None:
                return None
            row, consumer_name, consumer_status, roles = found
            permissions: set[str] = set()
            if roles:
                for granted in (await session.scalars(
                        select(RoleRow.permissions).where(RoleRow.name.in_(list(roles))))).all():
                    permissions.update(granted)
        record = ClientAuthRecord(client=_client(row), consumer_name=consumer_name,
                                  consumer_active=consumer_status == "active", permissions=frozenset(permissions))
        return record, row

    async def client_for_auth(self, client_id: str) -> ClientAuthRecord | None:
        """The client, its consumer and the consumer's permissions, without checking any secret (public
        clients). Whether the client and consumer are active is the caller's decision."""
        found = await self._auth_lookup(client_id)
        return None if found is None else found[0]

    async def verify_client_secret(self, client_id: str, secret: str) -> ClientAuthRecord | None:
        """The record when ``secret`` is the client's current secret, or its previous one within the overlap,
        and the client (confidential) and its consumer are active; None otherwise, whatever the reason."""
        found = await self._auth_lookup(client_id)
        if found is None or not isinstance(secret, str) or len(secret) > _MAX_SECRET_LENGTH:
            return None
        record, row = found
        presented = self._hasher.digest(secret)
        # Both comparisons always run, each in constant time.
        current_ok = row.secret_digest is not None and hmac.compare_digest(presented, row.secret_digest)
        previous_ok = (row.previous_secret_digest is not None
                       and hmac.compare_digest(presented, row.previous_secret_digest))
        if previous_ok and (row.previous_secret_expires_at is None or self._now() >= row.previous_secret_expires_at):
            previous_ok = False
        if not (current_ok or previous_ok):
            return None
        if record.client.kind is not ClientKind.CONFIDENTIAL or record.client.status != "active" \
                or not record.consumer_active:
            return None
        return record

    # -- authorization codes -------------------------------------------------------------------------

    async def save_authorization_code(self, code: str, *, client_id: str, redirect_uri: str, code_challenge: str,
                                      scopes: Sequence[str], subject: str, expires_at: datetime) -> None:
        if not isinstance(code_challenge, str) or not _CODE_CHALLENGE.fullmatch(code_challenge):
            raise InvalidRequest("a code challenge is 43-128 characters of [A-Za-z0-9._~-]")
        if not isinstance(redirect_uri, str) or len(redirect_uri) > _MAX_REDIRECT_URI:
            raise InvalidRequest("invalid redirect URI")
        values = {
            "digest": self._hasher.digest(code), "client_id": client_id, "redirect_uri": redirect_uri,
            "code_challenge": code_challenge, "scopes": list(_permissions(scopes, "scope")),
            "subject": _subject(subject), "created_at": self._now(), "expires_at": _aware(expires_at, "expires_at"),
            "used_at": None, "family_id": None, "family_revoked_at": None,
        }
        async with self._token_write() as connection:
            await connection.execute(insert(OAuthAuthorizationCodeRow).values(**values))

    async def redeem_authorization_code(self, code: str, *, family_id: str) -> CodeRecord | None:
        """Atomic. The first redemption of an unexpired code marks it used and remembers ``family_id``
        (reused=False). A later redemption revokes the family the first one started and answers reused=True
        with that family (also after the code expired, until it is purged). Unknown, or expired and never
        redeemed: None."""
        family_id = _family_id(family_id)
        digest = self._hasher.digest(code)
        now = self._now()
        table = OAuthAuthorizationCodeRow
        async with self._token_write() as connection:
            won = (await connection.execute(
                update(table).where(table.digest == digest, table.used_at.is_(None), table.expires_at > now)
                .values(used_at=now, family_id=family_id))).rowcount == 1
            # Lock order: the code's row, then its family's lock. Every redeemer takes the row first (a failed
            # conditional UPDATE may already hold it); holders of a family lock never wait for a code row.
            row = (await connection.execute(
                select(table.client_id, table.redirect_uri, table.code_challenge, table.scopes, table.subject,
                       table.used_at, table.family_id).where(table.digest == digest).with_for_update())).first()
            if row is None:
                return None
            if won:
                return CodeRecord(client_id=row.client_id, redirect_uri=row.redirect_uri,
                                  code_challenge=row.code_challenge, scopes=tuple(row.scopes), subject=row.subject,
                                  reused=False, family_id=family_id)
            if row.used_at is None:
                return None  # expired before anyone redeemed it
            revoked: tuple[tuple[str, datetime], ...] = ()
            if row.family_id is not None:
                # Marks the family revoked even before its first refresh token exists (a replay racing the
                # first token request): tokens saved for it later are born revoked.
                await connection.execute(update(table).where(table.digest == digest,
                                                             table.family_revoked_at.is_(None))
                                         .values(family_revoked_at=now))
                await self._lock_family(connection, row.family_id)
                revoked = await self._revoke_family(connection, row.family_id, now)
            return CodeRecord(client_id=row.client_id, redirect_uri=row.redirect_uri,
                              code_challenge=row.code_challenge, scopes=tuple(row.scopes), subject=row.subject,
                              reused=True, family_id=row.family_id, revoked_access_tokens=revoked)

    # -- refresh tokens ------------------------------------------------------------------------------

    async def save_refresh_token(self, token: str, *, family_id: str, client_id: str, subject: str,
                                 scopes: Sequence[str], family_expires_at: datetime) -> None:
        """The first token of a family. If the family was revoked meanwhile (its code was redeemed again),
        or the client or its consumer was disabled meanwhile, the token is stored revoked: it will never work."""
        family_id = _family_id(family_id)
        now = self._now()
        values = {
            "digest": self._hasher.digest(token), "family_id": family_id, "client_id": client_id,
            "subject": _subject(subject), "scopes": list(_permissions(scopes, "scope")), "created_at": now,
            "family_expires_at": _aware(family_expires_at, "family_expires_at"), "used_at": None,
        }
        async with self._token_write() as connection:
            await self._lock_family(connection, family_id)
            revoked = await self._family_revoked(connection, family_id)
            await connection.execute(insert(OAuthRefreshTokenRow).values(**values, revoked_at=now if revoked else None))
            if not revoked and not await self._client_active(connection, client_id):
                await self._revoke_family(connection, family_id, now)

    async def rotate_refresh_token(self, presented: str, replacement: str, *, client_id: str) -> RefreshRotation:
        """Atomic. ``presented`` unused, unrevoked, unexpired and of ``client_id``: it is marked used and
        ``replacement`` joins the family with the same scopes and expiry ("rotated"). ``presented`` already
        used (a replay, or the loser of a race): the whole family is revoked ("reused"). Else "invalid"."""
        digest = self._hasher.digest(presented)
        now = self._now()
        table = OAuthRefreshTokenRow
        async with self._token_write() as connection:
            family_id = (await connection.execute(
                select(table.family_id).where(table.digest == digest))).scalar()
            if family_id is None:
                return _INVALID_ROTATION
            await self._lock_family(connection, family_id)
            won = (await connection.execute(
                update(table).where(table.digest == digest, table.client_id == client_id, table.used_at.is_(None),
                                    table.revoked_at.is_(None), table.family_expires_at > now)
                .values(used_at=now))).rowcount == 1
            row = (await connection.execute(
                select(table.client_id, table.subject, table.scopes, table.family_expires_at, table.used_at)
                .where(table.digest == digest))).first()
            if row is None:  # purged (family expired) meanwhile
                return _INVALID_ROTATION
            if won:
                await connection.execute(insert(table).values(
                    digest=self._hasher.digest(replacement), family_id=family_id, client_id=row.client_id,
                    subject=row.subject, scopes=row.scopes, created_at=now, family_expires_at=row.family_expires_at,
                    used_at=None, revoked_at=None))
                record = RefreshRecord(family_id=family_id, client_id=row.client_id, subject=row.subject,
                                       scopes=tuple(row.scopes), family_expires_at=row.family_expires_at)
                return RefreshRotation("rotated", record, ())
            if row.client_id != client_id or row.used_at is None or row.family_expires_at <= now:
                return _INVALID_ROTATION
            return RefreshRotation("reused", None, await self._revoke_family(connection, family_id, now))

    async def revoke_refresh_token(self, token: str, *, client_id: str) -> tuple[tuple[str, datetime], ...]:
        """RFC 7009: revoke the token's whole family and return the family's access tokens now revoked.
        Unknown, or another client's token: nothing happens, ()."""
        digest = self._hasher.digest(token)
        now = self._now()
        table = OAuthRefreshTokenRow
        async with self._token_write() as connection:
            found = (await connection.execute(
                select(table.family_id, table.client_id).where(table.digest == digest))).first()
            if found is None or found.client_id != client_id:
                return ()
            await self._lock_family(connection, found.family_id)
            return await self._revoke_family(connection, found.family_id, now)

    async def revoke_family(self, family_id: str) -> tuple[tuple[str, datetime], ...]:
        """Revoke every refresh token of the family and its recorded access tokens (returned as (jti, exp)).
        Access tokens recorded for the family later are revoked at once. Idempotent."""
        family_id = _family_id(family_id)
        now = self._now()
        async with self._token_write() as connection:
            await self._lock_family(connection, family_id)
            return await self._revoke_family(connection, family_id, now)

    async def refresh_token_info(self, token: str) -> RefreshRecord | None:
        """For introspection: the record of an active (unused, unrevoked, unexpired) refresh token."""
        digest = self._hasher.digest(token)
        table = OAuthRefreshTokenRow
        async with self._token_read() as connection:
            row = (await connection.execute(
                select(table.family_id, table.client_id, table.subject, table.scopes, table.family_expires_at)
                .where(table.digest == digest, table.used_at.is_(None), table.revoked_at.is_(None),
                       table.family_expires_at > self._now()))).first()
        if row is None:
            return None
        return RefreshRecord(family_id=row.family_id, client_id=row.client_id, subject=row.subject,
                             scopes=tuple(row.scopes), family_expires_at=row.family_expires_at)

    async def _family_revoked(self, connection: AsyncConnection, family_id: str) -> bool:
        tokens, codes = OAuthRefreshTokenRow, OAuthAuthorizationCodeRow
        revoked_token = (await connection.execute(
            select(tokens.digest).where(tokens.family_id == family_id, tokens.revoked_at.is_not(None))
            .limit(1))).first()
        if revoked_token is not None:
            return True
        revoked_code = (await connection.execute(
            select(codes.digest).where(codes.family_id == family_id, codes.family_revoked_at.is_not(None))
            .limit(1))).first()
        return revoked_code is not None

    async def _revoke_family(self, connection: AsyncConnection, family_id: str,
                             now: datetime) -> tuple[tuple[str, datetime], ...]:
        return await self._revoke_families(connection, (family_id,), now)

    async def _revoke_families(self, connection: AsyncConnection, family_ids: Sequence[str],
                               now: datetime) -> tuple[tuple[str, datetime], ...]:
        """The caller holds the families' locks. Code rows are not touched here (see the lock order in
        ``redeem_authorization_code``): the revoked refresh tokens themselves mark a family revoked."""
        tokens, access = OAuthRefreshTokenRow, OAuthAccessTokenRow
        families = list(family_ids)
        await connection.execute(update(tokens).where(tokens.family_id.in_(families), tokens.revoked_at.is_(None))
                                 .values(revoked_at=now))
        revoked = tuple((jti, expires_at) for jti, expires_at in (await connection.execute(
            select(access.jti, access.expires_at).where(access.family_id.in_(families), access.expires_at > now)
            .order_by(access.jti))).all())
        await self._insert_revocations(connection, revoked, now)
        return revoked

    # -- revoking all a client or consumer holds ------------------------------------------------------

    async def revoke_client_tokens(self, client_id: str) -> list[tuple[str, datetime]]:
        """Revoke everything the client holds: every refresh-token family (with the access tokens recorded
        for it), every unexpired access token recorded for it, and its unredeemed authorization codes.
        Returns the access tokens revoked (jti, exp), for the caller to broadcast. Call it after disabling
        the client (or its consumer): tokens written after that are revoked as they are written. Idempotent;
        an unknown client holds nothing. Not audited: the change that calls for it is."""
        if not isinstance(client_id, str):
            raise InvalidRequest("a client id is a string")
        return await self._revoke_clients(OAuthClientRow.client_id == client_id)

    async def revoke_consumer_tokens(self, consumer_id: str) -> list[tuple[str, datetime]]:
        """``revoke_client_tokens`` for every client of the consumer (before the consumer is deleted: its
        clients and their token records go with it)."""
        if not isinstance(consumer_id, str):
            raise InvalidRequest("a consumer id is a string")
        return await self._revoke_clients(OAuthClientRow.consumer_id == consumer_id)

    async def _revoke_clients(self, which: ColumnElement[bool]) -> list[tuple[str, datetime]]:
        now = self._now()
        clients, tokens, access, codes = (OAuthClientRow, OAuthRefreshTokenRow, OAuthAccessTokenRow,
                                          OAuthAuthorizationCodeRow)
        owned = select(clients.client_id).where(which)
        async with self._token_write() as connection:
            # The barrier: the rows' lock waits for every token write in flight for these clients to commit
            # (each holds a share lock on its client's row through the foreign key). Any later write sees the
            # new status and revokes its own token, so the families listed here are all there are.
            locked = (await connection.execute(
                select(clients.client_id).where(which).order_by(clients.client_id).with_for_update())).all()
            if not locked:
                return []
            families = sorted((await connection.execute(
                select(tokens.family_id).where(tokens.client_id.in_(owned), tokens.revoked_at.is_(None),
                                               tokens.family_expires_at > now).distinct())).scalars().all())
        revoked: dict[str, datetime] = {}
        # Families in chunks, each under its families' locks (sorted: two sweeps never wait on each other in a
        # cycle), so that a rotation in progress either finishes first or finds its family revoked.
        for start in range(0, len(families), _FAMILY_CHUNK):
            chunk = families[start:start + _FAMILY_CHUNK]
            async with self._token_write() as connection:
                for family_id in chunk:
                    await self._lock_family(connection, family_id)
                revoked.update(await self._revoke_families(connection, chunk, now))
        async with self._token_write() as connection:
            # Unredeemed codes: a redemption in progress holds its code's row and finishes first; what it
            # starts is then born revoked (``save_refresh_token``).
            await connection.execute(delete(codes).where(codes.client_id.in_(owned), codes.used_at.is_(None)))
            tokens_left = (await connection.execute(
                select(access.jti, access.expires_at).where(access.client_id.in_(owned), access.expires_at > now)
            )).all()
            revoked.update((jti, expires_at) for jti, expires_at in tokens_left)
            await self._insert_revocations(connection, tokens_left, now)
        return sorted(revoked.items())

    # -- access tokens and revocations ----------------------------------------------------------------

    async def record_access_token(self, jti: str, *, client_id: str, family_id: str | None, subject: str,
                                  expires_at: datetime) -> bool:
        """Remember an issued access token's id, so its family or client can revoke it. A token of a family
        revoked meanwhile, or of a client or consumer disabled meanwhile, is revoked at once: then the answer
        is True (the caller had better not hand it out)."""
        values = {"jti": _jti(jti), "client_id": client_id, "subject": _subject(subject),
                  "family_id": None if family_id is None else _family_id(family_id),
                  "expires_at": _aware(expires_at, "expires_at")}
        now = self._now()
        async with self._token_write() as connection:
            revoked = False
            if family_id is not None:
                await self._lock_family(connection, family_id)
                revoked = await self._family_revoked(connection, family_id)
            await connection.execute(insert(OAuthAccessTokenRow).values(**values))
            if not revoked:
                revoked = not await self._client_active(connection, client_id)
            if revoked:
                await self._insert_revocations(connection, [(jti, expires_at)], now)
        return revoked

    async def revoke_access_token(self, jti: str, *, expires_at: datetime) -> None:
        """Idempotent. The jti stays refused by every node until ``expires_at``."""
        await self.revoke_access_tokens([(jti, expires_at)])

    async def revoke_access_tokens(self, entries: Iterable[tuple[str, datetime]]) -> None:
        """``revoke_access_token`` for many (jti, exp) in one transaction."""
        entries = list(entries)
        if not entries:
            return
        now = self._now()
        async with self._token_write() as connection:
            await self._insert_revocations(connection, entries, now)

    async def revocations_since(self, cursor: int) -> tuple[int, list[tuple[str, datetime]]]:
        """Unexpired revocations with an id above ``cursor`` (0: all), and the cursor to pass next time."""
        table = OAuthRevocationRow
        async with self._token_read() as connection:
            # The upper bound first: every id up to it is committed (appends are serialised), so the
            # second statement cannot miss one below it.
            top = (await connection.execute(select(func.max(table.id)).where(table.id > cursor))).scalar()
            if top is None:
                return cursor, []
            rows = (await connection.execute(
                select(table.jti, table.expires_at)
                .where(table.id > cursor, table.id <= top, table.expires_at > self._now())
                .order_by(table.id))).all()
        return int(top), [(jti, expires_at) for jti, expires_at in rows]

    async def purge_expired(self) -> int:
        """Delete expired codes, refresh families, access-token records and revocations, and retired signing
        keys past their keep-until time. Returns the number of rows deleted. Not audited (housekeeping)."""
        now = self._now()
        keys = OAuthSigningKeyRow
        statements = (
            delete(OAuthAuthorizationCodeRow).where(OAuthAuthorizationCodeRow.expires_at <= now),
            delete(OAuthRefreshTokenRow).where(OAuthRefreshTokenRow.family_expires_at <= now),
            delete(OAuthAccessTokenRow).where(OAuthAccessTokenRow.expires_at <= now),
            delete(OAuthRevocationRow).where(OAuthRevocationRow.expires_at <= now),
            delete(keys).where(keys.state == "retired", keys.keep_until.is_not(None), keys.keep_until <= now),
        )
        deleted = 0
        async with self._token_write() as connection:
            for statement in statements:
                deleted += max((await connection.execute(statement)).rowcount, 0)
        return deleted

    # -- signing keys --------------------------------------------------------------------------------

    async def signing_key_rows(self) -> list[SigningKeyRecord]:
        """Every stored signing key, oldest first."""
        async with self._read() as session:
            rows = (await session.scalars(
                select(OAuthSigningKeyRow).order_by(OAuthSigningKeyRow.created_at, OAuthSigningKeyRow.kid))).all()
            return [_signing_key(row) for row in rows]

    async def ensure_signing_keys(self, *, algorithm: str, active: SigningKeyMaterial, next_key: SigningKeyMaterial,
                                  actor: AuditActor) -> list[str]:
        """Under the audit lock, store what is missing: ``active`` when there is no active key, ``next_key``
        when there is no next key or the next key has another algorithm than ``algorithm`` (that one is
        retired at once: nothing was signed with it). Returns the kids stored (empty: nothing to do, e.g.
        another node did it first)."""
        now = self._now()
        created: list[str] = []
        async with self._write() as session:
            current = {row.state: row for row in (await session.scalars(
                select(OAuthSigningKeyRow).where(OAuthSigningKeyRow.state != "retired"))).all()}
            if "active" not in current:
                _check_material(active, algorithm)
                session.add(_new_signing_key_row(active, "active", now))
                created.append(active.kid)
            stale_next = current.get("next")
            if stale_next is not None and stale_next.algorithm != algorithm:
                before = _signing_key_snapshot(_signing_key(stale_next))
                _retire(stale_next, now, now)
                await session.flush()
                await self._audit(session, actor, "oauth_signing_key.retire", f"oauth_signing_key:{stale_next.kid}",
                                  before, _signing_key_snapshot(_signing_key(stale_next)), now)
            if stale_next is None or stale_next.algorithm != algorithm:
                _check_material(next_key, algorithm)
                session.add(_new_signing_key_row(next_key, "next", now))
                created.append(next_key.kid)
            await session.flush()
            for kid in created:
                row = await session.get(OAuthSigningKeyRow, kid)
                assert row is not None
                await self._audit(session, actor, "oauth_signing_key.create", f"oauth_signing_key:{kid}", None,
                                  _signing_key_snapshot(_signing_key(row)), now)
        return created

    async def rotate_signing_keys(self, new_next: SigningKeyMaterial, *, keep_for: timedelta,
                                  actor: AuditActor) -> SigningKeyRecord:
        """The next key becomes active, the active key is retired (its public key kept until now + keep_for,
        its private key erased), ``new_next`` becomes the next key. Returns the new active key."""
        if keep_for < timedelta(0):
            raise InvalidRequest("keep_for cannot be negative")
        now = self._now()
        async with self._write() as session:
            current = {row.state: row for row in (await session.scalars(
                select(OAuthSigningKeyRow).where(OAuthSigningKeyRow.state != "retired").with_for_update())).all()}
            promoted = current.get("next")
            if promoted is None:
                raise Conflict("there is no next signing key to activate: start the authorization server first")
            _check_material(new_next, new_next.algorithm)
            retiring = current.get("active")
            before = {state: _signing_key_snapshot(_signing_key(row)) for state, row in current.items()}
            after: dict[str, Any] = {}
            # One statement per state change, in this order: the partial unique index allows one active
            # and one next key at every step.
            if retiring is not None:
                _retire(retiring, now, now + keep_for)
                await session.flush()
                after["retired"] = _signing_key_snapshot(_signing_key(retiring))
            promoted.state = "active"
            promoted.activated_at = now
            await session.flush()
            session.add(_new_signing_key_row(new_next, "next", now))
            await session.flush()
            record = _signing_key(promoted)
            after["active"] = _signing_key_snapshot(record)
            created = await session.get(OAuthSigningKeyRow, new_next.kid)
            assert created is not None
            after["next"] = _signing_key_snapshot(_signing_key(created))
            await self._audit(session, actor, "oauth_signing_key.rotate", f"oauth_signing_key:{promoted.kid}",
                              before, after, now)
        return record


# -- rows to records and audit snapshots (no secrets, no digests, no key material) ------------------------


async def _client_row(session: AsyncSession, client_id: str) -> OAuthClientRow:
    row = await session.get(OAuthClientRow, client_id) if isinstance(client_id, str) else None
    if row is None:
        raise NotFound("no such client")
    return row


def _client(row: OAuthClientRow) -> OAuthClient:
    return OAuthClient(
        client_id=row.client_id, consumer_id=row.consumer_id, name=row.name, kind=ClientKind(row.kind),
        grant_types=tuple(row.grant_types), scopes=tuple(row.scopes), redirect_uris=tuple(row.redirect_uris),
        status=row.status, created_at=row.created_at, updated_at=row.updated_at,
        secret_rotated_at=row.secret_rotated_at, previous_secret_expires_at=row.previous_secret_expires_at,
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else audit.format_time(value)


def _client_snapshot(client: OAuthClient) -> dict[str, Any]:
    # Field by field: a secret-bearing field must never reach the audit log by default.
    return {
        "client_id": client.client_id, "consumer_id": client.consumer_id, "name": client.name,
        "kind": client.kind.value, "grant_types": list(client.grant_types), "scopes": list(client.scopes),
        "redirect_uris": list(client.redirect_uris), "status": client.status,
        "secret_rotated_at": _iso(client.secret_rotated_at),
        "previous_secret_expires_at": _iso(client.previous_secret_expires_at),
    }


def _signing_key(row: OAuthSigningKeyRow) -> SigningKeyRecord:
    state: Literal["next", "active", "retired"]
    if row.state == "next":
        state = "next"
    elif row.state == "active":
        state = "active"
    else:
        state = "retired"
    return SigningKeyRecord(
        kid=row.kid, algorithm=row.algorithm, state=state, encrypted_private_key=bytes(row.encrypted_private_key),
        public_jwk=dict(row.public_jwk), created_at=row.created_at, activated_at=row.activated_at,
        retired_at=row.retired_at, keep_until=row.keep_until,
    )


def _signing_key_snapshot(key: SigningKeyRecord) -> dict[str, Any]:
    return {
        "kid": key.kid, "algorithm": key.algorithm, "state": key.state, "created_at": _iso(key.created_at),
        "activated_at": _iso(key.activated_at), "retired_at": _iso(key.retired_at),
        "keep_until": _iso(key.keep_until),
    }


def _new_signing_key_row(material: SigningKeyMaterial, state: str, now: datetime) -> OAuthSigningKeyRow:
    return OAuthSigningKeyRow(
        kid=material.kid, algorithm=material.algorithm, state=state,
        encrypted_private_key=material.encrypted_private_key, public_jwk=dict(material.public_jwk),
        created_at=now, activated_at=now if state == "active" else None, retired_at=None, keep_until=None,
    )


def _retire(row: OAuthSigningKeyRow, now: datetime, keep_until: datetime) -> None:
    row.state = "retired"
    row.retired_at = now
    row.keep_until = keep_until
    row.encrypted_private_key = b""  # a retired key never signs again: nothing left to steal


def _check_material(material: SigningKeyMaterial, algorithm: str) -> None:
    if material.algorithm != algorithm or not material.encrypted_private_key:
        raise InvalidRequest("the signing key does not match the requested algorithm")
    if any(name in material.public_jwk for name in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise InvalidRequest("a public JWK must not contain private key material")


# -- input validation (messages are shown to clients) ----------------------------------------------------


def _kind(kind: ClientKind | str) -> ClientKind:
    try:
        return ClientKind(kind)
    except ValueError:
        raise InvalidRequest("kind must be 'confidential' or 'public'") from None


def _client_status(status: str) -> str:
    if status not in CLIENT_STATUSES:
        raise InvalidRequest("status must be 'active' or 'disabled'")
    return status


def _client_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or name.strip() != name or not name.isprintable():
        raise InvalidRequest("a client name is 1-200 printable characters without surrounding spaces")
    return name


def _grant_types(values: Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidRequest("grant_types must be a list")
    grants = set()
    for value in values:
        if value not in GRANT_TYPES:
            raise InvalidRequest("grant types are 'client_credentials', 'authorization_code' and 'refresh_token' "
                                 "(no implicit or password grant)")
        grants.add(value)
    if not grants:
        raise InvalidRequest("a client needs at least one grant type")
    return tuple(sorted(grants))


def _check_client_shape(kind: ClientKind, grants: tuple[str, ...], redirect_uris: tuple[str, ...]) -> None:
    if kind is ClientKind.PUBLIC and "client_credentials" in grants:
        raise InvalidRequest("a public client cannot use the client_credentials grant (it has no secret)")
    if "refresh_token" in grants and "authorization_code" not in grants:
        raise InvalidRequest("the refresh_token grant needs authorization_code (client credentials get no "
                             "refresh tokens)")
    if "authorization_code" in grants and not redirect_uris:
        raise InvalidRequest("the authorization_code grant needs at least one redirect URI")


def _redirect_uris(values: Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidRequest("redirect_uris must be a list")
    uris: list[str] = []
    for value in values:
        uri = _redirect_uri(value)
        if uri not in uris:
            uris.append(uri)
    if len(uris) > _MAX_REDIRECT_URIS:
        raise InvalidRequest(f"at most {_MAX_REDIRECT_URIS} redirect URIs")
    return tuple(uris)


def _redirect_uri(value: str) -> str:
    """Absolute https, http on loopback only, or a private-use scheme (RFC 8252); never a fragment."""
    problem = "a redirect URI is an absolute https URL, http on 127.0.0.1/[::1]/localhost, or a private-use " \
              "scheme such as com.example.app:/callback, without fragment"
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_REDIRECT_URI or not value.isascii() \
            or not value.isprintable() or " " in value or "#" in value or "*" in value:
        raise InvalidRequest(problem)
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InvalidRequest(problem) from None
    scheme = parts.scheme
    if scheme == "https":
        if not hostname or "@" in parts.netloc:
            raise InvalidRequest(problem)
    elif scheme == "http":
        if hostname not in _LOOPBACK_HOSTS or "@" in parts.netloc:
            raise InvalidRequest(problem)
    elif not _PRIVATE_USE_SCHEME.fullmatch(scheme) or not (parts.path or parts.netloc):
        raise InvalidRequest(problem)
    return value


def _subject(subject: str) -> str:
    if not isinstance(subject, str) or not 1 <= len(subject) <= 200 or not subject.isprintable():
        raise InvalidRequest("a subject is 1-200 printable characters")
    return subject


def _jti(jti: str) -> str:
    if not isinstance(jti, str) or not 1 <= len(jti) <= _MAX_JTI or not jti.isascii() or not jti.isprintable():
        raise InvalidRequest(f"a token id (jti) is 1-{_MAX_JTI} printable ASCII characters")
    return jti


def _family_id(family_id: str) -> str:
    if not isinstance(family_id, str) or not 1 <= len(family_id) <= _MAX_FAMILY_ID or not family_id.isascii() \
            or not family_id.isprintable():
        raise InvalidRequest(f"a family id is 1-{_MAX_FAMILY_ID} printable ASCII characters")
    return family_id


def _aware(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)
