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


def test_passwords_are_argon2id_and_old_scrypt_hashes_are_upgraded_at_sign_in(sqlite_settings):
    import hashlib
    import secrets

    from farm.auth import check_password, hash_password
    from farm.models import User

    stored = hash_password("correct horse battery")
    assert stored.startswith("$argon2id$") and "m=65536" in stored  # parameters live in the hash
    assert check_password("correct horse battery", stored) and not check_password("wrong", stored)

    ctx = build_context(sqlite_settings, events=LocalEvents())
    salt = secrets.token_bytes(16)
    legacy = f"scrypt${salt.hex()}${hashlib.scrypt(b'old secret pass', salt=salt, n=2**14, r=8, p=1).hex()}"
    with ctx.db.transaction() as session:
        user, _ = create_user(session, "old")
        user.password_hash = legacy
        user_id = user.id
    client = create_app(sqlite_settings, context=ctx).test_client()
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"name": "old", "password": "old secret pass", "csrf_token": csrf}).status_code == 302
    with ctx.db.session() as session:
        upgraded = session.get(User, user_id).password_hash
    assert upgraded.startswith("$argon2id$") and check_password("old secret pass", upgraded)


def test_unknown_names_cost_a_password_check_too(monkeypatch):
    from farm import auth

    checked = []
    real = auth._hasher

    class Counting:
        def __init__(self):
            self.hasher = real()

        def hash(self, password):
            return self.hasher.hash(password)

        def verify(self, stored, password):
            checked.append(stored)
            return self.hasher.verify(stored, password)

    monkeypatch.setattr(auth, "_hasher", Counting)
    assert not auth.check_password("guess", None)
    assert checked and checked[0].startswith("$argon2id$")


@pytest.mark.parametrize(("public_url", "secure"), [(None, False), ("http://farm.lan:8000", False),
                                                    ("https://farm.example.com", True)])
def test_session_cookies_are_secure_behind_https(sqlite_settings, public_url, secure):
    settings = sqlite_settings.model_copy(update={"public_url": public_url})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        create_user(session, "ana", password="correct horse battery")
    client = create_app(settings, context=ctx).test_client()
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    answer = client.post("/login", data={"name": "ana", "password": "correct horse battery", "csrf_token": csrf})
    assert answer.status_code == 302
    assert ("; Secure" in answer.headers["Set-Cookie"]) is secure
