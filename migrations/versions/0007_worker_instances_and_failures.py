"""Worker process instances, per-attempt lease owners, worker health and charged failures

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("instance_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("health_error", sa.Text(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("worker_instance", sa.String(32), nullable=True))
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
    # Until now every new attempt followed a failure or a lost worker.
    op.execute("UPDATE jobs SET failures = attempt - 1")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("failures")
        batch.drop_column("worker_instance")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("health_error")
        batch.drop_column("instance_id")
