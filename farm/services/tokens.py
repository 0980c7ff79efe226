"""API token services: create (the plain token is shown once), list, revoke.

Each call owns one transaction. A member manages only their own tokens and
another user's tokens (or the user themself) answer exactly like missing ones;
an admin manages anyone's. Listings are :class:`TokenInfo` views, which carry
neither the plain token nor its hash.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Union

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.auth import end_dashboard_sessions, hash_token, issue_token
from farm.context import FarmContext
from farm.models import ApiToken, User, utcnow
from farm.services.jobs import ConflictError, NotFoundError
from farm.spec import FieldProblem, RequestError

logger = logging.getLogger(__name__)

SCOPES = ("full", "read")
MAX_NAME_LENGTH = 64


class ForbiddenError(Exception):
    """The actor is known but may not do this (a read-only token creating tokens)."""


@dataclass(frozen=True)
class Operator:
    """Someone with shell access to the farm's database (the ``farm`` CLI): acts as an admin."""

    id: None = None
    name: str = "operator"
    is_admin: bool = True


OPERATOR = Operator()
Actor = Union[User, Operator]


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: never the token, never its hash."""

    id: int
    user_id: int
    user_name: str
    name: str
    prefix: str
    scope: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def token_info(row: ApiToken) -> TokenInfo:
    return TokenInfo(id=row.id, user_id=row.user_id, user_name=row.user.name, name=row.name, prefix=row.prefix,
                     scope=row.scope, created_at=row.created_at, last_used_at=row.last_used_at, revoked_at=row.revoked_at)


def check_token_fields(name: Any, scope: Any) -> None:
    problems = []
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH:
        problems.append(FieldProblem("name", f"must be a string of 1 to {MAX_NAME_LENGTH} characters"))
    elif not name.strip():
        problems.append(FieldProblem("name", "must not be blank"))
    if scope not in SCOPES:
        problems.append(FieldProblem("scope", f"must be one of {', '.join(repr(s) for s in SCOPES)}, not {scope!r}"))
    if problems:
        raise RequestError(problems)


def _visible_user(session: Session, actor: Actor, user_id: int) -> User:
    user = session.get(User, user_id)
    # Another user answers exactly like a missing one for members.
    if user is None or (user.id != actor.id and not actor.is_admin):
        raise NotFoundError(f"no user {user_id}")
    return user


def _target_user_id(actor: Actor, user_id: int | None) -> int:
    if user_id is not None:
        return user_id
    if actor.id is None:
        raise RequestError([FieldProblem("user", "name the user whose tokens these are")])
    return actor.id


def create_token(ctx: FarmContext, actor: Actor, *, user_id: int | None = None, name: Any = "default",
                 scope: Any = "full", actor_scope: str = "full") -> tuple[ApiToken, str]:
    """Create a token for ``user_id`` (default: the actor); the plain token is returned once and never stored.

    ``actor_scope`` is the scope of the token the actor authenticated with: a
    read-only token cannot mint tokens (which could be full ones).
    """
    if actor_scope != "full":
        raise ForbiddenError("a read-only token cannot create tokens")
    check_token_fields(name, scope)
    target_id = _target_user_id(actor, user_id)
    with ctx.db.transaction() as session:
        user = _visible_user(session, actor, target_id)
        if user.disabled_at is not None:
            raise ConflictError(f"user {user.name} is disabled; a token for them would not authenticate")
        plain = issue_token(session, user, name=name, scope=scope)
        row = session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(plain))).scalar_one()
    logger.info("%s created %s token %s (%r) for %s", actor.name, scope, row.id, name, user.name)
    return row, plain


def list_tokens(ctx: FarmContext, actor: Actor, user_id: int | None = None, *, all_users: bool = False) -> list[TokenInfo]:
    """A user's tokens, revoked ones included (default: the actor's own); ``all_users`` is for admins."""
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    with ctx.db.session() as session:
        if all_users and user_id is None:
            if not actor.is_admin:
                raise ForbiddenError("only admins may list every user's tokens")
        else:
            user = _visible_user(session, actor, _target_user_id(actor, user_id))
            query = query.where(ApiToken.user_id == user.id)
        return [token_info(row) for row in session.execute(query).scalars()]


def revoke_token(ctx: FarmContext, actor: Actor, token_id: int | str) -> TokenInfo:
    """Revoke one token; revoking it again is a conflict."""
    try:
        token_key = int(token_id)
    except (TypeError, ValueError):
        raise NotFoundError(f"no token {token_id!r}") from None
    with ctx.db.transaction() as session:
        row = session.get(ApiToken, token_key)
        # Another user's token answers exactly like a missing one.
        if row is None or (row.user_id != actor.id and not actor.is_admin):
            raise NotFoundError(f"no token {token_id}")
        if row.revoked_at is not None:
            raise ConflictError(f"token {row.id} was already revoked at {row.revoked_at.isoformat()}")
        row.revoked_at = utcnow()
        # Dashboard sessions signed in with this token end with it, in this transaction.
        ended = end_dashboard_sessions(session, token_id=row.id, reason="token revoked")
        session.flush()
        info = token_info(row)
    logger.info("%s revoked token %s (%r) of %s; %d dashboard session(s) ended", actor.name, info.id, info.name,
                info.user_name, ended)
    return info
