"""OpenID Connect login: users linked to an issuer and subject, logins in progress

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN and a unique index: a unique constraint would make SQLite rebuild `users`,
    # and dropping the old table would cascade-delete every token and grant (foreign keys are on).
    op.add_column("users", sa.Column("oidc_issuer", sa.String(255)))
    op.add_column("users", sa.Column("oidc_subject", sa.String(255)))
    op.create_index("uq_users_oidc_identity", "users", ["oidc_issuer", "oidc_subject"], unique=True)
    op.create_table(
        "oidc_flows",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(64), nullable=False, unique=True),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("code_verifier", sa.String(128), nullable=False),
        sa.Column("client_challenge", sa.String(64), nullable=False),
        sa.Column("return_to", sa.String(255)),
        sa.Column("source", sa.String(64), nullable=False, server_default=""),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("handoff_hash", sa.String(64), unique=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE")),
        sa.Column("created_at", UTC_TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("oidc_flows")
    op.drop_index("uq_users_oidc_identity", "users")
    op.drop_column("users", "oidc_subject")
    op.drop_column("users", "oidc_issuer")
