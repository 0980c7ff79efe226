"""Throttling counts live in the farm's Redis, so two api replicas share them (issue 18)."""

from __future__ import annotations

import re
import uuid

import pytest
import redis

from farm.api import create_app
from farm.auth import create_user
from farm.context import build_context
from farm.events import LocalEvents
from farm.settings import Settings
from tests.support.api import assert_error, auth, truncate_all

pytestmark = pytest.mark.integration


@pytest.fixture()
def replicas(tmp_path, migrated_postgres_url, redis_url):
    """Two apps as two api replicas: one database, the farm's Redis as broker,
    a key prefix of this test's own."""
    prefix = f"farm-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url, broker_url=redis_url, throttle_key_prefix=prefix)
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        _, token = create_user(session, f"ana-{prefix}", password="correct horse battery")
    apps = [create_app(settings, context=ctx).test_client() for _ in range(2)]
    yield apps, token, prefix
    truncate_all(ctx)
    ctx.db.dispose()
    store = redis.Redis.from_url(redis_url)
    for key in store.scan_iter(match=f"*{prefix}*"):
        store.delete(key)


def test_failed_token_checks_on_two_replicas_share_one_count(replicas, redis_url):
    (first, second), token, prefix = replicas
    for i in range(30):  # the default: 30 failures a minute per address, half on each replica
        assert_error((first, second)[i % 2].get("/api/v1/jobs", headers=auth(f"farm_wrong{i}")), 401, "invalid")
    for replica in (first, second):
        answer = replica.get("/api/v1/jobs", headers=auth(token))
        assert_error(answer, 429, "too many failed API token checks")
        assert 1 <= int(answer.headers["Retry-After"]) <= 60
    assert list(redis.Redis.from_url(redis_url).scan_iter(match=f"*{prefix}/token-address/*"))


def test_failed_sign_ins_for_a_name_on_two_replicas_share_one_count(replicas):
    (first, second), _, prefix = replicas
    name = f"ana-{prefix}"

    def sign_in(client, password, address):
        page = client.get("/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        return client.post("/login", data={"name": name, "password": password, "csrf_token": csrf},
                           environ_base={"REMOTE_ADDR": address})

    for i in range(5):  # the default: 5 failures a minute per name
        assert sign_in((first, second)[i % 2], "wrong", f"10.9.0.{i}").status_code == 401
    refused = sign_in(first, "correct horse battery", "10.9.1.1")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
