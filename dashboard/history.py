"""The jobs history: every job the user may see (single, API, CLI, campaign),
newest first, filtered by status, model, campaign and date and searched by
prompt, one keyset page at a time (issue 19).

Every query parameter is bounded and a bad one is a 400 naming it; the query
itself is dashboard/data.py's job_history (one statement a page)."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from flask import abort, g, render_template, request

from dashboard import data
from dashboard.core import bp, farm_ctx, int_arg, login_required
from farm.models import JobStatus
from farm.services.jobs import decode_cursor, encode_cursor

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200  # a search is a few words; longer is not a search
MAX_SEARCH_WORDS = 12
MAX_CURSOR_CHARS = 120  # an encoded (timestamp, uuid) is about 90
MAX_MODEL_CHARS = 128  # models.id is String(128)
FILTERS = ("q", "status", "model", "campaign", "since", "until")


def text_arg(name: str, max_chars: int) -> str | None:
    value = request.args.get(name, "").strip()
    if len(value) > max_chars:
        abort(400, description=f"query parameter {name!r} must be at most {max_chars} characters")
    return value or None


def date_arg(name: str) -> dt.date | None:
    raw = text_arg(name, 10)
    if raw is None:
        return None
    try:
        if raw.isascii() and len(raw) == 10:
            return dt.date.fromisoformat(raw)
    except ValueError:
        pass
    abort(400, description=f"query parameter {name!r} must be a date as YYYY-MM-DD, not {raw!r}")


def _start_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)


def history_filters() -> data.HistoryFilters:
    # One status or several with commas ("queued,assigned"), as the API's job list takes them.
    statuses = tuple(dict.fromkeys((text_arg("status", 80) or "").split(","))) if request.args.get("status", "").strip() else ()
    unknown = [name for name in statuses if name not in JobStatus.__members__]
    if unknown:
        abort(400, description=f"query parameter 'status' must be one of {', '.join(JobStatus.__members__)} "
                               f"(several with commas), not {unknown[0][:40]!r}")
    campaign = text_arg("campaign", 36)
    try:
        campaign_id = uuid.UUID(campaign) if campaign else None
    except ValueError:
        abort(400, description=f"query parameter 'campaign' must be a campaign id, not {campaign!r}")
    since, until = date_arg("since"), date_arg("until")
    if since and until and until < since:
        abort(400, description="query parameter 'until' must not be before 'since'")
    words = tuple(word.lower() for word in data.SEARCH_WORDS.findall(text_arg("q", MAX_QUERY_CHARS) or ""))
    if len(words) > MAX_SEARCH_WORDS:
        abort(400, description=f"query parameter 'q' must have at most {MAX_SEARCH_WORDS} words")
    return data.HistoryFilters(
        statuses=statuses, model=text_arg("model", MAX_MODEL_CHARS), campaign=campaign_id,
        since=_start_of(since) if since else None,
        before=_start_of(until + dt.timedelta(days=1)) if until and until < dt.date.max else None, words=words)


@bp.get("/jobs")
@login_required
def jobs():
    filters = history_filters()
    limit = int_arg("limit", data.HISTORY_PAGE, 1, 200)
    cursor = text_arg("cursor", MAX_CURSOR_CHARS)
    after = decode_cursor(cursor) if cursor else None  # a cursor this page did not write: 400 naming 'cursor'
    with farm_ctx().db.session() as session:
        rows, more = data.job_history(session, g.dashboard_user, filters, after, limit)
        choices = data.history_choices(session, g.dashboard_user)
    kept = {name: request.args[name] for name in FILTERS if request.args.get(name, "").strip()}
    if "limit" in request.args:
        kept["limit"] = limit
    return render_template("jobs.html", rows=rows, filters=kept, choices=choices, statuses=list(JobStatus.__members__),
                           next_cursor=encode_cursor(rows[-1]) if more else None, first_page=cursor is None)
