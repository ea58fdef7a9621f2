"""Real node processes for the swarm benchmark: start a chain, read status and offsets, wait.

Nodes are ``python -m swarmnode`` subprocesses on ephemeral loopback ports, run through the test
harness's ``NodeProcess`` (which learns the ports from ``node.json`` and always reaps). Waiting
here polls with a deadline: a benchmark may poll, the tests may not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from netsim.nodeproc import NodeProcess

__all__ = [
    "SWARM_KEY",
    "all_alive",
    "chain",
    "offsets",
    "progress",
    "publish",
    "status",
    "wait_until",
]

SWARM_KEY = hashlib.blake2s(b"swarmnode bench").hexdigest()
# DEBUG logging of every frame would cost the nodes more than the work measured.
NODE_ARGS = ("--swarm-key", SWARM_KEY, "--log-level", "WARNING")
POLL_S = 0.05


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_node(root: Path, name: str, seed: NodeProcess | None) -> NodeProcess:
    args = [*NODE_ARGS]
    if seed is not None:
        args += ["--peers", seed.info.swarm]
    return NodeProcess(root / name, extra_args=args)


@contextlib.asynccontextmanager
async def chain(root: Path, count: int) -> AsyncIterator[list[NodeProcess]]:
    """``count`` nodes, each seeded with the previous one's swarm address; all killed on exit."""
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[NodeProcess] = []
        for i in range(count):
            node = make_node(root, f"n{i}", nodes[-1] if nodes else None)
            nodes.append(await stack.enter_async_context(node))
            progress(f"  started node {i + 1}/{count} {node.info.node_id}")
        yield nodes


async def status(session: aiohttp.ClientSession, node: NodeProcess) -> dict[str, Any]:
    async with session.get(f"http://{node.info.events_api}/api/v1/node/status") as resp:
        resp.raise_for_status()
        body: dict[str, Any] = await resp.json()
        return body


async def offsets(session: aiohttp.ClientSession, node: NodeProcess) -> dict[str, int]:
    async with session.get(node.events_url + "/offsets") as resp:
        resp.raise_for_status()
        body: dict[str, int] = await resp.json()
        return body


async def publish(
    session: aiohttp.ClientSession, node: NodeProcess, data: list[dict[str, Any]]
) -> None:
    async with session.post(node.events_url + "/publish", json={"data": data}) as resp:
        body = await resp.read()
        if resp.status != 201:
            raise RuntimeError(f"publish answered {resp.status}: {body[:200]!r}")


async def wait_until(
    check: Callable[[], Awaitable[bool]], within: float, what: str, *, poll: float = POLL_S
) -> float:
    """Poll ``check`` until true; returns the loop time it first held. ``TimeoutError`` names
    ``what`` when ``within`` seconds pass."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            # Polling is the point here: a benchmark reads the nodes from outside, like an operator.
            while not await check():  # noqa: ASYNC110
                await asyncio.sleep(poll)
    except TimeoutError:
        raise TimeoutError(f"{what}: not reached within {within} s") from None
    return loop.time()


async def all_alive(session: aiohttp.ClientSession, nodes: list[NodeProcess]) -> bool:
    """Every node holds every other node ALIVE."""
    ids = {n.info.node_id for n in nodes}
    bodies = await asyncio.gather(*(status(session, n) for n in nodes))
    for node, body in zip(nodes, bodies, strict=True):
        alive = {p["nodeId"] for p in body.get("peers", []) if p["state"] == "alive"}
        if not ids - {node.info.node_id} <= alive:
            return False
    return True
