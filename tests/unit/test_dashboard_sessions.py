"""Dashboard sessions kept in the database (issue 18): a saved cookie stops
working at sign-out, token revocation, password change, expiry and when an
admin ends it; a read-only token signs in to a read-only session; admins list
and end sessions in the dashboard and with `farm sessions`; hostile query
parameters get a 400 naming them."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from sqlalchemy import func, select

from farm.api import create_app
from farm.auth import create_user, set_password
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import Campaign, DashboardSession, Job, Output, User
from farm.services import campaigns as campaign_service
from farm.services import sessions as session_service
from farm.services import tokens as token_service
from farm.services.tokens import OPERATOR
from tests.support.api import auth
from tests.support.dashboard import csrf_from, post, post_forms, replayed, saved_cookie, signed_out
from tests.support.dashboard import sign_in as sign_in_with
from tests.support.factories import ensure_model, make_job

PASSWORDS = {"ana": "ana password 1", "root": "root password 1"}


def sign_in(app, name: str | None = None, token: str | None = None):
    return sign_in_with(app, name, PASSWORDS.get(name), token)


@pytest.fixture()
def farm(sqlite_settings):
    settings = sqlite_settings.model_copy(update={"session_lifetime_s": 600})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        create_user(session, "ana", password=PASSWORDS["ana"])
        create_user(session, "root", admin=True, password=PASSWORDS["root"])
    return ctx, create_app(settings, context=ctx)


def user_id(ctx, name: str) -> int:
    with ctx.db.session() as session:
        return session.execute(select(User.id).where(User.name == name)).scalar_one()


def only_session(ctx, **where) -> DashboardSession:
    with ctx.db.session() as session:
        query = select(DashboardSession)
        for column, value in where.items():
            query = query.where(getattr(DashboardSession, column) == value)
        return session.execute(query).unique().scalar_one()


def test_the_cookie_holds_a_secret_whose_hash_alone_is_stored(farm):
    ctx, app = farm
    ana = sign_in(app, "ana")
    row = only_session(ctx)
    assert (row.user_id, row.scope, row.token_id, row.ended_at) == (user_id(ctx, "ana"), "full", None, None)
    assert row.expires_at - row.created_at == dt.timedelta(seconds=600)
    assert row.client_address == "127.0.0.1" and row.user_agent.startswith("Werkzeug")
    from flask.sessions import SecureCookieSessionInterface

    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    content = serializer.loads(saved_cookie(ana))
    assert set(content) - {"_permanent"} == {"sid", "csrf_token"}  # no user id: the row says who it is
    assert row.secret_hash != content["sid"] and len(row.secret_hash) == 64


def test_a_saved_cookie_stops_working_at_sign_out(farm):
    ctx, app = farm
    ana = sign_in(app, "ana")
    cookie = saved_cookie(ana)
    assert replayed(app, cookie).get("/usage").status_code == 200
    assert post(ana, "/logout").status_code == 302
    assert signed_out(replayed(app, cookie))
    row = only_session(ctx)
    assert row.ended_at is not None and row.end_reason == "signed out"


def test_a_saved_cookie_stops_working_when_its_token_is_revoked(farm):
    ctx, app = farm
    _, plain = token_service.create_token(ctx, OPERATOR, user_id=user_id(ctx, "ana"), name="laptop")
    _, other = token_service.create_token(ctx, OPERATOR, user_id=user_id(ctx, "ana"), name="desk")
    by_token, by_other, by_password = sign_in(app, token=plain), sign_in(app, token=other), sign_in(app, "ana")
    cookies = [saved_cookie(c) for c in (by_token, by_other, by_password)]
    token_id = token_id_named(ctx, "laptop")
    # Revoked through the API, as its owner would.
    assert app.test_client().delete(f"/api/v1/tokens/{token_id}", headers=auth(plain)).status_code == 200
    assert signed_out(replayed(app, cookies[0]))
    assert not signed_out(replayed(app, cookies[1])) and not signed_out(replayed(app, cookies[2]))  # only that token's
    assert only_session(ctx, token_id=token_id).end_reason == "token revoked"


def token_id_named(ctx, name: str) -> int:
    from farm.models import ApiToken

    with ctx.db.session() as session:
        return session.execute(select(ApiToken.id).where(ApiToken.name == name)).scalar_one()


def test_a_token_revoked_behind_the_services_back_still_ends_its_session(farm):
    """The check reads the token on every request, whoever revoked it."""
    ctx, app = farm
    token_row, plain = token_service.create_token(ctx, OPERATOR, user_id=user_id(ctx, "ana"), name="laptop")
    cookie = saved_cookie(sign_in(app, token=plain))
    from farm.models import ApiToken, utcnow

    with ctx.db.transaction() as session:
        session.get(ApiToken, token_row.id).revoked_at = utcnow()
    assert signed_out(replayed(app, cookie))
    assert only_session(ctx).end_reason == "token revoked"


def test_a_saved_cookie_stops_working_when_the_password_changes(farm, run):
    ctx, app = farm
    cookie = saved_cookie(sign_in(app, "ana"))
    root_cookie = saved_cookie(sign_in(app, "root"))
    result = run("users", "set-password", "ana", "--password", "a new password 2")
    assert result.exit_code == 0 and "1 dashboard session ended" in result.output, result.output
    assert signed_out(replayed(app, cookie))
    assert not signed_out(replayed(app, root_cookie))  # someone else's password changed
    assert only_session(ctx, user_id=user_id(ctx, "ana")).end_reason == "password changed"
    again = app.test_client()
    csrf = csrf_from(again.get("/login").get_data(as_text=True))
    assert again.post("/login", data={"name": "ana", "password": "a new password 2", "csrf_token": csrf}).status_code == 302
    assert not signed_out(again)  # the new password signs in again


def test_set_password_ends_the_sessions_in_its_own_transaction(farm):
    ctx, app = farm
    cookie = saved_cookie(sign_in(app, "ana"))
    with ctx.db.transaction() as session:
        user = session.get(User, user_id(ctx, "ana"))
        assert set_password(session, user, "another password 3") == 1
    assert signed_out(replayed(app, cookie))


def test_a_saved_cookie_stops_working_when_the_session_expires(farm, monkeypatch):
    ctx, app = farm  # a 600 s lifetime
    cookie = saved_cookie(sign_in(app, "ana"))
    started = only_session(ctx).created_at
    monkeypatch.setattr(session_service, "utcnow", lambda: started + dt.timedelta(seconds=599))
    assert not signed_out(replayed(app, cookie))
    monkeypatch.setattr(session_service, "utcnow", lambda: started + dt.timedelta(seconds=601))
    assert signed_out(replayed(app, cookie))
    assert only_session(ctx).end_reason == "expired"


def test_the_lifetime_is_a_setting_and_the_cookie_follows_it(farm):
    from email.utils import parsedate_to_datetime

    _, app = farm  # FARM_SESSION_LIFETIME_S=600
    client = app.test_client()
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    answer = client.post("/login", data={"name": "ana", "password": PASSWORDS["ana"], "csrf_token": csrf})
    expires = parsedate_to_datetime(re.search(r"Expires=([^;]+)", answer.headers["Set-Cookie"]).group(1))
    assert 590 <= (expires - dt.datetime.now(dt.timezone.utc)).total_seconds() <= 601


def test_last_seen_is_written_at_most_once_a_minute(farm, monkeypatch):
    ctx, app = farm
    ana = sign_in(app, "ana")
    first = only_session(ctx).last_seen_at
    ana.get("/usage")
    assert only_session(ctx).last_seen_at == first
    monkeypatch.setattr(session_service, "utcnow", lambda: first + dt.timedelta(seconds=61))
    ana.get("/usage")
    assert only_session(ctx).last_seen_at == first + dt.timedelta(seconds=61)


def test_admins_list_and_end_sessions_in_the_dashboard(farm):
    ctx, app = farm
    ana, root = sign_in(app, "ana"), sign_in(app, "root")
    cookie = saved_cookie(ana)
    ana_session = only_session(ctx, user_id=user_id(ctx, "ana"))
    assert ana.get("/admin/sessions").status_code == 403
    assert post(ana, f"/admin/sessions/{ana_session.id}/end").status_code == 403
    assert 'id="sessions-link"' in root.get("/admin").get_data(as_text=True)
    page = root.get("/admin/sessions").get_data(as_text=True)
    assert f'id="session-{ana_session.id}"' in page and "this session" in page and "127.0.0.1" in page
    assert ana_session.secret_hash not in page
    assert post(root, f"/admin/sessions/{ana_session.id}/end").status_code == 302
    assert signed_out(replayed(app, cookie))
    assert f'id="session-{ana_session.id}"' not in root.get("/admin/sessions").get_data(as_text=True)
    assert only_session(ctx, id=ana_session.id).end_reason == "ended by root"
    again = post(root, f"/admin/sessions/{ana_session.id}/end")
    assert again.status_code == 409 and "already ended" in again.get_data(as_text=True)
    assert post(root, "/admin/sessions/999/end").status_code == 404


def test_farm_sessions_lists_and_ends_sessions_with_one_line_errors(farm, run):
    ctx, app = farm
    cookie = saved_cookie(sign_in(app, "ana"))
    session_id = only_session(ctx).id
    listing = run("sessions", "list")
    assert listing.exit_code == 0
    [line] = listing.output.strip().splitlines()
    assert line.startswith(f"{session_id}\tana\tfull\tpassword\t") and "127.0.0.1" in line
    ended = run("sessions", "end", str(session_id))
    assert ended.exit_code == 0 and f"ended session {session_id} of ana" in ended.output
    assert signed_out(replayed(app, cookie))
    assert run("sessions", "list").output.strip() == "no live sessions"
    assert "ended 20" in run("sessions", "list", "--all").output
    for args, text in ((("end", str(session_id)), "already ended"), (("end", "999"), "no session 999"),
                       (("end", "abc"), "no session 'abc'"), (("end", "99999999999999999999"), "no session 99999999999999999999")):
        result = run("sessions", *args)
        assert result.exit_code == 1, (args, result.output)
        assert text in result.output and "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------- read-only sessions


def make_output(ctx, owner: str = "ana") -> Output:
    job_id = make_job(ctx, owner, status="succeeded")
    with ctx.db.transaction() as session:
        output = Output(job_id=job_id, user_id=user_id(ctx, owner), attempt=1, index=0, object_key=f"out/{job_id}.png",
                        sidecar_key=f"out/{job_id}.json", content_type="image/png", content_sha256="0" * 64, byte_size=1,
                        width=64, height=64, seed=1, lineage={"prompt": "p"})
        session.add(output)
    return output


def make_campaign(ctx, owner: str = "ana") -> str:
    with ctx.db.session() as session:
        user = session.execute(select(User).where(User.name == owner)).scalar_one()
    req = campaign_service.parse_campaign({"name": "bells", "base": {"prompt": "a bell", "model": "m-sd", "width": 64,
                                                                     "height": 64, "steps": 2}, "matrix": {"seed_count": [2]}})
    return campaign_service.submit_campaign(ctx, user, req)["id"]


WRITE_MARKS = ("Rerender", "action-pause", "action-resume", "action-cancel", "Create token", "Revoke", 'id="save-',
               "/create", "end-session-")


def test_a_read_only_token_signs_in_to_a_session_that_cannot_write(farm):
    ctx, app = farm
    output = make_output(ctx)
    campaign_id = make_campaign(ctx)
    full = sign_in(app, "ana")
    assert 'id="rerender"' in full.get(f"/images/{output.id}").get_data(as_text=True)
    assert post(full, f"/campaigns/{campaign_id}/pause").status_code == 302
    _, plain = token_service.create_token(ctx, OPERATOR, user_id=user_id(ctx, "ana"), name="viewer", scope="read")
    viewer = sign_in(app, token=plain)
    assert only_session(ctx, scope="read").token_id is not None

    with ctx.db.session() as session:
        jobs_before = session.execute(select(func.count()).select_from(Job)).scalar_one()
    for path in (f"/images/{output.id}/rerender", f"/campaigns/{campaign_id}/resume", f"/campaigns/{campaign_id}/cancel",
                 f"/campaigns/{campaign_id}/retry-failed", f"/images/{output.id}/vary_subtle", "/create", "/create/check"):
        refused = post(viewer, path, prompt="a bell", model="m-sd")
        assert refused.status_code == 403, path
        assert "read-only" in refused.get_data(as_text=True)
    with ctx.db.session() as session:
        assert session.execute(select(func.count()).select_from(Job)).scalar_one() == jobs_before
        assert session.get(Campaign, uuid.UUID(campaign_id)).status == "paused"

    # It sees everything it may read, and no form or link to change anything.
    for path in ("/", f"/images/{output.id}", f"/campaigns/{campaign_id}", "/campaigns", f"/jobs/{output.job_id}",
                 "/workers", "/usage"):
        response = viewer.get(path)
        assert response.status_code == 200, path
        page = response.get_data(as_text=True)
        assert not [mark for mark in WRITE_MARKS if mark in page], path
        forms = post_forms(page)
        assert forms == ["/logout"], (path, forms)  # sign-out is its one form
        assert 'id="read-only"' in page
    assert viewer.get("/create").status_code == 403
    assert post(viewer, "/logout").status_code == 302  # it may sign out
    assert only_session(ctx, scope="read").end_reason == "signed out"


def test_a_read_only_admin_sees_the_admin_pages_without_their_forms(farm):
    ctx, app = farm
    _, plain = token_service.create_token(ctx, OPERATOR, user_id=user_id(ctx, "root"), name="auditor", scope="read")
    auditor = sign_in(app, token=plain)
    sign_in(app, "ana")
    ana_session = only_session(ctx, user_id=user_id(ctx, "ana"))
    for path in ("/admin", "/admin/sessions"):
        page = auditor.get(path).get_data(as_text=True)
        assert post_forms(page) == ["/logout"], path
    assert f'id="session-{ana_session.id}"' in auditor.get("/admin/sessions").get_data(as_text=True)
    for path in (f"/admin/sessions/{ana_session.id}/end", "/admin/tokens", f"/admin/quota/user/{ana_session.user_id}",
                 "/workers/w1/drain"):
        assert post(auditor, path, user_id=str(ana_session.user_id), images_per_day="1").status_code == 403, path
    assert only_session(ctx, id=ana_session.id).ended_at is None


# ---------------------------------------------------------------------- hostile query parameters


@pytest.mark.parametrize(("query", "name"), [
    ("page=99999999999999999999", "page"), ("page=0", "page"), ("page=-1", "page"), ("page=two", "page"),
    ("page=1e3", "page"), ("page=%C2%B2", "page"), ("page=" + "9" * 5000, "page"), ("style=%00", "style"), ("model=a%00b", "model"), ("status=%00", "status"),
    ("fragment=%00", "fragment"), ("x%00y=1", "xy"),
])
def test_hostile_query_parameters_get_a_400_naming_them(farm, query, name):
    ctx, app = farm
    campaign_id = make_campaign(ctx)
    ana = sign_in(app, "ana")
    for path in (f"/campaigns/{campaign_id}", f"/campaigns/{campaign_id}/gallery", "/campaigns"):
        if name in ("style", "model", "status") and path == "/campaigns":
            continue
        response = ana.get(f"{path}?{query}")
        assert response.status_code == 400, (path, query, response.status_code)
        assert f"&#39;{name}&#39;" in response.get_data(as_text=True), (path, query)


@pytest.mark.parametrize("path", ["/", "/usage", "/workers", "/create?from=%00", "/create/styles?q=%00", "/admin?group_by=%00",
                                  "/jobs/%00", "/images/%00"])
def test_nul_anywhere_in_a_dashboard_request_is_a_400(farm, path):
    _, app = farm
    root = sign_in(app, "root")
    response = root.get(path if "?" in path or "%00" in path else f"{path}?q=%00")
    assert response.status_code == 400 and "NUL" in response.get_data(as_text=True)


@pytest.mark.parametrize(("path", "name"), [("/admin/tokens/99999999999999999999/revoke", "token_id"),
                                            ("/admin/quota/user/99999999999999999999", "owner_id"),
                                            ("/admin/sessions/99999999999999999999/end", "session_id")])
def test_row_ids_past_an_integer_column_are_a_400(farm, path, name):
    _, app = farm
    app.testing = False  # an overflow in the driver would be a 500 page, not an exception in the test
    answer = post(sign_in(app, "root"), path, images_per_day="1")
    assert answer.status_code == 400 and f"&#39;{name}&#39;" in answer.get_data(as_text=True)


def test_a_page_number_in_range_still_works(farm):
    ctx, app = farm
    campaign_id = make_campaign(ctx)
    ana = sign_in(app, "ana")
    assert ana.get(f"/campaigns/{campaign_id}?page=1000000").status_code == 200  # past the end: an empty page
    assert ana.get("/campaigns?page=2").status_code == 200
    assert ana.get(f"/campaigns/{campaign_id}?page=").status_code == 200
