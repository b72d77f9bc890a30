"""Identity: consumers, roles, API keys and the audit log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "consumers",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("admin_role", sa.String(16), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("allowed_cidrs", sa.JSON(), nullable=False),
        sa.Column("plan", sa.String(100), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_consumers"),
        sa.UniqueConstraint("name", name="uq_consumers_name"),
        sa.CheckConstraint("status IN ('active', 'disabled')", name="ck_consumers_status"),
        sa.CheckConstraint("admin_role IS NULL OR admin_role IN ('admin', 'operator', 'auditor')",
                           name="ck_consumers_admin_role"),
    )
    op.create_table(
        "roles",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_roles"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(12), nullable=False),
        sa.Column("consumer_id", sa.String(36), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("display_prefix", sa.String(18), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("allowed_cidrs", sa.JSON(), nullable=False),
        _time("created_at"),
        _time("expires_at"),
        _time("revoked_at", nullable=True),
        sa.Column("predecessor_id", sa.String(12), nullable=True),
        sa.Column("successor_id", sa.String(12), nullable=True),
        _time("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(["consumer_id"], ["consumers.id"], name="fk_api_keys_consumer_id_consumers",
                                ondelete="CASCADE"),
        sa.CheckConstraint("level IN ('read', 'write', 'admin')", name="ck_api_keys_level"),
    )
    op.create_index("ix_api_keys_consumer_id", "api_keys", ["consumer_id"])
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        _time("time"),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_index("ix_api_keys_consumer_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("roles")
    op.drop_table("consumers")
