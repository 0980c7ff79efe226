"""jobs: index on (campaign_id, created_at, id) for a campaign's gallery pages

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A gallery page is a campaign's jobs in creation order from an offset:
    # with this index Postgres walks the campaign's jobs in order instead of
    # sorting all of them for every page.
    op.create_index("ix_jobs_campaign_created", "jobs", ["campaign_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_campaign_created", table_name="jobs")
