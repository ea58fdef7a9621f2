"""The asyncio driver on real sockets (127.0.0.1, port 0): honest peers connect and exchange
frames; wrong keys, plaintext, garbage and silent floods are closed within the handshake timeout
and disturb nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from protocol.errors import ErrorCode
from protocol.framing import MAX_FRAME_SIZE
from swarmnode.config import Config, HostPort
from swarmnode.identity import Identity
from swarmnode.node import Node
from swarmnode.swarm.transport import (
    HandshakeError,
    PeerConnection,
    SwarmTransport,
    TransportConfig,
    _BufferPool,
)

SWARM_KEY = hashlib.blake2s(b"transport test swarm").digest()
TIMEOUT = 0.6  # the handshake timeout of the listener under attack
DEADLINE = 10.0  # no test waits longer than this for anything


@dataclass
class Recorder:
    """A PeerHandler that records what it is told and lets tests wait for it."""

    connected: list[PeerConnection] = field(default_factory=list)
    frames: list[tuple[str, bytes]] = field(default_factory=list)
    disconnected: list[tuple[str, ErrorCode | int | None]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def peer_connected(self, conn: PeerConnection) -> None:
        self.connected.append(conn)
        self.changed.set()

    def frame_received(self, conn: PeerConnection, body: bytes | bytearray) -> None:
        self.frames.append((conn.peer_node_id, bytes(body)))
        self.changed.set()

    def peer_disconnected(self, conn: PeerConnection, code: ErrorCode | int | None) -> None:
        self.disconnected.append((conn.peer_node_id, code))
        self.changed.set()

    async def wait_for(self, predicate: object) -> None:
        assert callable(predicate)
        async with asyncio.timeout(DEADLINE):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def _identity(name: str) -> Identity:
    return Identity.from_private_bytes(hashlib.blake2s(name.encode()).digest())


@contextlib.asynccontextmanager
async def _transport(
    name: str, *, swarm_key: bytes = SWARM_KEY, **config: object
) -> AsyncIterator[tuple[SwarmTransport, Recorder]]:
    recorder = Recorder()
    transport = SwarmTransport(
        swarm_key=swarm_key,
        identity=_identity(name),
        handler=recorder,
        config=TransportConfig(**config),  # type: ignore[arg-type]
    )
    try:
        yield transport, recorder
    finally:
        await transport.close()


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


@pytest.mark.parametrize("ciphers", [("ChaChaPoly",), ("AESGCM", "ChaChaPoly")])
async def test_honest_peers_connect_and_exchange_frames(ciphers: tuple[str, ...]) -> None:
    async with (
        _transport("a", ciphers=ciphers) as (a, a_seen),
        _transport("b", ciphers=ciphers) as (b, b_seen),
    ):
        where = await a.listen("127.0.0.1", 0)
        conn = await b.connect(where.host, where.port)
        assert conn.peer_node_id == a.identity.node_id
        assert conn.cipher == ciphers[0]
        await a_seen.wait_for(lambda: a_seen.connected)
        [back] = a_seen.connected
        assert back.peer_node_id == b.identity.node_id
        assert back.inbound
        assert not conn.inbound

        bodies = [os.urandom(n) for n in (1, 1000, 70_000, MAX_FRAME_SIZE)]
        for body in bodies:
            conn.send_frame(body)
            await conn.drain()
        back.send_frames([b"small", b"frames"])
        await a_seen.wait_for(lambda: len(a_seen.frames) == len(bodies))
        assert a_seen.frames == [(b.identity.node_id, body) for body in bodies]
        await b_seen.wait_for(lambda: len(b_seen.frames) == 2)
        assert b_seen.frames == [(a.identity.node_id, b"small"), (a.identity.node_id, b"frames")]

        conn.close(ErrorCode.NO_ERROR)
        await conn.wait_closed()
        await a_seen.wait_for(lambda: a_seen.disconnected)
        assert a_seen.disconnected == [(b.identity.node_id, ErrorCode.NO_ERROR)]
        with pytest.raises(ConnectionError):
            conn.send_frame(b"after close")
        assert a.unauthenticated == 0


async def test_wrong_swarm_key_is_refused_by_both_sides(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="swarmnode.swarm.transport")
    async with (
        _transport("a", handshake_timeout_s=TIMEOUT) as (a, a_seen),
        _transport("mallory", swarm_key=bytes(32)) as (mallory, mallory_seen),
    ):
        where = await a.listen("127.0.0.1", 0)
        with pytest.raises(HandshakeError):
            await mallory.connect(where.host, where.port)
        async with asyncio.timeout(DEADLINE):  # the listener's side closes on its own
            await asyncio.gather(*(p.wait_closed() for p in list(a.protocols)))
        assert a_seen.connected == []
        assert mallory_seen.connected == []
        assert a.unauthenticated == 0
    reasons = [r for r in caplog.records if r.getMessage() == "peer.handshake_failed"]
    assert reasons
    assert all(getattr(r, "reason", "") for r in reasons)


@pytest.mark.parametrize(
    "payload",
    [
        b"GET /api/v1/events/node_id HTTP/1.1\r\nHost: x\r\n\r\n",
        hashlib.sha512(b"garbage").digest() * 64,
        b"\x89SWN\r\n\x1a\n\x01\x01\x01\x01" + b"\xff" * 1000,  # a valid preamble, then nonsense
    ],
    ids=["http", "random", "preamble-then-garbage"],
)
async def test_hostile_bytes_close_the_connection_quickly(payload: bytes) -> None:
    async with _transport("a", handshake_timeout_s=5.0) as (a, a_seen):
        where = await a.listen("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection(where.host, where.port)
        try:
            writer.write(payload)
            async with asyncio.timeout(DEADLINE):
                received = await _read_until_closed(reader)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        # Refused on the bytes themselves, long before the 5 s handshake timeout.
        assert loop.time() - started < 2.0
        assert received.startswith(b"\x89SWN\r\n\x1a\n")  # only the preamble ever left the node
        assert len(received) < 32
        assert a_seen.connected == []


async def test_slowloris_is_closed_at_the_handshake_timeout() -> None:
    """A peer that trickles a valid preamble one byte at a time is cut off at the timeout."""
    async with _transport("a", handshake_timeout_s=TIMEOUT) as (a, a_seen):
        where = await a.listen("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(where.host, where.port)
        started = loop.time()

        async def trickle() -> None:
            for byte in b"\x89SWN\r\n\x1a\n\x01\x01\x01\x01" * 10:
                writer.write(bytes([byte]))
                await asyncio.sleep(TIMEOUT / 8)  # pacing the slow client, not synchronisation

        pacer = asyncio.create_task(trickle())
        try:
            async with asyncio.timeout(DEADLINE):
                await _read_until_closed(reader)
            elapsed = loop.time() - started
        finally:
            pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pacer
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 1.0
        assert a_seen.connected == []
        assert a.unauthenticated == 0


async def test_silent_flood_is_capped_and_timed_out_while_honest_peers_carry_on() -> None:
    cap = 4
    async with (
        _transport("a", handshake_timeout_s=TIMEOUT, max_unauthenticated=cap) as (a, a_seen),
        _transport("b") as (b, b_seen),
        _transport("c") as (c, _),
    ):
        where = await a.listen("127.0.0.1", 0)
        honest = await b.connect(where.host, where.port)
        await a_seen.wait_for(lambda: a_seen.connected)
        loop = asyncio.get_running_loop()
        started = loop.time()
        silent = [await asyncio.open_connection(where.host, where.port) for _ in range(cap + 3)]
        try:
            # The honest connection keeps working while the flood holds every pending slot.
            honest.send_frame(b"during the flood")
            await a_seen.wait_for(lambda: a_seen.frames)
            assert a.unauthenticated <= cap
            # A new honest peer is refused while the slots are full: its handshake fails fast.
            with pytest.raises((HandshakeError, ConnectionError)):
                await c.connect(where.host, where.port)
            async with asyncio.timeout(DEADLINE):
                closed = await asyncio.gather(*(_read_until_closed(r) for r, _ in silent))
            elapsed = loop.time() - started
            assert all(len(data) < 32 for data in closed)
            assert elapsed < TIMEOUT + 1.0  # every silent one was closed within the timeout
            assert a.unauthenticated == 0
        finally:
            for _, writer in silent:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        # Slots are free again: a new honest peer gets in, the old one still talks.
        late = await c.connect(where.host, where.port)
        assert late.peer_node_id == a.identity.node_id
        honest.send_frame(b"after the flood")
        await a_seen.wait_for(lambda: len(a_seen.frames) == 2)
        assert [body for _, body in a_seen.frames] == [b"during the flood", b"after the flood"]
        assert b_seen.disconnected == []


async def test_a_node_refuses_to_connect_to_itself() -> None:
    async with _transport("a") as (a, a_seen):
        where = await a.listen("127.0.0.1", 0)
        with pytest.raises(HandshakeError):
            await a.connect(where.host, where.port)
        assert a_seen.connected == []


def test_honest_exchange_on_uvloop() -> None:
    """The CLI runs uvloop: the same exchange on its loop (BufferedProtocol, back-pressure)."""
    uvloop = pytest.importorskip("uvloop")

    async def exchange() -> None:
        async with _transport("a") as (a, a_seen), _transport("b") as (b, _):
            where = await a.listen("127.0.0.1", 0)
            conn = await b.connect(where.host, where.port)
            bodies = [os.urandom(MAX_FRAME_SIZE) for _ in range(8)]
            for body in bodies:
                conn.send_frame(body)
                await conn.drain()
            await a_seen.wait_for(lambda: len(a_seen.frames) == len(bodies))
            assert [body for _, body in a_seen.frames] == bodies

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(exchange())


async def test_node_keeps_serving_http_during_an_attack(tmp_path: Path) -> None:
    """A real Node (port 0 everywhere): garbage, plaintext and a silent flood on its swarm port
    are closed within the handshake timeout, an honest peer gets through, and GET
    /api/v1/events/node_id answers all along."""
    config = Config(
        data_dir=tmp_path / "node",
        listen=HostPort("127.0.0.1", 0),
        events_api=HostPort("127.0.0.1", 0),
        blobs_api=HostPort("127.0.0.1", 0),
        swarm_key=SWARM_KEY,
    )
    node = Node(config)
    node.swarm.config = TransportConfig(handshake_timeout_s=TIMEOUT, max_unauthenticated=4)
    async with node, aiohttp.ClientSession() as http, _transport("honest") as (peer, _):
        addresses = node.addresses
        assert addresses is not None
        swarm = addresses.swarm
        assert swarm.port != 0
        node_id_url = f"http://{addresses.events_api}/api/v1/events/node_id"

        async def node_id() -> str:
            async with http.get(node_id_url) as response:
                assert response.status == 200
                body = await response.json()
                assert isinstance(body["nodeId"], str)
                return body["nodeId"]

        assert await node_id() == node.node_id
        loop = asyncio.get_running_loop()
        started = loop.time()
        attackers = [await asyncio.open_connection(swarm.host, swarm.port) for _ in range(8)]
        try:
            attackers[0][1].write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            attackers[1][1].write(os.urandom(4096))
            for _ in range(5):  # HTTP keeps answering while the swarm port is under attack
                assert await node_id() == node.node_id
            async with asyncio.timeout(DEADLINE):
                closed = await asyncio.gather(*(_read_until_closed(r) for r, _ in attackers))
            assert loop.time() - started < TIMEOUT + 1.0
            assert all(len(data) < 32 for data in closed)
        finally:
            for _, writer in attackers:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        conn = await peer.connect(swarm.host, swarm.port)
        assert conn.peer_node_id == node.node_id
        assert await node_id() == node.node_id
        info = json.loads((config.data_dir / "node.json").read_text())
        assert info["swarm"] == str(swarm)


def test_send_buffer_pool_reuses_only_released_buffers() -> None:
    """A pooled buffer is handed out again only when nobody else (a transport) holds it."""
    pool = _BufferPool(1024, 2)
    first = pool.take(1000)
    first_id = id(first)
    queued = memoryview(first)  # as a transport holds what it could not send yet
    del first
    second = pool.take(1000)
    second_id = id(second)
    assert second_id != first_id
    del second
    for _ in range(3):  # while ``queued`` lives, only the released one comes back
        assert id(pool.take(1000)) == second_id
    del queued
    assert {id(pool.take(1000)), id(pool.take(1000))} <= {first_id, second_id}
    big = pool.take(4096)  # larger than the pool's buffers: a fresh one, never pooled
    assert len(big) == 4096
    assert all(b is not big for b in pool._buffers)


async def test_big_bodies_a_handler_keeps_are_never_recycled() -> None:
    """Chunk-sized bodies arrive in recycled buffers; one a handler still holds is never reused,
    so a later frame cannot overwrite it."""
    kept: list[bytes | bytearray | memoryview] = []

    class Keeper(Recorder):
        def frame_received(self, conn: PeerConnection, body: bytes | bytearray) -> None:
            kept.append(body)  # no copy: the handler owns the buffer
            super().frame_received(conn, body)

    keeper = Keeper()
    async with _transport("b") as (b, _):
        a = SwarmTransport(swarm_key=SWARM_KEY, identity=_identity("a"), handler=keeper)
        try:
            where = await a.listen("127.0.0.1", 0)
            conn = await b.connect(where.host, where.port)
            bodies = [os.urandom(n) for n in (70_000, 1 << 20, 200_000, 1 << 20, 100)] * 6
            for body in bodies:
                conn.send_frame(body)
                await conn.drain()
            await keeper.wait_for(lambda: len(kept) == len(bodies))
            assert [bytes(body) for body in kept] == bodies
            assert any(isinstance(body, memoryview) for body in kept)  # the pooled path ran
        finally:
            await a.close()


async def test_sending_on_a_channel_that_can_no_longer_send_is_a_closing_connection() -> None:
    """A channel can be closed before its transport knows (a close notice read together with
    earlier frames, whose handlers then reply). Such a send must fail as a closing connection
    (ConnectionResetError, which every sender handles), not as a protocol error escaping the
    handler. Seen in netsim's bridge scenario as transport.handler_failed."""
    async with _transport("a") as (a, _), _transport("b") as (b, _):
        where = await a.listen("127.0.0.1", 0)
        conn = await b.connect(where.host, where.port)
        conn._protocol._channel.close()  # the channel closes; the transport has not noticed yet
        with pytest.raises(ConnectionResetError):
            conn.send_frame(b"too late")


def test_a_dial_cancelled_at_any_point_leaves_nothing_for_close_to_wait_on() -> None:
    """A dial cancelled just after connection_made but before create_connection returned left
    its protocol among the transport's forever (uvloop closes such a socket without
    connection_lost), and close() waited on it: netsim's churn scenario saw a node ignore
    SIGTERM for 20 s. Cancel dials after every number of loop passes up to well past a
    loopback connect, then close within the deadline."""
    uvloop = pytest.importorskip("uvloop")

    async def cancelled_dials() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        try:
            async with _transport("a") as (a, _):
                for passes in range(40):
                    dial = asyncio.create_task(a.connect("127.0.0.1", port))
                    for _ in range(passes):
                        await asyncio.sleep(0)  # let the dial get that far, then cancel it
                    dial.cancel()
                    await asyncio.gather(dial, return_exceptions=True)
                async with asyncio.timeout(DEADLINE):
                    await a.close()
                assert a.protocols == set()
        finally:
            listener.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(cancelled_dials())
