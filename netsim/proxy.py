"""A TCP proxy for netsim and the tests: forwards 127.0.0.1:<port> to a target, and breaks,
slows and shapes the traffic of chosen clients, each way on its own.

Who dialled. ``identify(peername)`` labels an accepted connection (``process_of_port`` finds the
local process that owns the client socket through ``/proc``, so labels can be node processes).
Everything below is keyed by that label. On a connection the client ``A`` dialled into the proxy
in front of ``B``, ``"to_target"`` is what ``A`` sends ``B`` and ``"to_client"`` what ``B`` sends
back.

Blocks (``block(mode, sources=..., direction=...) -> id``, ``unblock(id)``; several at once, each
covering some labels and a direction):

- ``"reset"``: covered connections are closed at once and new ones are accepted and closed. TCP
  cannot lose one direction and keep the other, so a reset closes whatever direction it names.
- ``"blackhole"``: nothing is forwarded any more in the covered direction and nothing is closed:
  the proxy stops reading that side (so the kernel buffers fill and the sender's writes back up),
  like a network that silently drops. A connection accepted while any blackhole covers its label
  is held without a byte reaching the target (a handshake cannot complete across a one-way hole
  either); once no block covers it, it is closed (its dialler has long given up on the
  handshake) so it redials on a live path. Paused connections resume where they stopped.

``cut(mode, sources=..., direction=...)`` replaces every block by one; ``heal()`` removes them all;
``reset(sources=...)`` closes the chosen clients' current connections once and lets new ones in.
A connection whose label is unknown counts as covered by every block and reset: a partition
that leaks is worse than one that is too strict.

Shaping. Each read is queued until it is due and then written on, in order: a connection's
queue is FIFO and a read's due time is ``max(previous due on that side, paid + delay)``, so
jitter never reorders bytes. ``paid`` is when every token bucket the read draws on has paid
for it (its last byte's serialisation time): the proxy's own bucket for that direction
(``set_rate``, shared by all its connections) and the link's (``shape_link``): a
``TokenBucket`` is an object, so one bucket handed to several links or several proxies (all
run on one loop) is one cap they share, e.g. a node's uplink. ``delay`` is the proxy's delay
for the direction (``set_delay``) plus the link's ``delay_s``, plus jitter drawn uniformly from
``[0, jitter_s]``, plus ``rto_s`` with probability ``loss``.

Loss as an application sees it: TCP does not lose bytes, it retransmits them, and a lost
segment holds back everything behind it until the retransmission arrives. So ``loss`` is the
chance that one read (whatever the sender's writes coalesced into, up to 256 KiB) is held back
by a retransmission timeout ``rto_s`` (200 ms by default, Linux's minimum RTO), and everything
read after it on that side waits behind it. Randomness comes from the ``rng`` passed in (a
seeded ``random.Random``), so a seed repeats the same draws for the same sequence of reads.

Reads are queued in the meantime, and a side whose queue passes ``_QUEUE_LIMIT`` stops being
read, so the sender backs up instead of the proxy buffering.

Every socket the proxy makes is its own: it accepts on its own listening socket, in its own task
after the listener was readable (an ``asyncio.Server`` closed while an accepted socket waits for
its transport drops that socket unclosed on Python 3.11, and ``loop.sock_accept`` can accept a
socket into a future that was just cancelled and drop it), and ``aclose()`` waits until every
connection's transport is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_RTO_S",
    "CutMode",
    "Direction",
    "LinkShape",
    "SocketOwners",
    "TcpProxy",
    "TokenBucket",
    "process_of_port",
]

CutMode = Literal["reset", "blackhole"]
# Which way a block stops traffic: "to_client" stalls only what the target sends (a peer that
# stops reading), "to_target" only what the client sends.
Direction = Literal["both", "to_client", "to_target"]
_Way = Literal["to_client", "to_target"]
_WAYS: dict[Direction, frozenset[_Way]] = {
    "both": frozenset(("to_client", "to_target")),
    "to_client": frozenset(("to_client",)),
    "to_target": frozenset(("to_target",)),
}
# Queued bytes per connection and direction above which the proxy stops reading that side; with
# reads of at most 256 KiB and a 64 KiB write buffer, one direction holds under 1 MiB.
_QUEUE_LIMIT = 512 * 1024
# A bucket idle this long (in bytes at its rate, at least) lets a read through at once.
_DEFAULT_BURST = 64 * 1024
# Linux's minimum retransmission timeout: what one lost segment costs a quiet connection.
DEFAULT_RTO_S = 0.2


class TokenBucket:
    """A rate cap in bytes per second (None: uncapped). Whatever draws on the same bucket shares
    the cap: connections of one proxy, links of one node through several proxies."""

    def __init__(self, rate_bps: float | None = None, *, burst_bytes: int = _DEFAULT_BURST) -> None:
        self.rate_bps: float | None = None
        self.burst = burst_bytes
        self._next = 0.0  # when the bucket has paid for everything reserved so far
        self.set_rate(rate_bps)

    def set_rate(self, rate_bps: float | None) -> None:
        if rate_bps is not None and rate_bps <= 0:
            raise ValueError(f"rate must be positive or None, not {rate_bps}")
        self.rate_bps = rate_bps

    def reserve(self, now: float, size: int) -> float:
        """When ``size`` bytes read at ``now`` are paid for (FIFO over everything drawing)."""
        if self.rate_bps is None:
            return now
        start = max(self._next, now - self.burst / self.rate_bps)
        self._next = start + size / self.rate_bps
        return self._next


def _check_delay(what: str, seconds: float) -> float:
    if seconds < 0:
        raise ValueError(f"{what} must not be negative, not {seconds}")
    return seconds


@dataclass(frozen=True, slots=True)
class LinkShape:
    """How one direction of one client's connections is shaped (module docstring): extra
    one-way delay, jitter up to ``jitter_s``, the chance ``loss`` that a read waits ``rto_s``
    more, and the buckets its reads draw on (a per-link cap, a node's uplink, ...)."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    rto_s: float = DEFAULT_RTO_S
    buckets: tuple[TokenBucket, ...] = ()

    def __post_init__(self) -> None:
        _check_delay("delay", self.delay_s)
        _check_delay("jitter", self.jitter_s)
        _check_delay("rto", self.rto_s)
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be within 0..1, not {self.loss}")


_UNSHAPED = LinkShape()


class _Shape:
    """One direction's proxy-wide shaping: a bucket every connection draws on, and a delay."""

    def __init__(self, rate_bps: float | None, delay_s: float, burst: int) -> None:
        self.bucket = TokenBucket(rate_bps, burst_bytes=burst)
        self.delay_s = _check_delay("delay", delay_s)

    def set_delay(self, delay_s: float) -> None:
        self.delay_s = _check_delay("delay", delay_s)


@dataclass(frozen=True, slots=True)
class _Block:
    mode: CutMode
    sources: frozenset[str] | None  # None: every client
    direction: Direction

    def covers(self, label: str | None) -> bool:
        return self.sources is None or label is None or label in self.sources


class _Pipe(asyncio.Protocol):
    """One side of a link: forwards what it reads, shaped, into the other side's transport.

    Its reads are paused while any hold is on: ``dial`` (not yet forwarded), ``cut`` (a blackhole
    covers what this side sends), ``full`` (the other side's write buffer is full), ``queue``
    (too much read but not yet due)."""

    def __init__(self, link: _Link, upstream: bool, shape: _Shape) -> None:
        self.link = link
        self.upstream = upstream  # True: the side towards the target
        self.way: _Way = "to_client" if upstream else "to_target"  # what this side's reads are
        self.shape = shape  # the proxy's shaping of that direction
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.holds = {"dial"}
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.last_due = 0.0
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

    def _due(self, now: float, size: int) -> float:
        """When a read of ``size`` bytes at ``now`` may be written on (module docstring)."""
        proxy = self.link.proxy
        link_shape = proxy.link_shape(self.link.label, self.way)
        paid = self.shape.bucket.reserve(now, size)
        for bucket in link_shape.buckets:
            paid = max(paid, bucket.reserve(now, size))
        delay = self.shape.delay_s + link_shape.delay_s
        if link_shape.jitter_s:
            delay += proxy.rng.uniform(0.0, link_shape.jitter_s)
        if link_shape.loss and proxy.rng.random() < link_shape.loss:
            delay += link_shape.rto_s
        self.last_due = max(self.last_due, paid + delay)
        return self.last_due

    def data_received(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self.queue.append((self._due(now, len(data)), data))
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
            try:
                target.write_eof()
            except OSError:
                # The far side went first (ENOTCONN): nothing more can flow that way either.
                self.link.close()
                return
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
        self.link.proxy.forget_if_done(self.link)
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


_Phase = Literal["opening", "held", "open"]


class _Link:
    """A client connection and (once dialled) its upstream connection to the target."""

    def __init__(self, proxy: TcpProxy, label: str | None) -> None:
        self.proxy = proxy
        self.label = label
        self.client: _Pipe | None = None
        self.upstream: _Pipe | None = None
        # opening: being labelled and dialled; held: accepted under a blackhole, never dialled;
        # open: forwarding (as far as the blocks let it).
        self.phase: _Phase = "opening"

    def other(self, pipe: _Pipe) -> _Pipe | None:
        return self.client if pipe.upstream else self.upstream

    def pipes(self) -> list[_Pipe]:
        return [p for p in (self.client, self.upstream) if p is not None]

    def set_holes(self, holes: frozenset[_Way]) -> None:
        """Stop exactly the directions in ``holes``: a side's paused reads stop what it sends."""
        for pipe in self.pipes():
            if pipe.way in holes:
                pipe.hold("cut")
            elif "cut" in pipe.holds:
                pipe.release("cut")

    def note_buffered(self) -> None:
        total = sum(p.buffered() for p in self.pipes())
        self.proxy.peak_link_buffered = max(self.proxy.peak_link_buffered, total)

    def close(self) -> None:
        for pipe in self.pipes():
            if pipe.transport is not None:
                pipe.transport.close()

    @property
    def done(self) -> bool:
        return self.phase != "opening" and all(p.closed.done() for p in self.pipes())


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``. ``async with`` closes every connection.

    ``address`` is ``"127.0.0.1:<port>"`` once started; ``accepted`` counts connections;
    ``peak_link_buffered`` is the most bytes one connection ever held in the proxy (both ways).
    Rates are bytes per second (None: uncapped), delays seconds, per direction (``rate_bps``:
    both directions, unless one is given on its own); ``set_rate`` and ``set_delay`` change
    them for reads from then on, for every client; ``shape_link`` shapes one client's
    connections on top. ``rng`` draws jitter and loss (default: seeded with 0). ``target`` may
    be changed before connections need it."""

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
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.identify = identify
        self.rng = rng if rng is not None else random.Random(0)
        self.accepted = 0
        self.peak_link_buffered = 0
        to_target = rate_bps if rate_to_target_bps is None else rate_to_target_bps
        to_client = rate_bps if rate_to_client_bps is None else rate_to_client_bps
        self._to_target = _Shape(to_target, delay_to_target_s, burst_bytes)
        self._to_client = _Shape(to_client, delay_to_client_s, burst_bytes)
        self._link_shapes: dict[str, dict[_Way, LinkShape]] = {}
        self._sock: socket.socket | None = None
        self._serving: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._blocks: dict[int, _Block] = {}
        self._block_seq = 0
        self._changed: asyncio.Event | None = None

    @property
    def address(self) -> str:
        assert self._sock is not None, "the proxy is not started"
        host, port = self._sock.getsockname()[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    # -- shaping -----------------------------------------------------------------------------------

    def set_rate(self, to_target_bps: float | None, to_client_bps: float | None) -> None:
        """Cap each direction (bytes/s over all connections together); None lifts the cap."""
        self._to_target.bucket.set_rate(to_target_bps)
        self._to_client.bucket.set_rate(to_client_bps)

    def set_delay(self, to_target_s: float, to_client_s: float) -> None:
        """One-way latency per direction, for reads from now on."""
        self._to_target.set_delay(to_target_s)
        self._to_client.set_delay(to_client_s)

    def shape_link(
        self,
        label: str,
        *,
        to_target: LinkShape | None = None,
        to_client: LinkShape | None = None,
    ) -> None:
        """Shape the connections ``label`` dialled, per direction, for reads from now on (on top
        of ``set_rate``/``set_delay``); None leaves that direction unshaped."""
        if to_target is None and to_client is None:
            self._link_shapes.pop(label, None)
            return
        self._link_shapes[label] = {
            "to_target": to_target or _UNSHAPED,
            "to_client": to_client or _UNSHAPED,
        }

    def link_shape(self, label: str | None, way: _Way) -> LinkShape:
        """The shaping of ``label``'s connections in direction ``way`` (unknown: unshaped)."""
        shapes = self._link_shapes.get(label) if label is not None else None
        return _UNSHAPED if shapes is None else shapes[way]

    # -- blocks ------------------------------------------------------------------------------------

    def block(
        self,
        mode: CutMode = "blackhole",
        *,
        sources: Collection[str] | None = None,
        direction: Direction = "both",
    ) -> int:
        """Add a block on the chosen clients (module docstring); ``sources=None``: every client.
        Returns its id for ``unblock``."""
        self._block_seq += 1
        chosen = None if sources is None else frozenset(sources)
        self._blocks[self._block_seq] = _Block(mode, chosen, direction)
        self._refresh_all()
        return self._block_seq

    def unblock(self, *block_ids: int) -> None:
        """Remove these blocks (unknown ids are ignored): what only they stopped flows again."""
        for block_id in block_ids:
            self._blocks.pop(block_id, None)
        self._refresh_all()

    def cut(
        self,
        mode: CutMode = "reset",
        *,
        sources: Collection[str] | None = None,
        direction: Direction = "both",
    ) -> None:
        """Replace every block by this one (module docstring); ``sources=None``: every client.
        ``direction`` narrows a blackhole to one way (``Direction``); a reset closes both."""
        earlier = list(self._blocks)
        self.block(mode, sources=sources, direction=direction)  # before lifting: no gap
        self.unblock(*earlier)

    def heal(self) -> None:
        """Remove every block: paused links resume, held ones are closed so their dialler
        redials."""
        self.unblock(*self._blocks)

    def reset(self, *, sources: Collection[str] | None = None) -> None:
        """Close the chosen clients' current connections once; new ones are forwarded (blocks
        permitting). ``sources=None``: every client."""
        once = _Block("reset", None if sources is None else frozenset(sources), "both")
        for link in list(self._links):
            if once.covers(link.label):
                link.close()

    def _coverage(self, label: str | None) -> tuple[bool, frozenset[_Way]]:
        """Whether a reset covers ``label``, and the directions blackholes stop for it."""
        reset = False
        holes: frozenset[_Way] = frozenset()
        for block in self._blocks.values():
            if not block.covers(label):
                continue
            if block.mode == "reset":
                reset = True
            else:
                holes |= _WAYS[block.direction]
        return reset, holes

    def _refresh(self, link: _Link) -> None:
        """Bring one link in line with the blocks now on (an opening one does so when open)."""
        if link.phase == "opening":
            return
        reset, holes = self._coverage(link.label)
        if reset or (link.phase == "held" and not holes):
            link.close()
        elif link.phase == "open":
            link.set_holes(holes)

    def _refresh_all(self) -> None:
        for link in list(self._links):
            self._refresh(link)

    # -- connections -------------------------------------------------------------------------------

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
            conn = await _accept(loop, listener)
            link = _Link(self, None)
            self._links.add(link)  # from here on aclose() waits for its transport to be gone
            try:
                # Owns ``conn`` from its first step (the transport is made before any await).
                await loop.connect_accepted_socket(
                    functools.partial(_Pipe, link, False, self._to_target), conn
                )
            except Exception:
                link.close()
                conn.close()
                continue  # one client that vanished at once must not stop the proxy
            except BaseException:
                link.close()
                conn.close()
                raise
            self._accepted(link)

    def _accepted(self, link: _Link) -> None:
        self.accepted += 1
        self.changed()
        task = asyncio.get_running_loop().create_task(self._open(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, link: _Link) -> None:
        """Label the new client, then connect it upstream unless a block covers it."""
        try:
            await self._label(link)
            await self._dial(link)
        finally:
            if link.phase == "opening":
                link.phase = "open"  # closed or closing: nothing left to open
                link.close()
            self.forget_if_done(link)

    async def _label(self, link: _Link) -> None:
        client = link.client
        assert client is not None
        assert client.transport is not None
        peer = client.transport.get_extra_info("peername")
        if self.identify is not None and isinstance(peer, tuple):
            peer_address = (str(peer[0]), int(peer[1]))
            try:
                link.label = await asyncio.to_thread(self.identify, peer_address)
            except Exception:
                link.label = None  # unknown: covered by every block, never leaks

    async def _dial(self, link: _Link) -> None:
        client = link.client
        assert client is not None
        assert client.transport is not None
        if client.transport.is_closing():
            return
        reset, holes = self._coverage(link.label)
        if reset:
            return  # closed by _open
        if holes:
            link.phase = "held"
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: _Pipe(link, upstream=True, shape=self._to_client),
                self.target[0],
                self.target[1],
            )
        except OSError:
            return  # closed by _open
        if client.transport.is_closing():
            return
        link.phase = "open"
        self._refresh(link)  # the blocks as they are now, before a byte is read
        for pipe in link.pipes():
            pipe.release("dial")

    def forget_if_done(self, link: _Link) -> None:
        """Drop a link whose connections are all gone, so a long run does not pile them up."""
        if link.done:
            self._links.discard(link)

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

    @property
    def open_labels(self) -> list[str | None]:
        """Who dialled each open connection (None: the dialler was not identified)."""
        return [
            link.label for link in self._links if any(not p.closed.done() for p in link.pipes())
        ]

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


async def _accept(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> socket.socket:
    """The next connection on ``listener``. The accept runs in the awaiting task once it has
    resumed, so a wait cancelled at any point leaves no socket behind; ``loop.sock_accept`` may
    accept from a reader callback into a future cancelled in the same loop iteration, and drop
    the new socket unclosed (CPython 3.11)."""
    fd = listener.fileno()
    while True:
        readable = loop.create_future()
        loop.add_reader(fd, _resolve, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue  # another accept took it, or a spurious wake-up
        try:
            conn.setblocking(False)
        except BaseException:
            conn.close()
            raise
        return conn


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _socket_inodes(port: int, remote_port: int) -> set[str]:
    """Inodes of IPv4 TCP sockets with local port ``port`` talking to ``remote_port``.

    The table holds every socket of every node (thousands of lines at 100 nodes): the lines
    are found with a substring search, not by splitting each one in Python."""
    needle = f":{port:04X} ".encode()
    remote = f":{remote_port:04X} ".encode()
    inodes: set[str] = set()
    try:
        with open("/proc/net/tcp", "rb") as table:
            data = table.read()
    except OSError:
        return inodes
    at = data.find(needle)
    while at != -1:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        fields = data[start : end if end != -1 else len(data)].split()
        if (
            len(fields) > 9
            and fields[1].endswith(needle.rstrip())
            and fields[2].endswith(remote.rstrip())
        ):
            inodes.add(fields[9].decode())
        at = data.find(needle, at + 1)
    return inodes


def process_of_port(
    peer: tuple[str, int],
    proxy_port: int,
    pids: Collection[int],
    owners: SocketOwners | None = None,
) -> int | None:
    """The pid among ``pids`` whose socket is the client end ``peer`` of a connection to the
    proxy at ``proxy_port`` (Linux ``/proc``); None if none of them holds it. ``owners`` caches
    the processes' sockets between lookups (a cluster shares one)."""
    inodes = _socket_inodes(peer[1], proxy_port)
    if not inodes:
        return None
    return (owners or SocketOwners()).owner(inodes, pids)


class SocketOwners:
    """Which process owns which socket inode, from one scan of the processes' fd tables that
    serves every lookup until an inode it does not know asks for a new one.

    Scanning every fd of every node per accepted connection cost ~100 x 60 readlinks each; at
    100 nodes the lookups queued up in the thread pool for longer than a dialler's handshake
    timeout, so nodes never got through their seed's proxy. Lookups run in threads: one scan at
    a time, and a lookup that waited for another's scan first checks its result."""

    def __init__(self) -> None:
        self._owner: dict[str, int] = {}
        self._lock = threading.Lock()

    def owner(self, inodes: Collection[str], pids: Collection[int]) -> int | None:
        found = self._known(inodes, pids)
        if found is not None:
            return found
        with self._lock:
            found = self._known(inodes, pids)
            if found is None:
                self._owner = _scan_sockets(pids)
                found = self._known(inodes, pids)
        return found

    def _known(self, inodes: Collection[str], pids: Collection[int]) -> int | None:
        owner = self._owner
        for inode in inodes:
            pid = owner.get(inode)
            if pid is not None and pid in pids:
                return pid
        return None


def _scan_sockets(pids: Collection[int]) -> dict[str, int]:
    """Socket inode → pid, for every socket the given processes hold."""
    owner: dict[str, int] = {}
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"{fd_dir}/{fd}")
                    if target.startswith("socket:["):
                        owner[target[8:-1]] = pid
    return owner
