"""users.default_model: the model a user's AUTOMATIC1111 clients render with
when a request names none (POST /sdapi/v1/options sd_model_checkpoint) (issue 20)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain column (no foreign key): SQLite adds it in place instead of
    # rebuilding users, whose rows half the schema references.
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("default_model", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("default_model")
