"""Every migration goes up and down on SQLite (Postgres: tests/integration)."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from farm.db import downgrade_database, upgrade_database
from farm.models import Base


def test_upgrade_downgrade_upgrade_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade_database(url)
    engine = create_engine(url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    downgrade_database(url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_database(url)
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()


def test_models_and_migrations_agree(tmp_path):
    """Autogenerate finds nothing to do after the migrations ran."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    upgrade_database(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []
