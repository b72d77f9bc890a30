"""The identity tables. Changing them needs a new migration in ``storage/migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
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
