"""Dashboard sign-in: sessions, CSRF on every form, redirects."""

from __future__ import annotations

import re

import pytest

from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents


@pytest.fixture()
def dash(sqlite_settings):
    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        _, token = create_user(session, "ana", password="correct horse battery")
    return create_app(sqlite_settings, context=ctx).test_client(), token


def csrf_from(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_pages_need_a_session(dash):
    client, _ = dash
    response = client.get("/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_sign_in_with_password_and_sign_out(dash):
    client, _ = dash
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    wrong = client.post("/login", data={"name": "ana", "password": "nope", "csrf_token": csrf})
    assert wrong.status_code == 401 and "did not match" in wrong.get_data(as_text=True)
    assert 'value="ana"' in wrong.get_data(as_text=True)  # the name is kept for the next try
    ok = client.post("/login?next=/", data={"name": "ana", "password": "correct horse battery", "csrf_token": csrf})
    assert ok.status_code == 302 and ok.headers["Location"] == "/"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "ana" in page.get_data(as_text=True)
    # The session's CSRF token was renewed at sign-in; the old one no longer works.
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 400
    fresh = csrf_from(page.get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": fresh}).status_code == 302
    assert client.get("/").status_code == 302


def test_sign_in_with_an_api_token(dash):
    client, token = dash
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"token": token, "csrf_token": csrf}).status_code == 302
    assert client.get("/").status_code == 200


def test_every_form_post_needs_the_csrf_token(dash):
    client, _ = dash
    client.get("/login")
    for path in ("/login", "/logout"):
        response = client.post(path, data={"name": "ana", "password": "correct horse battery"})
        assert response.status_code == 400 and "CSRF check failed" in response.get_data(as_text=True)


def test_open_redirects_are_refused(dash):
    client, _ = dash
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post("/login?next=//evil.example/", data={"name": "ana", "password": "correct horse battery", "csrf_token": csrf})
    assert response.headers["Location"] == "/"


@pytest.mark.parametrize("target", ["/%09/evil.example/", "/%0A/evil.example", "/%5Cevil.example", "/%5C%5Cevil.example",
                                    "https://evil.example/", "/%0d%0aSet-Cookie:x=1", "%2F%2Fevil.example", "javascript:alert(1)"])
def test_sign_in_redirects_only_to_paths_of_this_site(dash, target):
    client, _ = dash
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(f"/login?next={target}", data={"name": "ana", "password": "correct horse battery", "csrf_token": csrf})
    assert response.status_code == 302 and response.headers["Location"] == "/", target


def test_sign_in_keeps_a_path_of_this_site(dash):
    client, _ = dash
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post("/login?next=/campaigns%3Fpage%3D2", data={"name": "ana", "password": "correct horse battery",
                                                                       "csrf_token": csrf})
    assert response.headers["Location"] == "/campaigns?page=2"
