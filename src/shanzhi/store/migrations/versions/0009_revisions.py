"""revisions: every generation of an app's spec with its author and cause (rollout history and
undo); a cloud fenced by a proposed evacuation plan takes no new placements; volumes, which
follow a replica's ordinal

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_revisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("app_id", sa.Integer(), sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("cause", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("app_id", "generation"),
    )
    # the apps that exist keep their current generation as their first revision
    op.execute(
        "INSERT INTO app_revisions (app_id, generation, spec, author, cause, created_at) "
        "SELECT id, generation, spec, '', 'before revision history', updated_at FROM apps"
    )
    op.add_column("clouds", sa.Column("fenced_by_plan", sa.BigInteger()))
    op.add_column("instances", sa.Column("ordinal", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "volumes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("vdc_id", sa.Integer(), sa.ForeignKey("vdcs.id"), nullable=False),
        sa.Column("app_id", sa.Integer(), sa.ForeignKey("apps.id", ondelete="SET NULL")),
        sa.Column("app_name", sa.String(63), nullable=False),
        sa.Column("component", sa.String(63), nullable=False),
        sa.Column("ordinal", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("cloud_id", sa.Integer(), sa.ForeignKey("clouds.id"), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mount_path", sa.String(255), nullable=False),
        sa.Column("reclaim", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("instance", sa.String(128)),
        sa.Column("released_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("cloud_id", "key"),
    )
    op.create_index("ix_volumes_app", "volumes", ["app_id"])


def downgrade() -> None:
    op.drop_index("ix_volumes_app", "volumes")
    op.drop_table("volumes")
    op.drop_column("instances", "ordinal")
    op.drop_column("clouds", "fenced_by_plan")
    op.drop_table("app_revisions")
