"""What set_quota stores and what it refuses (422 naming the field), whatever
reached it: the API, the dashboard's form or the command line."""

from __future__ import annotations

import pytest

from farm.context import build_context
from farm.db import upgrade_database
from farm.events import LocalEvents
from farm.models import INTEGER_MAX, Quota, Team
from farm.services.quotas import LIMIT_FIELDS, quota_view, set_quota
from farm.spec import RequestError


@pytest.fixture()
def ctx(sqlite_settings):
    upgrade_database(sqlite_settings.resolved_database_url)
    context = build_context(sqlite_settings, events=LocalEvents())
    with context.db.transaction() as session:
        session.add(Team(name="studio"))
    yield context
    context.db.dispose()


@pytest.mark.parametrize(("field", "value"), [
    ("images_per_day", float("nan")),
    ("gpu_seconds_per_month", float("nan")),
    ("gpu_seconds_per_month", float("inf")),
    ("max_pixels", float("-inf")),
    ("max_steps", True),
    ("max_queued_jobs", False),
    ("max_concurrent_jobs", "5"),
    ("images_per_day", [1]),
    ("max_pixels", 1.5),
    ("max_queued_jobs", -1),
    ("gpu_seconds_per_month", -0.5),
    ("max_steps", INTEGER_MAX + 1),
    ("max_queued_jobs", 10**20),
    ("images_per_day", 1e30),
    ("gpu_seconds_per_month", 10**400),  # an integer past the largest double
])
def test_refuses_naming_the_field(field, value):
    # Refused before the database is reached: no context is needed.
    with pytest.raises(RequestError) as refused:
        set_quota(None, "team", 1, {field: value})
    assert [p.field for p in refused.value.problems] == [field]
    assert refused.value.status == 422


def test_stores_every_limit_up_to_what_its_column_holds(ctx):
    limits = {name: INTEGER_MAX for name in LIMIT_FIELDS} | {"gpu_seconds_per_month": 1e300, "max_steps": 40.0}
    stored = quota_view(set_quota(ctx, "team", 1, limits))
    assert stored == {name: INTEGER_MAX for name in LIMIT_FIELDS} | {"gpu_seconds_per_month": 1e300, "max_steps": 40}
    assert isinstance(stored["max_steps"], int)
    # Zero is a limit (nothing allowed), null is none.
    assert quota_view(set_quota(ctx, "team", 1, {"max_queued_jobs": 0, "images_per_day": None}))["max_queued_jobs"] == 0
    with ctx.db.session() as session:
        assert session.query(Quota).one().max_queued_jobs == 0
