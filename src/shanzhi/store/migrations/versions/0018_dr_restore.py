"""a managed database's restore in place (`dr restore --in-place`): its state in a column of its
own, which the DR controller's status writes never touch

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("dr_clusters", sa.Column("restore", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("dr_clusters") as batch:
        batch.drop_column("restore")
