"""jobs: newest-first history indexes and full-text search over prompts (issue 19)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The expression dashboard/data.py searches with, character for character:
# Postgres uses an expression index only for a query with the same expression.
PROMPT_VECTOR = "to_tsvector('simple'::regconfig, (params ->> 'prompt'))"


def upgrade() -> None:
    # The jobs history is newest first with a (created_at, id) cursor: for an
    # admin over every job, for a member over their own (or their team's).
    op.create_index("ix_jobs_created_id", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_user_created", "jobs", ["user_id", "created_at", "id"])
    if op.get_bind().dialect.name == "postgresql":
        # 'simple': no stemming or stop words, so any word of any language in
        # a prompt can be found; SQLite searches with LIKE instead.
        op.execute(f"CREATE INDEX ix_jobs_prompt_search ON jobs USING gin ({PROMPT_VECTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_jobs_prompt_search")
    op.drop_index("ix_jobs_user_created", table_name="jobs")
    op.drop_index("ix_jobs_created_id", table_name="jobs")
