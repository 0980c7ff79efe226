"""workers.describe_model: the image-to-text model a worker describes images
with (FARM_WORKER_DESCRIBE_MODEL), so the API knows whether any live worker
offers POST /api/v1/describe (issue 22)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("describe_model", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("describe_model")
