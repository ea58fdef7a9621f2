"""Reading a real node's swarm state over HTTP: status (with its long-poll) and held events."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import aiohttp

from netsim.nodeproc import NodeProcess, http_query

__all__ = ["free_port", "node_status", "peer_states", "wait_holds", "wait_states"]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for a node that must start after its dialler)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def node_status(
    session: aiohttp.ClientSession, node: NodeProcess, *, after: int | None = None
) -> dict[str, Any]:
    """The node's status; with ``after``, once its generation passed it (a long poll)."""
    query = "" if after is None else f"?after={after}&wait=5"
    async with session.get(f"http://{node.info.events_api}/api/v1/node/status{query}") as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


def peer_states(body: dict[str, Any]) -> dict[str, str]:
    """Peer node id → its state (alive/suspect/dead/left) in a status body."""
    return {p["nodeId"]: p["state"] for p in body["peers"]}


async def wait_states(
    session: aiohttp.ClientSession,
    node: NodeProcess,
    want: dict[str, Callable[[str | None], bool]],
) -> dict[str, Any]:
    """Long-poll ``node``'s status until every peer's state satisfies its predicate."""
    body = await node_status(session, node)
    while not all(ok(peer_states(body).get(peer)) for peer, ok in want.items()):
        body = await node_status(session, node, after=body["generation"])
    return body


async def wait_holds(
    session: aiohttp.ClientSession, node: NodeProcess, want: dict[str, int]
) -> list[dict[str, Any]]:
    """The events up to ``want``, sorted by (source, offset), once the node holds them all: a
    query bounded by ``want`` completes only then (API.md), so this waits without polling."""
    body = {"subscriptions": [{}], "upperBound": want, "order": "source-ordered"}
    lines = await http_query(session, node, body)
    return sorted(lines, key=lambda e: (e["stream"]["source"], e["offset"]))
