"""`farm db wait`: what a Kubernetes initContainer runs so that a farm process
starts only once the migration Job brought the schema to its own heads."""

from __future__ import annotations

import threading

from farm.db import downgrade_database, schema_heads, upgrade_database


def test_a_current_schema_needs_no_wait(run, sqlite_settings):
    result = run("db", "wait", "--timeout", "0")
    assert result.exit_code == 0, result.output
    assert "current" in result.output


def test_a_schema_behind_this_farm_fails_with_what_to_run(run, sqlite_settings):
    url = sqlite_settings.resolved_database_url
    downgrade_database(url, "-1")
    current, wanted = schema_heads(url)
    assert current and current != wanted
    result = run("db", "wait", "--timeout", "0")
    assert result.exit_code == 1
    assert "farm db upgrade" in result.output and sorted(wanted)[0] in result.output
    assert "Traceback" not in result.output


def test_an_empty_database_is_waited_for_until_the_migrations_ran(run, tmp_path, monkeypatch):
    from farm.settings import Settings

    settings = Settings(home=tmp_path / "fresh", database_url=None, broker_url=None, s3_endpoint=None)
    monkeypatch.setenv("FARM_HOME", str(settings.home))
    assert run("db", "wait", "--timeout", "0").exit_code == 1
    # The "migration Job" runs while the "initContainer" waits.
    migrate = threading.Timer(0.5, upgrade_database, [settings.resolved_database_url])
    migrate.start()
    try:
        result = run("db", "wait", "--timeout", "120")
    finally:
        migrate.join()
    assert result.exit_code == 0, result.output
