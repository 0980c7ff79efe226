"""jobs.preempt_requested, jobs.preemptions, jobs.resume_key: preemption at
step boundaries (issue 23). The scheduler asks a running render to stop; the
worker checkpoints it to the store and re-queues the job with the
checkpoint's key, and the next attempt continues from it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("preempt_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("resume_key", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("resume_key")
        batch.drop_column("preemptions")
        batch.drop_column("preempt_requested")
