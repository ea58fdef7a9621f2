"""Membership messages: SWIM probing and gossip (with Lifeguard's nack), HyParView view maintenance,
peer exchange (SPEC.md §7.2, §7.3).

The rules that act on these live in ``swarm/membership.py`` and ``swarm/views.py``; here are only
the shapes and their limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from protocol.messages_base import (
    MAX_COUNTER,
    MAX_MEMBER_UPDATES,
    MAX_PEER_LIST,
    MAX_SHUFFLE_SAMPLE,
    MAX_TTL,
    Address,
    PeerInfo,
    check_addresses,
    check_bool,
    check_node_id,
    check_peers,
    check_tuple,
    check_uint,
    fail,
)

__all__ = [
    "Ack",
    "Disconnect",
    "ForwardJoin",
    "Join",
    "MemberState",
    "MemberUpdate",
    "MemberUpdates",
    "Neighbor",
    "NeighborReply",
    "PeerList",
    "PeerRequest",
    "Ping",
    "PingReq",
    "PingReqAck",
    "PingReqNack",
    "Shuffle",
    "ShuffleReply",
]


class MemberState(IntEnum):
    """SWIM member states as sent on the wire (precedence rules: SPEC §7.2.1)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberUpdate:
    """One SWIM assertion about a member. Wire: ``[node_id, state, incarnation, addresses,
    origin]``.

    ``origin`` is the node that made the assertion: the member itself for ALIVE and LEFT, the
    suspecting or declaring node for SUSPECT and DEAD (Lifeguard counts independent suspicions by
    origin).
    """

    node_id: str
    state: MemberState
    incarnation: int
    addresses: tuple[Address, ...]
    origin: str

    def __post_init__(self) -> None:
        check_node_id("node_id", self.node_id)
        if type(self.state) is not MemberState:
            fail("state must be a MemberState")
        check_uint("incarnation", self.incarnation)
        check_addresses(self.addresses)
        check_node_id("origin", self.origin)


def _check_updates(value: object) -> None:
    for item in check_tuple("updates", value, MAX_MEMBER_UPDATES):
        if type(item) is not MemberUpdate:
            fail("updates must hold MemberUpdate values")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """SWIM direct probe; the receiver answers ``Ack`` with the same ``seq``. Carries piggybacked
    gossip."""

    TAG: ClassVar[int] = 10
    seq: int
    updates: tuple[MemberUpdate, ...] = ()

    def __post_init__(self) -> None:
        check_uint("seq", self.seq)
        _check_updates(self.updates)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """SWIM answer to ``Ping`` (same ``seq``), with piggybacked gossip."""

    TAG: ClassVar[int] = 11
    seq: int
    updates: tuple[MemberUpdate, ...] = ()

    def __post_init__(self) -> None:
        check_uint("seq", self.seq)
        _check_updates(self.updates)


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReq:
    """SWIM indirect probe: asks the receiver to probe ``target`` on the sender's behalf.

    The helper answers ``PingReqAck`` if the target acked in time, else ``PingReqNack`` (Lifeguard),
    both with the requester's ``seq``. ``target.addresses`` lets a helper that has no connection
    dial one.
    """

    TAG: ClassVar[int] = 12
    seq: int
    target: PeerInfo

    def __post_init__(self) -> None:
        check_uint("seq", self.seq)
        if type(self.target) is not PeerInfo:
            fail("target must be a PeerInfo")


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReqAck:
    """Helper → requester: ``target`` acked the helper's probe for request ``seq``."""

    TAG: ClassVar[int] = 13
    seq: int
    target: str

    def __post_init__(self) -> None:
        check_uint("seq", self.seq)
        check_node_id("target", self.target)


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReqNack:
    """Helper → requester: ``target`` did not ack in time (Lifeguard: proves the helper itself is
    alive)."""

    TAG: ClassVar[int] = 14
    seq: int
    target: str

    def __post_init__(self) -> None:
        check_uint("seq", self.seq)
        check_node_id("target", self.target)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberUpdates:
    """SWIM gossip on its own, when there is more than piggybacking carries (join, leave,
    refutation)."""

    TAG: ClassVar[int] = 15
    updates: tuple[MemberUpdate, ...]

    def __post_init__(self) -> None:
        _check_updates(self.updates)


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """HyParView JOIN: the sender (known from Hello) asks to enter the swarm through the
    receiver."""

    TAG: ClassVar[int] = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardJoin:
    """HyParView FORWARDJOIN: random walk announcing ``peer``; ``ttl`` counts down to 0
    (ARWL/PRWL)."""

    TAG: ClassVar[int] = 21
    peer: PeerInfo
    ttl: int

    def __post_init__(self) -> None:
        if type(self.peer) is not PeerInfo:
            fail("peer must be a PeerInfo")
        check_uint("ttl", self.ttl, MAX_TTL)


@dataclass(frozen=True, slots=True, kw_only=True)
class Neighbor:
    """HyParView NEIGHBOR: asks to enter the receiver's active view; high priority when the sender's
    active view is empty (the receiver must then accept, evicting if needed)."""

    TAG: ClassVar[int] = 22
    high_priority: bool

    def __post_init__(self) -> None:
        check_bool("high_priority", self.high_priority)


@dataclass(frozen=True, slots=True, kw_only=True)
class NeighborReply:
    """Answer to ``Neighbor``; on refusal the sender keeps the receiver in its passive view."""

    TAG: ClassVar[int] = 23
    accepted: bool

    def __post_init__(self) -> None:
        check_bool("accepted", self.accepted)


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    """HyParView DISCONNECT: the sender drops the receiver from its active view (moves it to
    passive)."""

    TAG: ClassVar[int] = 24


@dataclass(frozen=True, slots=True, kw_only=True)
class Shuffle:
    """HyParView SHUFFLE: random walk of ``origin``'s sample; the node where ``ttl`` ends answers
    ``ShuffleReply`` (same ``shuffle_id``) to ``origin`` directly."""

    TAG: ClassVar[int] = 25
    shuffle_id: int
    origin: PeerInfo
    ttl: int
    sample: tuple[PeerInfo, ...]

    def __post_init__(self) -> None:
        check_uint("shuffle_id", self.shuffle_id)
        if type(self.origin) is not PeerInfo:
            fail("origin must be a PeerInfo")
        check_uint("ttl", self.ttl, MAX_TTL)
        check_peers("sample", self.sample, MAX_SHUFFLE_SAMPLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShuffleReply:
    """HyParView SHUFFLEREPLY: a sample of the replier's passive view, for ``shuffle_id``."""

    TAG: ClassVar[int] = 26
    shuffle_id: int
    sample: tuple[PeerInfo, ...]

    def __post_init__(self) -> None:
        check_uint("shuffle_id", self.shuffle_id, MAX_COUNTER)
        check_peers("sample", self.sample, MAX_SHUFFLE_SAMPLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRequest:
    """Peer exchange: asks for up to ``limit`` known peers (a node started from ``--peers`` learns
    the rest)."""

    TAG: ClassVar[int] = 27
    limit: int

    def __post_init__(self) -> None:
        check_uint("limit", self.limit, MAX_PEER_LIST, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerList:
    """Peer exchange: known live peers, as answer to ``PeerRequest`` or unsolicited."""

    TAG: ClassVar[int] = 28
    peers: tuple[PeerInfo, ...]

    def __post_init__(self) -> None:
        check_peers("peers", self.peers, MAX_PEER_LIST)
