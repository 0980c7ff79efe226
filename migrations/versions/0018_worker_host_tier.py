"""workers.host_models, ram_cache_gb, h2d_gbps: the host-memory model tier a
worker reports, so the scheduler prices a load from host RAM at the worker's
host-to-GPU rate (issue 22)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import farm.models

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Server defaults fill the rows of workers registered before the tier.
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("host_models", farm.models.JSONType, server_default="[]", nullable=False))
        batch.add_column(sa.Column("ram_cache_gb", sa.Float(), server_default="0.0", nullable=False))
        batch.add_column(sa.Column("h2d_gbps", sa.Float(), server_default="12.0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("h2d_gbps")
        batch.drop_column("ram_cache_gb")
        batch.drop_column("host_models")
