"""The jobs history on Postgres (issue 19): full-text prompt search through
the GIN index of migration 0010, team visibility, keyset pages."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from dashboard import data
from farm.models import utcnow
from tests.integration.test_dashboard_postgres import ctx, user  # noqa: F401  (ctx: the same four users and model)
from tests.support.factories import insert_jobs

pytestmark = pytest.mark.integration


def search(ctx, name: str, q: str, **filters) -> list:
    words = tuple(data.SEARCH_WORDS.findall(q.lower()))
    with ctx.db.session() as session:
        rows, _ = data.job_history(session, user(ctx, name), data.HistoryFilters(words=words, **filters), None, 50)
    return [row.id for row in rows]


def test_search_uses_full_text_words_and_prefixes_within_what_the_user_may_see(ctx):
    now = utcnow()
    with ctx.db.transaction() as session:
        ana_ids = insert_jobs(session, user_id=user(ctx, "ana").id, model_id="m-sd", created_at=now,
                              prompts=["A Lighthouse at dusk", "a red fox, in the snow", "fox-hole (100%) under_score"])
        eve_ids = insert_jobs(session, user_id=user(ctx, "eve").id, model_id="m-sd", created_at=now + dt.timedelta(seconds=1),
                              prompts=["a lighthouse of eve's"])
    lighthouse, fox, hole = ana_ids
    assert search(ctx, "ana", "lighthouse") == [lighthouse]
    assert search(ctx, "ana", "DUSK lighthouse") == [lighthouse]  # every word, any order, any case
    assert search(ctx, "ana", "light") == []  # whole words (a prefix search misleads the planner, see data.py)
    assert set(search(ctx, "ana", "fox")) == {fox, hole}
    assert search(ctx, "ana", "fox snow") == [fox]
    assert search(ctx, "ana", "100") == [hole] and search(ctx, "ana", "score") == [hole]
    assert search(ctx, "ana", "fox & | ! :* (snow") == [fox]  # punctuation never reaches to_tsquery as syntax
    assert search(ctx, "ben", "lighthouse") == [lighthouse]  # the team's jobs, as in the API
    assert search(ctx, "eve", "lighthouse") == eve_ids  # never another team's
    assert search(ctx, "root", "lighthouse") == [eve_ids[0], lighthouse]  # admins: all, newest first
    assert search(ctx, "ana", "lighthouse", statuses=("failed",)) == []
    assert search(ctx, "ana", "lighthouse", statuses=("failed", "queued")) == [lighthouse]


def test_the_search_and_the_history_order_use_their_indexes(ctx):
    """EXPLAIN of the page's own statement: the GIN index for a rare word, the (created_at, id) index for no search."""
    now = utcnow()
    with ctx.db.transaction() as session:
        owner = user(ctx, "ana").id
        insert_jobs(session, user_id=owner, model_id="m-sd", created_at=now,
                    prompts=[f"a product shot number {i}" for i in range(20_000)])
        insert_jobs(session, user_id=owner, model_id="m-sd", created_at=now, prompts=["a zebra crossing"])
    with ctx.db.session() as session:
        session.execute(text("ANALYZE jobs"))
        root = user(ctx, "root")

        def plan(words: tuple[str, ...]) -> str:
            query = data.history_query(session, root, data.HistoryFilters(words=words), None, 50)
            compiled = query.compile(session.bind, compile_kwargs={"literal_binds": True})
            return "\n".join(session.execute(text(f"EXPLAIN {compiled}")).scalars())

        assert "ix_jobs_prompt_search" in plan(("zebra",)), plan(("zebra",))
        assert "ix_jobs_created_id" in plan(()), plan(())
