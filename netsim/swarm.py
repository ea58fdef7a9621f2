"""A whole simulated swarm: N ``SwarmNode``s on one ``Simulator``, and the checks scenarios ask.

Nodes join through a chain of seeds (node i dials node i-1, node 0 dials nobody), like an
operator who hands each new device the address of one already running. Checks are written to
cost O(N · view) or O(N · sources), never a pairwise O(N²) walk unless the caller asks for
membership convergence, which is N² by definition (every node must know every node).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

from netsim.program import Delivery
from netsim.sim import Simulator
from netsim.simnode import SwarmDisk, SwarmNode, identity_for, swarm_factory
from protocol.messages import EventBatch, MemberState
from protocol.messages_base import Address
from swarmnode.swarm.membership import MembershipConfig
from swarmnode.swarm.plumtree import DisseminationConfig

__all__ = ["SwarmSim", "TreeReport", "measure_dissemination"]


class SwarmSim:
    """``n`` nodes named by deterministic identities; ``sim`` is the kernel underneath."""

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        latency: tuple[float, float] = (0.001, 0.005),
        loss: float = 0.0,
        membership: MembershipConfig | None = None,
        dissemination: DisseminationConfig | None = None,
        seeds_per_node: int = 1,
    ) -> None:
        self.sim: Simulator[SwarmNode] = Simulator(seed, latency=latency, loss=loss)
        self.disks = {
            d.identity.node_id: d for d in (SwarmDisk(identity_for(seed, i)) for i in range(n))
        }
        self.ids = list(self.disks)
        index = {node_id: i for i, node_id in enumerate(self.ids)}

        def seeds(node_id: str) -> Sequence[Address]:
            i = index[node_id]
            return [self.sim.address_of(self.ids[j]) for j in range(max(0, i - seeds_per_node), i)]

        self.factory = swarm_factory(
            self.disks,
            seeds,
            self.sim.address_of,
            self.sim.peer_info,
            membership=membership,
            dissemination=dissemination,
        )
        for node_id in self.ids:
            self.sim.add_node(node_id, self.factory)

    def node(self, node_id: str) -> SwarmNode:
        return self.sim.program(node_id)

    def live(self) -> list[str]:
        return self.sim.live_nodes()

    def publish(self, node_id: str, count: int, *, tag: str = "e") -> None:
        """Publish ``count`` events in one batch on ``node_id`` now."""
        events = [("sim", tag, f'{{"n":{i}}}') for i in range(count)]
        self.sim.poke(node_id, lambda node, now: node.publish(now, events))

    # -- checks --------------------------------------------------------------------------------

    def membership_converged(self) -> bool:
        """Every live node holds every other live node ALIVE."""
        live = self.live()
        for a in live:
            machine = self.node(a).membership
            if any(machine.state_of(b) != MemberState.ALIVE for b in live if b != a):
                return False
        return True

    def offsets_converged(self, expected: dict[str, int] | None = None) -> bool:
        """Every live node holds the same offset map (``expected`` when given)."""
        live = self.live()
        if not live:
            return True
        want = expected if expected is not None else self.disks[live[0]].store.offsets()
        return all(self.disks[n].store.offsets() == want for n in live)

    def max_active(self) -> int:
        return max(len(self.node(n).membership.views.active) for n in self.live())

    def min_active(self) -> int:
        return min(len(self.node(n).membership.views.active) for n in self.live())


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeReport:
    """Dissemination quality of a batch of published events (issue 4 and 6 figures)."""

    events: int
    converged: bool
    copies_per_node_event: float
    """Event payloads received in any ``EventBatch`` (eager pushes and repairs) / (N-1) / events."""
    pulled_first: int
    """First receipts that came by repair (``hops = None``), not down the tree."""
    hops: dict[int, int]
    """Histogram of first-receipt depth: 1 = straight from the origin."""

    def percentile(self, q: float) -> int:
        """The smallest depth at or below which a ``q`` share of eager first receipts lie."""
        total, seen = sum(self.hops.values()), 0
        for depth in sorted(self.hops):
            seen += self.hops[depth]
            if seen >= q * total:
                return depth
        return 0


def measure_dissemination(
    swarm: SwarmSim, publishers: Sequence[str], *, rounds: int, gap: float, deadline: float = 120.0
) -> TreeReport:
    """Publish one event per publisher per round, ``gap`` seconds apart, run until every live
    node holds them (or ``deadline`` virtual seconds pass) and report copies and depths."""
    first: dict[tuple[str, str, int], int | None] = {}
    copies = 0

    def watch(d: Delivery) -> None:
        nonlocal copies
        if not isinstance(d.msg, EventBatch):
            return
        copies += len(d.msg.events)
        depth = None if d.msg.hops is None else d.msg.hops + 1
        for r in d.msg.events:
            if r.source != d.dst:  # an origin's own events coming back are copies, not receipts
                first.setdefault((d.dst, r.source, r.offset), depth)

    live = swarm.live()
    expected = swarm.disks[live[0]].store.offsets()
    swarm.sim.on_deliver.append(watch)
    try:
        for _ in range(rounds):
            for node in publishers:
                swarm.publish(node, 1)
                expected[node] = expected.get(node, -1) + 1
                swarm.sim.run_for(gap)
        done = swarm.sim.run_until_true(
            lambda: swarm.offsets_converged(expected), swarm.sim.now + deadline, check_every=1.0
        )
    finally:
        swarm.sim.on_deliver.remove(watch)
    events = rounds * len(publishers)
    depths = [h for h in first.values() if h is not None]
    return TreeReport(
        events=events,
        converged=done is not None,
        copies_per_node_event=copies / max(1, len(live) - 1) / max(1, events),
        pulled_first=len(first) - len(depths),
        hops=dict(collections.Counter(depths)),
    )
