"""tenancy and governance: users, grants, expiring tokens, storage and strict quotas,
approvals, metering and rates, audit roles and retention anchor

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(128), nullable=False, server_default=""),
        sa.Column("password_hash", sa.String(255)),
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", UTC_TS),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("last_login_at", UTC_TS),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("vdc_id", sa.Integer(), sa.ForeignKey("vdcs.id", ondelete="CASCADE")),
        sa.Column("granted_by", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.UniqueConstraint("user_id", "role", "vdc_id"),
    )
    # Tokens belong to users now. Existing tokens were all admin tokens: they become the
    # bootstrap system administrator's.
    conn = op.get_bind()
    uid = None
    if conn.execute(sa.text("SELECT count(*) FROM tokens")).scalar():
        now = datetime.now(UTC)
        users = sa.table("users", sa.column("name"), sa.column("display_name"), sa.column("created_at", UTC_TS))
        conn.execute(users.insert().values(name="admin", display_name="System administrator", created_at=now))
        uid = conn.execute(sa.text("SELECT id FROM users WHERE name = 'admin'")).scalar()
        grants = sa.table(
            "grants", sa.column("user_id"), sa.column("role"), sa.column("granted_by"), sa.column("created_at", UTC_TS)
        )
        conn.execute(grants.insert().values(user_id=uid, role="system-admin", granted_by="bootstrap", created_at=now))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("expires_at", UTC_TS))
        batch.add_column(sa.Column("revoked_at", UTC_TS))
        batch.add_column(sa.Column("last_used_at", UTC_TS))
    if uid is not None:
        conn.execute(sa.text("UPDATE tokens SET user_id = :u"), {"u": uid})
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("role")
        batch.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key("fk_tokens_user", "users", ["user_id"], ["id"], ondelete="CASCADE")

    with op.batch_alter_table("vdcs") as batch:
        batch.add_column(sa.Column("quota_storage", sa.BigInteger()))
        batch.add_column(sa.Column("strict", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("storage", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("storage", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("role", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("action", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("target", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "audit_anchor",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("pruned", sa.BigInteger(), nullable=False),
        sa.Column("at", UTC_TS, nullable=False),
    )
    op.create_table(
        "approval_rules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("vdc_id", sa.Integer(), sa.ForeignKey("vdcs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("conditions", sa.JSON(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("expire_hours", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.UniqueConstraint("vdc_id", "name"),
    )
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("vdc_id", sa.Integer(), sa.ForeignKey("vdcs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("app", sa.String(63), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("comments", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("decided_at", UTC_TS),
    )
    op.create_table(
        "rates",
        sa.Column("cloud", sa.String(63), primary_key=True),
        sa.Column("cpu", sa.BigInteger(), nullable=False),
        sa.Column("memory", sa.BigInteger(), nullable=False),
        sa.Column("storage", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("hour", UTC_TS, nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("app", sa.String(63), nullable=False),
        sa.Column("vdc", sa.String(512), nullable=False),
        sa.Column("cloud", sa.String(63), nullable=False),
        sa.Column("cpu", sa.BigInteger(), nullable=False),
        sa.Column("memory", sa.BigInteger(), nullable=False),
        sa.Column("storage", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("hour", "instance"),
    )
    op.create_index("ix_usage_vdc_hour", "usage_records", ["vdc", "hour"])
    op.create_table(
        "meter_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("metered_to", UTC_TS, nullable=False),
    )


def downgrade() -> None:
    for t in ("meter_state", "usage_records", "rates", "approval_requests", "approval_rules", "audit_anchor"):
        op.drop_table(t)
    with op.batch_alter_table("audit") as batch:
        for c in ("target", "action", "role"):
            batch.drop_column(c)
    for t, c in (("instances", "storage"), ("apps", "storage"), ("vdcs", "strict"), ("vdcs", "quota_storage")):
        with op.batch_alter_table(t) as batch:
            batch.drop_column(c)
    op.execute("DELETE FROM tokens")
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("role", sa.String(32), nullable=False, server_default="admin"))
        for c in ("last_used_at", "revoked_at", "expires_at", "user_id"):
            batch.drop_column(c)
    op.drop_table("grants")
    op.drop_table("users")
