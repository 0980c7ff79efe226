"""The design part of the dashboard (issue 19) on a real app: human times
instead of raw datetimes, status counts that link to the jobs history, and
Create offering only the frames of registered model families."""

from __future__ import annotations

import datetime as dt
import re

from dashboard.create import aspect_ratio_choices
from dashboard.filters import describe_time
from farm.spec import FAMILY_ASPECT_RATIOS
from tests.unit.test_dashboard_pages import farm, post, signed_in, tiny_sd  # noqa: F401  (fixtures)

NOW = dt.datetime(2026, 12, 6, 14, 3, 27, 123456, tzinfo=dt.timezone.utc)
RAW_TIME = re.compile(r"\d{2}:\d{2}:\d{2}\.\d{3,6}")  # how str(datetime) shows microseconds


def test_times_read_as_people_say_them():
    assert describe_time(NOW - dt.timedelta(seconds=10), NOW) == "just now"
    assert describe_time(NOW - dt.timedelta(minutes=3, seconds=5), NOW) == "3 min ago"
    assert describe_time(NOW + dt.timedelta(hours=2), NOW) == "in 2 h"
    assert describe_time(NOW - dt.timedelta(days=3), NOW) == "2026-12-03 14:03"
    assert describe_time((NOW - dt.timedelta(minutes=10)).replace(tzinfo=None), NOW) == "10 min ago"  # SQLite: naive UTC
    assert describe_time((NOW + dt.timedelta(days=1)).isoformat(), NOW) == "2026-12-07 14:03"  # ISO strings from the quota report
    assert describe_time(None, NOW) == ""


def test_frames_come_from_the_registered_families_only():
    assert [ratio for ratio, _ in aspect_ratio_choices(["sd", "sd"])] == list(FAMILY_ASPECT_RATIOS["sd"])
    both = dict(aspect_ratio_choices(["sdxl", "sd", "flux"]))
    assert both["1024*1024"] == ["flux", "sdxl"] and both["512*512"] == ["sd"]
    assert aspect_ratio_choices([]) == []


def test_status_counts_link_to_the_history_and_create_offers_no_sdxl_frame(farm):  # noqa: F811
    ctx, app, _ = farm
    ana = signed_in(app, "ana")
    post(ana, "/create", prompt="a bell", model="tiny-sd", width="64", height="64", steps="2")
    status = ana.get("/").get_data(as_text=True)
    assert re.search(r'<a class="badge badge-queued" id="count-queued" href="/jobs\?status=queued"[^>]*>queued <span class="count">1</span></a>',
                     status)
    assert 'href="/jobs?status=failed"' in status and 'aria-current="page">Status</a>' in status
    create = ana.get("/create").get_data(as_text=True)
    offered = re.findall(r'<option value="(\d+\*\d+)" data-families="([^"]*)"', create)
    assert [ratio for ratio, _ in offered] == list(FAMILY_ASPECT_RATIOS["sd"]) and {f for _, f in offered} == {"sd"}
    assert 'data-family="sd"' in create


def test_admin_shows_when_a_token_was_last_used_in_words(farm):  # noqa: F811
    ctx, app, _ = farm
    root = signed_in(app, "root")
    created = post(root, "/admin/tokens", user_id="1", name="laptop", scope="read").get_data(as_text=True)
    token = re.search(r'id="new-token">[^<]*<code>([^<]+)</code>', created).group(1)
    assert app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    admin = root.get("/admin").get_data(as_text=True)
    assert re.search(r'<time datetime="[^"]+" title="\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC">just now</time>', admin)
    assert not RAW_TIME.search(re.sub(r'datetime="[^"]*"', "", admin))
    sessions = root.get("/admin/sessions").get_data(as_text=True)
    assert "just now" in sessions and not RAW_TIME.search(re.sub(r'datetime="[^"]*"', "", sessions))
