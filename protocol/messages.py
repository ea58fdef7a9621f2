"""The message set: one frozen, validated dataclass per message, and the tag → class registry
(SPEC.md §7). Encoding lives in ``protocol.codec``; the classes are defined by concern in
``messages_session``, ``messages_membership``, ``messages_replication`` and
``messages_transfer`` and re-exported here, so callers import from this module only.

A message is checked once, when it is built: an invalid one cannot exist. Building one from bad
local values raises ``LocalProtocolError``; ``codec.decode`` turns that into
``RemoteProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from protocol.eventchain import EventRecord
from protocol.messages_base import (
    DIGEST_SIZE,
    EVENT_BATCH_BUDGET,
    IGNORABLE_TAG_MIN,
    MAX_ADDRESSES,
    MAX_AGENT_LEN,
    MAX_BATCH_EVENTS,
    MAX_BATCH_KEYS,
    MAX_CHUNK_COUNT,
    MAX_CHUNK_RANGES,
    MAX_CHUNK_SIZE,
    MAX_COUNTER,
    MAX_FEATURE_LEN,
    MAX_FEATURES,
    MAX_HAVE_INDICES,
    MAX_HOPS,
    MAX_HOST_LEN,
    MAX_ID_RANGES,
    MAX_MEMBER_UPDATES,
    MAX_OFFSET_MAP_ENTRIES,
    MAX_OUTLINE_PAGE,
    MAX_PAYLOAD_LEN,
    MAX_PEER_LIST,
    MAX_SHUFFLE_SAMPLE,
    MAX_STREAM_NAME_LEN,
    MAX_TAG,
    MAX_TEXT_LEN,
    MAX_TTL,
    MIN_CHUNK_SIZE,
    PROTOCOL_VERSION,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Address,
    PeerInfo,
    check_uint,
)
from protocol.messages_membership import (
    Ack,
    Disconnect,
    ForwardJoin,
    Join,
    MemberState,
    MemberUpdate,
    MemberUpdates,
    Neighbor,
    NeighborReply,
    PeerList,
    PeerRequest,
    Ping,
    PingReq,
    PingReqAck,
    PingReqNack,
    Shuffle,
    ShuffleReply,
)
from protocol.messages_replication import (
    EventBatch,
    EventIds,
    Graft,
    OffsetMap,
    OffsetRange,
    Prune,
    RequestRange,
)
from protocol.messages_session import Error, Goodbye, Hello
from protocol.messages_transfer import (
    Cancel,
    ChunkData,
    ChunkRange,
    DontHave,
    HaveBitmap,
    HaveUpdate,
    Outline,
    RequestChunks,
    RequestOutline,
    bitmap_size,
)

__all__ = [
    "DIGEST_SIZE",
    "EVENT_BATCH_BUDGET",
    "IGNORABLE_TAG_MIN",
    "MAX_ADDRESSES",
    "MAX_AGENT_LEN",
    "MAX_BATCH_EVENTS",
    "MAX_BATCH_KEYS",
    "MAX_CHUNK_COUNT",
    "MAX_CHUNK_RANGES",
    "MAX_CHUNK_SIZE",
    "MAX_COUNTER",
    "MAX_FEATURES",
    "MAX_FEATURE_LEN",
    "MAX_HAVE_INDICES",
    "MAX_HOPS",
    "MAX_HOST_LEN",
    "MAX_ID_RANGES",
    "MAX_MEMBER_UPDATES",
    "MAX_OFFSET_MAP_ENTRIES",
    "MAX_OUTLINE_PAGE",
    "MAX_PAYLOAD_LEN",
    "MAX_PEER_LIST",
    "MAX_SHUFFLE_SAMPLE",
    "MAX_STREAM_NAME_LEN",
    "MAX_TAG",
    "MAX_TEXT_LEN",
    "MAX_TTL",
    "MESSAGE_TYPES",
    "MIN_CHUNK_SIZE",
    "PROTOCOL_VERSION",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "Ack",
    "Address",
    "Cancel",
    "ChunkData",
    "ChunkRange",
    "Disconnect",
    "DontHave",
    "Error",
    "EventBatch",
    "EventIds",
    "EventRecord",
    "ForwardJoin",
    "Goodbye",
    "Graft",
    "HaveBitmap",
    "HaveUpdate",
    "Hello",
    "Join",
    "MemberState",
    "MemberUpdate",
    "MemberUpdates",
    "Message",
    "Neighbor",
    "NeighborReply",
    "OffsetMap",
    "OffsetRange",
    "Outline",
    "PeerInfo",
    "PeerList",
    "PeerRequest",
    "Ping",
    "PingReq",
    "PingReqAck",
    "PingReqNack",
    "Prune",
    "RequestChunks",
    "RequestOutline",
    "RequestRange",
    "SendableMessage",
    "Shuffle",
    "ShuffleReply",
    "Unrecognized",
    "bitmap_size",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Unrecognized:
    """Decoded from a message whose tag this version does not know but may ignore (tag >=
    IGNORABLE_TAG_MIN, SPEC §9). Drivers drop it (and may count it); it cannot be encoded."""

    TAG: ClassVar[int] = -1
    tag: int

    def __post_init__(self) -> None:
        check_uint("tag", self.tag, MAX_TAG, IGNORABLE_TAG_MIN)


SendableMessage: TypeAlias = (
    Hello
    | Goodbye
    | Error
    | Ping
    | Ack
    | PingReq
    | PingReqAck
    | PingReqNack
    | MemberUpdates
    | Join
    | ForwardJoin
    | Neighbor
    | NeighborReply
    | Disconnect
    | Shuffle
    | ShuffleReply
    | PeerRequest
    | PeerList
    | OffsetMap
    | EventBatch
    | EventIds
    | Graft
    | Prune
    | RequestRange
    | RequestOutline
    | Outline
    | RequestChunks
    | ChunkData
    | HaveBitmap
    | HaveUpdate
    | Cancel
    | DontHave
)
"""Every message that has a tag in the registry."""

Message: TypeAlias = SendableMessage | Unrecognized
"""What ``codec.decode`` returns."""

_CLASSES: tuple[type[SendableMessage], ...] = (
    Hello,
    Goodbye,
    Error,
    Ping,
    Ack,
    PingReq,
    PingReqAck,
    PingReqNack,
    MemberUpdates,
    Join,
    ForwardJoin,
    Neighbor,
    NeighborReply,
    Disconnect,
    Shuffle,
    ShuffleReply,
    PeerRequest,
    PeerList,
    OffsetMap,
    EventBatch,
    EventIds,
    Graft,
    Prune,
    RequestRange,
    RequestOutline,
    Outline,
    RequestChunks,
    ChunkData,
    HaveBitmap,
    HaveUpdate,
    Cancel,
    DontHave,
)


def _registry() -> dict[int, type[SendableMessage]]:
    table: dict[int, type[SendableMessage]] = {}
    for cls in _CLASSES:
        if not 1 <= cls.TAG < IGNORABLE_TAG_MIN or cls.TAG in table:
            raise AssertionError(f"bad or duplicate tag {cls.TAG} for {cls.__name__}")
        table[cls.TAG] = cls
    return table


MESSAGE_TYPES: dict[int, type[SendableMessage]] = _registry()
"""Tag → class, shared by encode and decode. Treat as read-only."""
