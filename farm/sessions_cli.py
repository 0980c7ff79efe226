"""`farm sessions`: list the dashboard sessions and end one from the command line.

Whoever runs the CLI can reach the farm's database, so it acts as an admin
(:data:`farm.services.tokens.OPERATOR`). Errors print one line.
"""

from __future__ import annotations

import logging

import click

from farm.tokens_cli import _context, _one_line_errors, _when

logger = logging.getLogger(__name__)


@click.group()
def sessions() -> None:
    """Dashboard sessions: list, end."""


@sessions.command("list")
@click.option("--all", "include_ended", is_flag=True, help="Also list ended and expired sessions.")
@_one_line_errors
def sessions_list(include_ended: bool) -> None:
    """List the live dashboard sessions, most recently seen first."""
    from farm.services.sessions import list_sessions
    from farm.services.tokens import OPERATOR

    infos = list_sessions(_context(), OPERATOR, include_ended=include_ended, limit=None)
    if not infos:
        click.echo("no sessions" if include_ended else "no live sessions")
    for info in infos:
        if info.active:
            state = f"expires {_when(info.expires_at)}"
        elif info.ended_at:
            state = f"ended {_when(info.ended_at)} ({info.end_reason})"
        else:
            state = f"expired {_when(info.expires_at)}"
        via = f"token {info.token_label}" if info.token_label else "password"
        click.echo(f"{info.id}\t{info.user_name}\t{info.scope}\t{via}\tsince {_when(info.created_at)}\t"
                   f"last seen {_when(info.last_seen_at)}\t{state}\t{info.client_address or '-'}")


@sessions.command("end")
@click.argument("session_id")
@_one_line_errors
def sessions_end(session_id: str) -> None:
    """End the dashboard session SESSION_ID (see 'farm sessions list'): its browser is signed out at its next request."""
    from farm.services.sessions import end_session
    from farm.services.tokens import OPERATOR

    info = end_session(_context(), OPERATOR, session_id, reason="ended by an operator (farm sessions end)")
    click.echo(f"ended session {info.id} of {info.user_name}")
