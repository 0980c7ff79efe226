"""jobs.interface: the interface a job came through (issue 20)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("interface", sa.String(16), nullable=False, server_default="api"))
    # Campaign jobs were submitted through a campaign, whatever the caller used.
    op.execute("UPDATE jobs SET interface = 'campaign' WHERE campaign_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("interface")
