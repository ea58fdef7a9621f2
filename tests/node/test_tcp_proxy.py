"""The test proxy's shaping and hygiene on plain servers: a bandwidth cap holds (per connection
and shared by all), buffering stays bounded, latency delays without reordering, and no socket is
left for the garbage collector after blackholes, heals and a close racing new connections.

Per client (label): jitter within bounds and in order, loss as retransmission stalls repeatable
by seed, a link cap that slows only its client, one bucket shared by two proxies (a node's
uplink), one-way blocks that stack and lift one by one, reset blocks and a one-shot reset."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import socket
import warnings
from collections.abc import AsyncIterator

import pytest

from netsim.proxy import LinkShape, TcpProxy, TokenBucket
from tests.helpers.proxy_clients import Conn, label_by_port, labelled_dial, local_server

DEADLINE = 30.0
MIB = 1 << 20
CAP = 20 * MIB  # bytes per second
TOTAL = 8 * MIB
# A functional check of the cap, not a performance target: loose bounds around it.
LOW, HIGH = 0.7, 1.2


@contextlib.asynccontextmanager
async def sink_server(
    *, send: bool = False
) -> AsyncIterator[tuple[tuple[str, int], list[int], asyncio.Event]]:
    """Counts what each connection sends (one counter per connection, in accept order) and sets
    the event once ``TOTAL`` bytes arrived in all; with ``send``, sends ``TOTAL`` bytes instead."""
    counts: list[int] = []
    full = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if send:
            writer.write(bytes(TOTAL))
            await writer.drain()
            return
        index = len(counts)
        counts.append(0)
        while data := await reader.read(1 << 18):
            counts[index] += len(data)
            if sum(counts) >= TOTAL:
                full.set()

    async with local_server(serve) as (host, port):
        yield (host, port), counts, full


@contextlib.asynccontextmanager
async def dial(address: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def send_through(
    proxy: TcpProxy, counts: list[int], full: asyncio.Event, parts: int
) -> float:
    """Send ``TOTAL`` bytes split over ``parts`` concurrent connections; seconds until the
    target has all of it."""
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(dial(proxy.address)) for _ in range(parts)]
        await proxy.settled()
        started = loop.time()
        for _, writer in conns:
            writer.write(bytes(TOTAL // parts))
        await full.wait()
        elapsed = loop.time() - started
    assert sum(counts) == TOTAL
    return elapsed


async def test_cap_to_target_holds_and_buffering_stays_bounded() -> None:
    async with (
        asyncio.timeout(DEADLINE),
        sink_server() as (target, counts, full),
        TcpProxy(target, rate_to_target_bps=CAP) as proxy,
    ):
        elapsed = await send_through(proxy, counts, full, parts=1)
        rate = TOTAL / elapsed
        assert LOW * CAP <= rate <= HIGH * CAP, rate / CAP
        assert 0 < proxy.peak_link_buffered <= 2 * MIB, proxy.peak_link_buffered


async def test_cap_to_client_holds() -> None:
    async with (
        asyncio.timeout(DEADLINE),
        sink_server(send=True) as (target, _, _),
        TcpProxy(target, rate_bps=CAP) as proxy,  # both ways; only the reply is large
    ):
        loop = asyncio.get_running_loop()
        async with dial(proxy.address) as (reader, _):
            started = loop.time()
            got = len(await reader.readexactly(TOTAL))
            elapsed = loop.time() - started
        assert got == TOTAL
        rate = TOTAL / elapsed
        assert LOW * CAP <= rate <= HIGH * CAP, rate / CAP
        assert 0 < proxy.peak_link_buffered <= 2 * MIB, proxy.peak_link_buffered


async def test_cap_set_at_runtime_is_shared_by_all_connections() -> None:
    async with (
        asyncio.timeout(DEADLINE),
        sink_server() as (target, counts, full),
        TcpProxy(target) as proxy,
    ):
        proxy.set_rate(CAP, None)
        elapsed = await send_through(proxy, counts, full, parts=4)
        rate = TOTAL / elapsed  # all four together, not each, get the cap
        assert LOW * CAP <= rate <= HIGH * CAP, rate / CAP
        assert len(counts) == 4
        assert all(c == TOTAL // 4 for c in counts)
        with pytest.raises(ValueError, match="positive"):
            proxy.set_rate(0, None)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[str, int]]:

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async with local_server(serve) as (host, port):
        yield host, port


async def test_delay_holds_each_read_back_in_order() -> None:
    delay = 0.1
    async with (
        asyncio.timeout(DEADLINE),
        echo_server() as target,
        TcpProxy(target, delay_to_target_s=delay, delay_to_client_s=delay) as proxy,
        dial(proxy.address) as (reader, writer),
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        payload = b"".join(b"%04d" % i for i in range(200))
        for i in range(0, len(payload), 40):
            writer.write(payload[i : i + 40])
            await writer.drain()
        assert await reader.readexactly(len(payload)) == payload
        round_trip = loop.time() - started
        assert 2 * delay <= round_trip < 2 * delay + 1.0, round_trip
        # End of stream travels after the data: the echo server's close comes back as EOF.
        writer.write_eof()
        assert await reader.read() == b""
        async with asyncio.timeout(5):
            await proxy.wait_until(lambda p: p.open_links == 0)


def _raw_dial(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)))
    sock.setblocking(False)
    return sock


async def test_no_socket_is_left_unclosed_after_blackhole_heal_and_close() -> None:
    loop = asyncio.get_running_loop()
    clients: list[socket.socket] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            async with asyncio.timeout(DEADLINE), echo_server() as target:
                proxy = TcpProxy(target)
                async with proxy:
                    clients += [_raw_dial(proxy.address) for _ in range(3)]
                    await proxy.wait_until(lambda p: p.accepted == 3)
                    await proxy.settled()
                    proxy.cut("blackhole")
                    clients += [_raw_dial(proxy.address) for _ in range(3)]  # held
                    await proxy.wait_until(lambda p: p.accepted == 6)
                    await proxy.settled()
                    assert proxy.open_links == 6
                    proxy.heal()
                    await proxy.wait_until(lambda p: p.open_links == 3)  # held ones closed
                assert proxy.open_links == 0
                for sock in clients:
                    with contextlib.suppress(ConnectionError):
                        assert await loop.sock_recv(sock, 1) == b""  # closed by the proxy
        finally:
            for sock in clients:
                sock.close()
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], [str(w.message) for w in leaks]


async def test_no_socket_is_left_when_connections_race_the_close() -> None:
    """Connections that reach the proxy while it closes (the old leak: an ``asyncio.Server``
    closed between accepting a socket and building its transport dropped the socket)."""
    clients: list[socket.socket] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            async with asyncio.timeout(DEADLINE), echo_server() as target:
                for i in range(16):
                    proxy = TcpProxy(target)
                    async with proxy:
                        proxy.cut("blackhole")
                        clients += [_raw_dial(proxy.address) for _ in range(5)]
                        for _ in range(i % 4):  # close at each stage of the accepts
                            await asyncio.sleep(0)
                    assert proxy.open_links == 0
        finally:
            for sock in clients:
                sock.close()
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], [str(w.message) for w in leaks]


async def test_no_socket_is_left_when_a_client_connects_as_the_accept_is_cancelled() -> None:
    """The accept loop waits, a client connects, and the proxy closes before the loop ran: the
    cancellation and the listener's readiness land in the same loop iteration (with
    ``loop.sock_accept`` the socket was accepted into the cancelled future and dropped, every
    time)."""
    clients: list[socket.socket] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            async with asyncio.timeout(DEADLINE), echo_server() as target:
                for _ in range(8):
                    async with TcpProxy(target) as proxy:
                        await asyncio.sleep(0)  # the accept loop starts waiting
                        await asyncio.sleep(0)
                        clients.append(_raw_dial(proxy.address))
                    assert proxy.open_links == 0
        finally:
            for sock in clients:
                sock.close()
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], [str(w.message) for w in leaks]


# ---- per client (label) ------------------------------------------------------------------------


async def round_trip(conn: Conn, payload: bytes) -> float:
    """Seconds for ``payload`` to come back from the echo server."""
    reader, writer = conn
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(payload)
    await writer.drain()
    assert await reader.readexactly(len(payload)) == payload
    return loop.time() - started


async def test_link_jitter_stays_within_bounds_and_keeps_order() -> None:
    delay, jitter = 0.05, 0.1
    labels: dict[int, str] = {}
    async with (
        asyncio.timeout(DEADLINE),
        echo_server() as target,
        TcpProxy(target, identify=label_by_port(labels), rng=random.Random(1)) as proxy,
        labelled_dial(proxy.address, labels, "a") as conn,
    ):
        proxy.shape_link("a", to_target=LinkShape(delay_s=delay, jitter_s=jitter))
        trips = [await round_trip(conn, b"%04d" % i) for i in range(12)]
        assert all(delay <= t < delay + jitter + 0.2 for t in trips), trips
        assert max(trips) - min(trips) > jitter / 3, trips  # drawn per read, not once
        # Many reads in flight at once, each with its own draw: the bytes keep their order.
        reader, writer = conn
        payload = b"".join(b"%05d" % i for i in range(2000))
        for i in range(0, len(payload), 50):
            writer.write(payload[i : i + 50])
            await asyncio.sleep(0)  # let the proxy read the pieces one by one
        assert await reader.readexactly(len(payload)) == payload


async def _loss_pattern(seed: int, rto: float) -> list[bool]:
    """Which of 10 round trips waited out a retransmission timeout, with loss 0.5."""
    labels: dict[int, str] = {}
    async with (
        echo_server() as target,
        TcpProxy(target, identify=label_by_port(labels), rng=random.Random(seed)) as proxy,
        labelled_dial(proxy.address, labels, "a") as conn,
    ):
        proxy.shape_link("a", to_target=LinkShape(loss=0.5, rto_s=rto))
        return [await round_trip(conn, b"%04d" % i) >= rto for i in range(10)]


async def test_loss_holds_reads_back_by_the_rto_repeatably_by_seed() -> None:
    async with asyncio.timeout(DEADLINE):
        first = await _loss_pattern(5, rto=0.25)
        again = await _loss_pattern(5, rto=0.25)
    assert first == again
    assert any(first), first
    assert not all(first), first


@contextlib.asynccontextmanager
async def eof_sink() -> AsyncIterator[tuple[tuple[str, int], list[int]]]:
    """Counts each connection's bytes until its EOF, then closes it (the client sees EOF)."""
    got: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = 0
        while data := await reader.read(1 << 18):
            count += len(data)
        got.append(count)
        writer.close()

    async with local_server(serve) as (host, port):
        yield (host, port), got


async def upload(proxy: TcpProxy, labels: dict[int, str], label: str, size: int) -> float:
    """Send ``size`` bytes to an ``eof_sink``; seconds until the sink had them all."""
    loop = asyncio.get_running_loop()
    async with labelled_dial(proxy.address, labels, label) as (reader, writer):
        await proxy.settled()
        started = loop.time()
        writer.write(bytes(size))
        writer.write_eof()
        assert await reader.read() == b""
        return loop.time() - started


async def download(proxy: TcpProxy, labels: dict[int, str], label: str, size: int) -> float:
    """Read ``size`` bytes from a ``sink_server(send=True)``; seconds until they all arrived."""
    loop = asyncio.get_running_loop()
    async with labelled_dial(proxy.address, labels, label) as (reader, _):
        started = loop.time()
        assert len(await reader.readexactly(size)) == size
        return loop.time() - started


async def test_a_link_cap_slows_only_its_own_client() -> None:
    labels: dict[int, str] = {}
    async with (
        asyncio.timeout(DEADLINE),
        eof_sink() as (target, got),
        TcpProxy(target, identify=label_by_port(labels)) as proxy,
    ):
        proxy.shape_link("slow", to_target=LinkShape(buckets=(TokenBucket(CAP),)))
        half = TOTAL // 2
        slow, fast = await asyncio.gather(
            upload(proxy, labels, "slow", half), upload(proxy, labels, "fast", half)
        )
        assert LOW * CAP <= half / slow <= HIGH * CAP, half / slow / CAP
        assert fast < slow / 2, (fast, slow)
        assert got == [half, half]


async def test_one_bucket_caps_two_proxies_together_like_a_node_uplink() -> None:
    """Node x sends on a connection it dialled (the other proxy's to_target) and on one it
    accepted (its own proxy's to_client): both draw on x's uplink, so together they get it."""
    labels: dict[int, str] = {}
    uplink = TokenBucket(CAP)
    half = TOTAL // 2
    async with (
        asyncio.timeout(DEADLINE),
        eof_sink() as (sink, got),
        sink_server(send=True) as (source, _, _),
        TcpProxy(sink, identify=label_by_port(labels)) as dialled_by_x,
        TcpProxy(source, identify=label_by_port(labels)) as in_front_of_x,
    ):
        dialled_by_x.shape_link("x", to_target=LinkShape(buckets=(uplink,)))
        in_front_of_x.shape_link("y", to_client=LinkShape(buckets=(uplink,)))
        sent, received = await asyncio.gather(
            upload(dialled_by_x, labels, "x", half), download(in_front_of_x, labels, "y", TOTAL)
        )
        both = half + TOTAL  # what x sent through either proxy, over the slower of the two
        assert LOW * CAP <= both / max(sent, received) <= HIGH * CAP, both / max(sent, received)
        assert got == [half]


async def no_data_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """A negative probe: True if nothing arrives for ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await reader.read(1)
    except TimeoutError:
        return True
    return False


@contextlib.asynccontextmanager
async def recording_echo() -> AsyncIterator[tuple[tuple[str, int], list[bytes], asyncio.Event]]:
    """An echo server that records every read and sets the event after each."""
    received: list[bytes] = []
    changed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
            changed.set()
            writer.write(data)
            await writer.drain()
        writer.close()

    async with local_server(serve) as (host, port):
        yield (host, port), received, changed


async def test_one_way_blocks_stack_and_lift_one_by_one() -> None:
    labels: dict[int, str] = {}
    async with (
        asyncio.timeout(DEADLINE),
        recording_echo() as (target, received, changed),
        TcpProxy(target, identify=label_by_port(labels)) as proxy,
        labelled_dial(proxy.address, labels, "a") as a,
        labelled_dial(proxy.address, labels, "b") as b,
    ):
        await round_trip(a, b"a1")
        await round_trip(b, b"b1")
        inbound = proxy.block(sources={"a"}, direction="to_target")
        a[1].write(b"a2")
        await round_trip(b, b"b2")  # runs after a2 was written: a2 is held, b is not
        assert b"a2" not in b"".join(received)
        outbound = proxy.block(sources={"a"}, direction="to_client")
        proxy.unblock(inbound)  # only the outbound block is left: a2 reaches the server ...
        while b"a2" not in b"".join(received):
            changed.clear()
            await changed.wait()
        assert await no_data_within(a[0], 0.2)  # ... but its echo does not come back
        await round_trip(b, b"b3")
        proxy.unblock(outbound)
        assert await a[0].readexactly(2) == b"a2"
        await round_trip(a, b"a3")
        assert b"".join(received).count(b"a2") == 1


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the other end closed: end of stream, or a reset (unread data was pending)."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


async def test_a_reset_block_refuses_its_clients_until_lifted_and_a_reset_is_once() -> None:
    labels: dict[int, str] = {}
    async with (
        asyncio.timeout(DEADLINE),
        echo_server() as target,
        TcpProxy(target, identify=label_by_port(labels)) as proxy,
        labelled_dial(proxy.address, labels, "b") as b,
    ):
        async with labelled_dial(proxy.address, labels, "a") as a:
            await round_trip(a, b"a1")
            rule = proxy.block("reset", sources={"a"}, direction="to_client")
            assert await closed_by_peer(a[0])  # one way named, both closed: TCP has no half
        async with labelled_dial(proxy.address, labels, "a") as refused:
            assert await closed_by_peer(refused[0])
        await round_trip(b, b"b1")
        proxy.unblock(rule)
        async with labelled_dial(proxy.address, labels, "a") as again:
            await round_trip(again, b"a2")
            proxy.reset(sources={"b"})  # once: b's connection goes, a's stays
            assert await closed_by_peer(b[0])
            await round_trip(again, b"a3")
        async with labelled_dial(proxy.address, labels, "b") as redialled:
            await round_trip(redialled, b"b2")
