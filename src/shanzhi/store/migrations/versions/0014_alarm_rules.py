"""alarm rules and silences; alarms raised by a rule know it, their replica, their end

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "alarm_rules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("vdc", sa.String(512)),
        sa.Column("metric", sa.String(16)),
        sa.Column("above", sa.Float()),
        sa.Column("below", sa.Float()),
        sa.Column("absent", sa.Boolean(), nullable=False),
        sa.Column("hold", sa.Float(), nullable=False),
        sa.Column("event", sa.String(64)),
        sa.Column("app", sa.String(63)),
        sa.Column("component", sa.String(63)),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("webhook", sa.Text()),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.UniqueConstraint("vdc", "name"),
    )
    op.create_table(
        "alarm_silences",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("rule_id", sa.Integer(), sa.ForeignKey("alarm_rules.id", ondelete="CASCADE")),
        sa.Column("vdc", sa.String(512)),
        sa.Column("app", sa.String(63)),
        sa.Column("until", ts, nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", ts, nullable=False),
    )
    with op.batch_alter_table("alarms") as batch:
        batch.add_column(sa.Column("rule_id", sa.Integer()))
        batch.add_column(sa.Column("instance", sa.String(128)))
        batch.add_column(sa.Column("resolved_at", ts))
        batch.add_column(sa.Column("silenced", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_foreign_key("fk_alarms_rule", "alarm_rules", ["rule_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.drop_constraint("fk_alarms_rule", type_="foreignkey")
        for name in ("silenced", "resolved_at", "instance", "rule_id"):
            batch.drop_column(name)
    op.drop_table("alarm_silences")
    op.drop_table("alarm_rules")
