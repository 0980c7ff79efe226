"""Migration 0017 (no foreign key from jobs.model_id) up and down on SQLite
and Postgres: a removed model's finished jobs stay, and a downgrade brings
the key back with a placeholder entry for each model the jobs still name."""

from __future__ import annotations

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
        yield f"sqlite:///{tmp_path / 'removal.sqlite'}"
        return
    with temporary_postgres_database() as url:
        yield Settings(database_url=url).resolved_database_url


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
    ctx = _Ctx(database_url)
    done = make_job(ctx, model="m-gone", status="succeeded")
    with ctx.db.transaction() as session:
        remove_model(session, "m-gone")
    ctx.db.dispose()

    downgrade_database(database_url, "0016")
    assert "models" in job_foreign_keys(database_url)
    ctx = _Ctx(database_url)
    with ctx.db.session() as session:
        assert session.get(Job, done).model_id == "m-gone"
        assert session.get(ModelEntry, "m-gone").description == "removed from the registry"
    ctx.db.dispose()

    upgrade_database(database_url)
    assert "models" not in job_foreign_keys(database_url)
