"""metrics: each instance's use by the minute (kept a day) and by the hour (kept 90 days)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_points",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("app_id", sa.Integer(), sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("component", sa.String(63), nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("resolution", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=False) for name in ("cpu", "memory")),
        *(sa.Column(name, sa.Float()) for name in ("rx", "tx", "read", "write")),
        sa.UniqueConstraint("instance", "resolution", "at"),
    )
    op.create_index("ix_metric_points_app", "metric_points", ["app_id", "resolution", "at"])
    op.create_index("ix_metric_points_at", "metric_points", ["resolution", "at"])


def downgrade() -> None:
    op.drop_index("ix_metric_points_at", "metric_points")
    op.drop_index("ix_metric_points_app", "metric_points")
    op.drop_table("metric_points")
