"""Both ends for proxy tests: clients that say who they are (a client's local port is bound, and
labelled, before it connects, so a proxy's ``identify`` can name it without ``/proc``:
``label_by_port``), and local servers that close every connection they accepted."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["Conn", "Serve", "label_by_port", "labelled_dial", "local_server"]

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def label_by_port(labels: dict[int, str]) -> Callable[[tuple[str, int]], str | None]:
    """An ``identify`` for TcpProxy: the label ``labelled_dial`` gave the client's port."""
    return lambda peer: labels.get(peer[1])


@contextlib.asynccontextmanager
async def labelled_dial(address: str, labels: dict[int, str], label: str) -> AsyncIterator[Conn]:
    """A client whose local port is labelled before the proxy asks (bound before connecting)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        labels[sock.getsockname()[1]] = label
        host, _, port = address.rpartition(":")
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def local_server(serve: Serve) -> AsyncIterator[tuple[str, int]]:
    """Run ``serve`` for each connection to 127.0.0.1:<port>; on exit close the server and every
    connection it accepted and wait until they are closed (pytest turns an unclosed socket's
    ResourceWarning into an error)."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await serve(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        host, port = server.sockets[0].getsockname()[:2]
        yield host, port
    finally:
        server.close()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()
