"""Per-job webhooks: jobs.webhook_url and webhook_secret; webhook_deliveries
rows for jobs outside campaigns (campaign_id optional) and waiting for the job
to end (event optional until then) (issue 20)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("webhook_url", sa.String(2048), nullable=True))
        batch.add_column(sa.Column("webhook_secret", sa.String(128), nullable=True))
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("campaign_id", existing_type=sa.Uuid(), nullable=True)
        batch.alter_column("event", existing_type=sa.String(32), nullable=True)


def downgrade() -> None:
    # Deliveries of jobs outside campaigns have no campaign to keep them under.
    op.execute("DELETE FROM webhook_deliveries WHERE campaign_id IS NULL OR event IS NULL")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("event", existing_type=sa.String(32), nullable=False)
        batch.alter_column("campaign_id", existing_type=sa.Uuid(), nullable=False)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("webhook_secret")
        batch.drop_column("webhook_url")
