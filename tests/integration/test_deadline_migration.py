"""Migration 0021 (deadlines and queue forecasts) up and down on SQLite and Postgres: existing rows get no
deadline and are not at risk; the downgrade drops the columns and the table."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import create_engine, inspect

from farm.db import downgrade_database, upgrade_database
from tests.support.factories import make_job
from tests.support.migrations import RowContext
from tests.support.migrations import database_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def columns(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_deadline_columns_and_forecasts_go_up_and_down(database_url):
    upgrade_database(database_url)
    downgrade_database(database_url, "0020")
    assert not {"deadline", "deadline_missed_s"} & columns(database_url, "jobs")
    assert not {"at_risk", "predicted_finish_at", "deadline_missed_s"} & columns(database_url, "campaigns")
    engine = create_engine(database_url)
    assert "queue_forecasts" not in inspect(engine).get_table_names()
    engine.dispose()

    upgrade_database(database_url)
    ctx = RowContext(database_url)
    from farm.models import Job, QueueForecast

    due = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    job_id = make_job(ctx, deadline=due)
    with ctx.db.transaction() as session:
        session.add(QueueForecast(model_id="m-sd", computed_at=due, job_ids=[str(job_id)], positions=[1], starts_s=[2.5]))
    with ctx.db.session() as session:
        assert session.get(Job, job_id).deadline == due and session.get(Job, job_id).deadline_missed_s is None
        assert session.get(QueueForecast, "m-sd").starts_s == [2.5]
    ctx.db.dispose()
