"""model variants: models.base and models.variant

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch_op:
        batch_op.add_column(sa.Column("base", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("variant", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_models_base", ["base"])
        batch_op.create_unique_constraint("uq_models_base_variant", ["base", "variant"])


def downgrade() -> None:
    with op.batch_alter_table("models") as batch_op:
        batch_op.drop_constraint("uq_models_base_variant", type_="unique")
        batch_op.drop_index("ix_models_base")
        batch_op.drop_column("variant")
        batch_op.drop_column("base")
