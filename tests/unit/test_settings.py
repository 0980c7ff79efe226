from __future__ import annotations

import pytest
from pydantic import ValidationError

from farm.settings import Settings, get_settings, override_settings


def test_reads_farm_prefixed_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FARM_HOME", str(tmp_path))
    monkeypatch.setenv("FARM_DATABASE_URL", "postgresql://u@db:5432/farm")
    monkeypatch.setenv("FARM_BROKER_URL", "redis://r:6379/0")
    monkeypatch.setenv("FARM_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("FARM_WORKER_MODELS", "a, b,,c")
    settings = Settings()
    assert settings.home == tmp_path
    # A plain postgresql:// URL is made to use psycopg 3.
    assert settings.resolved_database_url == "postgresql+psycopg://u@db:5432/farm"
    assert settings.redis_url == "redis://r:6379/0"
    assert settings.worker_model_ids() == ["a", "b", "c"]
    assert not settings.embedded


def test_unset_means_embedded(monkeypatch, tmp_path):
    for name in ("FARM_DATABASE_URL", "FARM_BROKER_URL", "FARM_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(home=tmp_path)
    assert settings.embedded
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'farm.sqlite'}"
    assert settings.resolved_broker_url == "filesystem://"
    assert settings.redis_url is None
    assert settings.resolved_model_cache == tmp_path / "models"


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("FARM_LEASE_S", "-1")
    with pytest.raises(ValidationError, match="lease_s"):
        Settings()
    monkeypatch.delenv("FARM_LEASE_S")
    monkeypatch.setenv("FARM_DEVICE", "tpu")
    with pytest.raises(ValidationError, match="device"):
        Settings()


def test_every_field_is_described():
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_override_settings_restores(tmp_path):
    before = get_settings()
    with override_settings(home=tmp_path, max_steps=7, database_url="postgres://x@y/z") as changed:
        assert get_settings() is changed
        assert changed.max_steps == 7
        assert changed.database_url == "postgresql+psycopg://x@y/z"
    assert get_settings() is before
