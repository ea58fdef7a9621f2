"""A whole simulated swarm: N ``SwarmNode``s on one ``Simulator``, and the checks scenarios ask.

Nodes join through a chain of seeds (node i dials node i-1, node 0 dials nobody), like an
operator who hands each new device the address of one already running. Checks are written to
cost O(N · view) or O(N · sources), never a pairwise O(N²) walk unless the caller asks for
membership convergence, which is N² by definition (every node must know every node).
"""

from __future__ import annotations

from collections.abc import Sequence

from netsim.sim import Simulator
from netsim.simnode import SwarmDisk, SwarmNode, identity_for, swarm_factory
from protocol.messages import MemberState
from protocol.messages_base import Address
from swarmnode.swarm.membership import MembershipConfig
from swarmnode.swarm.plumtree import DisseminationConfig

__all__ = ["SwarmSim"]


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
