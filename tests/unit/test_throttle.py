"""Throttling of dashboard sign-ins and failed API token checks (issue 18), on
in-memory counts as under `farm up`."""

from __future__ import annotations

import re

import pytest

from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from tests.support.api import assert_error, auth

PASSWORD = "correct horse battery"


@pytest.fixture()
def farm(sqlite_settings):
    """An app on the default limits: 10 failed sign-ins a minute per address,
    5 per name, 30 failed token checks per address."""
    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        _, token = create_user(session, "ana", password=PASSWORD)
    return create_app(sqlite_settings, context=ctx).test_client(), token


def sign_in(client, address="10.0.0.1", **form):
    page = client.get("/login").get_data(as_text=True)
    form["csrf_token"] = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client.post("/login", data=form, environ_base={"REMOTE_ADDR": address})


def assert_throttled_page(response):
    assert response.status_code == 429 and response.mimetype == "text/html"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert f"try again in {response.headers['Retry-After']} s" in response.get_data(as_text=True)


def test_the_eleventh_failed_sign_in_from_an_address_is_refused_and_the_right_password_too(farm):
    client, _ = farm
    for i in range(10):  # ten names, so no one name's count fills first
        assert sign_in(client, name=f"guess-{i}", password="wrong").status_code == 401
    assert_throttled_page(sign_in(client, name="ana", password="wrong"))
    assert_throttled_page(sign_in(client, name="ana", password=PASSWORD))
    assert client.get("/").status_code == 302  # not signed in
    # Another address is not held back by this one's failures.
    assert sign_in(client, address="10.0.0.2", name="ana", password=PASSWORD).status_code == 302


def test_a_name_is_throttled_across_addresses(farm):
    client, _ = farm
    for i in range(5):
        assert sign_in(client, address=f"10.0.1.{i}", name="ana" if i % 2 else "ANA", password="wrong").status_code == 401
    assert_throttled_page(sign_in(client, address="10.0.2.1", name="ana", password=PASSWORD))
    # The address itself is not throttled: another name still gets its check.
    assert sign_in(client, address="10.0.2.1", name="bob", password="wrong").status_code == 401


def test_unknown_names_are_throttled_like_known_ones(farm):
    client, _ = farm
    for i in range(5):
        assert sign_in(client, address=f"10.0.1.{i}", name="nobody", password="wrong").status_code == 401
    assert_throttled_page(sign_in(client, address="10.0.2.1", name="nobody", password="wrong"))


def test_failed_token_sign_ins_are_throttled_per_address(farm):
    client, token = farm
    for i in range(10):
        assert sign_in(client, token=f"farm_wrong{i}").status_code == 401
    assert_throttled_page(sign_in(client, token=token))
    assert sign_in(client, address="10.0.0.2", token=token).status_code == 302


def test_an_unknown_name_costs_the_same_hashing_as_a_known_one_and_a_throttled_attempt_none(farm, monkeypatch):
    from farm import auth

    checked: list[str] = []
    real = auth._hasher

    class Counting:
        """argon2-cffi's hasher, noting the parameters of every hash it verifies against."""

        def __init__(self):
            self.hasher = real()

        def __getattr__(self, name):
            return getattr(self.hasher, name)

        def verify(self, stored, password):
            checked.append(stored.rsplit("$", 2)[0])  # $argon2id$v=19$m=…,t=…,p=…
            return self.hasher.verify(stored, password)

    monkeypatch.setattr(auth, "_hasher", Counting)
    client, _ = farm
    assert sign_in(client, address="10.0.3.1", name="ana", password="wrong").status_code == 401
    known = list(checked)
    checked.clear()
    assert sign_in(client, address="10.0.3.2", name="nobody", password="wrong").status_code == 401
    assert checked == known and len(known) == 1 and known[0].startswith("$argon2id$")
    for i in range(4):
        sign_in(client, address="10.0.3.3", name="nobody", password="wrong")
    checked.clear()
    assert sign_in(client, address="10.0.3.4", name="nobody", password="wrong").status_code == 429
    assert checked == []  # refused before any hash is checked


def test_failed_token_checks_are_throttled_per_address(farm):
    client, token = farm
    bad, elsewhere = {"REMOTE_ADDR": "10.0.0.1"}, {"REMOTE_ADDR": "10.0.0.2"}
    for i in range(30):
        assert_error(client.get("/api/v1/jobs", headers=auth(f"farm_wrong{i}"), environ_base=bad), 401, "invalid")
    for credential in ("farm_wrong", token):  # the 31st, and then a good token from that address
        answer = client.get("/api/v1/jobs", headers=auth(credential), environ_base=bad)
        error = assert_error(answer, 429, "too many failed API token checks")
        assert error["code"] == "throttled" and error["details"]["retry_after_s"] == int(answer.headers["Retry-After"])
        assert 1 <= int(answer.headers["Retry-After"]) <= 60
    assert client.get("/api/v1/jobs", headers=auth(token), environ_base=elsewhere).status_code == 200


def test_a_good_token_is_never_counted(farm):
    client, token = farm
    for _ in range(40):
        assert client.get("/api/v1/jobs", headers=auth(token)).status_code == 200
    assert_error(client.get("/api/v1/jobs", headers=auth("farm_wrong")), 401, "invalid")


def test_limits_are_settings(sqlite_settings):
    settings = sqlite_settings.model_copy(update={"throttle_token_failures_per_address": "2 per hour"})
    client = create_app(settings, context=build_context(settings, events=LocalEvents())).test_client()
    for _ in range(2):
        assert client.get("/api/v1/jobs", headers=auth("farm_wrong")).status_code == 401
    answer = client.get("/api/v1/jobs", headers=auth("farm_wrong"))
    assert answer.status_code == 429 and 3500 <= int(answer.headers["Retry-After"]) <= 3600
    bad = sqlite_settings.model_copy(update={"throttle_sign_in_per_name": "five a minute"})
    with pytest.raises(ValueError, match="FARM_THROTTLE_SIGN_IN_PER_NAME"):
        create_app(bad, context=build_context(bad, events=LocalEvents()))


@pytest.mark.parametrize(("hops", "throttled"), [(0, True), (1, False)])
def test_the_client_address_comes_from_x_forwarded_for_only_behind_a_proxy(sqlite_settings, hops, throttled):
    settings = sqlite_settings.model_copy(update={"throttle_token_failures_per_address": "2/minute", "forwarded_for_hops": hops})
    client = create_app(settings, context=build_context(settings, events=LocalEvents())).test_client()
    for _ in range(2):
        client.get("/api/v1/jobs", headers={**auth("farm_wrong"), "X-Forwarded-For": "203.0.113.7"})
    other_client = client.get("/api/v1/jobs", headers={**auth("farm_wrong"), "X-Forwarded-For": "198.51.100.9"})
    assert (other_client.status_code == 429) is throttled


def test_sign_in_goes_on_with_counts_in_the_process_while_the_storage_is_down(sqlite_settings):
    # Nothing listens on port 1: every storage call fails at once.
    settings = sqlite_settings.model_copy(update={"throttle_storage_url": "redis://127.0.0.1:1/0"})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        create_user(session, "ana", password=PASSWORD)
    client = create_app(settings, context=ctx).test_client()
    assert sign_in(client, name="ana", password=PASSWORD).status_code == 302
    for _ in range(5):
        assert sign_in(client, name="ana", password="wrong").status_code == 401
    assert_throttled_page(sign_in(client, name="ana", password=PASSWORD))
