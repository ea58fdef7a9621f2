"""One simulated swarm node: membership + dissemination over an in-memory event store.

The wiring is the asyncio driver's (STYLE.md §3): replication messages go to the dissemination
machine, everything else to membership; membership's ``ActivePeerAdded``/``ActivePeerRemoved``
notices become ``handle_neighbor_up``/``down`` of dissemination; a failed dial to a known peer is
a disconnect for membership (a failed seed dial is retried by its join timer). Both machines'
effects leave through one ``drain``. netsim's tests and its CLI build nodes with ``SwarmNode``.

What survives a crash is what a real node keeps on disk: its identity and its event store. Both
are owned by the caller (``SwarmDisk``) and handed to every incarnation.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from protocol.eventchain import GENESIS_CHAIN, EventRecord, chain_hash, head_signing_bytes
from protocol.messages import EventBatch, EventIds, Graft, OffsetMap, Prune, RequestRange
from protocol.messages_base import Address, PeerInfo
from swarmnode.identity import Identity
from swarmnode.swarm.effects import Effects
from swarmnode.swarm.eventstore import MemoryEventStore
from swarmnode.swarm.membership import Membership, MembershipConfig
from swarmnode.swarm.plumtree import Dissemination, DisseminationConfig
from swarmnode.swarm.views import ActivePeerAdded, ActivePeerRemoved

__all__ = ["REPLICATION_MESSAGES", "SwarmDisk", "SwarmNode", "identity_for", "swarm_factory"]

REPLICATION_MESSAGES = (EventBatch, EventIds, Graft, Prune, OffsetMap, RequestRange)
"""Message types the dissemination machine handles (SPEC.md §7.4); the rest are membership's."""

# A fixed wall-clock stamp for simulated events: virtual time is seconds since the run began, and
# event timestamps only need to be valid (µs since the epoch), not meaningful, in simulation.
SIM_EPOCH_US = 1_700_000_000_000_000


def identity_for(seed: int, index: int) -> Identity:
    """A deterministic identity (and so node id) for simulated node ``index`` of run ``seed``."""
    return Identity.from_private_bytes(hashlib.sha256(b"netsim %d/%d" % (seed, index)).digest())


@dataclass(slots=True)
class SwarmDisk:
    """What one node keeps across crashes."""

    identity: Identity
    store: MemoryEventStore = field(default_factory=MemoryEventStore)


class SwarmNode:
    """A ``netsim.program.Program`` hosting both swarm machines for one node."""

    def __init__(
        self,
        *,
        disk: SwarmDisk,
        address: Address,
        seeds: Sequence[Address],
        directory: Callable[[str], PeerInfo],
        now: float,
        rng: random.Random,
        membership: MembershipConfig | None = None,
        dissemination: DisseminationConfig | None = None,
    ) -> None:
        self.disk = disk
        self.node_id = disk.identity.node_id
        self.info = PeerInfo(node_id=self.node_id, addresses=(address,))
        self._directory = directory
        self._now = now
        self.membership = Membership(
            membership or MembershipConfig(), self_info=self.info, rng=random.Random(rng.random())
        )
        self.dissemination = Dissemination(
            dissemination or DisseminationConfig(),
            node_id=self.node_id,
            store=disk.store,
            rng=random.Random(rng.random()),
        )
        self.membership.join(now, seeds)

    @property
    def store(self) -> MemoryEventStore:
        return self.disk.store

    # -- Program inputs --------------------------------------------------------------------------

    def handle_message(self, now: float, peer: str, msg: object) -> None:
        self._now = now
        if isinstance(msg, REPLICATION_MESSAGES):
            self.dissemination.handle_message(now, peer, msg)
        else:
            self.membership.handle_message(now, peer, msg)  # type: ignore[arg-type]

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.membership.handle_timer(now)
        self.dissemination.handle_timer(now)

    def handle_connected(self, now: float, peer: str) -> None:
        self._now = now
        self.membership.handle_connected(now, peer, self._directory(peer))

    def handle_disconnected(self, now: float, peer: str) -> None:
        self._now = now
        self.membership.handle_disconnected(now, peer)

    def handle_dial_failed(self, now: float, target: object) -> None:
        self._now = now
        if isinstance(target, PeerInfo):
            self.membership.handle_disconnected(now, target.node_id)

    def drain(self) -> Effects:
        """Membership's effects, its view notices fed to dissemination, then dissemination's."""
        fx = self.membership.drain()
        for notice in fx.notices:
            if isinstance(notice, ActivePeerAdded):
                self.dissemination.handle_neighbor_up(self._now, notice.peer)
            elif isinstance(notice, ActivePeerRemoved):
                self.dissemination.handle_neighbor_down(self._now, notice.peer)
        fx.merge(self.dissemination.drain())
        return fx

    # -- the app side ----------------------------------------------------------------------------

    def publish(self, now: float, events: Sequence[tuple[str, str, str]]) -> list[EventRecord]:
        """Append ``(semantics, name, payload)`` events as this node's next offsets, sign the
        batch's last event, store them and push them to the swarm (what ``POST publish`` does)."""
        self._now = now
        store, me = self.disk.store, self.node_id
        held = store.records(me)
        chain = held[-1].chain if held else GENESIS_CHAIN
        offset, lamport = len(held), store.lamport
        records = []
        for i, (semantics, name, payload) in enumerate(events):
            lamport += 1
            chain = chain_hash(
                chain,
                source=me,
                offset=offset + i,
                lamport=lamport,
                timestamp=SIM_EPOCH_US,
                semantics=semantics,
                name=name,
                payload=payload,
            )
            last = i == len(events) - 1
            signature = (
                self.disk.identity.sign(head_signing_bytes(me, offset + i, chain)) if last else None
            )
            records.append(
                EventRecord(
                    source=me,
                    offset=offset + i,
                    lamport=lamport,
                    timestamp=SIM_EPOCH_US,
                    semantics=semantics,
                    name=name,
                    payload=payload,
                    chain=chain,
                    signature=signature,
                )
            )
        result = store.ingest([(self.disk.identity.public_key, records)])
        assert result.stored == records, result.problem
        self.dissemination.handle_local_events(now, records)
        return records


def swarm_factory(
    disks: dict[str, SwarmDisk],
    seeds: Callable[[str], Sequence[Address]],
    address_of: Callable[[str], Address],
    directory: Callable[[str], PeerInfo],
    *,
    membership: MembershipConfig | None = None,
    dissemination: DisseminationConfig | None = None,
) -> Callable[[str, float, random.Random], SwarmNode]:
    """A ``Simulator`` factory: every (re)start builds fresh machines over the node's disk."""

    def factory(node_id: str, now: float, rng: random.Random) -> SwarmNode:
        return SwarmNode(
            disk=disks[node_id],
            address=address_of(node_id),
            seeds=seeds(node_id),
            directory=directory,
            now=now,
            rng=rng,
            membership=membership,
            dissemination=dissemination,
        )

    return factory
