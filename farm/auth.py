"""API tokens and passwords: tokens are random, shown once, stored as sha256."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from farm.models import ApiToken, DashboardSession, Role, Team, User, utcnow

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "farm_"
# last_used_at is kept to this resolution so that most authentications stay one SELECT.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class UserExistsError(Exception):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _hasher():
    from argon2 import PasswordHasher

    # argon2-cffi's defaults follow RFC 9106's recommended low-memory profile
    # (argon2id, t=3, 64 MiB); they are stored in each hash, so raising them
    # later re-hashes old passwords at their next sign-in.
    return PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def check_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored`` (argon2id, or the scrypt hashes
    written before; see :func:`password_needs_rehash`)."""
    if not stored:
        _burn(password)
        return False
    if stored.startswith("scrypt$"):
        _, salt_hex, digest_hex = stored.split("$")
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), n=2**14, r=8, p=1)
        return secrets.compare_digest(digest.hex(), digest_hex)
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def password_needs_rehash(stored: str) -> bool:
    return stored.startswith("scrypt$") or _hasher().check_needs_rehash(stored)


_DUMMY_HASH: list[str] = []


def _burn(password: str) -> None:
    """Spend what checking a real hash costs, so that an unknown user name
    answers as slowly as a known one (no enumeration by timing)."""
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(hash_password(secrets.token_urlsafe(16)))
    check_password(password, _DUMMY_HASH[0])


def issue_token(session: Session, user: User, name: str = "default", scope: str = "full") -> str:
    """Create a token for a user; the plain token is returned once and never stored."""
    token = new_token()
    session.add(ApiToken(user_id=user.id, token_hash=hash_token(token), prefix=token[: len(TOKEN_PREFIX) + 6], name=name, scope=scope))
    session.flush()
    return token


def create_user(session: Session, name: str, *, admin: bool = False, team: str | None = None, password: str | None = None) -> tuple[User, str]:
    if session.execute(select(User.id).where(User.name == name)).first():
        raise UserExistsError(f"a user named {name!r} already exists")
    team_row = None
    if team:
        team_row = session.execute(select(Team).where(Team.name == team)).scalar_one_or_none()
        if team_row is None:
            team_row = Team(name=team)
            session.add(team_row)
            session.flush()
    user = User(
        name=name,
        role=(Role.admin if admin else Role.member).value,
        team_id=team_row.id if team_row else None,
        password_hash=hash_password(password) if password else None,
    )
    session.add(user)
    session.flush()
    return user, issue_token(session, user)


def user_for_token(session: Session, token: str) -> tuple[User, ApiToken] | None:
    row = session.execute(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None or row.user.disabled_at is not None:
        return None
    note_token_used(session, row)
    return row.user, row


def note_token_used(session: Session, row: ApiToken, now: dt.datetime | None = None) -> None:
    """Record when a token was last used, at most once per ``LAST_USED_RESOLUTION``; the caller commits."""
    now = now or utcnow()
    if row.last_used_at is not None and now - row.last_used_at < LAST_USED_RESOLUTION:
        return
    # Conditional, so concurrent requests with one token write it once.
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == row.id, or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= now - LAST_USED_RESOLUTION))
        .values(last_used_at=now)
    )


def revoke_tokens(session: Session, user: User, name: str) -> int:
    rows = session.execute(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.name == name, ApiToken.revoked_at.is_(None))).scalars().all()
    for row in rows:
        row.revoked_at = utcnow()
        end_dashboard_sessions(session, token_id=row.id, reason="token revoked")
    return len(rows)


def set_password(session: Session, user: User, password: str) -> int:
    """Set a user's password and end their dashboard sessions in the same
    transaction (a stolen cookie must not outlive the password it came from);
    returns how many sessions were ended."""
    user.password_hash = hash_password(password)
    return end_dashboard_sessions(session, user_id=user.id, reason="password changed")


def end_dashboard_sessions(session: Session, *, user_id: int | None = None, token_id: int | None = None,
                           reason: str) -> int:
    """End the live dashboard sessions of a user or of a token; the caller commits. Returns how many ended."""
    if (user_id is None) == (token_id is None):
        raise ValueError("end the sessions of a user or of a token")
    owner = DashboardSession.user_id == user_id if token_id is None else DashboardSession.token_id == token_id
    result = session.execute(update(DashboardSession).where(owner, DashboardSession.ended_at.is_(None))
                             .values(ended_at=utcnow(), end_reason=reason))
    return result.rowcount
