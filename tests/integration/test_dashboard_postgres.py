"""Dashboard reads on the real Postgres: gallery filters (JSONB style
containment), campaign summaries and team visibility, unplaceable jobs."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, update

from dashboard import data
from farm import states
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
        create_user(session, "root", admin=True)
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
        states.fail_job(session, first, None, "out of memory")  # through the state machine: the tallies follow
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


def test_dashboard_sessions_end_and_keep_their_scope_on_postgres(ctx):
    """Sessions live in Postgres: a read-only token's session is refused writes
    and shows no forms; a saved cookie stops working at token revocation,
    password change and when an operator ends it; NUL and out-of-range query
    parameters are a 400 (Postgres refuses NUL in text: it was a 500)."""
    from farm.api import create_app
    from farm.auth import set_password
    from farm.models import Campaign, DashboardSession
    from farm.services import sessions as session_service
    from farm.services import tokens as token_service
    from farm.services.tokens import OPERATOR
    from tests.support.dashboard import post, post_forms, replayed, saved_cookie, sign_in, signed_out

    app = create_app(ctx.settings, context=ctx)
    ana = user(ctx, "ana")
    with ctx.db.transaction() as session:
        set_password(session, session.get(User, ana.id), "ana password 1")
    req = service.parse_campaign({"name": "pots", "base": {"prompt": "a pot", "model": "m-sd", "width": 64, "height": 64, "steps": 2}})
    campaign_id = service.submit_campaign(ctx, ana, req)["id"]
    read_token, read_plain = token_service.create_token(ctx, OPERATOR, user_id=ana.id, name="viewer", scope="read")
    by_password = sign_in(app, "ana", "ana password 1")
    viewer = sign_in(app, token=read_plain)

    assert post(by_password, f"/campaigns/{campaign_id}/pause").status_code == 302
    assert post(viewer, f"/campaigns/{campaign_id}/resume").status_code == 403
    with ctx.db.session() as session:
        assert session.get(Campaign, uuid.UUID(campaign_id)).status == "paused"
    assert post_forms(viewer.get(f"/campaigns/{campaign_id}").get_data(as_text=True)) == ["/logout"]

    for query, name in (("style=%00", "style"), ("model=%00", "model"), ("page=99999999999999999999", "page")):
        answer = by_password.get(f"/campaigns/{campaign_id}?{query}")
        assert answer.status_code == 400 and f"&#39;{name}&#39;" in answer.get_data(as_text=True), query

    viewer_cookie, password_cookie = saved_cookie(viewer), saved_cookie(by_password)
    token_service.revoke_token(ctx, OPERATOR, read_token.id)
    assert signed_out(replayed(app, viewer_cookie)) and not signed_out(replayed(app, password_cookie))
    with ctx.db.transaction() as session:
        set_password(session, session.get(User, ana.id), "ana password 2")
    assert signed_out(replayed(app, password_cookie))

    again = sign_in(app, "ana", "ana password 2")
    [live] = session_service.list_sessions(ctx, OPERATOR)
    session_service.end_session(ctx, OPERATOR, live.id)
    assert signed_out(replayed(app, saved_cookie(again)))
    with ctx.db.session() as session:
        reasons = sorted(session.execute(select(DashboardSession.end_reason)).scalars())
    assert reasons == ["ended by operator", "password changed", "token revoked"]
