"""inventory: what every cloud has (Shanzhi's and found), each cloud's sync, adopted replicas

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "inventory_items",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("cloud_id", sa.Integer(), sa.ForeignKey("clouds.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("managed", sa.Boolean(), nullable=False),
        sa.Column("instance", sa.String(128)),
        sa.Column("attrs", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("first_seen_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.UniqueConstraint("cloud_id", "kind", "external_id"),
    )
    op.create_index("ix_inventory_kind", "inventory_items", ["kind", "managed"])
    op.create_table(
        "inventory_syncs",
        sa.Column("cloud_id", sa.Integer(), sa.ForeignKey("clouds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("synced_at", ts),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False),
        sa.Column("changed", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.Column("next_at", ts, nullable=False),
    )
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("adopted_from", sa.String(255)))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("adopted_from")
    op.drop_table("inventory_syncs")
    op.drop_index("ix_inventory_kind", "inventory_items")
    op.drop_table("inventory_items")
