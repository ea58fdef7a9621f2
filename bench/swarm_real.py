"""The two measurements on real node processes: convergence of a chain, catch-up after a stop.

Convergence: N nodes start as a chain (each knows only the previous one). Join = from the last
node's start (its ``node.json``) until every node holds every other ALIVE in its status. Then
each round (after one warm-up round, reported apart) publishes ``batch`` events on every node at
once and times until every node's ``offsets`` equal the union. Payload copies per node per event
come from each node's dissemination counters (``copies_received``, duplicates included) over the
round, divided by the events it had to receive. Hops: the status exposes only each node's largest
``EventBatch`` hop count, so the real swarm reports the maximum distance (hops + 1); the
distribution comes from the simulation.

Catch-up: A and B joined, B stopped with SIGTERM, ``events`` published on A over HTTP, B started
again; timed from B's process start, and from its ``node.json`` (ready), until B's offsets match.
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

import aiohttp

from bench.swarm_procs import (
    all_alive,
    chain,
    make_node,
    offsets,
    progress,
    publish,
    status,
    wait_until,
)
from netsim.nodeproc import NodeProcess

__all__ = ["catch_up", "convergence", "event_payload"]

JOIN_DEADLINE_S = 180.0
ROUND_DEADLINE_S = 120.0
VIEWS_QUIET_S = 2.0
CATCHUP_DEADLINE_S = 600.0
PUBLISH_BATCH = 1000
PUBLISH_CONCURRENCY = 4


def event_payload(i: int) -> dict[str, Any]:
    """About 80 bytes of JSON, as in bench.dissemination_catchup."""
    return {"i": i, "pad": "x" * 64}


async def _copies(session: aiohttp.ClientSession, nodes: list[NodeProcess]) -> list[int]:
    bodies = await asyncio.gather(*(status(session, n) for n in nodes))
    return [int(b["dissemination"]["copies_received"]) for b in bodies]


async def _active_views(session: aiohttp.ClientSession, nodes: list[NodeProcess]) -> list[set[str]]:
    bodies = await asyncio.gather(*(status(session, nd) for nd in nodes))
    return [{p["nodeId"] for p in b["peers"] if p.get("view") == "active"} for b in bodies]


async def _views_settled(session: aiohttp.ClientSession, nodes: list[NodeProcess]) -> float:
    """Loop time at which every active view had stayed the same for ``VIEWS_QUIET_S``."""
    loop = asyncio.get_running_loop()
    last = await _active_views(session, nodes)
    changed = loop.time()

    async def quiet() -> bool:
        nonlocal last, changed
        now_views = await _active_views(session, nodes)
        if now_views != last:
            last, changed = now_views, loop.time()
        return loop.time() - changed >= VIEWS_QUIET_S

    await wait_until(quiet, JOIN_DEADLINE_S, "active views unchanged", poll=0.25)
    return changed + VIEWS_QUIET_S


async def convergence(root: Path, n: int, *, rounds: int, batch: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    progress(f"convergence: starting {n} nodes as a chain")
    async with aiohttp.ClientSession() as session, chain(root, n) as nodes:
        started = loop.time()
        joined = await wait_until(
            lambda: all_alive(session, nodes), JOIN_DEADLINE_S, f"{n} nodes all alive", poll=0.1
        )
        join_s = joined - started
        progress(f"  joined in {join_s:.2f} s")
        # Membership converges (gossip) before the overlay does: HyParView may still be swapping
        # active links, and every new link starts eager. Copies are a steady-state figure, so the
        # rounds start once no node's active view has changed for VIEWS_QUIET_S.
        views_s = await _views_settled(session, nodes) - joined
        progress(f"  active views unchanged for {VIEWS_QUIET_S:.0f} s, {views_s:.2f} s after")
        event_s: list[float] = []
        copies: list[float] = []
        want: dict[str, int] = {}
        # Round 0 is the warm-up: a fresh Plumtree pushes on every eager edge until duplicates
        # prune it to a tree. Reported apart; the medians are over the rounds after it.
        for r in range(rounds + 1):
            before = await _copies(session, nodes)
            want = {nd.info.node_id: want.get(nd.info.node_id, -1) + batch for nd in nodes}
            data = [
                {"semantics": "bench", "name": f"r{r}", "payload": event_payload(k)}
                for k in range(batch)
            ]
            t0 = loop.time()
            await asyncio.gather(*(publish(session, nd, data) for nd in nodes))

            async def converged(want: dict[str, int] = want) -> bool:
                got = await asyncio.gather(*(offsets(session, nd) for nd in nodes))
                return all(g == want for g in got)

            done = await wait_until(converged, ROUND_DEADLINE_S, f"round {r} offsets")
            event_s.append(done - t0)
            after = await _copies(session, nodes)
            received = sum(a - b for a, b in zip(after, before, strict=True))
            copies.append(received / (batch * n * (n - 1)))
            progress(f"  round {r}: {event_s[-1]:.3f} s, copies/node/event {copies[-1]:.3f}")
        bodies = await asyncio.gather(*(status(session, nd) for nd in nodes))
        max_hops = max(int(b["dissemination"]["max_hops"]) for b in bodies) + 1
        active = [sum(1 for p in b["peers"] if p.get("view") == "active") for b in bodies]
    return {
        "nodes": n,
        "join_s": round(join_s, 3),
        "views_settled_s": round(views_s, 3),
        "events_per_round": batch * n,
        "warmup_event_s": round(event_s[0], 3),
        "warmup_copies_per_node_event": round(copies[0], 3),
        "event_rounds_s": [round(s, 3) for s in event_s[1:]],
        "event_median_s": round(statistics.median(event_s[1:]), 3),
        "copies_per_node_event_rounds": [round(c, 3) for c in copies[1:]],
        "copies_per_node_event_median": round(statistics.median(copies[1:]), 3),
        "max_hops": max_hops,
        "active_view_max": max(active),
    }


async def _publish_many(session: aiohttp.ClientSession, node: NodeProcess, count: int) -> None:
    """``count`` events in batches of ``PUBLISH_BATCH``, a few requests in flight."""
    starts = list(range(0, count, PUBLISH_BATCH))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for s in starts:
        queue.put_nowait(s)

    async def worker() -> None:
        while not queue.empty():
            first = queue.get_nowait()
            last = min(count, first + PUBLISH_BATCH)
            data = [
                {"semantics": "bench", "name": "catchup", "payload": event_payload(i)}
                for i in range(first, last)
            ]
            await publish(session, node, data)

    await asyncio.gather(*(worker() for _ in range(PUBLISH_CONCURRENCY)))


async def catch_up(root: Path, count: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    progress(f"catch-up: 2 nodes, {count} events while B is stopped")
    async with (
        aiohttp.ClientSession() as session,
        make_node(root, "a", None) as a,
        make_node(root, "b", a) as b,
    ):
        await wait_until(lambda: all_alive(session, [a, b]), JOIN_DEADLINE_S, "A and B alive")
        code = await b.stop()
        if code != 0:
            raise RuntimeError(f"B exited with {code} on SIGTERM")
        progress("  B stopped; publishing on A")
        t0 = loop.time()
        await _publish_many(session, a, count)
        publish_s = loop.time() - t0
        want = await offsets(session, a)
        if want.get(a.info.node_id) != count - 1:
            raise RuntimeError(f"A holds {want}, expected {count} events")
        progress(f"  published in {publish_s:.2f} s; restarting B")
        started = loop.time()
        await b.start()
        ready = loop.time()

        async def caught_up() -> bool:
            return await offsets(session, b) == want

        done = await wait_until(caught_up, CATCHUP_DEADLINE_S, "B caught up")
    total = done - started
    after_ready = done - ready
    progress(f"  caught up in {total:.2f} s ({after_ready:.2f} s after ready)")
    return {
        "events": count,
        "publish_s": round(publish_s, 3),
        "catchup_s": round(total, 3),
        "catchup_after_ready_s": round(after_ready, 3),
        "events_per_s": round(count / total),
        "events_per_s_after_ready": round(count / after_ready),
    }
