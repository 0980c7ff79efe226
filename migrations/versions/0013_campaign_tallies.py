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

STATUSES = ("queued", "assigned", "running", "succeeded", "failed", "canceled")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # The status a job had before its latest transition: the state machine's
        # UPDATE sets it from the old row, so RETURNING says what the job left.
        batch.add_column(sa.Column("previous_status", sa.String(16), nullable=True))
    op.create_table(
        "campaign_tallies",
        sa.Column("campaign_id", sa.Uuid(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("jobs", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("images", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("work", sa.Float(), nullable=False, server_default="0"),
        sa.Column("first_at", farm.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_at", farm.models.UTCDateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "campaign_throughput",
        sa.Column("campaign_id", sa.Uuid(), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("bucket", farm.models.UTCDateTime(timezone=True), primary_key=True),
        sa.Column("jobs", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("work", sa.Float(), nullable=False, server_default="0"),
    )
    # Campaigns submitted before this revision: a row per status from their
    # jobs (their recent throughput starts empty: the ETA follows the running
    # jobs' own estimates until jobs finish again).
    statuses = " UNION ALL ".join(f"SELECT '{status}' AS status" for status in STATUSES)
    of_status = "FROM jobs j WHERE j.campaign_id = c.id AND j.status = s.status"
    op.execute(f"""
        INSERT INTO campaign_tallies (campaign_id, status, jobs, images, work, first_at, last_at)
        SELECT c.id, s.status,
               (SELECT count(*) {of_status}),
               (SELECT coalesce(sum(j.num_images), 0) {of_status}),
               (SELECT coalesce(sum(CASE WHEN j.reserved_gpu_seconds > 0 THEN j.reserved_gpu_seconds ELSE 1.0 END), 0) {of_status}),
               CASE WHEN s.status = 'running' THEN (SELECT min(j.started_at) FROM jobs j WHERE j.campaign_id = c.id) END,
               CASE WHEN s.status IN ('succeeded', 'failed') THEN (SELECT max(j.finished_at) {of_status}) END
        FROM campaigns c CROSS JOIN ({statuses}) s""")


def downgrade() -> None:
    op.drop_table("campaign_throughput")
    op.drop_table("campaign_tallies")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("previous_status")
