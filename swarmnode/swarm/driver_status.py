"""The swarm driver's status snapshot for ``GET /api/v1/node/status`` (and ``swarmnode status``).

Kept apart from the driver because it only reads: members with their state and view, connection
and lag per peer, offsets, and the machines' and driver's counters, as one JSON-ready dict. The
address helpers the status and the session layer share live here too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from typing import TYPE_CHECKING, Any

from protocol.messages_base import Address
from swarmnode.config import HostPort

if TYPE_CHECKING:
    from swarmnode.swarm.driver import SwarmDriver

__all__ = ["fmt_address", "reachable", "snapshot"]


def fmt_address(address: Address) -> str:
    return str(HostPort(address.host, address.port))


def snapshot(driver: SwarmDriver) -> dict[str, Any]:
    """A JSON-ready snapshot of ``driver``; just id, generation and no peers before it started."""
    if not driver.started:
        return {"nodeId": driver.node_id, "generation": driver.generation, "peers": []}
    now, wall = driver.loop.time(), time.time()
    membership, store = driver.membership, driver.store
    dstats = driver.dissemination.statistics()
    connected = set(driver.connected_peers())
    peers = [
        {
            "nodeId": m.node_id,
            "state": m.state.name.lower(),
            "view": m.view or None,
            "connected": m.node_id in connected,
            "incarnation": m.incarnation,
            "addresses": [fmt_address(a) for a in m.addresses],
            "lastSeen": None if m.last_seen is None else wall - (now - m.last_seen),
            "lag": dstats.lag.get(m.node_id),
        }
        for m in sorted(membership.members(), key=lambda m: m.node_id)
    ]
    counters = dict(driver.counters)
    counters.update(
        outbox_bytes=sum(driver.outbox_bytes().values()),
        commits_pending=store.pending_commits,
        events_committed=store.committed,
        commit_failures=store.commit_failures,
    )
    address = driver.transport.address
    transfers = {} if driver.transfers is None else driver.transfers.status()
    return {
        "nodeId": driver.node_id,
        "generation": driver.generation,
        "swarm": None if address is None else str(address),
        "peers": peers,
        "offsets": store.offsets(),
        "lag": dict(dstats.lag),
        "membership": membership.statistics(),
        "dissemination": {k: v for k, v in dataclasses.asdict(dstats).items() if k != "lag"},
        "counters": counters,
        **transfers,
    }


def reachable(listen: tuple[Address, ...], remote: HostPort) -> tuple[Address, ...]:
    """The peer's listen addresses, an unspecified host (``0.0.0.0``, ``::``) replaced by the
    host we reached it from (SPEC §7.1.1: prefer the address actually used)."""
    out = []
    for address in listen:
        try:
            unspecified = ipaddress.ip_address(address.host).is_unspecified
        except ValueError:
            unspecified = False
        if unspecified and remote.port:
            out.append(Address(host=remote.host, port=address.port))
        else:
            out.append(address)
    return tuple(dict.fromkeys(out))
