"""Real node processes on loopback form a swarm: a chain of nodes (each knowing only the previous
one) converges on identical events under concurrent publishing, status shows the peers alive, the
CLI prints it, and a node with another swarm key receives and injects nothing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from netsim.nodeproc import (
    NodeProcess,
    http_offsets,
    http_publish,
    run_cli,
)
from netsim.observe import (
    free_port,
    node_status,
    wait_holds,
    wait_states,
)

SWARM_KEY = hashlib.blake2s(b"node swarm test").hexdigest()
OTHER_KEY = hashlib.blake2s(b"a different swarm").hexdigest()
DEADLINE = 60.0  # cold starts and replication on a loaded 2-core machine


@contextlib.asynccontextmanager
async def chain(
    tmp_path: Path, count: int, *, key: str = SWARM_KEY
) -> AsyncIterator[list[NodeProcess]]:
    """``count`` nodes started in a chain: each gets only the previous node's swarm address."""
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[NodeProcess] = []
        for i in range(count):
            args = ["--swarm-key", key]
            if nodes:
                args += ["--peers", nodes[-1].info.swarm]
            node = NodeProcess(tmp_path / f"n{i}", extra_args=args)
            nodes.append(await stack.enter_async_context(node))
        yield nodes


async def wait_state(
    session: aiohttp.ClientSession, node: NodeProcess, peer: str, state: str
) -> None:
    """Wait, by long-polling status, until ``node`` holds ``peer`` in ``state``."""
    await wait_states(session, node, {peer: lambda s: s == state})


async def publish_rounds(
    session: aiohttp.ClientSession, nodes: Sequence[NodeProcess], rounds: int, size: int
) -> None:
    async def one(i: int, node: NodeProcess) -> None:
        for r in range(rounds):
            data = [
                {"semantics": "swarm", "name": f"n{i}", "payload": {"round": r, "k": k}}
                for k in range(size)
            ]
            assert await http_publish(session, node, data) == 201

    await asyncio.gather(*(one(i, n) for i, n in enumerate(nodes)))


async def test_chain_of_three_converges_and_reports_status(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with chain(tmp_path, 3) as nodes:
        await publish_rounds(http, nodes, rounds=4, size=25)
        want = {n.info.node_id: 99 for n in nodes}
        async with asyncio.timeout(DEADLINE):
            lines = await asyncio.gather(*(wait_holds(http, n, want) for n in nodes))
        offsets = [await http_offsets(http, n) for n in nodes]
        assert offsets[0] == offsets[1] == offsets[2] == want
        # source-ordered interleaves sources freely: compare per (source, offset).
        held = [sorted(ls, key=lambda e: (e["stream"]["source"], e["offset"])) for ls in lines]
        assert held[0] == held[1] == held[2]
        assert len(held[0]) == 300

        # The middle node was dialled by both others: both are alive and connected there.
        middle = await node_status(http, nodes[1])
        assert middle["nodeId"] == nodes[1].info.node_id
        assert middle["swarm"] == nodes[1].info.swarm
        assert middle["offsets"] == want
        peers = {p["nodeId"]: p for p in middle["peers"]}
        for other in (nodes[0], nodes[2]):
            row = peers[other.info.node_id]
            assert row["state"] == "alive"
            assert row["connected"] is True
            assert row["addresses"] == [other.info.swarm]
        for end in (nodes[0], nodes[2]):
            seen = {p["nodeId"]: p["state"] for p in (await node_status(http, end))["peers"]}
            assert seen[nodes[1].info.node_id] == "alive"

        code, out, err = await run_cli(
            "status", "--events-api", nodes[1].info.events_api, within=DEADLINE
        )
        assert code == 0, err
        assert nodes[1].info.node_id in out
        assert nodes[0].info.node_id in out
        assert nodes[2].info.node_id in out
        assert "alive" in out
        # Without --events-api the CLI finds the node through <data-dir>/node.json.
        code, out, err = await run_cli(
            "--data-dir", str(nodes[0].data_dir), "status", within=DEADLINE
        )
        assert code == 0, err
        assert f"node    {nodes[0].info.node_id}" in out

        async with http.get(
            f"http://{nodes[0].info.events_api}/api/v1/node/status?after=soon"
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["errorCode"] == 400


async def test_node_with_another_swarm_key_receives_and_injects_nothing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with chain(tmp_path, 2) as (a, b):
        stranger = NodeProcess(
            tmp_path / "stranger", extra_args=["--swarm-key", OTHER_KEY, "--peers", a.info.swarm]
        )
        async with stranger:
            await publish_rounds(http, [a, b, stranger], rounds=2, size=5)
            want = {a.info.node_id: 9, b.info.node_id: 9}
            async with asyncio.timeout(DEADLINE):
                await asyncio.gather(wait_holds(http, a, want), wait_holds(http, b, want))
            assert await http_offsets(http, stranger) == {stranger.info.node_id: 9}
            for node in (a, b):
                assert stranger.info.node_id not in await http_offsets(http, node)
            seen = await node_status(http, stranger)
            assert seen["peers"] == []
            assert seen["counters"]["dial_failures"] >= 1


async def test_node_keeps_trying_its_seed_until_it_appears(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARMNODE_PROBE_PERIOD", "0.2")
    port = free_port()
    early = NodeProcess(
        tmp_path / "early", extra_args=["--swarm-key", SWARM_KEY, "--peers", f"127.0.0.1:{port}"]
    )
    late = NodeProcess(
        tmp_path / "late", extra_args=["--swarm-key", SWARM_KEY, "--listen", f"127.0.0.1:{port}"]
    )
    async with early:
        assert (
            await http_publish(http, early, [{"semantics": "s", "name": "n", "payload": 1}]) == 201
        )
        async with late:
            assert late.info.swarm == f"127.0.0.1:{port}"
            async with asyncio.timeout(DEADLINE):
                await wait_holds(http, late, {early.info.node_id: 0})
            assert (await node_status(http, early))["counters"]["dial_failures"] >= 1


async def test_five_node_chain_detects_a_crash_and_the_restarted_node_catches_up(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probe every 0.2 s (documented in swarm/driver.py), so "dead" comes within seconds.
    monkeypatch.setenv("SWARMNODE_PROBE_PERIOD", "0.2")
    async with chain(tmp_path, 5) as nodes:
        await publish_rounds(http, nodes, rounds=2, size=10)
        want = {n.info.node_id: 19 for n in nodes}
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*(wait_holds(http, n, want) for n in nodes))

        victim, others = nodes[4], nodes[:4]
        victim_id = victim.info.node_id
        assert await victim.kill() == -9
        crashed_at = asyncio.get_running_loop().time()
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*(wait_state(http, n, victim_id, "dead") for n in others))
        detected_in = asyncio.get_running_loop().time() - crashed_at
        # SWIM + Lifeguard with 0.2 s periods: suspicion ends within ~24 periods (~5 s).
        assert detected_in < 15.0, detected_in

        # Writes go on without it, then it restarts (seeded with node 3) and catches up.
        await publish_rounds(http, others, rounds=1, size=10)
        await victim.start()
        want = {**{n.info.node_id: 29 for n in others}, victim_id: 19}
        async with asyncio.timeout(DEADLINE):
            held = await wait_holds(http, victim, want)
        assert len(held) == 4 * 30 + 20
        async with asyncio.timeout(DEADLINE):
            await asyncio.gather(*(wait_state(http, n, victim_id, "alive") for n in others))


async def test_chain_of_five_converges_on_identical_events_under_concurrent_publishing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The swarm issue's acceptance: five nodes in a chain, 50 events published on each, all
    250 publishes at once; every node ends with the same offsets and the same events."""
    per_node = 50
    async with chain(tmp_path, 5) as nodes:

        async def publish_one(i: int, node: NodeProcess, k: int) -> None:
            data = [{"semantics": "five", "name": f"n{i}", "payload": {"node": i, "k": k}}]
            assert await http_publish(http, node, data) == 201

        await asyncio.gather(
            *(publish_one(i, n, k) for k in range(per_node) for i, n in enumerate(nodes))
        )
        want = {n.info.node_id: per_node - 1 for n in nodes}
        async with asyncio.timeout(DEADLINE):
            held = await asyncio.gather(*(wait_holds(http, n, want) for n in nodes))
        for node in nodes:
            assert await http_offsets(http, node) == want
        assert all(events == held[0] for events in held[1:])
        # And they are the events published: each source's 50 payloads, once each.
        assert len(held[0]) == 5 * per_node
        for i, node in enumerate(nodes):
            mine = [e for e in held[0] if e["stream"]["source"] == node.info.node_id]
            assert [e["offset"] for e in mine] == list(range(per_node))
            assert sorted(e["payload"]["k"] for e in mine) == list(range(per_node))
            assert {e["payload"]["node"] for e in mine} == {i}
            assert {e["stream"]["name"] for e in mine} == {f"n{i}"}
