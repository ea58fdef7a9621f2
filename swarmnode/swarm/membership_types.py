"""Membership's value types and timing formulas: config, notices, status rows, table records.

Kept apart from ``membership.py`` so the machine stays one readable module; re-exported there.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from protocol.messages import Address, MemberState, MemberUpdate
from swarmnode.swarm.views import ViewConfig

__all__ = [
    "GossipQueue",
    "MemberInfo",
    "MembershipConfig",
    "PeerAlive",
    "PeerDead",
    "PeerLeft",
    "PeerSuspect",
    "retransmit_limit",
    "suspicion_timeout",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipConfig:
    """Timers and bounds; netsim varies these. Defaults are for a LAN swarm of 2 to 1,000 nodes."""

    protocol_period: float = 1.0
    """SWIM's period T': 1 s detects a crash within a few seconds at one probe per node per s."""
    ack_timeout: float = 0.5
    """Direct-probe timeout: far above LAN round trips, and leaves half a period for PingReq."""
    indirect_timeout: float = 1.0
    """Window for helpers' answers after the direct timeout (helpers use ack_timeout themselves,
    so their nack arrives inside it; Lifeguard nacks)."""
    indirect_probes: int = 3
    """k helpers per indirect probe (SWIM §5 uses k=3; more adds load without much accuracy)."""
    suspicion_alpha: float = 4.0
    """Minimum suspicion = alpha * max(1, log10 N) periods (memberlist's LAN multiplier is 4)."""
    suspicion_beta: float = 6.0
    """Maximum suspicion = beta * minimum (Lifeguard §IV.B uses 6)."""
    suspicion_k: int = 3
    """Independent suspicions after which the timeout reaches its minimum (Lifeguard K); in a
    swarm too small for K other suspecters, all the members that can suspect suffice."""
    max_local_health: int = 8
    """Cap of the Lifeguard multiplier: at most 9x slower probing when this node struggles."""
    retransmit_mult: int = 4
    """SWIM lambda: each update goes out lambda * ceil(log10(N+1)) times (infection-style)."""
    max_piggyback: int = 16
    """Updates per Ping/Ack: keeps probes small (MAX_MEMBER_UPDATES allows 256)."""
    gossip_interval: float = 0.2
    """While updates are pending, they also go out on their own this often (memberlist's
    GossipInterval): riding only on one probe per period, news crossed a 20-node swarm in ~6 s."""
    gossip_fanout: int = 3
    """Connected peers each gossip round goes to (memberlist's GossipNodes)."""
    max_members: int = 4096
    """Member table cap: four times the largest swarm DESIGN.md plans for."""
    max_tombstones: int = 1024
    """DEAD/LEFT records kept; the oldest is evicted beyond this."""
    max_pending_probes: int = 64
    """Own probes plus probes relayed for others in flight; a helper over it nacks at once."""
    reprobe_initial: float = 2.0
    """First re-probe of a DEAD member; doubles per failure."""
    reprobe_max: float = 60.0
    """Re-probe backoff cap: a healed partition rejoins within about a minute at worst."""
    join_backoff_initial: float = 1.0
    """First retry of the seeds when the active view is empty; doubles per retry."""
    join_backoff_max: float = 30.0
    """Seed retry cap."""
    idle_timeout: float = 5.0
    """A connection outside the active view idle this long is closed: a probe or an indirect
    probe reuses it within a few periods, and connections stay about the active view's size."""
    sync_interval: float = 10.0
    """Full member-list push to one random active peer (memberlist's push-pull): piggybacking
    alone drains slowly when hundreds of nodes start at once; 1,000 rows every 10 s is ~1 KiB/s."""
    views: ViewConfig = field(default_factory=ViewConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAlive:
    node_id: str
    incarnation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerSuspect:
    node_id: str
    incarnation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerDead:
    node_id: str
    incarnation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLeft:
    node_id: str
    incarnation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberInfo:
    """One row of the status snapshot."""

    node_id: str
    state: MemberState
    incarnation: int
    view: str
    """"active", "passive" or "" (known only to SWIM)."""
    addresses: tuple[Address, ...]
    last_seen: float | None


def suspicion_timeout(config: MembershipConfig, members: int, confirmations: int) -> float:
    """Lifeguard §IV.B dynamic suspicion: from ``beta * min`` down to ``min`` (``alpha *
    max(1, log10 N)`` periods) as independent suspicions reach ``k + 1``.

    ``members`` counts the suspect and us. At most ``members - 1`` nodes can suspect, so ``k`` is
    ``suspicion_k`` capped at ``members - 2``: otherwise a small swarm always waits near the
    maximum, for confirmations that cannot come (memberlist expects none below 4 members)."""
    low = config.suspicion_alpha * max(1.0, math.log10(max(members, 1))) * config.protocol_period
    k = min(config.suspicion_k, members - 2)
    if k < 1:
        return low
    high = config.suspicion_beta * low
    frac = math.log(max(confirmations, 1)) / math.log(k + 1)
    return max(low, high - (high - low) * frac)


def retransmit_limit(config: MembershipConfig, members: int) -> int:
    """SWIM §4.1: an update is piggybacked lambda * ceil(log10(N + 1)) times."""
    return config.retransmit_mult * math.ceil(math.log10(members + 1))


@dataclass(slots=True)
class MemberRecord:
    """One row of the member table (mutable; only the machine touches it)."""

    node_id: str
    state: MemberState
    incarnation: int
    addresses: tuple[Address, ...]
    since: float
    origin: str = ""
    last_seen: float | None = None
    reprobe_delay: float = 0.0
    suspect_start: float = 0.0
    confirmations: set[str] = field(default_factory=set)
    update: MemberUpdate | None = None
    """The record as held, for relaying (None: rebuild from the fields)."""


@dataclass(slots=True)
class GossipEntry:
    """A queued update and how often it was piggybacked (SWIM §4.1)."""

    update: MemberUpdate
    sent: int = 0


@dataclass(slots=True)
class ProbeState:
    """One outstanding probe of ``target`` started at ``start``."""

    target: str
    start: float
    helpers: int = 0
    nacks: int = 0
    done: bool = False


class GossipQueue:
    """SWIM §4.1 infection-style buffer: one entry per member (a newer assertion replaces the
    older), piggybacked least-sent first and dropped after ``limit`` sends. Bounded by the
    member table, since entries are keyed by member."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, GossipEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, update: MemberUpdate) -> None:
        self._entries[update.node_id] = GossipEntry(update=update)

    def discard(self, node_id: str) -> None:
        self._entries.pop(node_id, None)

    def take(self, count: int, limit: int, *, skip: str) -> list[MemberUpdate]:
        """Up to ``count`` least-sent updates, none about ``skip``; each counts one send."""
        out: list[MemberUpdate] = []
        candidates = heapq.nsmallest(count + 1, self._entries.values(), key=lambda e: e.sent)
        for entry in candidates:
            if entry.update.node_id == skip:
                continue
            if len(out) == count:
                break
            out.append(entry.update)
            entry.sent += 1
            if entry.sent >= limit:
                del self._entries[entry.update.node_id]
        return out
