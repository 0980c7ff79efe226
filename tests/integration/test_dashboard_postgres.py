"""Dashboard reads on the real Postgres: gallery filters (JSONB style
containment), campaign summaries and team visibility, unplaceable jobs."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, update

from dashboard import data
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Job, User, utcnow
from farm.services import campaigns as service
from farm.settings import Settings
from tests.support.api import truncate_all
from tests.support.factories import ensure_model

pytestmark = pytest.mark.integration


@pytest.fixture()
def ctx(tmp_path, migrated_postgres_url):
    context = build_context(Settings(home=tmp_path, database_url=migrated_postgres_url), events=LocalEvents())
    with context.db.transaction() as session:
        ensure_model(session, "m-sd")
        create_user(session, "ana", team="studio")
        create_user(session, "ben", team="studio")
        create_user(session, "eve", team="other")
    yield context
    truncate_all(context)
    context.db.dispose()


def user(ctx, name: str) -> User:
    with ctx.db.session() as session:
        return session.execute(select(User).where(User.name == name)).scalar_one()


def test_gallery_filters_and_summaries_on_postgres(ctx):
    ana = user(ctx, "ana")
    req = service.parse_campaign({"name": "pots", "base": {"prompt": "a pot", "model": "m-sd", "width": 64, "height": 64, "steps": 2},
                                  "matrix": {"styles": [["3d-low-poly"], ["3d-voxel"], ["3d-low-poly", "3d-voxel"]], "seed": [1, 2]}})
    campaign_id = uuid.UUID(service.submit_campaign(ctx, ana, req)["id"])
    with ctx.db.transaction() as session:
        first = session.execute(select(Job.id).where(Job.campaign_id == campaign_id).order_by(Job.created_at, Job.id)).scalars().first()
        session.execute(update(Job).where(Job.id == first).values(status="failed", finished_at=utcnow()))
    with ctx.db.session() as session:
        def count(**filters) -> int:
            items, total = data.gallery_page(session, campaign_id, page=1, **{"status": None, "style": None, "model": None, **filters})
            assert len(items) == total
            return total

        assert count() == 6
        assert count(style="3d-low-poly") == 4 and count(style="3d-voxel") == 4
        assert count(style="3d-low") == 0  # exact names, not substrings
        assert count(status="failed") == 1 and count(status="queued") == 5 and count(model="m-sd") == 6
        assert count(model="other") == 0
        campaign = service.visible_campaign(session, ana, str(campaign_id))
        assert data.campaign_filters(session, campaign) == {"models": ["m-sd"], "styles": ["3d-low-poly", "3d-voxel"]}
        for name, expected in (("ana", 1), ("ben", 1), ("eve", 0)):  # ben shares ana's team
            rows, total = data.campaign_summaries(session, user(ctx, name), 1)
            assert total == expected and len(rows) == expected
        [row] = data.campaign_summaries(session, ana, 1)[0]
        assert row["counts"]["failed"] == 1 and row["counts"]["queued"] == 5 and row["percent"] == round(100 / 6, 1)


def test_worker_overview_groups_the_queue_and_unplaceable_jobs(ctx):
    ana = user(ctx, "ana")
    req = service.parse_campaign({"name": "q", "base": {"prompt": "a pot", "model": "m-sd", "width": 64, "height": 64, "steps": 2},
                                  "matrix": {"seed_count": [5]}})
    service.submit_campaign(ctx, ana, req)
    with ctx.db.transaction() as session:
        ids = session.execute(select(Job.id).order_by(Job.id)).scalars().all()
        session.execute(update(Job).where(Job.id.in_(ids[:2])).values(
            error="waiting: no worker can run this job (needs 40.0 GB)"))
    with ctx.db.session() as session:
        overview = data.worker_overview(session, utcnow())
    assert [tuple(row) for row in overview["queue"]] == [("m-sd", 5)]
    assert [tuple(row) for row in overview["unplaceable"]] == [("waiting: no worker can run this job (needs 40.0 GB)", "m-sd", 2)]
