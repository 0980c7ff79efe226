"""Loopback HTTP(S) endpoints, a Standard Webhooks consumer and a rebinding
resolver for tests of the farm's outbound requests (webhooks)."""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from standardwebhooks import Webhook, WebhookVerificationError


class Receiver:
    """A loopback HTTP endpoint that records every post and fails the first N.

    ``tls`` (a server SSLContext) makes it HTTPS; the server names clients ask
    for (SNI) are kept in ``server_names``. ``status`` and ``headers`` are the
    answer once the failures are spent (a 302 with a Location, say).
    ``handle(headers, body)``, when given, sees each post first (a receiver's
    own processing) and may answer a status instead."""

    def __init__(self, fail_first: int = 0, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None,
                 status: int = 204, headers: dict[str, str] | None = None,
                 handle: Callable[[dict, bytes], int | None] | None = None) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict, bytes]] = []
        self.server_names: list[str | None] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                answer = handle(dict(self.headers), body) if handle else None
                self.send_response(answer or (500 if len(receiver.received) <= receiver.fail_first else status))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        if tls is not None:
            tls.sni_callback = lambda _socket, name, _context: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StandardReceiver:
    """A webhook consumer as Standard Webhooks has one written: each delivery is
    verified with the library (400 when it does not verify) and processed once
    per webhook-id; a delivery whose id was processed already is dropped.
    ``fail_first`` deliveries are processed and then answered 500 (a consumer
    that crashed before acknowledging), so the farm sends them again.
    ``webhook`` may be replaced by a test that learns the secret later (from
    the answer that asked for the webhook, when farm generated it)."""

    def __init__(self, secret: str | bytes, fail_first: int = 0) -> None:
        self.webhook = Webhook(secret)
        self.processed: dict[str, dict] = {}  # webhook-id -> payload, in the order processed
        self.dropped: list[str] = []
        self.rejected = 0
        self.http = Receiver(fail_first=fail_first, handle=self._handle)
        self.url, self.port, self.received = self.http.url, self.http.port, self.http.received

    def _handle(self, headers: dict, body: bytes) -> int | None:
        try:
            payload = self.webhook.verify(body, headers)
        except WebhookVerificationError:
            self.rejected += 1
            return 400
        message_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
        if message_id in self.processed:
            self.dropped.append(message_id)
        else:
            self.processed[message_id] = payload
        return None

    def ids(self) -> list[str]:
        return [{k.lower(): v for k, v in headers.items()}["webhook-id"] for headers, _ in self.received]

    def close(self) -> None:
        self.http.close()


class RebindingResolver:
    """Stands in for socket.getaddrinfo. ``name`` resolves to each of
    ``answers`` in turn (an address or a list of them), then to ``then`` for
    ever: a DNS rebinding. Other names resolve for real. ``lookups`` records
    what each lookup of ``name`` answered."""

    def __init__(self, name: str, answers: list[str | list[str]], then: str) -> None:
        self.name, self.answers, self.then = name, list(answers), then
        self.lookups: list[str | list[str]] = []
        self.real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if host != self.name:
            return self.real(host, port, *args, **kwargs)
        answer = self.answers.pop(0) if self.answers else self.then
        self.lookups.append(answer)
        addresses = [answer] if isinstance(answer, str) else answer
        return [info for address in addresses for info in self.real(address, port, *args, **kwargs)]
