"""scheduling: share weights, worker speed and load rate, measured GPU seconds

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch_op:
        batch_op.add_column(sa.Column("share_weight", sa.Float(), server_default="1.0", nullable=False))
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("share_weight", sa.Float(), server_default="1.0", nullable=False))
    with op.batch_alter_table("workers") as batch_op:
        batch_op.add_column(sa.Column("speed", sa.Float(), server_default="1.0", nullable=False))
        batch_op.add_column(sa.Column("load_gbps", sa.Float(), server_default="2.0", nullable=False))
        batch_op.add_column(sa.Column("draining", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("gpu_seconds", sa.Float(), nullable=True))
        batch_op.create_index("ix_jobs_finished_at", ["finished_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_finished_at")
        batch_op.drop_column("gpu_seconds")
    with op.batch_alter_table("workers") as batch_op:
        batch_op.drop_column("draining")
        batch_op.drop_column("load_gbps")
        batch_op.drop_column("speed")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("share_weight")
    with op.batch_alter_table("teams") as batch_op:
        batch_op.drop_column("share_weight")
