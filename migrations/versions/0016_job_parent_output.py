"""jobs.parent_output: the output an image-to-image job starts from, indexed,
so the image page lists the jobs made from an image (issue 19)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_output", sa.Uuid(), nullable=True))
        batch.create_index(batch.f("ix_jobs_parent_output"), ["parent_output"], unique=False)
    # Jobs submitted before this column name their source in the request; only
    # image-to-image requests carry parent_output, and it was checked to be an
    # output id at submission. The Uuid type stores 32 hex digits on SQLite.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE jobs SET parent_output = (request->>'parent_output')::uuid "
                   "WHERE request->>'parent_output' ~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$'")
    else:
        op.execute("UPDATE jobs SET parent_output = lower(replace(json_extract(request, '$.parent_output'), '-', '')) "
                   "WHERE length(replace(json_extract(request, '$.parent_output'), '-', '')) = 32")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(batch.f("ix_jobs_parent_output"))
        batch.drop_column("parent_output")
