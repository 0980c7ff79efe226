"""The environment of a throwaway farm for the scale-out benches: its own
home, database and Redis namespace, migrated, quiet logs."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path


def farm_env(home: Path, database_url: str, redis_url: str):
    """The environment for the farm processes a bench starts, and the
    settings for the bench's own process; the database is migrated."""
    from farm.db import upgrade_database
    from farm.settings import Settings

    namespace = f"farm-bench-{uuid.uuid4().hex[:8]}:"
    env = {key: value for key, value in os.environ.items() if not key.startswith("FARM_")}
    env.update(FARM_HOME=str(home), FARM_DATABASE_URL=database_url, FARM_BROKER_URL=redis_url,
               FARM_REDIS_NAMESPACE=namespace, FARM_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    settings = Settings(home=home, database_url=database_url, broker_url=redis_url, redis_namespace=namespace)
    upgrade_database(settings.resolved_database_url)
    return env, settings


def stop_process(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (the farm processes' clean stop), then SIGKILL after ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
