"""hardening: the audit trail's ledger outbox and each record's ledger index; the second factor
(TOTP secret, last step used, recovery codes); restricted tokens (a login owing its second
factor); failed logins of names that are no user (counted like real ones)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs: no table rebuild on SQLite (a rebuild of a parent table cascades deletes).
    op.add_column("audit", sa.Column("commit_salt", sa.String(64), nullable=False, server_default=""))
    op.add_column("audit", sa.Column("ledger_index", sa.BigInteger()))
    op.create_table(
        "audit_outbox",
        sa.Column("audit_id", sa.Integer(), sa.ForeignKey("audit.id", ondelete="CASCADE"), primary_key=True),
    )
    op.add_column("users", sa.Column("mfa_secret", sa.Text()))
    op.add_column("users", sa.Column("mfa_enabled", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("users", sa.Column("mfa_last_step", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("tokens", sa.Column("restricted", sa.String(32)))
    op.add_column("oidc_flows", sa.Column("mfa_done", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "mfa_recovery_codes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_mfa_recovery_codes_user_id", "mfa_recovery_codes", ["user_id"])
    op.create_table(
        "login_failures",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("login_failures")
    op.drop_index("ix_mfa_recovery_codes_user_id", "mfa_recovery_codes")
    op.drop_table("mfa_recovery_codes")
    op.drop_column("oidc_flows", "mfa_done")
    op.drop_column("tokens", "restricted")
    op.drop_column("users", "mfa_last_step")
    op.drop_column("users", "mfa_enabled")
    op.drop_column("users", "mfa_secret")
    op.drop_table("audit_outbox")
    op.drop_column("audit", "ledger_index")
    op.drop_column("audit", "commit_salt")
