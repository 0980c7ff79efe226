"""`farm tokens`: create, list and revoke API tokens from the command line.

Whoever runs the CLI can reach the farm's database, so it acts as an admin
(:data:`farm.services.tokens.OPERATOR`). Errors print one line.
"""

from __future__ import annotations

import functools
import logging

import click

logger = logging.getLogger(__name__)


def _one_line_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        # farm.cli imports this module at its end, so it is imported here, at call time.
        from farm.cli import friendly_errors
        from farm.services.jobs import ConflictError, NotFoundError
        from farm.services.tokens import ForbiddenError
        from farm.spec import RequestError

        try:
            return friendly_errors(command)(*args, **kwargs)
        except (NotFoundError, ConflictError, ForbiddenError, RequestError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _context():
    from farm.cli import _context as cli_context

    return cli_context()


def _user_id(ctx, ref: str) -> int:
    """A user given by name, or by id when no user has that name."""
    from sqlalchemy import select

    from farm.models import User

    with ctx.db.session() as session:
        user_id = session.execute(select(User.id).where(User.name == ref)).scalar_one_or_none()
        if user_id is None and ref.isdigit():
            user_id = session.execute(select(User.id).where(User.id == int(ref))).scalar_one_or_none()
    if user_id is None:
        raise click.ClickException(f"no user named {ref!r}")
    return user_id


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


@click.group()
def tokens() -> None:
    """API tokens: create, list, revoke."""


@tokens.command("create")
@click.argument("user")
@click.option("--name", default="default", show_default=True, help="A label for the token (1 to 64 characters).")
@click.option("--read-only", is_flag=True, help="The token may only read (GET), never change anything.")
@_one_line_errors
def tokens_create(user: str, name: str, read_only: bool) -> None:
    """Create a token for USER (a name or id); prints the token alone on the last line."""
    from farm.services.tokens import OPERATOR, create_token

    ctx = _context()
    row, plain = create_token(ctx, OPERATOR, user_id=_user_id(ctx, user), name=name, scope="read" if read_only else "full")
    click.echo(f"created {row.scope} token {row.id} ({row.name}) for {row.user.name}; API token (shown once):")
    click.echo(plain)


@tokens.command("list")
@click.argument("user", required=False)
@_one_line_errors
def tokens_list(user: str | None) -> None:
    """List the tokens of USER (default: every user), revoked ones included."""
    from farm.services.tokens import OPERATOR, list_tokens

    ctx = _context()
    if user is None:
        infos = list_tokens(ctx, OPERATOR, all_users=True)
    else:
        infos = list_tokens(ctx, OPERATOR, _user_id(ctx, user))
    if not infos:
        click.echo("no tokens")
    for info in infos:
        state = f"revoked {_when(info.revoked_at)}" if info.revoked_at else "active"
        click.echo(f"{info.id}\t{info.user_name}\t{info.name}\t{info.prefix}\t{info.scope}\tcreated {_when(info.created_at)}\t"
                   f"last used {_when(info.last_used_at)}\t{state}")


@tokens.command("revoke")
@click.argument("token_id")
@_one_line_errors
def tokens_revoke(token_id: str) -> None:
    """Revoke the token TOKEN_ID (see 'farm tokens list')."""
    from farm.services.tokens import OPERATOR, revoke_token

    info = revoke_token(_context(), OPERATOR, token_id)
    click.echo(f"revoked token {info.id} ({info.name}) of {info.user_name}")
