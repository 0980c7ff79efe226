"""Quick self-tests of the fault suite's TCP proxy: refuse and hold really
refuse and hang a connection, and pass forwards again afterwards."""

from __future__ import annotations

import socket
import socketserver
import threading

import pytest

from tests.faults.harness import LOOPBACK, TcpProxy, wait_for

pytestmark = pytest.mark.faults


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture()
def proxy():
    server = socketserver.ThreadingTCPServer((LOOPBACK, 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tcp_proxy = TcpProxy((LOOPBACK, server.server_address[1])).start()
    try:
        yield tcp_proxy
    finally:
        tcp_proxy.close()
        server.shutdown()
        server.server_close()


def _connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection((LOOPBACK, proxy.port), timeout=2)


def _echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_pass_forwards_both_ways(proxy):
    with _connect(proxy) as sock:
        assert _echo(sock, b"hello" * 1000) == b"hello" * 1000


def test_refuse_cuts_open_connections_and_refuses_new_ones_then_passes_again(proxy):
    sock = _connect(proxy)
    assert _echo(sock, b"before") == b"before"
    proxy.set_mode("refuse")
    try:
        # The open connection is cut at once: EOF or a reset.
        sock.settimeout(2)
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
    finally:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy)
    proxy.set_mode("pass")
    with _connect(proxy) as again:
        assert _echo(again, b"after") == b"after"


def test_hold_hangs_new_and_open_connections_until_released(proxy):
    opened = _connect(proxy)
    assert _echo(opened, b"warm") == b"warm"
    proxy.set_mode("hold")
    fresh = _connect(proxy)  # accepted, but nothing flows
    for sock in (opened, fresh):
        sock.settimeout(0.5)
        sock.sendall(b"stuck")
        with pytest.raises(socket.timeout):
            sock.recv(10)
    wait_for(lambda: proxy.held_connections() == 2, 2, "two held connections", interval=0.02)
    proxy.set_mode("pass")
    for sock in (opened, fresh):
        sock.settimeout(2)
        assert sock.recv(10) == b"stuck"
        sock.close()
    assert proxy.held_connections() == 0
