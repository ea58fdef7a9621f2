"""A minimal deterministic simulator for Membership machines on virtual time (tests only).

Heap of (time, seq, node, input); a seeded Random decides loss and latency. Connections are
modelled only as connected/disconnected events (a dial succeeds when the target is up and on the
same side of a partition); messages travel like datagrams between live nodes on the same side.
It will give way to netsim/sim.py once that kernel lands.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import cast

from protocol.ids import node_id_from_public_key
from protocol.messages import MemberState, SendableMessage
from protocol.messages_base import Address, PeerInfo
from swarmnode.swarm.membership import Membership, MembershipConfig


def make_id(i: int) -> str:
    return node_id_from_public_key(i.to_bytes(32, "big"))


def make_info(i: int) -> PeerInfo:
    return PeerInfo(
        node_id=make_id(i), addresses=(Address(host=f"10.0.{i // 250}.{i % 250 + 1}", port=4001),)
    )


@dataclass
class Sim:
    n: int
    seed: int = 0
    config: MembershipConfig = field(default_factory=MembershipConfig)
    loss: float = 0.0
    latency: float = 0.005
    jitter: float = 0.005
    now: float = 0.0
    nodes: dict[str, Membership] = field(default_factory=dict)
    infos: dict[str, PeerInfo] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)
    side: dict[str, int] = field(default_factory=dict)
    out_delay: dict[str, float] = field(default_factory=dict)
    notices: list[tuple[float, str, object]] = field(default_factory=list)
    delivered: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._heap: list[tuple[float, int, str, str, object]] = []
        self._seq = 0
        self._armed: dict[str, float | None] = {}
        self._by_addr: dict[Address, str] = {}
        self._conns: set[frozenset[str]] = set()
        self._link_clock: dict[tuple[str, str], float] = {}
        for i in range(self.n):
            info = make_info(i)
            self.infos[info.node_id] = info
            self._by_addr[info.addresses[0]] = info.node_id
            self.nodes[info.node_id] = Membership(
                self.config, self_info=info, rng=random.Random(self.seed * 1000 + i)
            )
        self.ids = list(self.nodes)

    # ---- scheduling ---------------------------------------------------------------------

    def _push(self, at: float, node: str, kind: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, node, kind, payload))

    def _reachable(self, a: str, b: str) -> bool:
        up = a not in self.crashed and b not in self.crashed
        return up and self.side.get(a, 0) == self.side.get(b, 0)

    def _delay(self, src: str) -> float:
        return self.latency + self.rng.random() * self.jitter + self.out_delay.get(src, 0.0)

    def _pump(self, node: str) -> None:
        m = self.nodes[node]
        fx = m.drain()
        for dial in fx.dials:
            target = self._by_addr.get(dial) if isinstance(dial, Address) else dial.node_id
            if target is None or target == node:
                continue
            pair = frozenset((node, target))
            if self._reachable(node, target):
                if pair not in self._conns:
                    self._conns.add(pair)
                    at = self.now + self._delay(node)
                    self._push(at, node, "up", target)
                    self._push(at, target, "up", node)
            elif isinstance(dial, PeerInfo) and pair not in self._conns:
                self._push(self.now + 1.0, node, "down", target)
        for peer, msg in fx.sends:
            if peer not in self.nodes or not self._reachable(node, peer):
                continue
            if self.rng.random() < self.loss:
                continue
            # One connection per pair is FIFO, like TCP: no overtaking on a link.
            at = max(self.now + self._delay(node), self._link_clock.get((node, peer), 0.0))
            self._link_clock[(node, peer)] = at
            self._push(at, peer, "msg", (node, msg))
        for peer in fx.hangups:
            self._close(node, peer)
        self.notices.extend((self.now, node, n) for n in fx.notices)
        if fx.deadline is not None and fx.deadline != self._armed.get(node):
            self._armed[node] = fx.deadline
            self._push(max(fx.deadline, self.now), node, "timer", None)

    def _close(self, a: str, b: str) -> None:
        pair = frozenset((a, b))
        if pair in self._conns:
            self._conns.discard(pair)
            self._push(self.now, a, "down", b)
            self._push(self.now, b, "down", a)

    # ---- driving ------------------------------------------------------------------------

    def start(self, seeds: int = 1) -> None:
        """Every node joins through the first ``seeds`` nodes (seeds join through each other)."""
        seed_addrs = [self.infos[i].addresses[0] for i in self.ids[:seeds]]
        for node, m in self.nodes.items():
            m.join(self.now, [a for a in seed_addrs if self._by_addr[a] != node])
            self._pump(node)

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            at, _, node, kind, payload = heapq.heappop(self._heap)
            self.now = at
            if node in self.crashed:
                continue
            m = self.nodes[node]
            if kind == "timer":
                self._armed[node] = None
                m.handle_timer(at)
            elif kind == "msg":
                assert isinstance(payload, tuple)
                src, msg = payload
                self.delivered += 1
                m.handle_message(at, src, cast(SendableMessage, msg))
            elif kind == "up":
                assert isinstance(payload, str)
                if frozenset((node, payload)) in self._conns:
                    m.handle_connected(at, payload, self.infos[payload])
            else:
                assert isinstance(payload, str)
                m.handle_disconnected(at, payload)
            self._pump(node)
        self.now = t

    def crash(self, node: str) -> None:
        """kill -9: the node stops, its connections reset (peers see them close)."""
        self.crashed.add(node)
        for pair in [p for p in self._conns if node in p]:
            (other,) = pair - {node}
            self._conns.discard(pair)
            self._push(self.now, other, "down", node)

    def leave(self, node: str) -> None:
        """Graceful leave: the node says goodbye, then stops."""
        self.nodes[node].leave(self.now)
        self._pump(node)
        self.crashed.add(node)

    def partition(self, groups: list[list[str]]) -> None:
        """Split the swarm; connections across stay open but carry nothing (like a cut cable)."""
        for g, members in enumerate(groups):
            for node in members:
                self.side[node] = g

    def heal(self) -> None:
        self.side.clear()

    # ---- observations -------------------------------------------------------------------

    def live(self) -> list[str]:
        return [n for n in self.ids if n not in self.crashed]

    def converged(self) -> bool:
        """Every live node holds every other live node ALIVE."""
        live = self.live()
        return all(
            self.nodes[a].state_of(b) == MemberState.ALIVE for a in live for b in live if a != b
        )

    def run_until_converged(self, limit: float, step: float = 1.0) -> float | None:
        """Advance in steps until converged; the virtual time it took, or None."""
        end = self.now + limit
        while self.now < end:
            if self.converged():
                return self.now
            self.run_until(self.now + step)
        return self.now if self.converged() else None
