"""Migration 0017 (no foreign key from jobs.model_id) up and down on SQLite
and Postgres: a removed model's finished jobs stay, and a downgrade brings
the key back with a placeholder entry for each model the jobs still name."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, select

from farm.db import downgrade_database, upgrade_database
from tests.support.factories import make_job
from tests.support.migrations import RowContext
from tests.support.migrations import database_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def job_foreign_keys(url: str) -> list:
    engine = create_engine(url)
    try:
        return [fk["referred_table"] for fk in inspect(engine).get_foreign_keys("jobs")]
    finally:
        engine.dispose()


def test_a_removed_models_jobs_survive_and_a_downgrade_restores_the_key(database_url):
    from farm.models import Job, ModelEntry
    from farm.registry import remove_model

    upgrade_database(database_url)
    assert "models" not in job_foreign_keys(database_url)
    ctx = RowContext(database_url)
    done = make_job(ctx, model="m-gone", status="succeeded")
    with ctx.db.transaction() as session:
        remove_model(session, "m-gone")
    ctx.db.dispose()

    downgrade_database(database_url, "0016")
    assert "models" in job_foreign_keys(database_url)
    # At 0016 the tables lack later columns the ORM classes map, so read them by column.
    ctx = RowContext(database_url)
    with ctx.db.session() as session:
        assert session.execute(select(Job.model_id).where(Job.id == done)).scalar_one() == "m-gone"
        description = session.execute(select(ModelEntry.description).where(ModelEntry.id == "m-gone")).scalar_one()
        assert description == "removed from the registry"
    ctx.db.dispose()

    upgrade_database(database_url)
    assert "models" not in job_foreign_keys(database_url)
