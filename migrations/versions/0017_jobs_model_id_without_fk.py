"""jobs.model_id keeps the id of a model removed from the registry: the
foreign key to models goes, so 'farm models remove' leaves finished jobs,
their outputs and lineage readable (issue 21)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_model_id_models", type_="foreignkey")


def downgrade() -> None:
    # Jobs of a removed model would break the key: their model comes back as
    # a placeholder entry (no source to load), so the downgrade never fails.
    op.execute("INSERT INTO models (id, source, family, vram_gb, default_steps, default_guidance, description, created_at, updated_at) "
               "SELECT DISTINCT jobs.model_id, '', 'sd', 0, 20, 7.0, 'removed from the registry', "
               "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM jobs "
               "WHERE jobs.model_id NOT IN (SELECT id FROM models)")
    with op.batch_alter_table("jobs") as batch:
        batch.create_foreign_key("fk_jobs_model_id_models", "models", ["model_id"], ["id"])
