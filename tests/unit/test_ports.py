"""farm.ports.listen_socket: connections an asyncio server (uvicorn) accepts on it have Nagle off."""

from __future__ import annotations

import asyncio
import socket

from farm.ports import listen_socket


def test_connections_accepted_by_an_asyncio_server_have_tcp_nodelay():
    async def accepted_nodelay() -> int:
        sock = listen_socket("127.0.0.1", 0)
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                conn = transport.get_extra_info("socket")
                seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        try:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value
        finally:
            server.close()
            await server.wait_closed()

    # Without it every small response on a keep-alive connection waited for
    # the client's delayed ACK: GET /healthz/live took 44 ms instead of 1.
    assert asyncio.run(accepted_nodelay()) != 0
