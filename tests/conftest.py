"""Shared fixtures: real services, one throwaway database per test run."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture()
def sqlite_settings(tmp_path):
    """Embedded-mode settings with a migrated SQLite file under tmp_path."""
    from farm.db import upgrade_database
    from farm.settings import Settings

    settings = Settings(home=tmp_path / "home", database_url=None, broker_url=None, s3_endpoint=None)
    settings.home.mkdir(parents=True)
    upgrade_database(settings.resolved_database_url)
    return settings


@pytest.fixture(scope="session")
def postgres_url():
    from farm.localcluster import temporary_postgres_database

    with temporary_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url):
    from farm.db import upgrade_database
    from farm.settings import Settings

    upgrade_database(Settings(database_url=postgres_url).resolved_database_url)
    return postgres_url


@pytest.fixture(scope="session")
def redis_url():
    return os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def s3():
    from farm.localcluster import s3_endpoint

    with s3_endpoint() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_bucket():
    return f"farm-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Two tiny random-weight SD pipelines on disk, built once per run."""
    from farm.workers.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        "tiny-a": write_tiny_model(root / "tiny-a", family="sd", seed=1),
        "tiny-b": write_tiny_model(root / "tiny-b", family="sd", seed=2),
    }
