"""quotas.max_queued_jobs, and an index on jobs (user_id, status) to count a user's waiting jobs

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("quotas") as batch:
        batch.add_column(sa.Column("max_queued_jobs", sa.Integer(), nullable=True))
    # Every submission against a max_queued_jobs limit counts the owner's
    # queued and assigned jobs; without this index that walks all their jobs
    # (or the whole farm's queue).
    op.create_index("ix_jobs_user_status", "jobs", ["user_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_user_status", table_name="jobs")
    with op.batch_alter_table("quotas") as batch:
        batch.drop_column("max_queued_jobs")
