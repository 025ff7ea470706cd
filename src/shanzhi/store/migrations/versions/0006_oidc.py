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
    with op.batch_alter_table("users") as b:
        b.add_column(sa.Column("oidc_issuer", sa.String(255)))
        b.add_column(sa.Column("oidc_subject", sa.String(255)))
        b.create_unique_constraint("uq_users_oidc_identity", ["oidc_issuer", "oidc_subject"])
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
    with op.batch_alter_table("users") as b:
        b.drop_constraint("uq_users_oidc_identity", type_="unique")
        b.drop_column("oidc_subject")
        b.drop_column("oidc_issuer")
