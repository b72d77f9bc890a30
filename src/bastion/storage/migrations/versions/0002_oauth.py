"""OAuth 2 authorization server: clients, codes, refresh tokens, access-token ids, revocations, signing keys.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _client_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["client_id"], ["oauth_clients.client_id"],
                                   name=f"fk_{table}_client_id_oauth_clients", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "oauth_clients",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("consumer_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("grant_types", sa.JSON(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("secret_digest", sa.LargeBinary(32), nullable=True),
        sa.Column("previous_secret_digest", sa.LargeBinary(32), nullable=True),
        _time("previous_secret_expires_at", nullable=True),
        _time("secret_rotated_at", nullable=True),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("client_id", name="pk_oauth_clients"),
        sa.ForeignKeyConstraint(["consumer_id"], ["consumers.id"], name="fk_oauth_clients_consumer_id_consumers",
                                ondelete="CASCADE"),
        sa.CheckConstraint("kind IN ('confidential', 'public')", name="ck_oauth_clients_kind"),
        sa.CheckConstraint("status IN ('active', 'disabled')", name="ck_oauth_clients_status"),
    )
    op.create_index("ix_oauth_clients_consumer_id", "oauth_clients", ["consumer_id"])

    op.create_table(
        "oauth_authorization_codes",
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        _time("created_at"),
        _time("expires_at"),
        _time("used_at", nullable=True),
        sa.Column("family_id", sa.String(64), nullable=True),
        _time("family_revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("digest", name="pk_oauth_authorization_codes"),
        _client_fk("oauth_authorization_codes"),
    )
    op.create_index("ix_oauth_authorization_codes_client_id", "oauth_authorization_codes", ["client_id"])
    op.create_index("ix_oauth_authorization_codes_family_id", "oauth_authorization_codes", ["family_id"])

    op.create_table(
        "oauth_refresh_tokens",
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("family_id", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        _time("created_at"),
        _time("family_expires_at"),
        _time("used_at", nullable=True),
        _time("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("digest", name="pk_oauth_refresh_tokens"),
        _client_fk("oauth_refresh_tokens"),
    )
    op.create_index("ix_oauth_refresh_tokens_family_id", "oauth_refresh_tokens", ["family_id"])
    op.create_index("ix_oauth_refresh_tokens_client_id", "oauth_refresh_tokens", ["client_id"])

    op.create_table(
        "oauth_access_tokens",
        sa.Column("jti", sa.String(128), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("family_id", sa.String(64), nullable=True),
        sa.Column("subject", sa.String(200), nullable=False),
        _time("expires_at"),
        sa.PrimaryKeyConstraint("jti", name="pk_oauth_access_tokens"),
        _client_fk("oauth_access_tokens"),
    )
    op.create_index("ix_oauth_access_tokens_client_id", "oauth_access_tokens", ["client_id"])
    op.create_index("ix_oauth_access_tokens_family_id", "oauth_access_tokens", ["family_id"])

    op.create_table(
        "oauth_revocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("jti", sa.String(128), nullable=False),
        _time("expires_at"),
        _time("revoked_at"),
        sa.PrimaryKeyConstraint("id", name="pk_oauth_revocations"),
        sa.UniqueConstraint("jti", name="uq_oauth_revocations_jti"),
        sqlite_autoincrement=True,  # ids are the pollers' cursor: never reuse a purged one
    )

    op.create_table(
        "oauth_signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("encrypted_private_key", sa.LargeBinary(), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        _time("created_at"),
        _time("activated_at", nullable=True),
        _time("retired_at", nullable=True),
        _time("keep_until", nullable=True),
        sa.PrimaryKeyConstraint("kid", name="pk_oauth_signing_keys"),
        sa.CheckConstraint("state IN ('next', 'active', 'retired')", name="ck_oauth_signing_keys_state"),
    )
    # At most one active and one next key: two nodes creating the first keys at once cannot both win.
    op.create_index("uq_oauth_signing_keys_state", "oauth_signing_keys", ["state"], unique=True,
                    postgresql_where=sa.text("state <> 'retired'"), sqlite_where=sa.text("state <> 'retired'"))


def downgrade() -> None:
    op.drop_index("uq_oauth_signing_keys_state", table_name="oauth_signing_keys")
    op.drop_table("oauth_signing_keys")
    op.drop_table("oauth_revocations")
    op.drop_index("ix_oauth_access_tokens_family_id", table_name="oauth_access_tokens")
    op.drop_index("ix_oauth_access_tokens_client_id", table_name="oauth_access_tokens")
    op.drop_table("oauth_access_tokens")
    op.drop_index("ix_oauth_refresh_tokens_client_id", table_name="oauth_refresh_tokens")
    op.drop_index("ix_oauth_refresh_tokens_family_id", table_name="oauth_refresh_tokens")
    op.drop_table("oauth_refresh_tokens")
    op.drop_index("ix_oauth_authorization_codes_family_id", table_name="oauth_authorization_codes")
    op.drop_index("ix_oauth_authorization_codes_client_id", table_name="oauth_authorization_codes")
    op.drop_table("oauth_authorization_codes")
    op.drop_index("ix_oauth_clients_consumer_id", table_name="oauth_clients")
    op.drop_table("oauth_clients")
