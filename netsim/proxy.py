"""A TCP proxy for netsim and the tests: forwards 127.0.0.1:<port> to a target, and can cut and
heal the link, cap its bandwidth and add latency.

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

Shaping models one node's uplink and downlink: per direction, a rate cap in bytes per second (a
token bucket shared by all connections of the proxy, so parallel transfers split the cap) and a
one-way delay. A read leaves the proxy when the bucket has paid for it (its last byte's
serialisation time) plus the delay. Reads are queued in the meantime, and a connection whose queue
passes ``_QUEUE_LIMIT`` stops being read, so the sender backs up instead of the proxy buffering.

Every socket the proxy makes is its own: it accepts on its own listening socket (an
``asyncio.Server`` closed while an accepted socket waits for its transport drops that socket
unclosed on Python 3.11), and ``aclose()`` waits until every connection's transport is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections import deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Literal

__all__ = ["CutMode", "Direction", "TcpProxy", "process_of_port"]

CutMode = Literal["reset", "blackhole"]
# Which way a blackhole stops traffic: "to_client" stalls only what the target sends (a peer that
# stops reading), "to_target" only what the client sends.
Direction = Literal["both", "to_client", "to_target"]
# Queued bytes per connection and direction above which the proxy stops reading that side; with
# reads of at most 256 KiB and a 64 KiB write buffer, one direction holds under 1 MiB.
_QUEUE_LIMIT = 512 * 1024
# A bucket idle this long (in bytes at its rate, at least) lets a read through at once.
_DEFAULT_BURST = 64 * 1024


class _Shape:
    """One direction's shaping, shared by every connection: a rate cap (bytes/s) and a delay."""

    def __init__(self, rate_bps: float | None, delay_s: float, burst: int) -> None:
        self.rate_bps: float | None = None
        self.delay_s = 0.0
        self.burst = burst
        self._next = 0.0  # when the bucket has paid for everything reserved so far
        self.set(rate_bps, delay_s)

    def set(self, rate_bps: float | None, delay_s: float) -> None:
        if rate_bps is not None and rate_bps <= 0:
            raise ValueError(f"rate must be positive or None, not {rate_bps}")
        if delay_s < 0:
            raise ValueError(f"delay must not be negative, not {delay_s}")
        self.rate_bps, self.delay_s = rate_bps, delay_s

    def due(self, now: float, size: int) -> float:
        """When ``size`` bytes read at ``now`` may be written on (FIFO over all connections)."""
        if self.rate_bps is None:
            return now + self.delay_s
        start = max(self._next, now - self.burst / self.rate_bps)
        self._next = start + size / self.rate_bps
        return self._next + self.delay_s


class _Pipe(asyncio.Protocol):
    """One side of a link: forwards what it reads, shaped, into the other side's transport.

    Its reads are paused while any hold is on: ``dial`` (not yet forwarded), ``cut`` (a blackhole
    covers what this side sends), ``full`` (the other side's write buffer is full), ``queue``
    (too much read but not yet due)."""

    def __init__(self, link: _Link, upstream: bool, shape: _Shape) -> None:
        self.link = link
        self.upstream = upstream  # True: the side towards the target
        self.shape = shape  # shapes what this side reads
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.holds = {"dial"}
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.eof = False  # the peer sent EOF: forward it once the queue is empty
        self.eof_sent = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.upstream:
            self.link.upstream = self
        else:
            self.link.client = self
        self._apply()

    def hold(self, reason: str) -> None:
        self.holds.add(reason)
        self._apply()

    def release(self, reason: str) -> None:
        self.holds.discard(reason)
        self._apply()
        self.flush()

    def _apply(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.holds:
            transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def _target(self) -> asyncio.Transport | None:
        other = self.link.other(self)
        if other is None or other.transport is None or other.transport.is_closing():
            return None
        return other.transport

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.queue.append((self.shape.due(now, len(data)), data))
        self.queued += len(data)
        self.flush()
        if self.queued >= _QUEUE_LIMIT:
            self.hold("queue")
        self.link.note_buffered()

    def flush(self) -> None:
        """Write every due read on, unless a cut or a full peer holds this direction."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self.queue and "cut" not in self.holds and "full" not in self.holds:
            due, data = self.queue[0]
            if due > loop.time():
                self._timer = loop.call_at(due, self.flush)
                return
            target = self._target()
            if target is None:  # the other side is gone; the link is closing
                self.queue.clear()
                self.queued = 0
                return
            self.queue.popleft()
            self.queued -= len(data)
            target.write(data)  # may call our hold("full") through the peer's pause_writing
        if "queue" in self.holds and self.queued < _QUEUE_LIMIT:
            self.holds.discard("queue")
            self._apply()
        if self.eof and not self.queue and not self.eof_sent and "cut" not in self.holds:
            self._send_eof()

    def _send_eof(self) -> None:
        target = self._target()
        if target is not None and target.can_write_eof():
            target.write_eof()
        self.eof_sent = True
        other = self.link.other(self)
        if other is not None and other.eof_sent:
            self.link.close()  # both ways ended: nothing will flow again

    def eof_received(self) -> bool:
        self.eof = True
        self.flush()
        return True  # keep our side open for the other direction; the link closes on loss

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.queue.clear()
        self.queued = 0
        if not self.closed.done():
            self.closed.set_result(None)
        self.link.close()
        self.link.proxy.changed()

    def pause_writing(self) -> None:
        other = self.link.other(self)
        if other is not None:
            other.hold("full")  # back-pressure: stop reading what we cannot write

    def resume_writing(self) -> None:
        other = self.link.other(self)
        if other is not None:
            other.release("full")

    def buffered(self) -> int:
        """Bytes this side holds: queued reads plus its transport's unsent writes."""
        pending = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return self.queued + pending


class _Link:
    """A client connection and (once dialled) its upstream connection to the target."""

    def __init__(self, proxy: TcpProxy, label: str | None) -> None:
        self.proxy = proxy
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
            # Pausing a side's reads (and its queue) stops what flows from that side.
            covered = not (
                (direction == "to_client" and not pipe.upstream)
                or (direction == "to_target" and pipe.upstream)
            )
            if paused and covered:
                pipe.hold("cut")
            else:
                pipe.release("cut")

    def note_buffered(self) -> None:
        total = sum(p.buffered() for p in self.pipes())
        self.proxy.peak_link_buffered = max(self.proxy.peak_link_buffered, total)

    def close(self) -> None:
        for pipe in self.pipes():
            if pipe.transport is not None:
                pipe.transport.close()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``. ``async with`` closes every connection.

    ``address`` is ``"127.0.0.1:<port>"`` once started; ``accepted`` counts connections;
    ``peak_link_buffered`` is the most bytes one connection ever held in the proxy (both ways).
    Rates are bytes per second (None: uncapped), delays seconds, per direction (``rate_bps``:
    both directions, unless one is given on its own); ``set_rate`` and ``set_delay`` change
    them for reads from then on. ``target`` may be changed before connections need it."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        identify: Callable[[tuple[str, int]], str | None] | None = None,
        rate_bps: float | None = None,
        rate_to_target_bps: float | None = None,
        rate_to_client_bps: float | None = None,
        delay_to_target_s: float = 0.0,
        delay_to_client_s: float = 0.0,
        burst_bytes: int = _DEFAULT_BURST,
    ) -> None:
        self.target = target
        self.identify = identify
        self.accepted = 0
        self.peak_link_buffered = 0
        to_target = rate_bps if rate_to_target_bps is None else rate_to_target_bps
        to_client = rate_bps if rate_to_client_bps is None else rate_to_client_bps
        self._to_target = _Shape(to_target, delay_to_target_s, burst_bytes)
        self._to_client = _Shape(to_client, delay_to_client_s, burst_bytes)
        self._sock: socket.socket | None = None
        self._serving: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._mode: CutMode | None = None
        self._direction: Direction = "both"
        self._sources: frozenset[str] | None = None  # None: every client
        self._changed: asyncio.Event | None = None

    @property
    def address(self) -> str:
        assert self._sock is not None, "the proxy is not started"
        host, port = self._sock.getsockname()[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def set_rate(self, to_target_bps: float | None, to_client_bps: float | None) -> None:
        """Cap each direction (bytes/s over all connections together); None lifts the cap."""
        self._to_target.set(to_target_bps, self._to_target.delay_s)
        self._to_client.set(to_client_bps, self._to_client.delay_s)

    def set_delay(self, to_target_s: float, to_client_s: float) -> None:
        """One-way latency per direction, for reads from now on."""
        self._to_target.set(self._to_target.rate_bps, to_target_s)
        self._to_client.set(self._to_client.rate_bps, to_client_s)

    async def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._serving = asyncio.get_running_loop().create_task(self._serve(sock))
        return self.address

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            accept = asyncio.ensure_future(loop.sock_accept(listener))
            try:
                conn, _ = await asyncio.shield(accept)
            except asyncio.CancelledError:
                # aclose() may cancel us after the accept completed but before we resumed: the
                # accepted socket would be dropped unclosed (seen once in CI as a ResourceWarning).
                accept.add_done_callback(_close_accepted)
                accept.cancel()
                raise
            link = _Link(self, None)
            self._links.add(link)  # from here on aclose() waits for its transport to be gone
            try:
                await loop.connect_accepted_socket(
                    functools.partial(_Pipe, link, False, self._to_target), conn
                )
            except BaseException:
                link.close()
                conn.close()
                raise
            self._accepted(link)

    def _chosen(self, link: _Link) -> bool:
        if self._mode is None:
            return False
        return self._sources is None or link.label is None or link.label in self._sources

    def _accepted(self, link: _Link) -> None:
        self.accepted += 1
        self.changed()
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
                lambda: _Pipe(link, upstream=True, shape=self._to_client),
                self.target[0],
                self.target[1],
            )
        except OSError:
            client.transport.close()
            return
        if client.transport.is_closing():
            link.close()
            return
        for pipe in link.pipes():
            pipe.holds.discard("dial")
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

    def changed(self) -> None:
        """Wake ``wait_until``: a connection was accepted or one of its sides closed."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_until(self, check: Callable[[TcpProxy], bool]) -> None:
        """Wait until ``check(self)`` holds, re-checked on every accept and close (callers bound
        the wait with asyncio.timeout), e.g. ``lambda p: p.open_links == 0``."""
        while not check(self):
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    @property
    def open_links(self) -> int:
        return sum(1 for link in self._links if any(not p.closed.done() for p in link.pipes()))

    async def aclose(self) -> None:
        """Stop accepting, close every connection and wait until all are gone."""
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
            self._serving = None
        if self._sock is not None:
            self._sock.close()
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

    async def __aenter__(self) -> TcpProxy:
        if self._sock is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _close_accepted(accept: asyncio.Future[tuple[socket.socket, Any]]) -> None:
    """Close the socket an abandoned accept got, if it got one."""
    if not accept.cancelled() and accept.exception() is None:
        accept.result()[0].close()


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
