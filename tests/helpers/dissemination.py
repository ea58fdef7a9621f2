"""Dissemination machines with real signed events, for hand-driven tests and simulations.

``Replica`` bundles one node's identity, its publishing chain, an in-memory verified store and its
``Dissemination`` machine; ``SimReplica`` adapts one to netsim's ``Program`` shape with fixed
neighbours that are redialled after a disconnect (membership stands in).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

from protocol.eventchain import EventRecord
from protocol.messages import SendableMessage
from protocol.messages_base import PeerInfo
from swarmnode.swarm.effects import Effects
from swarmnode.swarm.eventstore import MemoryEventStore
from swarmnode.swarm.plumtree import Dissemination, DisseminationConfig
from tests.helpers.events_chain import RemoteSource, identity_from_seed

__all__ = ["Replica", "SimReplica", "deliver", "exchange", "sends_to"]


class Replica:
    """One node: ``publish`` stores signed events locally and hands them to the machine."""

    def __init__(self, seed: int, config: DisseminationConfig | None = None) -> None:
        self.identity = identity_from_seed(seed)
        self.chain = RemoteSource(self.identity)
        self.store = MemoryEventStore()
        self.config = config or DisseminationConfig()
        self.machine = Dissemination(
            self.config, node_id=self.node_id, store=self.store, rng=random.Random(seed)
        )

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def make_events(self, count: int, *, size: int = 16, per_batch: int = 0) -> list[EventRecord]:
        """``count`` new signed events of this node (signed every ``per_batch``, else once)."""
        out: list[EventRecord] = []
        step = per_batch or count
        for start in range(0, count, step):
            n = min(step, count - start)
            payload = json.dumps("x" * size)
            out.extend(self.chain.batch([("sem", "name", payload)] * n))
        return out

    def publish(self, now: float, count: int, **kw: Any) -> list[EventRecord]:
        records = self.make_events(count, **kw)
        result = self.store.ingest([(self.identity.public_key, records)])
        assert len(result.stored) == count, result
        self.machine.handle_local_events(now, records)
        return records


def sends_to(fx: Effects, peer: str) -> list[SendableMessage]:
    return [msg for p, msg in fx.sends if p == peer]


def deliver(now: float, msgs: Iterable[SendableMessage], sender: str, to: Replica) -> None:
    for msg in msgs:
        to.machine.handle_message(now, sender, msg)


class SimReplica:
    """A ``Replica`` as a netsim program: dials its fixed neighbours (the higher id dials),
    redials ``redial`` seconds after a disconnect or a failed dial."""

    def __init__(
        self,
        replica: Replica,
        now: float,
        neighbours: Sequence[PeerInfo],
        *,
        redial: float = 1.0,
    ) -> None:
        self.replica = replica
        self._targets = {p.node_id: p for p in neighbours if p.node_id < replica.node_id}
        self._dials: list[PeerInfo] = list(self._targets.values())
        self._retry: dict[str, float] = {}
        self._redial = redial

    @property
    def machine(self) -> Dissemination:
        return self.replica.machine

    def handle_message(self, now: float, peer: str, msg: Any) -> None:
        self.machine.handle_message(now, peer, msg)

    def handle_timer(self, now: float) -> None:
        for peer in [p for p, at in self._retry.items() if at <= now]:
            del self._retry[peer]
            self._dials.append(self._targets[peer])
        self.machine.handle_timer(now)

    def handle_connected(self, now: float, peer: str) -> None:
        self.machine.handle_neighbor_up(now, peer)

    def handle_disconnected(self, now: float, peer: str) -> None:
        self.machine.handle_neighbor_down(now, peer)
        if peer in self._targets:
            self._retry[peer] = now + self._redial

    def handle_dial_failed(self, now: float, target: Any) -> None:
        if isinstance(target, PeerInfo) and target.node_id in self._targets:
            self._retry[target.node_id] = now + self._redial

    def drain(self) -> Effects:
        fx = self.machine.drain()
        fx.dials.extend(self._dials)
        self._dials = []
        retry = min(self._retry.values(), default=None)
        if retry is not None and (fx.deadline is None or retry < fx.deadline):
            fx.deadline = retry
        return fx


def exchange(
    now: float, replicas: Sequence[Replica], *, drop: Any = None, limit: int = 100_000
) -> list[tuple[str, str, SendableMessage]]:
    """Deliver every send at once (in order, no clock movement) until no machine sends more;
    returns what was delivered. ``drop(src, dst, msg) -> bool`` loses a message."""
    by_id = {r.node_id: r for r in replicas}
    delivered: list[tuple[str, str, SendableMessage]] = []
    while True:
        pending = [(r.node_id, p, m) for r in replicas for p, m in r.machine.drain().sends]
        if not pending:
            return delivered
        for src, dst, msg in pending:
            if dst in by_id and not (drop is not None and drop(src, dst, msg)):
                by_id[dst].machine.handle_message(now, src, msg)
                delivered.append((src, dst, msg))
        assert len(delivered) < limit, "no quiescence"
