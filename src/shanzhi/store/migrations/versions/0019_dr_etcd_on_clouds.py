"""the DR quorum's etcd members as workloads of their centres' clouds: the cloud each runs on
(none: beside the server, as members made before this ran) and its health as last checked

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dr_etcd_members") as batch:
        batch.add_column(sa.Column("cloud_id", sa.Integer()))
        batch.add_column(sa.Column("health", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("health_at", sa.DateTime(timezone=True)))
        batch.create_foreign_key("fk_dr_etcd_members_cloud", "clouds", ["cloud_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("dr_etcd_members") as batch:
        batch.drop_constraint("fk_dr_etcd_members_cloud", type_="foreignkey")
        batch.drop_column("health_at")
        batch.drop_column("health")
        batch.drop_column("cloud_id")
