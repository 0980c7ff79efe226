"""A campaign's gallery pages and X/Y grid on the real Postgres: expansion
order across page boundaries, the filtered and pre-0011 fallbacks, and a
fixed number of queries per grid page whatever its size."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import event, select, update

from dashboard import data
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Campaign, Job, User
from farm.services import campaign_grids as grids
from farm.services import campaigns as service
from farm.settings import Settings
from tests.support.api import truncate_all
from tests.support.factories import ensure_model

pytestmark = pytest.mark.integration

SEEDS = list(range(100, 150))  # 50 seeds x 2 prompts = 100 jobs, three gallery pages


@pytest.fixture()
def ctx(tmp_path, migrated_postgres_url):
    context = build_context(Settings(home=tmp_path, database_url=migrated_postgres_url), events=LocalEvents())
    with context.db.transaction() as session:
        ensure_model(session, "m-sd")
        create_user(session, "ana")
    yield context
    truncate_all(context)
    context.db.dispose()


@pytest.fixture()
def campaign_id(ctx) -> uuid.UUID:
    with ctx.db.session() as session:
        ana = session.execute(select(User).where(User.name == "ana")).scalar_one()
    req = service.parse_campaign({"name": "c", "base": {"prompt": "x", "model": "m-sd", "width": 64, "height": 64, "steps": 2},
                                  "matrix": {"prompt": ["a fox", "a lighthouse"], "seed": SEEDS}})
    return uuid.UUID(service.submit_campaign(ctx, ana, req)["id"])


def expected(index: int) -> tuple[str, int]:
    return (["a fox", "a lighthouse"][index // len(SEEDS)], SEEDS[index % len(SEEDS)])


def page_of(session, campaign_id, page: int, **filters):
    items, _ = data.gallery_page(session, campaign_id, page=page, **{"status": None, "style": None, "model": None, **filters})
    return [(item.prompt, item.seed) for item in items]


def test_gallery_pages_follow_the_expansion_order(ctx, campaign_id):
    with ctx.db.session() as session:
        seen = page_of(session, campaign_id, 1) + page_of(session, campaign_id, 2) + page_of(session, campaign_id, 3)
        assert seen == [expected(n) for n in range(100)]
        assert page_of(session, campaign_id, 4) == []
        # Filtered pages skip by offset and keep the order.
        assert page_of(session, campaign_id, 2, model="m-sd") == [expected(n) for n in range(48, 96)]
    with ctx.db.transaction() as session:  # a campaign from before migration 0011
        session.execute(update(Job).where(Job.campaign_id == campaign_id).values(campaign_index=None))
    with ctx.db.session() as session:
        assert len(page_of(session, campaign_id, 3)) == 4


def test_a_grid_page_is_two_queries_whatever_its_size(ctx, campaign_id):
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(ctx.db.engine, "before_cursor_execute", count)
    try:
        with ctx.db.session() as session:
            campaign = session.get(Campaign, campaign_id)
            grid = grids.read_grid(session, campaign, "seed", "prompt", 0)
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", count)
    assert len(statements) == 2  # the campaign, the cells
    assert grid.x_labels == [str(s) for s in SEEDS] and grid.y_labels == ["a fox", "a lighthouse"] and grid.pages == 1
    with ctx.db.session() as session:
        by_index = {j.campaign_index: j.id for j in session.execute(select(Job).where(Job.campaign_id == campaign_id)).scalars()}
    assert [[cell.job_id for cell in row] for row in grid.rows] == [[by_index[j * 50 + i] for i in range(50)] for j in range(2)]
