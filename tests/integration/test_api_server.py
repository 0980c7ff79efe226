"""`farm api`'s server (uvicorn + a2wsgi, issue 19) keeps what waitress gave
clients: keep-alive connections survive a pause between requests."""

from __future__ import annotations

import http.client
import time

import pytest

from farm.api import create_app
from farm.context import build_context
from farm.events import LocalEvents
from farm.settings import Settings
from tests.support.api import served_streaming

pytestmark = pytest.mark.integration


def test_a_keep_alive_connection_survives_a_pause(tmp_path, migrated_postgres_url):
    settings = Settings(home=tmp_path, database_url=migrated_postgres_url)
    ctx = build_context(settings, events=LocalEvents())
    with served_streaming(create_app(settings, context=ctx), ctx) as base:
        connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
        for pause in (0, 6):
            time.sleep(pause)  # past uvicorn's default keep-alive of 5 s
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            assert response.status == 200
            response.read()
        connection.close()
    ctx.db.dispose()
