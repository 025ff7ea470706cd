"""a workload's own metrics: where a replica exports them, their minute and hour averages, rules on
them; memory unknown where a cloud cannot tell

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("metrics_url", sa.String(512)))
    with op.batch_alter_table("metric_points") as batch:
        batch.add_column(sa.Column("custom", sa.JSON()))
        batch.alter_column("memory", nullable=True, existing_type=sa.Float())
    with op.batch_alter_table("alarm_rules") as batch:
        batch.alter_column("metric", type_=sa.String(128), existing_type=sa.String(16))


def downgrade() -> None:
    with op.batch_alter_table("alarm_rules") as batch:
        batch.alter_column("metric", type_=sa.String(16), existing_type=sa.String(128))
    with op.batch_alter_table("metric_points") as batch:
        batch.alter_column("memory", nullable=False, existing_type=sa.Float())
        batch.drop_column("custom")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("metrics_url")
