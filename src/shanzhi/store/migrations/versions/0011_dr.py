"""disaster recovery: DR roles of sites, the etcd members of the quorum, managed PostgreSQL
clusters and the reports of DR operations

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("dr_role", sa.String(16)))
        batch.create_unique_constraint("uq_sites_dr_role", ["dr_role"])
    op.create_table(
        "dr_etcd_members",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("cluster", sa.String(16), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("site_id", sa.Integer(), sa.ForeignKey("sites.id"), nullable=False),
        sa.Column("address", sa.String(45), nullable=False),
        sa.Column("client_port", sa.Integer(), nullable=False),
        sa.Column("peer_port", sa.Integer(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.UniqueConstraint("cluster", "name"),
    )
    op.create_table(
        "dr_clusters",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("app_id", sa.Integer(), sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("component", sa.String(63), nullable=False),
        sa.Column("secrets", sa.JSON(), nullable=False),
        sa.Column("prepared", sa.Boolean(), nullable=False),
        sa.Column("leader", sa.String(128)),
        sa.Column("timeline", sa.BigInteger()),
        sa.Column("status", sa.JSON(), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.UniqueConstraint("app_id", "component"),
    )
    op.create_table(
        "dr_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("app_id", sa.Integer(), sa.ForeignKey("apps.id", ondelete="SET NULL")),
        sa.Column("vdc", sa.String(512), nullable=False),
        sa.Column("app", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("finished_at", ts),
    )
    op.create_index("ix_dr_reports_app", "dr_reports", ["vdc", "app"])


def downgrade() -> None:
    op.drop_index("ix_dr_reports_app", "dr_reports")
    op.drop_table("dr_reports")
    op.drop_table("dr_clusters")
    op.drop_table("dr_etcd_members")
    with op.batch_alter_table("sites") as batch:
        batch.drop_constraint("uq_sites_dr_role", type_="unique")
        batch.drop_column("dr_role")
