"""a managed database's activation of its remote centre (and the fence on its main cluster) in
a column of its own, which the DR controller's status writes never touch

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("dr_clusters", sa.Column("activation", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("dr_clusters") as batch:
        batch.drop_column("activation")
