"""Listening sockets for the farm's servers: bound with an error that says
which option to change (uvicorn's own bind logs the OSError and exits)."""

from __future__ import annotations

import errno
import logging
import socket

logger = logging.getLogger(__name__)


class AddressInUseError(Exception):
    """The port to listen on is taken (or the address cannot be used)."""


def listen_socket(host: str, port: int, backlog: int = 2048, reuse_port: bool = False,
                  listen: bool = True) -> socket.socket:
    """A socket listening on ``host:port``, or :class:`AddressInUseError`
    naming the option to change.

    ``reuse_port``: the socket joins the port's SO_REUSEPORT group, in which
    the kernel spreads new connections over the listening members (one per
    ``farm api --processes`` child). ``listen=False`` only binds: the port is
    held against other programs, and no connection is queued on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio (uvicorn's loop) turns Nagle off on accepted
    # connections only when the socket says IPPROTO_TCP; with proto 0 each
    # small keep-alive response waited for the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUseError(f"port {port} on {host} is in use; pick another with --port") from None
        raise AddressInUseError(f"cannot listen on {host} port {port} ({exc.strerror or exc}); check --host and --port") from None
    return sock
