"""Deadlines and queue forecasts (issue 23): jobs.deadline and
deadline_missed_s; campaigns.at_risk, predicted_finish_at and
deadline_missed_s; queue_forecasts, the scheduler's per-model summary of its
last pass (each queued job's position among the jobs that compete for the
same workers and its predicted start), read by GET /jobs/{id} in one row

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import farm.models

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("deadline", farm.models.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("deadline_missed_s", sa.Float(), nullable=True))
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("at_risk", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("predicted_finish_at", farm.models.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("deadline_missed_s", sa.Float(), nullable=True))
    op.create_table(
        "queue_forecasts",
        sa.Column("model_id", sa.String(128), primary_key=True),
        sa.Column("computed_at", farm.models.UTCDateTime(), nullable=False),
        sa.Column("job_ids", farm.models.JSONType, nullable=False),
        sa.Column("positions", farm.models.JSONType, nullable=False),
        sa.Column("starts_s", farm.models.JSONType, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("queue_forecasts")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("deadline_missed_s")
        batch.drop_column("predicted_finish_at")
        batch.drop_column("at_risk")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("deadline_missed_s")
        batch.drop_column("deadline")
