"""A swarm of real node processes split in two and healed: both sides keep working, each marks
the other dead, and after the heal every node holds every event and sees every peer alive.

How the partition is made real. Every node gets its own ``TcpProxy`` in front of its swarm port
and announces the proxy's address (``SWARMNODE_ADVERTISE``), and every seed is a proxy address.
Peers learn addresses only from Hello and peer exchange, which carry the announced address, so
every connection between two nodes runs through the proxy of the node that was dialled; the test
checks that no node knows another's real port. A per-node proxy must cut some clients and not
others (A's proxy still serves B, not C), so it asks who dialled: ``process_of_port`` finds the
node process owning the client socket through ``/proc``. Blocking dials inside the node would have
needed a test hook in production code and would not exercise what a real cut does (a silent link
whose TCP connections stay open, or resets), so the proxy is used for both modes.

The proxy itself is tested first on a plain echo server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from netsim.nodeproc import NodeProcess, http_offsets, http_publish
from netsim.observe import free_port, wait_holds, wait_states
from netsim.proxy import CutMode, TcpProxy, process_of_port
from tests.helpers.proxy_clients import label_by_port, labelled_dial, local_server

SWARM_KEY = hashlib.blake2s(b"partition test swarm").hexdigest()
DEADLINE = 60.0  # per phase: cold starts and probing on a loaded 2-core machine
PROBE_PERIOD = "0.2"  # SWIM period in seconds (driver_config.py): dead within a few seconds
PER_ROUND = 10


# ---- the proxy on an echo server -----------------------------------------------------------


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[tuple[str, int], list[bytes]]]:
    """A server that echoes every read back and records it."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    async with local_server(serve) as (host, port):
        yield (host, port), received


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


async def roundtrip(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], payload: bytes
) -> bytes:
    reader, writer = conn
    writer.write(payload)
    await writer.drain()
    return await reader.readexactly(len(payload))


async def test_proxy_reset_closes_refuses_and_heals() -> None:
    async with (
        asyncio.timeout(DEADLINE),
        echo_server() as (target, received),
        TcpProxy(target) as proxy,
    ):
        async with dial(proxy.address) as before:
            assert await roundtrip(before, b"hello") == b"hello"
            proxy.cut("reset")
            assert await closed_by_peer(before[0])  # the live connection was closed
        async with dial(proxy.address) as during:
            during[1].write(b"lost")
            assert await closed_by_peer(during[0])  # accepted, then closed at once
        proxy.heal()
        async with dial(proxy.address) as after:
            assert await roundtrip(after, b"again") == b"again"
        assert b"".join(received) == b"helloagain"
        assert proxy.accepted == 3


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the other end closed: end of stream, or a reset (unread data was pending)."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


async def test_proxy_blackhole_holds_only_the_chosen_clients_and_heals() -> None:
    labels: dict[int, str] = {}
    async with asyncio.timeout(DEADLINE), echo_server() as (target, received):
        async with (
            TcpProxy(target, identify=label_by_port(labels)) as proxy,
            labelled_dial(proxy.address, labels, "cut") as cut,
            labelled_dial(proxy.address, labels, "kept") as kept,
        ):
            assert await roundtrip(cut, b"a1") == b"a1"
            assert await roundtrip(kept, b"b1") == b"b1"
            proxy.cut("blackhole", sources={"cut"})
            cut[1].write(b"a2")
            await cut[1].drain()
            # The kept client's round trip runs after the blocked write went out.
            assert await roundtrip(kept, b"b2") == b"b2"
            assert b"a2" not in b"".join(received)
            async with labelled_dial(proxy.address, labels, "cut") as held:
                assert await roundtrip(kept, b"b3") == b"b3"
                await proxy.settled()
                assert proxy.accepted == 3
                proxy.heal()
                assert await closed_by_peer(held[0])  # held while cut: closed on heal
            # The paused connection resumes where it stopped: nothing was lost.
            assert await cut[0].readexactly(2) == b"a2"
            assert await roundtrip(cut, b"a3") == b"a3"
        joined = b"".join(received)
        assert joined.count(b"a2") == 1
        assert b"a3" in joined


# ---- real nodes ----------------------------------------------------------------------------


def is_alive(state: str | None) -> bool:
    return state == "alive"


def is_dead(state: str | None) -> bool:
    return state == "dead"


async def publish(session: aiohttp.ClientSession, node: NodeProcess, tag: str) -> None:
    data = [{"semantics": "part", "name": tag, "payload": {"k": k}} for k in range(PER_ROUND)]
    assert await http_publish(session, node, data) == 201


@contextlib.asynccontextmanager
async def proxied_swarm(
    tmp_path: Path, count: int, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[list[NodeProcess], list[TcpProxy], dict[str, str]]]:
    """``count`` nodes, each behind its own proxy that it announces; node ``i`` is seeded with
    node ``i-1``'s proxy. Yields the nodes, their proxies, and node id → name ("n0", ...)."""
    monkeypatch.setenv("SWARMNODE_PROBE_PERIOD", PROBE_PERIOD)
    names: dict[int, str] = {}  # pid → name, filled as nodes start
    proxies: list[TcpProxy] = []
    nodes: list[NodeProcess] = []

    def identify_for(proxy_index: int) -> Callable[[tuple[str, int]], str | None]:
        def identify(peer: tuple[str, int]) -> str | None:
            pid = process_of_port(peer, proxies[proxy_index].port, list(names))
            return None if pid is None else names[pid]

        return identify

    async with contextlib.AsyncExitStack() as stack:
        for i in range(count):
            port = free_port()
            proxy = TcpProxy(("127.0.0.1", port), identify=identify_for(i))
            proxies.append(await stack.enter_async_context(proxy))
            monkeypatch.setenv("SWARMNODE_ADVERTISE", proxy.address)
            args = ["--swarm-key", SWARM_KEY, "--listen", f"127.0.0.1:{port}"]
            if i:
                args += ["--peers", proxies[i - 1].address]
            node = NodeProcess(tmp_path / f"n{i}", extra_args=args)
            nodes.append(await stack.enter_async_context(node))
            names[node.pid] = f"n{i}"
        yield nodes, proxies, {n.info.node_id: f"n{i}" for i, n in enumerate(nodes)}


@pytest.mark.parametrize("mode", ["reset", "blackhole"])
async def test_partition_and_heal_converge_with_writes_on_both_sides(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, mode: CutMode
) -> None:
    loop = asyncio.get_running_loop()
    async with proxied_swarm(tmp_path, 4, monkeypatch) as (nodes, proxies, _):
        ids = [n.info.node_id for n in nodes]
        # Everyone alive everywhere, and every address anyone learned is a proxy's.
        async with asyncio.timeout(DEADLINE):
            bodies = await asyncio.gather(
                *(
                    wait_states(http, n, {p: is_alive for p in ids if p != n.info.node_id})
                    for n in nodes
                )
            )
        proxy_of = {nid: proxies[i].address for i, nid in enumerate(ids)}
        for body in bodies:
            for peer in body["peers"]:
                assert peer["addresses"] == [proxy_of[peer["nodeId"]]], peer
        for node in nodes:
            await publish(http, node, "before")
        before = {nid: PER_ROUND - 1 for nid in ids}
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*(wait_holds(http, n, before) for n in nodes))

        # Cut {n0, n1} from {n2, n3}: each proxy drops the other side's clients.
        left, right = nodes[:2], nodes[2:]
        left_names, right_names = {"n0", "n1"}, {"n2", "n3"}
        for i, proxy in enumerate(proxies):
            proxy.cut(mode, sources=right_names if i < 2 else left_names)
        cut_at = loop.time()
        for node in (left[0], right[0]):
            await publish(http, node, "during")
        left_ids, right_ids = ids[:2], ids[2:]
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(
                *(wait_states(http, n, {p: is_dead for p in right_ids}) for n in left),
                *(wait_states(http, n, {p: is_dead for p in left_ids}) for n in right),
                *(wait_holds(http, n, {**before, ids[0]: 2 * PER_ROUND - 1}) for n in left),
                *(wait_holds(http, n, {**before, ids[2]: 2 * PER_ROUND - 1}) for n in right),
            )
        detected_in = loop.time() - cut_at
        # Both sides went on alone: neither got the other's partition-time writes.
        for node in left:
            assert (await http_offsets(http, node))[ids[2]] == PER_ROUND - 1
        for node in right:
            assert (await http_offsets(http, node))[ids[0]] == PER_ROUND - 1
        # One more write on each side while still cut, then heal.
        await publish(http, left[1], "during")
        await publish(http, right[1], "during")
        for proxy in proxies:
            proxy.heal()
        healed_at = loop.time()

        want = {nid: 2 * PER_ROUND - 1 for nid in ids}
        async with asyncio.timeout(DEADLINE):
            held = await asyncio.gather(*(wait_holds(http, n, want) for n in nodes))
            await asyncio.gather(
                *(
                    wait_states(http, n, {p: is_alive for p in ids if p != n.info.node_id})
                    for n in nodes
                )
            )
        converged_in = loop.time() - healed_at
        offsets = [await http_offsets(http, n) for n in nodes]
        assert all(o == want for o in offsets), offsets
        assert all(h == held[0] for h in held)
        assert len(held[0]) == 4 * 2 * PER_ROUND
        assert len({(e["stream"]["source"], e["offset"]) for e in held[0]}) == len(held[0])
        # Generous bounds for a loaded machine; the figures show in the failure message.
        assert detected_in < 30.0, detected_in
        assert converged_in < 30.0, converged_in
