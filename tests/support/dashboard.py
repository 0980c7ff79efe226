"""Helpers for dashboard tests: signing in, posting with the CSRF token, replaying a saved session cookie."""

from __future__ import annotations

import re

COOKIE = "session"  # Flask's session cookie: it carries the dashboard session's secret


def csrf_from(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def sign_in(app, name: str | None = None, password: str | None = None, token: str | None = None):
    """A test client signed in with a name and password or an API token; ``client.csrf`` holds its CSRF token."""
    client = app.test_client()
    csrf = csrf_from(client.get("/login").get_data(as_text=True))
    form = {"token": token} if token else {"name": name, "password": password}
    answer = client.post("/login", data={**form, "csrf_token": csrf})
    assert answer.status_code == 302, answer.get_data(as_text=True)
    client.csrf = csrf_from(client.get("/usage").get_data(as_text=True))
    return client


def post(client, path: str, **data):
    return client.post(path, data={"csrf_token": client.csrf, **data})


def saved_cookie(client) -> str:
    return client.get_cookie(COOKIE).value


def replayed(app, cookie: str):
    """A fresh browser that sends a cookie saved earlier."""
    client = app.test_client()
    client.set_cookie(COOKIE, cookie)
    return client


def signed_out(client) -> bool:
    """Whether the client's cookie no longer signs it in (a page sends it to the sign-in form)."""
    response = client.get("/usage")
    return response.status_code == 302 and response.headers["Location"].startswith("/login")


def post_forms(page: str) -> list[str]:
    """The actions of a page's POST forms."""
    return re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', page)
