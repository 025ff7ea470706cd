"""tenant networks: a subnet per VDC per site, an address per instance on the fabric

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vdc_subnets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("vdc_id", sa.Integer(), sa.ForeignKey("vdcs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("site_id", sa.Integer(), sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False),
        sa.Column("cidr", sa.String(45), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("vdc_id", "site_id"),
    )
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("address", sa.String(45)))
        batch.create_unique_constraint("uq_instances_address", ["address"])


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_constraint("uq_instances_address", type_="unique")
        batch.drop_column("address")
    op.drop_table("vdc_subnets")
