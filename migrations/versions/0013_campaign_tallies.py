"""Campaign tallies: per-campaign, per-status job counts and work kept as jobs
change state, and finished work in 10-second buckets (issue 19: a campaign's
progress read without scanning its jobs)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import farm.models

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

WORK = "CASE WHEN reserved_gpu_seconds > 0 THEN reserved_gpu_seconds ELSE 1.0 END"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # The status a job had before its latest transition: the state machine's
        # UPDATE sets it from the old row, so RETURNING says what the job left.
        batch.add_column(sa.Column("previous_status", sa.String(16), nullable=True))
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("first_started_at", farm.models.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_finished_at", farm.models.UTCDateTime(timezone=True), nullable=True))
    op.create_table(
        "campaign_tallies",
        sa.Column("campaign_id", sa.Uuid(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("jobs", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("images", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("work", sa.Float(), nullable=False, server_default="0"),
    )
    op.create_table(
        "campaign_throughput",
        sa.Column("campaign_id", sa.Uuid(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("bucket", farm.models.UTCDateTime(timezone=True), primary_key=True),
        sa.Column("jobs", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("work", sa.Float(), nullable=False, server_default="0"),
    )
    # Campaigns submitted before this revision: their tallies from their jobs
    # (their recent throughput starts empty: the ETA follows the running jobs'
    # own estimates until jobs finish again).
    op.execute(f"""
        INSERT INTO campaign_tallies (campaign_id, status, jobs, images, work)
        SELECT campaign_id, status, count(*), sum(num_images), sum({WORK})
        FROM jobs WHERE campaign_id IS NOT NULL GROUP BY campaign_id, status""")
    op.execute("""
        UPDATE campaigns SET
            first_started_at = (SELECT min(started_at) FROM jobs WHERE jobs.campaign_id = campaigns.id),
            last_finished_at = (SELECT max(finished_at) FROM jobs WHERE jobs.campaign_id = campaigns.id
                                AND jobs.status IN ('succeeded', 'failed'))""")


def downgrade() -> None:
    op.drop_table("campaign_throughput")
    op.drop_table("campaign_tallies")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("last_finished_at")
        batch.drop_column("first_started_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("previous_status")
