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


def test_clients_may_connect_as_soon_as_the_server_is_made(tmp_path, migrated_postgres_url):
    """farm up prints its banner between make_server() and run(): a client that
    connects in that gap waits in the backlog instead of being refused."""
    import socket
    import threading

    from farm.api.server import make_server
    from farm.localcluster import free_port

    settings = Settings(home=tmp_path, database_url=migrated_postgres_url)
    ctx = build_context(settings, events=LocalEvents())
    port = free_port()
    server = make_server(create_app(settings, context=ctx), ctx, "127.0.0.1", port, 2)
    early = socket.create_connection(("127.0.0.1", port), timeout=5)  # before run(): refused without listen()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        early.sendall(b"GET /healthz HTTP/1.1\r\nHost: farm\r\nConnection: close\r\n\r\n")
        assert early.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        early.close()
        server.should_exit = True
        thread.join(timeout=10)
