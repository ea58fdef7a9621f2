"""A TCP proxy for tests: forwards 127.0.0.1:<port> to a target, and can cut and heal the link.

``cut(mode, sources=...)`` breaks the connections of the chosen clients (all by default):

- ``"reset"``: their current connections are closed at once, new ones are accepted and closed.
- ``"blackhole"``: nothing is forwarded any more, both ways, and nothing is closed: the proxy stops
  reading (so the kernel buffers fill and the senders' writes back up), and new connections are
  accepted and held without a byte reaching the target, like a network that silently drops.

``heal()`` lets traffic flow again: paused connections resume where they stopped; connections
accepted while blackholed are closed (their dialler has long given up on the handshake) so it
redials on a live path.

To cut only some clients, the proxy needs to know who dialled: ``identify(peername)`` returns a
label for an accepted connection (``process_of_port`` finds the local process that owns the
client socket through ``/proc``, so labels can be node processes). A connection whose label is
unknown counts as chosen while a selective cut is on: a partition that leaks is worse than one
that is too strict.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Literal

__all__ = ["CutMode", "Direction", "TcpProxy", "process_of_port"]

CutMode = Literal["reset", "blackhole"]
# Which way a blackhole stops traffic: "to_client" stalls only what the target sends (a peer that
# stops reading), "to_target" only what the client sends.
Direction = Literal["both", "to_client", "to_target"]
# Bytes read per call: large enough for the swarm's ~1 MiB records, one buffer per direction.
_READ_LIMIT = 1 << 20


class _Pipe(asyncio.Protocol):
    """One direction's reader: writes what it receives into the other side's transport."""

    def __init__(
        self, link: _Link, upstream: bool, on_made: Callable[[_Link], None] | None = None
    ) -> None:
        self.link = link
        self.upstream = upstream  # True: the side towards the target
        self.on_made = on_made
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.upstream:
            self.link.upstream = self
        else:
            self.link.client = self
            transport.pause_reading()  # nothing moves before we know where it may go
        if self.on_made is not None:
            self.on_made(self.link)

    def data_received(self, data: bytes) -> None:
        other = self.link.other(self)
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.write(data)

    def eof_received(self) -> bool:
        other = self.link.other(self)
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()
        return True  # keep our side open for the other direction; the link closes on loss

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.link.close()

    def pause_writing(self) -> None:
        other = self.link.other(self)
        if other is not None and other.transport is not None:
            other.transport.pause_reading()  # back-pressure: stop reading what we cannot write

    def resume_writing(self) -> None:
        other = self.link.other(self)
        if other is not None and other.transport is not None and not self._held_by_cut():
            other.transport.resume_reading()

    def _held_by_cut(self) -> bool:
        """Whether the cut keeps the other side (whose reads we resume) paused."""
        link = self.link
        if not link.paused:
            return False
        if link.direction == "both":
            return True
        # other is the upstream pipe when we are the client pipe
        return (link.direction == "to_client") == (not self.upstream)


class _Link:
    """A client connection and (once dialled) its upstream connection to the target."""

    def __init__(self, label: str | None) -> None:
        self.label = label
        self.client: _Pipe | None = None
        self.upstream: _Pipe | None = None
        self.paused = False
        self.direction: Direction = "both"
        self.held = False  # accepted while blackholed: never connected upstream

    def other(self, pipe: _Pipe) -> _Pipe | None:
        return self.client if pipe.upstream else self.upstream

    def pipes(self) -> list[_Pipe]:
        return [p for p in (self.client, self.upstream) if p is not None]

    def set_paused(self, paused: bool, direction: Direction = "both") -> None:
        self.paused = paused
        self.direction = direction
        for pipe in self.pipes():
            # Pausing a side's reads stops what flows from that side.
            if direction == "to_client" and not pipe.upstream:
                continue
            if direction == "to_target" and pipe.upstream:
                continue
            if pipe.transport is not None and not pipe.transport.is_closing():
                if paused:
                    pipe.transport.pause_reading()
                else:
                    pipe.transport.resume_reading()

    def close(self) -> None:
        for pipe in self.pipes():
            if pipe.transport is not None:
                pipe.transport.close()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``. ``async with`` closes every connection.

    ``address`` is ``"127.0.0.1:<port>"`` once started; ``accepted`` counts connections.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        identify: Callable[[tuple[str, int]], str | None] | None = None,
    ) -> None:
        self.target = target
        self.identify = identify
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._mode: CutMode | None = None
        self._direction: Direction = "both"
        self._sources: frozenset[str] | None = None  # None: every client

    @property
    def address(self) -> str:
        assert self._server is not None, "the proxy is not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, "127.0.0.1", 0)
        return self.address

    def _chosen(self, link: _Link) -> bool:
        if self._mode is None:
            return False
        return self._sources is None or link.label is None or link.label in self._sources

    def _accept(self) -> _Pipe:
        return _Pipe(_Link(None), upstream=False, on_made=self._accepted)

    def _accepted(self, link: _Link) -> None:
        self._links.add(link)
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(self._open(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, link: _Link) -> None:
        """Label the new client, then connect it upstream unless a cut covers it."""
        client = link.client
        assert client is not None
        assert client.transport is not None
        peer = client.transport.get_extra_info("peername")
        if self.identify is not None and isinstance(peer, tuple):
            link.label = await asyncio.to_thread(self.identify, (str(peer[0]), int(peer[1])))
        if client.transport.is_closing():
            self._links.discard(link)
            return
        if self._chosen(link):
            if self._mode == "reset":
                client.transport.close()
            else:
                link.held = True
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: _Pipe(link, upstream=True), self.target[0], self.target[1]
            )
        except OSError:
            client.transport.close()
            return
        if client.transport.is_closing():
            link.close()
            return
        if self._chosen(link):
            link.set_paused(True, self._direction)
        else:
            link.set_paused(False)

    def cut(
        self,
        mode: CutMode = "reset",
        *,
        sources: Collection[str] | None = None,
        direction: Direction = "both",
    ) -> None:
        """Break the chosen clients' traffic (module docstring); ``sources=None``: every client.
        ``direction`` narrows a blackhole to one way (``Direction``); a reset closes both."""
        self._mode = mode
        self._direction = direction
        self._sources = None if sources is None else frozenset(sources)
        for link in list(self._links):
            if not self._chosen(link):
                continue
            if mode == "reset":
                link.close()
            else:
                link.set_paused(True, direction)

    def heal(self) -> None:
        """Forward again: paused links resume, held ones are closed so their dialler redials."""
        self._mode, self._sources, self._direction = None, None, "both"
        for link in list(self._links):
            if link.held:
                link.close()
            elif link.paused:
                link.set_paused(False)

    async def settled(self) -> None:
        """Wait until every accepted connection is labelled and forwarded, refused or held."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def open_links(self) -> int:
        return sum(1 for link in self._links if any(not p.closed.done() for p in link.pipes()))

    async def aclose(self) -> None:
        """Stop accepting, close every connection and wait until all are gone."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pipes = [p for link in self._links for p in link.pipes()]
        for link in self._links:
            link.close()
        for pipe in pipes:
            if pipe.transport is not None:
                await pipe.closed
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _socket_inodes(port: int, remote_port: int) -> set[str]:
    """Inodes of IPv4 TCP sockets with local port ``port`` talking to ``remote_port``."""
    want_local, want_remote = f":{port:04X}", f":{remote_port:04X}"
    inodes = set()
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        next(table, None)
        for line in table:
            fields = line.split()
            if fields[1].endswith(want_local) and fields[2].endswith(want_remote):
                inodes.add(fields[9])
    return inodes


def process_of_port(peer: tuple[str, int], proxy_port: int, pids: Collection[int]) -> int | None:
    """The pid among ``pids`` whose socket is the client end ``peer`` of a connection to the
    proxy at ``proxy_port`` (Linux ``/proc``); None if none of them holds it."""
    inodes = _socket_inodes(peer[1], proxy_port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(fd_dir / fd) in targets:
                        return pid
    return None
