"""Template filters and helpers every dashboard page shares.

``when`` writes a time the way people read it: "just now", "3 min ago",
"in 2 h" within a day, else "2026-12-06 14:03" (UTC), never microseconds
(issue 19: the admin page showed raw ``datetime`` values).
``jobs_url`` links a status count to the jobs history filtered by it."""

from __future__ import annotations

import datetime as dt
import logging

from urllib.parse import urlencode

from flask import current_app, url_for

from dashboard.core import bp

logger = logging.getLogger(__name__)

RELATIVE_LIMIT_S = 24 * 3600  # past a day a date says more than "31 h ago"


def describe_time(value: dt.datetime | str | None, now: dt.datetime | None = None) -> str:
    """``value`` (a datetime or an ISO 8601 string) relative to ``now`` within
    a day, else as a UTC minute; "" for None."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:  # SQLite hands back naive datetimes; the farm stores UTC
        value = value.replace(tzinfo=dt.timezone.utc)
    now = now or dt.datetime.now(dt.timezone.utc)
    seconds = (now - value).total_seconds()
    if abs(seconds) >= RELATIVE_LIMIT_S:
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    if abs(seconds) < 45:
        return "just now"
    span = abs(seconds)
    amount = f"{round(span / 60)} min" if span < 3600 else f"{round(span / 3600)} h"
    return f"{amount} ago" if seconds > 0 else f"in {amount}"


@bp.app_template_filter("when")
def when(value: dt.datetime | str | None) -> str:
    return describe_time(value)


@bp.app_template_filter("utc")
def utc(value: dt.datetime | None) -> str:
    """The exact time for a title attribute: "2026-12-06 14:03:27 UTC"."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("eta")
def eta(seconds: float | None) -> str:
    """A campaign's ETA: "unknown" while there is nothing to go on (None), else "45 s", "8 min 20 s", "2 h 5 min"."""
    if seconds is None:
        return "unknown"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


@bp.app_template_global("has_endpoint")
def has_endpoint(endpoint: str) -> bool:
    return endpoint in current_app.view_functions


@bp.app_template_global("jobs_url")
def jobs_url(status: str | None = None, **filters: str) -> str:
    """The jobs history, filtered by ``status`` (and ``model``, ``campaign``, …) when given."""
    args = {name: value for name, value in {"status": status, **filters}.items() if value}
    if has_endpoint("dashboard.jobs"):
        return url_for("dashboard.jobs", **args)
    return "/jobs" + (f"?{urlencode(args)}" if args else "")
