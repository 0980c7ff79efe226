"""The api's /metrics (prometheus_client output), request timing by Flask
URL rule, and /healthz/live and /healthz/ready."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event

from farm import __version__
from farm.api import create_app
from farm.context import build_context
from farm.events import LocalEvents
from farm.localcluster import free_port
from farm.settings import Settings
from tests.support.factories import make_job

JOB_ROUTE = "/api/v1/jobs/<job_id>"


@pytest.fixture()
def env(sqlite_settings):
    ctx = build_context(sqlite_settings, events=LocalEvents())
    yield ctx, create_app(sqlite_settings, context=ctx).test_client()
    ctx.db.dispose()


def requests_counted(route: str, method: str, status: str) -> float:
    return REGISTRY.get_sample_value("farm_http_request_duration_seconds_count",
                                     {"route": route, "method": method, "status": status}) or 0.0


def test_requests_are_timed_by_url_rule_method_and_status(env):
    _, client = env
    before_unmatched = requests_counted("unmatched", "GET", "404")
    before_denied = requests_counted(JOB_ROUTE, "GET", "401")
    before_other = requests_counted("unmatched", "other", "405")
    for _ in range(3):
        assert client.get(f"/api/v1/jobs/{uuid.uuid4()}").status_code == 401
    assert client.get("/no/such/page").status_code == 404
    client.open("/api/v1/jobs", method="BREW")
    # One series per route template, whatever the ids in the path were.
    assert requests_counted(JOB_ROUTE, "GET", "401") == before_denied + 3
    assert requests_counted("unmatched", "GET", "404") == before_unmatched + 1
    # A method nobody defined does not become a label value of its own.
    assert REGISTRY.get_sample_value("farm_http_request_duration_seconds_count",
                                     {"route": "unmatched", "method": "BREW", "status": "405"}) is None
    assert requests_counted("unmatched", "other", "405") == before_other + 1


def test_metrics_are_prometheus_output_with_build_info(env):
    from prometheus_client.parser import text_string_to_metric_families

    _, client = env
    client.get("/healthz/live")
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(answer.get_data(as_text=True))}
    info = [sample for sample in families["farm_build_info"].samples if sample.labels["component"] == "api"]
    assert info and info[0].labels["version"] == __version__ and info[0].value == 1
    assert families["farm_http_request_duration_seconds"].type == "histogram"


def test_a_scrape_reads_no_table(env):
    """No scrape scans the jobs table (nor any other): with jobs in the
    database, /metrics runs no SQL statement at all."""
    ctx, client = env
    for _ in range(3):
        make_job(ctx)
    statements: list[str] = []
    listener = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
    event.listen(ctx.db.engine, "before_cursor_execute", listener)
    try:
        assert client.get("/metrics").status_code == 200
        client.get("/healthz/ready")  # the listener hears this api's statements
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", listener)
    assert statements == ["SELECT 1"]


def test_live_and_ready(env, tmp_path):
    _, client = env
    assert client.get("/healthz/live").get_json() == {"status": "ok"}
    assert client.get("/healthz/ready").get_json() == {"status": "ok", "database": "up"}
    assert client.get("/healthz").status_code == 200
    # Nothing listens on this port: the database is unreachable.
    down = Settings(home=tmp_path / "down", database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/farm")
    down_client = create_app(down).test_client()
    assert down_client.get("/healthz/live").status_code == 200
    ready = down_client.get("/healthz/ready")
    assert ready.status_code == 503 and ready.get_json()["database"] == "down"
