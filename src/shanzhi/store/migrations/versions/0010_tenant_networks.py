"""tenant networks: a subnet per VDC per site, an address per instance on the fabric; flow
records and their hourly sums, app-to-app edges and alarms

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
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "flows",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("host", sa.String(160), nullable=False),
        sa.Column("ct_id", sa.BigInteger()),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(255), nullable=False),
        sa.Column("proto", sa.BigInteger(), nullable=False),
        sa.Column("src", sa.String(45), nullable=False),
        sa.Column("sport", sa.BigInteger(), nullable=False),
        sa.Column("dst", sa.String(45), nullable=False),
        sa.Column("dport", sa.BigInteger(), nullable=False),
        sa.Column("src_vdc", sa.String(512)),
        sa.Column("src_app", sa.String(63)),
        sa.Column("src_instance", sa.String(128)),
        sa.Column("dst_vdc", sa.String(512)),
        sa.Column("dst_app", sa.String(63)),
        sa.Column("dst_instance", sa.String(128)),
        sa.Column("packets_out", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("packets_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("ended_at", ts),
        sa.Column("updated_at", ts, nullable=False),
    )
    op.create_index("ix_flows_started", "flows", ["started_at"])
    op.create_index("ix_flows_src_vdc", "flows", ["src_vdc"])
    op.create_index("ix_flows_dst_vdc", "flows", ["dst_vdc"])
    op.create_index("ix_flows_open", "flows", ["host", "ct_id"])
    op.create_table(
        "flow_hours",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("hour", ts, nullable=False),
        sa.Column("src_vdc", sa.String(512), nullable=False),
        sa.Column("src_app", sa.String(63), nullable=False),
        sa.Column("dst_vdc", sa.String(512), nullable=False),
        sa.Column("dst_app", sa.String(63), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("proto", sa.BigInteger(), nullable=False),
        sa.Column("dport", sa.BigInteger(), nullable=False),
        sa.Column("flows", sa.BigInteger(), nullable=False),
        sa.Column("packets", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("hour", "src_vdc", "src_app", "dst_vdc", "dst_app", "verdict", "proto", "dport"),
    )
    op.create_table(
        "flow_edges",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("src_vdc", sa.String(512), nullable=False),
        sa.Column("src_app", sa.String(63), nullable=False),
        sa.Column("dst_vdc", sa.String(512), nullable=False),
        sa.Column("dst_app", sa.String(63), nullable=False),
        sa.Column("flows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("first_seen", ts, nullable=False),
        sa.Column("last_seen", ts, nullable=False),
        sa.UniqueConstraint("src_vdc", "src_app", "dst_vdc", "dst_app"),
    )
    op.create_table(
        "alarms",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", ts, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("vdc", sa.String(512)),
        sa.Column("app", sa.String(63)),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("acknowledged_by", sa.String(128)),
        sa.Column("acknowledged_at", ts),
        sa.Column("notified", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_alarms_at", "alarms", ["at"])


def downgrade() -> None:
    op.drop_table("alarms")
    op.drop_table("flow_edges")
    op.drop_table("flow_hours")
    op.drop_table("flows")
    with op.batch_alter_table("instances") as batch:
        batch.drop_constraint("uq_instances_address", type_="unique")
        batch.drop_column("address")
    op.drop_table("vdc_subnets")
