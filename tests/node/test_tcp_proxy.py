"""The test proxy's shaping and hygiene on plain servers: a bandwidth cap holds (per connection
and shared by all), buffering stays bounded, latency delays without reordering, and no socket is
left for the garbage collector after blackholes, heals and a close racing new connections."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import warnings
from collections.abc import AsyncIterator

import pytest

from netsim.proxy import TcpProxy

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
    writers: list[asyncio.StreamWriter] = []
    full = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
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

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        host, port = server.sockets[0].getsockname()[:2]
        yield (host, port), counts, full
    finally:
        server.close()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


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
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
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
