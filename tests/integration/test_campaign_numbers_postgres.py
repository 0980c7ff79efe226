"""The campaign-numbers tests of tests/unit/test_campaign_numbers.py on
PostgreSQL: the grouped progress query (CASE sums, divisions of integer
columns, time windows) must give the same figures there."""

from __future__ import annotations

import pytest

from tests.unit.test_campaign_numbers import (  # noqa: F401  (collected here again)
    env, frozen_now, test_a_paused_or_stalled_campaign_has_no_eta, test_a_young_campaign_is_measured_over_its_age_not_five_minutes,
    test_gpu_second_estimates_come_from_measured_render_times, test_images_per_minute_use_the_campaigns_own_running_time,
    test_the_eta_is_unknown_until_a_job_finished_or_a_worker_gave_one, test_the_eta_weighs_remaining_jobs_by_their_cost)


@pytest.fixture()
def sqlite_settings(tmp_path):
    """Overrides the unit tier's SQLite settings: a fresh Postgres database per test."""
    from farm.db import upgrade_database
    from farm.localcluster import temporary_postgres_database
    from farm.settings import Settings

    with temporary_postgres_database() as url:
        settings = Settings(home=tmp_path / "home", database_url=url, broker_url=None, s3_endpoint=None)
        settings.home.mkdir(parents=True)
        upgrade_database(settings.resolved_database_url)
        yield settings
