"""Migration tests on both databases: a fresh database per test, SQLite or a
throwaway Postgres, and just enough of a FarmContext for the row factories."""

from __future__ import annotations

import pytest

from farm.localcluster import temporary_postgres_database
from farm.settings import Settings


class RowContext:
    """Just enough of a FarmContext for the row factory."""

    def __init__(self, url: str) -> None:
        from farm.db import Database

        self.db = Database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """An empty database on each engine in turn (use it in a module's namespace)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.sqlite'}"
        return
    with temporary_postgres_database() as url:
        yield Settings(database_url=url).resolved_database_url
