"""Helpers for API tests."""

from __future__ import annotations

import contextlib
import threading

from sqlalchemy import text


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response, status: int, text_: str) -> dict:
    """The response is a JSON error of ``status`` whose message contains ``text_``, never a traceback."""
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert text_ in error["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return error


ALL_TABLES = ("jobs, outputs, users, teams, api_tokens, models, workers, quotas, usage_ledger, campaigns, webhook_deliveries, "
              "queue_forecasts")


def truncate_all(ctx) -> None:
    """Empty every farm table of a test database (shared across one run's tests)."""
    with ctx.db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {ALL_TABLES} CASCADE"))


@contextlib.contextmanager
def served(app, threads: int = 8):
    """``app`` over real HTTP (waitress) on a free loopback port; yields its base URL."""
    from waitress.server import create_server

    from farm.localcluster import free_port

    port = free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=threads)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


@contextlib.contextmanager
def served_streaming(app, ctx, threads: int = 8):
    """``app`` as `farm api` serves it (uvicorn, a2wsgi, event streams without
    threads) on a free loopback port; yields its base URL."""
    import time

    from farm.api.server import make_server
    from farm.localcluster import free_port

    port = free_port()
    server = make_server(app, ctx, "127.0.0.1", port, threads)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the api did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
