"""The swarm driver on real loopback transports: in-process nodes (event log + driver, port 0,
tmp data dirs) join, replicate events both ways and through a relay, keep one connection per pair,
refuse strangers, and penalise peers that send garbage or forged events."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

import pytest

from netsim.proxy import TcpProxy
from protocol.codec import decode, encode
from protocol.errors import ErrorCode
from protocol.eventchain import EventRecord
from protocol.messages import (
    PROTOCOL_VERSION,
    Address,
    EventBatch,
    Hello,
    MemberState,
    RequestRange,
)
from swarmnode.config import HostPort
from swarmnode.events.log import EventLog
from swarmnode.ports import NewEvent, Subscription
from swarmnode.swarm.driver import DriverConfig, SwarmDriver
from swarmnode.swarm.logstore import LogStore
from swarmnode.swarm.membership import MembershipConfig
from swarmnode.swarm.outbox import Outbox
from swarmnode.swarm.transport import PeerConnection, SwarmTransport, TransportConfig
from tests.helpers.events_chain import RemoteSource, identity_from_seed

SWARM_KEY = hashlib.blake2s(b"driver test swarm").digest()
OTHER_KEY = hashlib.blake2s(b"another swarm").digest()
DEADLINE = 20.0
# Short membership timers so loopback swarms settle in well under a second.
FAST = DriverConfig(
    membership=MembershipConfig(
        protocol_period=0.2,
        ack_timeout=0.1,
        indirect_timeout=0.2,
        join_backoff_initial=0.1,
        join_backoff_max=0.4,
    )
)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    seed: int,
    seeds: Sequence[HostPort] = (),
    *,
    key: bytes = SWARM_KEY,
    config: DriverConfig = FAST,
) -> AsyncIterator[SwarmDriver]:
    """A node's swarm half: its event log and a started driver listening on 127.0.0.1:0."""
    identity = identity_from_seed(seed)
    event_log = EventLog(tmp_path / f"node{seed}" / "events.sqlite", identity)
    await event_log.start()
    driver = SwarmDriver(
        swarm_key=key,
        identity=identity,
        event_log=event_log,
        config=config,
        rng=random.Random(seed),
    )
    try:
        address = await driver.transport.listen("127.0.0.1", 0)
        await driver.start(address, seeds)
        yield driver
    finally:
        await driver.stop()
        await driver.transport.close()
        await event_log.stop()


def addr(driver: SwarmDriver) -> HostPort:
    assert driver.transport.address is not None
    return driver.transport.address


async def publish(driver: SwarmDriver, n: int, tag: str) -> list[EventRecord]:
    events = [NewEvent(semantics="test", name=tag, payload=json.dumps({"i": i})) for i in range(n)]
    return await driver.event_log.publish(events)


def covers(have: Mapping[str, int], want: Mapping[str, int]) -> bool:
    return all(have.get(source, -1) >= offset for source, offset in want.items())


async def wait_holds(event_log: EventLog, want: Mapping[str, int]) -> None:
    """Wait, on the log's own subscription (ingest wakes it), until ``want`` is held."""
    if covers(event_log.offsets(), want):
        return
    events = event_log.subscribe([Subscription()], None)
    async with contextlib.aclosing(events):
        async for _ in events:
            if covers(event_log.offsets(), want):
                return


async def all_records(event_log: EventLog) -> list[EventRecord]:
    upper = event_log.offsets()
    records = event_log.query([Subscription()], None, upper, "source-ordered")
    async with contextlib.aclosing(records):
        held = [r async for r in records]
    return sorted(held, key=lambda r: (r.source, r.offset))  # sources interleave freely


def connections_to(driver: SwarmDriver, peer: str) -> list[PeerConnection]:
    return [c for c in driver.transport.connections if c.peer_node_id == peer and not c.closed]


async def test_two_nodes_replicate_both_ways(tmp_path: Path) -> None:
    async with running(tmp_path, 1) as a, running(tmp_path, 2, [addr(a)]) as b:
        published_a = await publish(a, 5, "from-a")
        published_b = await publish(b, 3, "from-b")
        async with asyncio.timeout(DEADLINE):
            await wait_holds(b.event_log, {a.node_id: 4})
            await wait_holds(a.event_log, {b.node_id: 2})
        assert a.event_log.offsets() == b.event_log.offsets() == {a.node_id: 4, b.node_id: 2}
        held_a, held_b = await all_records(a.event_log), await all_records(b.event_log)
        assert held_a == held_b
        assert [r for r in held_b if r.source == a.node_id] == published_a
        assert [r for r in held_a if r.source == b.node_id] == published_b
        assert b.membership.state_of(a.node_id) is MemberState.ALIVE


async def test_chain_of_three_converges_with_concurrent_publishes(tmp_path: Path) -> None:
    async with (
        running(tmp_path, 1) as a,
        running(tmp_path, 2, [addr(a)]) as b,
        running(tmp_path, 3, [addr(b)]) as c,
    ):
        nodes = (a, b, c)
        await asyncio.gather(
            *(publish(n, 20, f"n{i}") for i, n in enumerate(nodes) for _ in (0, 1))
        )
        want = {n.node_id: 39 for n in nodes}
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*(wait_holds(n.event_log, want) for n in nodes))
        offsets = [n.event_log.offsets() for n in nodes]
        assert offsets[0] == offsets[1] == offsets[2] == want
        held = [await all_records(n.event_log) for n in nodes]
        assert held[0] == held[1] == held[2]
        assert len(held[0]) == 120
        # c knew only b, yet learned a through membership gossip.
        async with asyncio.timeout(DEADLINE):
            await c.wait_for(lambda: c.membership.state_of(a.node_id) is MemberState.ALIVE)


async def test_lamport_receive_rule_applies_to_replicated_events(tmp_path: Path) -> None:
    async with running(tmp_path, 1) as a, running(tmp_path, 2, [addr(a)]) as b:
        first = await publish(a, 10, "a")
        async with asyncio.timeout(DEADLINE):
            await wait_holds(b.event_log, {a.node_id: 9})
        (later,) = await publish(b, 1, "b")
        assert later.lamport > first[-1].lamport


async def test_simultaneous_dials_leave_one_connection_per_pair(tmp_path: Path) -> None:
    # b is started without seeds, then both dial each other at the same moment.
    async with running(tmp_path, 1) as a, running(tmp_path, 2) as b:
        a.membership.join(a.loop.time(), [_address(addr(b))])
        b.membership.join(b.loop.time(), [_address(addr(a))])
        a._pump()
        b._pump()

        def settled() -> bool:
            return (
                len(connections_to(a, b.node_id)) == 1
                and len(connections_to(b, a.node_id)) == 1
                and a.connected_peers() == [b.node_id]
                and b.connected_peers() == [a.node_id]
            )

        async with asyncio.timeout(DEADLINE):
            await a.wait_for(settled)
            await b.wait_for(settled)
        # Both dialled before either connection existed, so one duplicate was closed.
        assert a.counters["duplicates_closed"] + b.counters["duplicates_closed"] >= 1
        await publish(a, 2, "after-dedupe")
        async with asyncio.timeout(DEADLINE):
            await wait_holds(b.event_log, {a.node_id: 1})


async def test_node_with_another_swarm_key_never_connects(tmp_path: Path) -> None:
    async with (
        running(tmp_path, 1) as a,
        running(tmp_path, 2, [addr(a)]) as b,
        running(tmp_path, 3, [addr(a)], key=OTHER_KEY) as stranger,
    ):
        await publish(a, 3, "secret")
        await publish(stranger, 2, "intruder")
        async with asyncio.timeout(DEADLINE):
            await wait_holds(b.event_log, {a.node_id: 2})
            # The stranger keeps retrying its seed (join backoff) and keeps failing.
            await stranger.wait_for(lambda: stranger.counters["dial_failures"] >= 3)
        assert stranger.connected_peers() == []
        assert stranger.node_id not in a.connected_peers()
        assert set(stranger.event_log.offsets()) == {stranger.node_id}
        assert stranger.node_id not in a.event_log.offsets()
        assert stranger.node_id not in b.event_log.offsets()


async def test_catch_up_is_served_from_disk_after_a_restart(tmp_path: Path) -> None:
    # a's events are on disk only (a fresh driver's store holds just each source's head), so
    # b's range requests go through the driver's prefetch.
    async with running(tmp_path, 1) as a:
        published = await publish(a, 300, "old")
    async with running(tmp_path, 1) as a, running(tmp_path, 2, [addr(a)]) as b:
        assert a.store.needs_read(a.node_id, -1)
        async with asyncio.timeout(DEADLINE):
            await wait_holds(b.event_log, {a.node_id: 299})
        assert await all_records(b.event_log) == published
        assert a.counters["disk_reads"] >= 1


class _Silent:
    """A PeerHandler for a hand-driven peer: records closes."""

    def __init__(self) -> None:
        self.closed: asyncio.Queue[ErrorCode | int | None] = asyncio.Queue()

    def peer_connected(self, conn: PeerConnection) -> None:
        del conn

    def frame_received(self, conn: PeerConnection, body: bytes | bytearray) -> None:
        del conn, body

    def peer_disconnected(self, conn: PeerConnection, code: ErrorCode | int | None) -> None:
        del conn
        self.closed.put_nowait(code)


def _address(where: HostPort) -> Address:
    return Address(host=where.host, port=where.port)


async def _rogue(
    target: SwarmDriver, seed: int, frames: Callable[[str], list[bytes]]
) -> tuple[SwarmTransport, _Silent, ErrorCode | int | None]:
    """Connect as node ``seed``, send Hello then ``frames``; return how the target closed."""
    handler = _Silent()
    identity = identity_from_seed(seed)
    transport = SwarmTransport(swarm_key=SWARM_KEY, identity=identity, handler=handler)
    where = addr(target)
    conn = await transport.connect(where.host, where.port)
    hello = Hello(version=PROTOCOL_VERSION, node_id=identity.node_id, features=(), listen=())
    conn.send_frames([encode(hello), *frames(identity.node_id)])
    code = await handler.closed.get()
    return transport, handler, code


async def test_garbage_frame_closes_and_refuses_the_peer(tmp_path: Path) -> None:
    async with running(tmp_path, 1) as a:
        async with asyncio.timeout(DEADLINE):
            transport, handler, code = await _rogue(a, 9, lambda _: [b"\xc1"])
            try:
                assert code == ErrorCode.MALFORMED_MESSAGE
                assert a.counters["penalties"] == 1
                # Reconnecting at once is refused before any Hello is read.
                where = addr(a)
                await transport.connect(where.host, where.port)
                assert await handler.closed.get() == ErrorCode.RESOURCE_LIMIT
                assert a.counters["refused"] == 1
            finally:
                await transport.close()
        assert a.connected_peers() == []


async def test_forged_events_are_dropped_and_the_relay_penalised(tmp_path: Path) -> None:
    victim = RemoteSource(identity_from_seed(7))
    records = victim.batch([("test", "x", "1"), ("test", "x", "2")])
    forged = [records[0], dataclasses.replace(records[1], payload="666")]

    def frames(_: str) -> list[bytes]:
        batch = EventBatch(events=tuple(forged), keys=((victim.source, victim.public_key),))
        return [encode(batch)]

    async with running(tmp_path, 1) as a:
        async with asyncio.timeout(DEADLINE):
            transport, _, code = await _rogue(a, 9, frames)
            await transport.close()
        assert code == ErrorCode.BAD_SIGNATURE
        assert victim.source not in a.event_log.offsets()
        assert a.dissemination.statistics().rejected_batches == 1


@pytest.mark.parametrize("bad_first", ["not hello", "wrong id"])
async def test_bad_session_start_is_a_protocol_error(tmp_path: Path, bad_first: str) -> None:
    handler = _Silent()
    identity = identity_from_seed(9)
    async with running(tmp_path, 1) as a:
        transport = SwarmTransport(swarm_key=SWARM_KEY, identity=identity, handler=handler)
        try:
            async with asyncio.timeout(DEADLINE):
                where = addr(a)
                conn = await transport.connect(where.host, where.port)
                if bad_first == "not hello":
                    conn.send_frame(encode(EventBatch(events=(), keys=())))
                    expected = ErrorCode.PROTOCOL_VIOLATION
                else:
                    other = identity_from_seed(10).node_id
                    hello = Hello(version=PROTOCOL_VERSION, node_id=other, features=(), listen=())
                    conn.send_frame(encode(hello))
                    expected = ErrorCode.HANDSHAKE_FAILED
                assert await handler.closed.get() == expected
        finally:
            await transport.close()
        assert a.connected_peers() == []


# ---- the LogStore adapter on a real EventLog --------------------------------------------------


@contextlib.asynccontextmanager
async def log_store(tmp_path: Path) -> AsyncIterator[tuple[EventLog, LogStore]]:
    identity = identity_from_seed(1)
    event_log = EventLog(tmp_path / "events.sqlite", identity)
    await event_log.start()
    try:
        store = LogStore(event_log, own_key=identity.public_key)
        await store.load()
        yield event_log, store
    finally:
        await event_log.stop()


async def test_log_store_ingest_is_seen_at_once_and_committed_in_order(tmp_path: Path) -> None:
    remote = RemoteSource(identity_from_seed(5))
    batches = [remote.batch([("s", "n", str(i + 10 * b)) for i in range(10)]) for b in range(3)]
    async with log_store(tmp_path) as (event_log, store):
        for records in batches:
            result = store.ingest([(remote.public_key, records)])
            assert result.stored == records
            assert store.head(remote.source) == records[-1].offset  # before any commit
        assert store.ingest([(remote.public_key, batches[0])]).duplicates == 10
        await store.wait_committed()
        assert event_log.offsets() == {remote.source: 29}
        assert store.committed == 30
        # Served from memory, extended to the next signed head (offset 19 ends batch 2).
        served = store.read_range(remote.source, 9, 5)
        assert [r.offset for r in served] == list(range(10, 20))
        assert served[-1].signature is not None
        assert not store.needs_read(remote.source, -1)


async def test_log_store_refuses_forgeries_and_keeps_data(tmp_path: Path) -> None:
    remote = RemoteSource(identity_from_seed(5))
    good = remote.batch([("s", "n", "1"), ("s", "n", "2")])
    more = remote.batch([("s", "n", "3")])
    async with log_store(tmp_path) as (event_log, store):
        assert store.ingest([(remote.public_key, good)]).stored == good
        forged = [dataclasses.replace(more[0], payload="4")]
        result = store.ingest([(remote.public_key, forged)])
        assert result.forged
        assert result.stored == []
        # An impostor key for the same source is a forgery too.
        impostor = identity_from_seed(6).public_key
        assert store.ingest([(impostor, more)]).forged
        await store.wait_committed()
        assert store.head(remote.source) == 1
        assert event_log.offsets() == {remote.source: 1}


async def test_log_store_reads_old_spans_through_prefetch(tmp_path: Path) -> None:
    async with log_store(tmp_path) as (event_log, _):
        events = [NewEvent(semantics="s", name="n", payload=str(i)) for i in range(40)]
        published = await event_log.publish(events)
    async with log_store(tmp_path) as (_, store):
        me = published[0].source
        assert store.head(me) == 39
        assert store.needs_read(me, 9)
        assert store.read_range(me, 9, 5) == []  # not in memory: nothing, never a guess
        await store.prefetch(me, 9, 5)
        assert store.read_range(me, 9, 5) == published[10:]  # up to the signed head at 39
        # Our own source never comes in from peers (it would fork the writer's numbering).
        result = store.ingest([(b"k" * 32, published)])
        assert result.stored == []
        assert result.forged is False


# ---- write back-pressure (outbox.py) and penalty expiry ---------------------------------------


class _Blocked:
    """Stands in for a ``PeerConnection`` whose peer reads nothing until ``release()``."""

    peer_node_id = "slow"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self._open = asyncio.Event()

    async def drain(self) -> None:
        await self._open.wait()

    def send_frames(self, bodies: Sequence[bytes]) -> None:
        self.sent.extend(bodies)

    def release(self) -> None:
        self._open.set()

    @property
    def writable(self) -> bool:
        return self._open.is_set()


async def test_outbox_is_capped_congests_with_hysteresis_and_drains_in_order() -> None:
    conn = _Blocked()
    outbox = Outbox(
        cast(PeerConnection, conn), pause_bytes=3000, resume_bytes=1000, max_bytes=10_000
    )
    task = asyncio.get_running_loop().create_task(outbox.run())
    try:
        frames = [bytes([i]) * 1000 for i in range(12)]
        accepted = [outbox.put([f]) for f in frames]
        assert accepted == [True] * 10 + [False] * 2  # the cap refuses, queues nothing
        assert outbox.queued_bytes == outbox.peak_bytes == 10_000
        assert outbox.congested
        async with asyncio.timeout(DEADLINE):
            await asyncio.sleep(0)  # let the writer reach drain(): it must hold everything
            assert conn.sent == []
            conn.release()
            await outbox.wait_uncongested()  # 10 kB is one piece: all of it went at once
        assert conn.sent == frames[:10]
        assert outbox.frames_sent == 10
        assert outbox.queued_bytes == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with pytest.raises(ValueError, match="resume_bytes"):
        Outbox(cast(PeerConnection, conn), pause_bytes=10, resume_bytes=20, max_bytes=30)


class _Counting(_Silent):
    """A hand-driven peer that counts the events of one source it is sent."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source
        self.events = 0
        self.changed = asyncio.Event()

    def frame_received(self, conn: PeerConnection, body: bytes | bytearray) -> None:
        del conn
        msg = decode(body)
        if isinstance(msg, EventBatch):
            self.events += sum(1 for e in msg.events if e.source == self.source)
            self.changed.set()


# Slow membership (nobody probes the hand-driven peer away) and small buffers, so a few MiB of
# answers overflow every limit.
SLOW_READER = dataclasses.replace(
    FAST,
    membership=MembershipConfig(
        protocol_period=30.0, ack_timeout=15.0, indirect_timeout=30.0, idle_timeout=600.0
    ),
    transport=TransportConfig(write_high_water=64 << 10, write_low_water=16 << 10),
    serve_pause_bytes=256 << 10,
    serve_resume_bytes=64 << 10,
    outbox_max_bytes=16 << 20,
)


@pytest.mark.parametrize("max_parked", [32, 2])
async def test_a_peer_that_stops_reading_gets_bounded_replication_then_all_of_it(
    tmp_path: Path, max_parked: int
) -> None:
    # With room for every request all are answered in the end; with 2 the rest are shed (the
    # requester re-asks on its timeout), and exactly the ones kept are answered.
    events, requests, payload = 2000, 12, "x" * 1000
    config = dataclasses.replace(SLOW_READER, max_parked_requests=max_parked)
    async with running(tmp_path, 1, config=config) as a:
        for _ in range(0, events, 500):
            batch = [NewEvent(semantics="t", name="n", payload=json.dumps(payload))] * 500
            await a.event_log.publish(batch)
        answer_bytes = events * (len(payload) + 200)  # an answer's frames, generously
        assert requests * answer_bytes > 10 * (SLOW_READER.serve_pause_bytes + answer_bytes)
        handler = _Counting(a.node_id)
        identity = identity_from_seed(9)
        transport = SwarmTransport(swarm_key=SWARM_KEY, identity=identity, handler=handler)
        async with TcpProxy((addr(a).host, addr(a).port)) as proxy:
            try:
                async with asyncio.timeout(DEADLINE):
                    host, _, port = proxy.address.rpartition(":")
                    conn = await transport.connect(host, int(port))
                    proxy.cut("blackhole", direction="to_client")  # the peer reads nothing
                    hello = Hello(
                        version=PROTOCOL_VERSION, node_id=identity.node_id, features=(), listen=()
                    )
                    ask = RequestRange(source=a.node_id, first=0, last=events - 1)
                    conn.send_frames([encode(hello)] + [encode(ask)] * requests)
                    peer = identity.node_id

                    def stalled() -> bool:
                        # Kernel buffers full: the queue stays congested, requests wait.
                        outbox = a._outbox_of(peer)
                        return (
                            outbox is not None
                            and outbox.congested
                            and a.parked_requests().get(peer, 0) > 0
                            and a.counters["serves_deferred"] >= 1
                        )

                    await a.wait_for(stalled)
                    await a.wait_for(lambda: a.counters["frames_in"] >= 1 + requests)
                    assert a.counters["serves_deferred"] >= 1
                    assert a.parked_requests()[peer] <= max_parked
                    queued = a.outbox_bytes()[peer]
                    outbox = a._outbox_of(peer)
                    assert outbox is not None
                    # Bounded: the pause threshold plus the answer that crossed it, far below
                    # the dozen answers asked for; the peer was not dropped.
                    limit = SLOW_READER.serve_pause_bytes + answer_bytes
                    assert queued <= outbox.peak_bytes <= limit
                    assert a.counters["slow_consumers"] == 0
                    assert identity.node_id in a.connected_peers()

                    shed = a.counters["requests_shed"]
                    assert (shed == 0) == (max_parked >= requests)
                    proxy.heal()  # it reads again: every kept request is answered
                    while handler.events < (requests - shed) * events:
                        handler.changed.clear()
                        await handler.changed.wait()
                    # Nothing is left to send: the outbox drained and no request is parked.
                    await a.wait_for(lambda: not a.parked_requests() and not outbox.queued_bytes)
                assert handler.events == (requests - shed) * events
                assert a.counters["requests_shed"] == shed
                assert outbox.peak_bytes <= limit
            finally:
                await transport.close()


async def test_a_peer_that_never_drains_past_the_cap_is_closed(tmp_path: Path) -> None:
    config = dataclasses.replace(SLOW_READER, outbox_max_bytes=1 << 20)
    async with running(tmp_path, 1, config=config) as a:
        handler = _Silent()
        identity = identity_from_seed(9)
        transport = SwarmTransport(swarm_key=SWARM_KEY, identity=identity, handler=handler)
        async with TcpProxy((addr(a).host, addr(a).port)) as proxy:
            try:
                async with asyncio.timeout(DEADLINE):
                    host, _, port = proxy.address.rpartition(":")
                    conn = await transport.connect(host, int(port))
                    hello = Hello(
                        version=PROTOCOL_VERSION, node_id=identity.node_id, features=(), listen=()
                    )
                    conn.send_frame(encode(hello))
                    await a.wait_for(lambda: identity.node_id in a.connected_peers())
                    proxy.cut("blackhole")
                    peak = 0
                    # Sends the driver must make (not answers it may defer) pile up to the cap.
                    while a.counters["slow_consumers"] == 0:
                        a._send(identity.node_id, [b"\x00" * (64 << 10)] * 4)
                        peak = max(peak, a.outbox_bytes().get(identity.node_id, 0))
                        await asyncio.sleep(0)
                    proxy.heal()
                    assert await handler.closed.get() == ErrorCode.RESOURCE_LIMIT
                assert peak <= config.outbox_max_bytes
                assert identity.node_id not in a.connected_peers()
            finally:
                await transport.close()


async def test_penalties_expire_after_the_quiet_period(tmp_path: Path) -> None:
    config = dataclasses.replace(FAST, penalty_initial_s=10.0, penalty_forget_s=30.0)
    async with running(tmp_path, 1, config=config) as a:
        async with asyncio.timeout(DEADLINE):
            transport, _, code = await _rogue(a, 9, lambda _: [b"\xc1"])
            await transport.close()
        assert code == ErrorCode.MALFORMED_MESSAGE
        rogue = identity_from_seed(9).node_id
        now = asyncio.get_running_loop().time()
        a.expire_penalties(now + 10.0 + 29.0)  # refusal over, but not yet forgotten
        assert a.penalised_peers() == [rogue]
        a.expire_penalties(now + 10.0 + 31.0)
        assert a.penalised_peers() == []
