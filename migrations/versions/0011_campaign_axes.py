"""jobs: a campaign job's place in its expansion and its axis values (issue 19)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import farm.models

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs of campaigns submitted before this revision keep NULL: their gallery
    # falls back to creation order and they have no grid (the random seeds of a
    # seed_count matrix cannot be put back in order).
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("campaign_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("campaign_axes", farm.models.JSONType, nullable=True))
    # The gallery walks a campaign in this order; a grid page fetches its cells
    # by (campaign_id, campaign_index IN ...).
    op.create_index("ix_jobs_campaign_index", "jobs", ["campaign_id", "campaign_index", "id"])
    # A gallery filtered by status counts and skips to its page inside this index
    # (index-only), instead of reading every job of the campaign.
    op.create_index("ix_jobs_campaign_status_index", "jobs", ["campaign_id", "status", "campaign_index", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_campaign_status_index", table_name="jobs")
    op.drop_index("ix_jobs_campaign_index", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("campaign_axes")
        batch.drop_column("campaign_index")
