"""Migration 0016 (jobs.parent_output) up and down on SQLite and Postgres:
jobs submitted before it get their parent from the request they were
submitted with, so the image page lists them among what was made from it."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, inspect

from farm.db import downgrade_database, upgrade_database
from farm.localcluster import temporary_postgres_database
from farm.settings import Settings
from tests.support.factories import make_job

pytestmark = pytest.mark.integration


class _Ctx:
    """Just enough of a FarmContext for the row factory."""

    def __init__(self, url: str) -> None:
        from farm.db import Database

        self.db = Database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'parent.sqlite'}"
        return
    with temporary_postgres_database() as url:
        yield Settings(database_url=url).resolved_database_url


def test_parent_output_is_backfilled_from_the_request_and_dropped_on_downgrade(database_url):
    upgrade_database(database_url)
    ctx = _Ctx(database_url)
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
    ctx = _Ctx(database_url)
    from farm.models import Job

    with ctx.db.session() as session:
        assert session.get(Job, derived).parent_output == parent
        assert session.get(Job, plain).parent_output is None and session.get(Job, odd).parent_output is None
    ctx.db.dispose()
