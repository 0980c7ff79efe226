"""Dashboard sessions: started at sign-in, checked on every dashboard request,
ended at sign-out, by an admin, at token revocation and password change.

The browser's cookie carries a random secret; the ``dashboard_sessions`` row
holds only its sha256, so a copy of the database signs nobody in. A session
has the scope of what signed it in: a password is ``full``, an API token
lends its own scope. Every call owns one transaction; listings are
:class:`SessionInfo` views, which never carry the secret or its hash.

Ending sessions from elsewhere (token revocation, password change) happens in
the transaction of that change, through :func:`farm.auth.end_dashboard_sessions`.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from farm.auth import hash_token
from farm.context import FarmContext
from farm.models import ApiToken, DashboardSession, User, utcnow
from farm.services.jobs import ConflictError, NotFoundError
from farm.services.tokens import Actor, ForbiddenError

logger = logging.getLogger(__name__)

SECRET_BYTES = 32
# last_seen_at is kept to this resolution, so most requests are one SELECT.
LAST_SEEN_RESOLUTION = dt.timedelta(minutes=1)
MAX_ID = 2**31 - 1  # ids are INTEGER columns; a larger number names no session
LIST_LIMIT = 500
MAX_USER_AGENT = 255
MAX_ADDRESS = 64
MAX_REASON = 64


@dataclass(frozen=True)
class LiveSession:
    """The session behind one dashboard request."""

    id: int
    user: User
    scope: str

    @property
    def can_write(self) -> bool:
        return self.scope == "full"


@dataclass(frozen=True)
class SessionInfo:
    """What may be shown about a session: never its secret, never its hash."""

    id: int
    user_id: int
    user_name: str
    scope: str
    token_id: int | None
    token_label: str | None  # "name (prefix…)" of the token signed in with
    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime
    ended_at: dt.datetime | None
    end_reason: str | None
    client_address: str | None
    user_agent: str | None

    @property
    def active(self) -> bool:
        return self.ended_at is None and self.expires_at > utcnow()


def session_info(row: DashboardSession) -> SessionInfo:
    label = f"{row.token.name} ({row.token.prefix}…)" if row.token is not None else None
    return SessionInfo(id=row.id, user_id=row.user_id, user_name=row.user.name, scope=row.scope, token_id=row.token_id,
                       token_label=label, created_at=row.created_at, last_seen_at=row.last_seen_at,
                       expires_at=row.expires_at, ended_at=row.ended_at, end_reason=row.end_reason,
                       client_address=row.client_address, user_agent=row.user_agent)


def _printable(text: str | None, limit: int) -> str | None:
    """Header text fit for a column: control characters (NUL included, which
    Postgres refuses in text) dropped, cut to the column's length."""
    if not text:
        return None
    return "".join(c for c in text if c.isprintable())[:limit] or None


def start_session(ctx: FarmContext, user: User, *, token: ApiToken | None = None, client_address: str | None = None,
                  user_agent: str | None = None) -> str:
    """A new session for ``user`` (signed in with ``token``, or with a password when None); returns its secret."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    now = utcnow()
    with ctx.db.transaction() as session:
        row = DashboardSession(user_id=user.id, token_id=token.id if token is not None else None,
                               secret_hash=hash_token(secret), scope=token.scope if token is not None else "full",
                               created_at=now, last_seen_at=now,
                               expires_at=now + dt.timedelta(seconds=ctx.settings.session_lifetime_s),
                               client_address=_printable(client_address, MAX_ADDRESS),
                               user_agent=_printable(user_agent, MAX_USER_AGENT))
        session.add(row)
        session.flush()
        session_id = row.id
    logger.info("dashboard session %s started for %s (%s)", session_id, user.name, row.scope)
    return secret


def _refusal(row: DashboardSession, now: dt.datetime) -> str | None:
    """Why a session may no longer be used, or None while it may."""
    if row.ended_at is not None:
        return row.end_reason or "ended"
    if row.expires_at <= now:
        return "expired"
    if row.user.disabled_at is not None:
        return "user disabled"
    if row.token is not None and row.token.revoked_at is not None:
        return "token revoked"
    return None


def current_session(ctx: FarmContext, secret: str | None) -> LiveSession | None:
    """The live session a cookie's secret names, or None (and the row ended, with why, if it just stopped being live)."""
    if not secret:
        return None
    now = utcnow()
    with ctx.db.transaction() as session:
        row = session.execute(select(DashboardSession).where(DashboardSession.secret_hash == hash_token(secret))).scalar_one_or_none()
        if row is None:
            return None
        reason = _refusal(row, now)
        if reason is not None:
            if row.ended_at is None:
                _end(session, row.id, reason, now)
            return None
        if now - row.last_seen_at >= LAST_SEEN_RESOLUTION:
            # Conditional, so concurrent requests of one browser write it once.
            session.execute(update(DashboardSession).where(DashboardSession.id == row.id,
                                                           DashboardSession.last_seen_at <= now - LAST_SEEN_RESOLUTION)
                            .values(last_seen_at=now))
        return LiveSession(id=row.id, user=row.user, scope=row.scope)


def _end(session: Session, session_id: int, reason: str, now: dt.datetime) -> bool:
    """End one session unless it has ended already; whether this call ended it."""
    result = session.execute(update(DashboardSession).where(DashboardSession.id == session_id, DashboardSession.ended_at.is_(None))
                             .values(ended_at=now, end_reason=reason[:MAX_REASON]))
    return result.rowcount == 1


def end_current_session(ctx: FarmContext, secret: str | None, reason: str = "signed out") -> None:
    """End the session a cookie's secret names (sign-out); nothing happens for an unknown or ended one."""
    if not secret:
        return
    with ctx.db.transaction() as session:
        session_id = session.execute(select(DashboardSession.id).where(DashboardSession.secret_hash == hash_token(secret))).scalar()
        if session_id is not None and _end(session, session_id, reason, utcnow()):
            logger.info("dashboard session %s ended: %s", session_id, reason)


def list_sessions(ctx: FarmContext, actor: Actor, *, include_ended: bool = False,
                  limit: int | None = LIST_LIMIT) -> list[SessionInfo]:
    """Sessions of every user, most recently seen first: live ones, or all with ``include_ended``. Admins only."""
    if not actor.is_admin:
        raise ForbiddenError("only admins may list dashboard sessions")
    query = select(DashboardSession).order_by(DashboardSession.last_seen_at.desc(), DashboardSession.id.desc())
    if limit is not None:
        query = query.limit(limit)
    if not include_ended:
        query = query.where(DashboardSession.ended_at.is_(None), DashboardSession.expires_at > utcnow())
    with ctx.db.session() as session:
        return [session_info(row) for row in session.execute(query).unique().scalars()]


def end_session(ctx: FarmContext, actor: Actor, session_id: int | str, reason: str | None = None) -> SessionInfo:
    """End one session (an admin's doing); ending an ended or expired one is a conflict."""
    if not actor.is_admin:
        raise ForbiddenError("only admins may end dashboard sessions")
    try:
        key = int(session_id)
    except (TypeError, ValueError):
        raise NotFoundError(f"no session {session_id!r}") from None
    if not 1 <= key <= MAX_ID:
        raise NotFoundError(f"no session {session_id}")
    now = utcnow()
    with ctx.db.transaction() as session:
        row = session.get(DashboardSession, key)
        if row is None:
            raise NotFoundError(f"no session {key}")
        if row.ended_at is not None:
            raise ConflictError(f"session {key} already ended at {row.ended_at.isoformat()} ({row.end_reason})")
        if row.expires_at <= now:
            raise ConflictError(f"session {key} already expired at {row.expires_at.isoformat()}")
        _end(session, key, reason or f"ended by {actor.name}", now)
        session.flush()
        session.refresh(row)
        info = session_info(row)
    logger.info("%s ended dashboard session %s of %s", actor.name, key, info.user_name)
    return info

