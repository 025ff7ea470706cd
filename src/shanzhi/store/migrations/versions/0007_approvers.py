"""approval requests: every stage's approvers in one column (so lists filter in SQL), and the
action held (apply or delete); single sign-on group maps; session tokens (which end when idle);
when each password was set (passwords expire)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs: no table rebuild on SQLite (a rebuild of a parent table cascades deletes).
    op.add_column("approval_requests", sa.Column("approvers", sa.Text(), nullable=False, server_default=""))
    op.add_column("approval_requests", sa.Column("action", sa.String(16), nullable=False, server_default="apply"))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, stages FROM approval_requests")).all()
    for rid, stages in rows:
        doc = json.loads(stages) if isinstance(stages, str) else stages
        names = sorted({a for st in doc.get("stages", []) for a in st.get("approvers", [])})
        keys = "|" + "|".join(names) + "|" if names else ""
        conn.execute(sa.text("UPDATE approval_requests SET approvers = :k WHERE id = :i"), {"k": keys, "i": rid})
    op.add_column("tokens", sa.Column("session", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("users", sa.Column("password_changed_at", sa.DateTime(timezone=True)))
    conn.execute(  # existing passwords count from the upgrade, not from the beginning of time
        sa.text("UPDATE users SET password_changed_at = :now WHERE password_hash IS NOT NULL"),
        {"now": datetime.now(UTC)},
    )
    op.create_table(
        "oidc_group_maps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("group", sa.String(255), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("vdc_id", sa.Integer(), sa.ForeignKey("vdcs.id", ondelete="CASCADE")),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("group", "role", "vdc_id"),
    )


def downgrade() -> None:
    op.drop_table("oidc_group_maps")
    op.drop_column("users", "password_changed_at")
    op.drop_column("tokens", "session")
    op.drop_column("approval_requests", "action")
    op.drop_column("approval_requests", "approvers")
