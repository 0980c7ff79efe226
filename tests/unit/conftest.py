"""Fixtures of the unit tier (no services)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


@pytest.fixture()
def run(sqlite_settings, monkeypatch):
    """Invoke the `farm` CLI against the embedded database of sqlite_settings."""
    import farm.settings
    from farm.cli import main

    monkeypatch.setenv("FARM_HOME", str(sqlite_settings.home))
    for name in ("FARM_DATABASE_URL", "FARM_BROKER_URL", "FARM_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(farm.settings, "_settings", None)

    def invoke(*args):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return invoke
