"""The asyncio driver of the secure channel: listen, dial, handshake, frames in and out over TCP.

One ``_ChannelProtocol`` (an ``asyncio.BufferedProtocol`` reading into a preallocated, reused
buffer; DESIGN.md measured StreamReader at ~0.26 of raw TCP, BufferedProtocol at ~0.97) drives one
``protocol.channel.SecureChannel``: received bytes go in, events come out and are dispatched to the
node's ``PeerHandler``; what the channel hands back is written at once.

Policy lives here, not in the channel: the handshake timeout, the cap on connections that have not
finished the handshake, write back-pressure (``PeerConnection.drain``), and what happens on hostile
input: that connection closes (with a close notice if the handshake was done), it is logged as
``peer.handshake_failed`` or ``peer.protocol_error`` with the reason, and nothing else is touched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.channel import (
    MAX_PLAINTEXT,
    SEND_PIECE_RECORDS,
    ChannelClosed,
    ChannelEvent,
    FrameReceived,
    HandshakeDone,
    Role,
    SecureChannel,
    sealed_size,
)
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.framing import MAX_FRAME_SIZE
from protocol.noise import CipherName
from swarmnode.config import HostPort
from swarmnode.identity import Identity
from swarmnode.swarm.ciphers import default_ciphers

__all__ = [
    "HandshakeError",
    "IdlePeerHandler",
    "PeerConnection",
    "PeerHandler",
    "SwarmTransport",
    "TransportConfig",
]

log = logging.getLogger(__name__)

# Closing: how long a connection gets to flush its close notice, then to go after an abort.
_CLOSE_WAIT_S = 1.0

# Send buffers kept per connection, each one piece of SEND_PIECE_RECORDS records (~1 MiB): enough
# to cover the write high-water mark, so a steady stream allocates nothing.
_POOL_BUFFERS: Final = 6
# Frame bodies this big or bigger (chunks) are decrypted into buffers recycled node-wide: a fresh
# 1 MiB bytearray per chunk cost its zeroing and allocation on the receiving loop (~0.03 s/GiB).
_POOLED_BODY_MIN: Final = 64 * 1024
_BODY_POOL_BUFFERS: Final = 16
# Handshake reads use a small buffer: an unauthenticated peer gets no more of our memory than this
# (a whole handshake is under 400 bytes); the big buffer comes once the peer proved the key.
_HANDSHAKE_BUFFER: Final = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportConfig:
    """Driver policy. Every limit has its reason next to it."""

    # A handshake is 1.5 round trips and ~0.3 ms of CPU per side; 5 s covers a congested LAN many
    # times over and bounds how long a silent or slowloris peer holds a slot.
    handshake_timeout_s: float = 5.0
    # Connections that have not finished the handshake, inbound, at once. A node keeps an active
    # view of about log N + c (~15 for 1,000 nodes) peers, so honest handshakes in flight are few;
    # 64 leaves 4× headroom and caps what a flood costs: 64 × (4 KiB buffer + ~1 ms of X25519) per
    # handshake timeout. Past the cap new connections are closed at once (we never evict a pending
    # handshake, which would let a flood push out honest peers that got in first).
    max_unauthenticated: int = 64
    # Read buffer once authenticated: ≥ 1 MiB reads reach ~0.97 of raw TCP (DESIGN.md).
    receive_buffer_size: int = 1 << 20
    # Write back-pressure: ``drain()`` waits while more than ``write_high_water`` bytes are queued,
    # until it falls under ``write_low_water``; a few MiB keeps loopback busy between wakeups.
    write_high_water: int = 4 << 20
    write_low_water: int = 1 << 20
    ciphers: tuple[CipherName, ...] = field(default_factory=default_ciphers)


class HandshakeError(ConnectionError):
    """``connect`` failed after TCP connected: the peer broke, refused or timed out the handshake.

    ``code`` is the channel's error code (SPEC.md §10), for scoring the peer.
    """

    def __init__(self, reason: str, code: ErrorCode | int = ErrorCode.HANDSHAKE_FAILED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class PeerHandler(Protocol):
    """What the node does with authenticated peers. Called on the loop; must not block."""

    def peer_connected(self, conn: PeerConnection) -> None: ...

    def frame_received(self, conn: PeerConnection, body: bytes | bytearray) -> None: ...

    def peer_disconnected(self, conn: PeerConnection, code: ErrorCode | int | None) -> None:
        """``code``: the peer's close notice code, ours if we closed, None if the link dropped."""
        ...


class PeerConnection:
    """An authenticated connection to one peer, handed to the ``PeerHandler``."""

    __slots__ = ("_protocol", "cipher", "inbound", "peer_node_id", "peer_public_key", "remote")

    def __init__(
        self,
        protocol: _ChannelProtocol,
        *,
        done: HandshakeDone,
        remote: HostPort,
        inbound: bool,
    ) -> None:
        self._protocol = protocol
        self.peer_node_id = done.peer_node_id
        self.peer_public_key = done.peer_public_key
        self.cipher = done.cipher
        self.remote = remote
        self.inbound = inbound

    def __repr__(self) -> str:
        return f"<PeerConnection {self.peer_node_id} {self.remote} {self.cipher}>"

    @property
    def closed(self) -> bool:
        return self._protocol.closing

    def send_frame(self, body: bytes | bytearray | memoryview) -> None:
        """Queue one frame; ``ConnectionError`` if the connection is closing."""
        self._protocol.send_frames((body,))

    def send_frames(self, bodies: Iterable[bytes | bytearray | memoryview]) -> None:
        """Queue frames, small ones packed into shared records."""
        self._protocol.send_frames(bodies)

    async def drain(self) -> None:
        """Wait while the write queue is over the high-water mark (back-pressure)."""
        await self._protocol.drain()

    @property
    def writable(self) -> bool:
        """False while the write queue is over the high-water mark (``drain()`` would wait)."""
        return not self._protocol._paused

    def close(self, code: ErrorCode | int = ErrorCode.NO_ERROR) -> None:
        """Send a close notice with ``code``, flush, and close."""
        self._protocol.close(code)

    async def wait_closed(self) -> None:
        await self._protocol.wait_closed()


def _remote_of(transport: asyncio.BaseTransport) -> HostPort:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return HostPort(str(peer[0]), int(peer[1]))
    return HostPort("?", 0)


class _BufferPool:
    """Send buffers recycled once the transport has let go of them.

    uvloop queues a reference to what ``write`` could not send at once (no copy), so a buffer may
    only be reused after that reference is gone: CPython's reference count says when (the pool's
    list, the loop variable and ``getrefcount``'s argument make 3). Reuse matters: a fresh 1 MiB
    allocation per piece is returned to the OS and faulted in again, which cost the ChaChaPoly
    sender ~0.1–0.3 CPU-s/GiB (bench/channel.py).
    """

    __slots__ = ("_buffers", "_limit", "_size")

    def __init__(self, size: int, limit: int) -> None:
        self._size = size
        self._limit = limit
        self._buffers: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        if size > self._size:
            return bytearray(size)
        for buffer in self._buffers:
            if sys.getrefcount(buffer) == 3:  # nobody but us holds it
                return buffer
        buffer = bytearray(self._size)
        if len(self._buffers) < self._limit:
            self._buffers.append(buffer)
        return buffer


class _ChannelProtocol(asyncio.BufferedProtocol):
    """Drives one SecureChannel over one TCP connection."""

    def __init__(self, owner: SwarmTransport, role: Role) -> None:
        self._owner = owner
        self._role = role
        self._loop = asyncio.get_running_loop()
        self._channel = owner.new_channel(role)
        self._buffer = bytearray(_HANDSHAKE_BUFFER)
        self._view = memoryview(self._buffer)
        self._transport: asyncio.Transport | None = None
        self._remote = HostPort("?", 0)
        self._timer: asyncio.TimerHandle | None = None
        self._conn: PeerConnection | None = None
        self._counted_unauthenticated = False
        self._close_code: ErrorCode | int | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._pool = _BufferPool(sealed_size(SEND_PIECE_RECORDS * MAX_PLAINTEXT), _POOL_BUFFERS)
        self.closing = False
        self.closed = self._loop.create_future()
        self.handshake: asyncio.Future[PeerConnection] = self._loop.create_future()

    # ---- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but it has the same methods.
        self._transport = cast(asyncio.Transport, transport)
        self._remote = _remote_of(transport)
        owner = self._owner
        owner.protocols.add(self)
        if (
            self._role is Role.RESPONDER
            and owner.unauthenticated >= owner.config.max_unauthenticated
        ):
            log.warning(
                "peer.refused",
                extra={"remote": str(self._remote), "reason": "too_many_unauthenticated"},
            )
            self._fail_handshake("too many unauthenticated connections", abort=True)
            return
        if self._role is Role.RESPONDER:  # the cap guards against inbound floods only
            owner.unauthenticated += 1
            self._counted_unauthenticated = True
        self._transport.set_write_buffer_limits(
            high=owner.config.write_high_water, low=owner.config.write_low_water
        )
        self._timer = self._loop.call_later(
            owner.config.handshake_timeout_s, self._handshake_timed_out
        )
        self.write(self._channel.initiate())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._receive(self._view[:nbytes])

    def eof_received(self) -> bool:
        self._receive(b"")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._stop_timer()
        self._uncount()
        self._owner.protocols.discard(self)
        if not self.handshake.done():
            self._fail_future("connection lost during the handshake")
        if self._conn is not None:
            conn, self._conn = self._conn, None
            log.info(
                "peer.disconnected",
                extra={
                    "node_id": conn.peer_node_id,
                    "remote": str(self._remote),
                    "code": None if self._close_code is None else int(self._close_code),
                    "error": None if exc is None else str(exc),
                },
            )
            self._call_handler(self._owner.handler.peer_disconnected, conn, self._close_code)
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))
            waiter.exception()  # retrieved: a drain() cancelled under its shield never will be
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- the channel

    def _receive(self, data: bytes | memoryview) -> None:
        if self.closing:
            return
        try:
            events = self._channel.receive_data(data)
        except RemoteProtocolError as exc:
            self._on_remote_error(exc)
            return
        except LocalProtocolError:
            log.exception("transport.bug", extra={"remote": str(self._remote)})
            self._abort()
            return
        out = self._channel.data_to_send()
        if out:
            self.write(out)
        if events:
            self._dispatch(events)

    def _dispatch(self, events: list[ChannelEvent]) -> None:
        handler = self._owner.handler
        for event in events:
            if self.closing:
                return
            match event:
                case FrameReceived(body=body):
                    assert self._conn is not None
                    self._call_handler(handler.frame_received, self._conn, body)
                case HandshakeDone():
                    self._on_handshake_done(event)
                case ChannelClosed(code=code):
                    self._close_code = code
                    self._close_transport()

    def _on_handshake_done(self, done: HandshakeDone) -> None:
        self._stop_timer()
        self._uncount()
        if done.peer_node_id == self._owner.identity.node_id:
            log.warning(
                "peer.handshake_failed", extra={"remote": str(self._remote), "reason": "self"}
            )
            self._fail_future("connected to ourselves")
            self.close(ErrorCode.NO_ERROR)
            return
        self._buffer = bytearray(self._owner.config.receive_buffer_size)
        self._view = memoryview(self._buffer)
        conn = PeerConnection(
            self, done=done, remote=self._remote, inbound=self._role is Role.RESPONDER
        )
        self._conn = conn
        log.info(
            "peer.connected",
            extra={
                "node_id": conn.peer_node_id,
                "remote": str(self._remote),
                "inbound": conn.inbound,
                "cipher": conn.cipher,
            },
        )
        if not self.handshake.done():
            self.handshake.set_result(conn)
        self._call_handler(self._owner.handler.peer_connected, conn)

    def _call_handler(self, method: object, *args: object) -> None:
        assert callable(method)
        try:
            method(*args)
        except Exception:
            log.exception("transport.handler_failed", extra={"remote": str(self._remote)})
            self.close(ErrorCode.INTERNAL_ERROR)

    def _on_remote_error(self, exc: RemoteProtocolError) -> None:
        if self._conn is None:
            log.warning(
                "peer.handshake_failed",
                extra={"remote": str(self._remote), "reason": str(exc), "code": int(exc.code)},
            )
            self._fail_handshake(str(exc), code=exc.code, abort=True)
            return
        log.warning(
            "peer.protocol_error",
            extra={
                "node_id": self._conn.peer_node_id,
                "remote": str(self._remote),
                "reason": str(exc),
                "code": int(exc.code),
            },
        )
        self.close(exc.code)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        log.warning(
            "peer.handshake_failed",
            extra={
                "remote": str(self._remote),
                "reason": "timeout",
                "state": self._channel.state.name,
            },
        )
        self._fail_handshake("handshake timed out", abort=True)

    def _fail_handshake(
        self, reason: str, *, code: ErrorCode | int = ErrorCode.HANDSHAKE_FAILED, abort: bool
    ) -> None:
        self._fail_future(reason, code)
        if abort:
            self._abort()

    def _fail_future(self, reason: str, code: ErrorCode | int = ErrorCode.HANDSHAKE_FAILED) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(reason, code))
            # Inbound handshakes have no awaiter: mark the exception retrieved (no warning at GC).
            self.handshake.exception()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _uncount(self) -> None:
        if self._counted_unauthenticated:
            self._counted_unauthenticated = False
            self._owner.unauthenticated -= 1

    # ---- writing and closing

    def send_frames(self, bodies: Iterable[bytes | bytearray | memoryview]) -> None:
        transport = self._transport
        if (
            self.closing
            or transport is None
            or transport.is_closing()
            or not self._channel.can_send  # the peer's close notice came with the last read
        ):
            raise ConnectionResetError("connection is closing")
        # Each sealed piece goes to the socket while it is still in cache (SEND_PIECE_RECORDS),
        # in a buffer recycled once the transport has let go of it.
        self._channel.send_frames_to(bodies, transport.write, self._pool.take)

    def write(self, buffers: Iterable[bytes | bytearray]) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        for buffer in buffers:  # one buffer per call in practice; writelines would join a copy
            transport.write(buffer)

    async def drain(self) -> None:
        if self.closing:
            raise ConnectionResetError("connection is closing")
        if not self._paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = self._loop.create_future()
        await asyncio.shield(self._drain_waiter)

    def close(self, code: ErrorCode | int = ErrorCode.NO_ERROR) -> None:
        if self.closing:
            return
        if self._close_code is None:
            self._close_code = code
        self.write(self._channel.close(code))
        self._close_transport()

    def _close_transport(self) -> None:
        self.closing = True
        self._stop_timer()
        if self._transport is not None:
            self._transport.close()

    def _abort(self) -> None:
        self.closing = True
        self._stop_timer()
        if self._transport is not None:
            self._transport.abort()

    def _abandon(self) -> None:
        """Abort, and do connection_lost's bookkeeping now in case the transport never calls
        it (uvloop does not once it closed the socket itself); a later call changes nothing."""
        self._abort()
        self.connection_lost(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self.closed)


class SwarmTransport:
    """Listens and dials swarm connections for one node.

    The Noise static key is generated per process: it is bound to the node's lasting Ed25519
    identity by a signature in every handshake (SPEC.md §3.3), so keeping it fresh costs nothing and
    gives a prober without the swarm key, who can learn it from message 2, nothing to track.
    """

    def __init__(
        self,
        *,
        swarm_key: bytes,
        identity: Identity,
        handler: PeerHandler,
        config: TransportConfig | None = None,
    ) -> None:
        if len(swarm_key) != 32:
            raise ValueError("the swarm key has 32 bytes")
        self.config = config if config is not None else TransportConfig()
        self.identity = identity
        self.handler = handler
        self._swarm_key = swarm_key
        self._static = X25519PrivateKey.generate()
        # The proof signs the same static key in every handshake: sign once (SPEC.md §3.3).
        self._sign = functools.lru_cache(maxsize=2)(identity.sign)
        self._server: asyncio.Server | None = None
        self.protocols: set[_ChannelProtocol] = set()
        self._body_pool = _BufferPool(MAX_FRAME_SIZE, _BODY_POOL_BUFFERS)
        self.unauthenticated = 0
        self.address: HostPort | None = None

    def new_channel(self, role: Role) -> SecureChannel:
        return SecureChannel(
            role,
            psk=self._swarm_key,
            static_private=self._static,
            identity_public=self.identity.public_key,
            identity_sign=self._sign,
            ephemeral_factory=X25519PrivateKey.generate,
            ciphers=self.config.ciphers,
            body_buffer=self._body_buffer,
        )

    def _body_buffer(self, size: int) -> bytearray:
        return bytearray(size) if size < _POOLED_BODY_MIN else self._body_pool.take(size)

    @property
    def connections(self) -> list[PeerConnection]:
        return [p._conn for p in self.protocols if p._conn is not None]

    async def listen(self, host: str, port: int) -> HostPort:
        """Start accepting on ``host:port`` (port 0: any free port); returns the bound address."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ChannelProtocol(self, Role.RESPONDER), host, port, reuse_address=True
        )
        bound = self._server.sockets[0].getsockname()
        self.address = HostPort(str(bound[0]), int(bound[1]))
        log.info("transport.listening", extra={"address": str(self.address)})
        return self.address

    async def connect(self, host: str, port: int) -> PeerConnection:
        """Dial a peer and run the handshake; raises ``HandshakeError``, ``OSError`` or
        ``TimeoutError`` (TCP connect and handshake share ``handshake_timeout_s``)."""
        loop = asyncio.get_running_loop()
        made: list[_ChannelProtocol] = []

        def protocol_factory() -> _ChannelProtocol:
            made.append(_ChannelProtocol(self, Role.INITIATOR))
            return made[-1]

        try:
            async with asyncio.timeout(self.config.handshake_timeout_s):
                _, protocol = await loop.create_connection(protocol_factory, host, port)
                return await asyncio.shield(protocol.handshake)
        except BaseException:
            # The protocol may exist (connection_made ran) though create_connection did not
            # return it: a dial cancelled or timed out at that moment. uvloop then closes the
            # socket without connection_lost, and the protocol would stay among ours forever.
            for protocol in made:
                protocol._abandon()
            raise

    async def close(self) -> None:
        """Stop listening, close every connection (with a close notice) and wait until they are."""
        if self._server is not None:
            self._server.close()
        protocols = list(self.protocols)
        for protocol in protocols:
            protocol.close(ErrorCode.NO_ERROR)
        for protocol in protocols:
            try:
                async with asyncio.timeout(_CLOSE_WAIT_S):
                    await protocol.wait_closed()
            except TimeoutError:
                protocol._abort()
                try:
                    async with asyncio.timeout(_CLOSE_WAIT_S):
                        await protocol.wait_closed()
                except TimeoutError:
                    log.warning("transport.close_stuck", extra={"remote": str(protocol._remote)})
                    protocol._abandon()  # a transport that will never report: stop waiting
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class IdlePeerHandler:
    """A handler for a node that runs no swarm protocols yet: keeps connections, drops frames."""

    def peer_connected(self, conn: PeerConnection) -> None:
        del conn

    def frame_received(self, conn: PeerConnection, body: bytes | bytearray) -> None:
        log.debug("peer.frame_dropped", extra={"node_id": conn.peer_node_id, "size": len(body)})

    def peer_disconnected(self, conn: PeerConnection, code: ErrorCode | int | None) -> None:
        del conn, code
