"""Migration 0016 (jobs.parent_output) up and down on SQLite and Postgres:
jobs submitted before it get their parent from the request they were
submitted with, so the image page lists them among what was made from it."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, inspect

from farm.db import downgrade_database, upgrade_database
from tests.support.factories import make_job
from tests.support.migrations import RowContext
from tests.support.migrations import database_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def test_parent_output_is_backfilled_from_the_request_and_dropped_on_downgrade(database_url):
    upgrade_database(database_url)
    ctx = RowContext(database_url)
    parent = uuid.uuid4()
    derived = make_job(ctx, request={"prompt": "p", "image_mode": "vary_subtle", "parent_output": str(parent)})
    plain = make_job(ctx, request={"prompt": "p"})
    odd = make_job(ctx, request={"prompt": "p", "parent_output": "not an id"})  # refused today; never a crash here
    ctx.db.dispose()

    downgrade_database(database_url, "0015")
    engine = create_engine(database_url)
    columns = {column["name"] for column in inspect(engine).get_columns("jobs")}
    assert "parent_output" not in columns
    engine.dispose()

    upgrade_database(database_url)
    ctx = RowContext(database_url)
    from farm.models import Job

    with ctx.db.session() as session:
        assert session.get(Job, derived).parent_output == parent
        assert session.get(Job, plain).parent_output is None and session.get(Job, odd).parent_output is None
    ctx.db.dispose()
