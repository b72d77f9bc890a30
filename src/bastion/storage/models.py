"""The identity and OAuth tables. Changing them needs a new migration in ``storage/migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out on every backend (SQLite keeps no zone, so it stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous: pass timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UtcDateTime(),
        list[str]: JSON(),
        dict[str, Any]: JSON(),
    }


class ConsumerRow(Base):
    """An application or person calling the API."""

    __tablename__ = "consumers"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'disabled')", name="status"),
        CheckConstraint("admin_role IS NULL OR admin_role IN ('admin', 'operator', 'auditor')", name="admin_role"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    roles: Mapped[list[str]]
    admin_role: Mapped[str | None] = mapped_column(String(16))
    meta: Mapped[dict[str, Any]] = mapped_column("meta")
    allowed_cidrs: Mapped[list[str]]
    plan: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class RoleRow(Base):
    """A named set of permissions such as ``orders:read``."""

    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    permissions: Mapped[list[str]]
    description: Mapped[str] = mapped_column(Text)


class ApiKeyRow(Base):
    """An API key: only its HMAC digest is stored, never the key."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("level IN ('read', 'write', 'admin')", name="level"),)

    key_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    consumer_id: Mapped[str] = mapped_column(String(36), ForeignKey("consumers.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(8))
    scopes: Mapped[list[str]]
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    display_prefix: Mapped[str] = mapped_column(String(18))
    description: Mapped[str] = mapped_column(Text)
    allowed_cidrs: Mapped[list[str]]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    predecessor_id: Mapped[str | None] = mapped_column(String(12))
    successor_id: Mapped[str | None] = mapped_column(String(12))
    last_used_at: Mapped[datetime | None]


class AuditRow(Base):
    """One entry of the hash-chained, append-only audit log.

    ``seq`` is assigned by the writer as the previous entry's plus one, under the chain lock, rather than
    by a sequence: a rolled-back transaction then leaves no gap, so any gap means a deleted entry."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


# -- OAuth 2 authorization server ---------------------------------------------------------------------------
# Secrets (client secrets, codes, refresh tokens) are stored as HMAC digests only; private signing keys are
# encrypted (bastion.oauth.server.keys). Token rows cascade away with their client, revocations do not: a
# revoked token id must stay refused until the token expires, whatever happens to its client.


class OAuthClientRow(Base):
    """An OAuth client registered for a consumer."""

    __tablename__ = "oauth_clients"
    __table_args__ = (
        CheckConstraint("kind IN ('confidential', 'public')", name="kind"),
        CheckConstraint("status IN ('active', 'disabled')", name="status"),
    )

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    consumer_id: Mapped[str] = mapped_column(String(36), ForeignKey("consumers.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    grant_types: Mapped[list[str]]
    scopes: Mapped[list[str]]
    redirect_uris: Mapped[list[str]]
    status: Mapped[str] = mapped_column(String(16))
    secret_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    previous_secret_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    previous_secret_expires_at: Mapped[datetime | None]
    secret_rotated_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class OAuthAuthorizationCodeRow(Base):
    """A one-time authorization code. ``family_id`` is the refresh family its redemption started;
    ``family_revoked_at`` is set when that family is revoked (e.g. the code was redeemed twice), so tokens
    saved for the family afterwards are born revoked."""

    __tablename__ = "oauth_authorization_codes"

    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), ForeignKey("oauth_clients.client_id", ondelete="CASCADE"),
                                           index=True)
    redirect_uri: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]]
    subject: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    family_id: Mapped[str | None] = mapped_column(String(64), index=True)
    family_revoked_at: Mapped[datetime | None]


class OAuthRefreshTokenRow(Base):
    """One refresh token of a family; rotation marks it used and adds its successor to the family."""

    __tablename__ = "oauth_refresh_tokens"

    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(64), index=True)
    client_id: Mapped[str] = mapped_column(String(64), ForeignKey("oauth_clients.client_id", ondelete="CASCADE"),
                                           index=True)
    subject: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[str]]
    created_at: Mapped[datetime]
    family_expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class OAuthAccessTokenRow(Base):
    """An issued access token (a JWT): only its id is recorded, so a family or client can be revoked."""

    __tablename__ = "oauth_access_tokens"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), ForeignKey("oauth_clients.client_id", ondelete="CASCADE"),
                                           index=True)
    family_id: Mapped[str | None] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class OAuthRevocationRow(Base):
    """A revoked access-token id, refused by every node until ``expires_at``. ``id`` is the pollers' cursor:
    AUTOINCREMENT on SQLite so a purged id is never handed out again."""

    __tablename__ = "oauth_revocations"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    jti: Mapped[str] = mapped_column(String(128), unique=True)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime]


class OAuthSigningKeyRow(Base):
    """A token-signing key. At most one ``active`` and one ``next`` key (partial unique index), so two nodes
    creating the first keys at once cannot both succeed."""

    __tablename__ = "oauth_signing_keys"
    __table_args__ = (
        CheckConstraint("state IN ('next', 'active', 'retired')", name="state"),
        Index("uq_oauth_signing_keys_state", "state", unique=True,
              postgresql_where=text("state <> 'retired'"), sqlite_where=text("state <> 'retired'")),
    )

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    encrypted_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    public_jwk: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    activated_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]
    keep_until: Mapped[datetime | None]
