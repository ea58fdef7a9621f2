"""Limits, field checks and small shared records of the message set (SPEC.md §6, §7, §11).

Every limit sits here with its reason, so the frame-size argument of SPEC.md §5 is checked in one
place. Checks raise ``LocalProtocolError``: building an invalid message is the caller's bug;
``protocol.codec`` relabels it ``RemoteProtocolError`` when the values came off the wire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from protocol.errors import ErrorCode, LocalProtocolError
from protocol.ids import is_valid_node_id

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
    "MIN_CHUNK_SIZE",
    "PROTOCOL_VERSION",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "Address",
    "PeerInfo",
    "check_addresses",
    "check_bool",
    "check_bytes",
    "check_feature",
    "check_node_id",
    "check_peers",
    "check_str",
    "check_tuple",
    "check_uint",
    "fail",
]

# The message set this module describes (Hello.version).
PROTOCOL_VERSION = 1

# Tags are msgpack unsigned ints below 2**16. Unknown tags >= IGNORABLE_TAG_MIN are dropped by
# receivers, unknown tags below it are an error (SPEC §9): room for optional hints without a version
# bump.
MAX_TAG = 0xFFFF
IGNORABLE_TAG_MIN = 128

# Offsets, lamports, timestamps, incarnations, sequence numbers: SQLite's signed 64-bit INTEGER.
MAX_COUNTER = 2**63 - 1

# Free text (Error, Goodbye) is for logs, not data: 1 KiB of UTF-8 is plenty and bounds log lines.
MAX_TEXT_LEN = 1024
# Hello.agent, e.g. "swarmnode/0.1.0 (linux; python 3.11)".
MAX_AGENT_LEN = 256
# Feature names are short tokens; 64 of them leave room for growth (SPEC §8).
MAX_FEATURES = 64
MAX_FEATURE_LEN = 64
# A node has a few interfaces (LAN, Wi-Fi, VPN, IPv4 and IPv6): 8 addresses each.
MAX_ADDRESSES = 8
# Longest DNS name (RFC 1035); IPv6 literals with a zone index are shorter.
MAX_HOST_LEN = 253

# SWIM gossip: 256 updates of the largest shape (~2.1 KiB) stay under half a frame.
MAX_MEMBER_UPDATES = 256
# HyParView random walks: ARWL is ~6 and PRWL ~3 in the paper; 16 bounds a hostile walk.
MAX_TTL = 16
# HyParView shuffle: ka + kp + 1 is ~8 in the paper; 64 is generous and still small.
MAX_SHUFFLE_SAMPLE = 64
# Peer exchange: a quarter of the largest swarm (1,000 nodes) per message; ask again for more.
MAX_PEER_LIST = 256

# Offset maps: 16,384 sources (27 bytes each, ~430 KiB) per page; larger maps are paged (``more``).
MAX_OFFSET_MAP_ENTRIES = 16384
# Event batches: the byte budget binds first; this caps the per-event work a single frame can cause.
MAX_BATCH_EVENTS = 8192
# One Ed25519 key per source in the batch (~50 bytes each).
MAX_BATCH_KEYS = 1024
# Stream semantics and name: ActyxOS documents no limit; 4 KiB each keeps any event in one frame.
MAX_STREAM_NAME_LEN = 4096
# One event's payload (compact JSON, UTF-8 bytes): a single event must fit one frame (SPEC §5).
MAX_PAYLOAD_LEN = 512 * 1024
# A sender packs events until their encoded size would pass this budget (one event always goes
# alone), leaving room for keys and headers under MAX_FRAME_SIZE.
EVENT_BATCH_BUDGET = 512 * 1024
# Plumtree rounds: hop counts beyond 255 mean a broken tree in any swarm of up to 1,000 nodes.
MAX_HOPS = 255
# Plumtree IHAVE / GRAFT: one range per source; 1,024 sources per message.
MAX_ID_RANGES = 1024

# Chunk sizes a protocol version may pick (DESIGN.md: a power of two from 64 KiB to 1 MiB).
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 1024 * 1024
# 2**22 chunks: a have-bitmap of 512 KiB fits one frame; 1 TiB at 256 KiB chunks.
MAX_CHUNK_COUNT = 2**22
# Outline page: 8,192 digests = 256 KiB, the whole outline of a 2 GiB blob at 256 KiB chunks.
MAX_OUTLINE_PAGE = 8192
# Ranges per chunk request / cancel / don't-have; a fetcher keeps far fewer in flight per peer.
MAX_CHUNK_RANGES = 256
# Newly verified chunks per have-update; a provider flushes updates at least this often.
MAX_HAVE_INDICES = 4096

DIGEST_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

_FEATURE_RE = re.compile(r"[a-z0-9][a-z0-9._/-]*\Z")
_HOST_RE = re.compile(r"[\x21-\x7e]+\Z")

MALFORMED = ErrorCode.MALFORMED_MESSAGE
OVER_LIMIT = ErrorCode.RESOURCE_LIMIT


def fail(what: str, code: ErrorCode = MALFORMED) -> NoReturn:
    raise LocalProtocolError(what, code)


def check_uint(name: str, value: object, hi: int = MAX_COUNTER, lo: int = 0) -> None:
    """An int (never a bool; IntEnum members are ints) in ``lo..hi``."""
    if not isinstance(value, int) or isinstance(value, bool):
        fail(f"{name} must be an int")
    if not lo <= value <= hi:
        fail(f"{name} must be in {lo}..{hi}")


def check_bool(name: str, value: object) -> None:
    if type(value) is not bool:
        fail(f"{name} must be a bool")


def check_str(name: str, value: object, max_len: int, *, empty: bool = True) -> None:
    """A str of at most ``max_len`` UTF-8 bytes (encoded only when the char count cannot decide)."""
    if type(value) is not str:
        fail(f"{name} must be a str")
    if not empty and not value:
        fail(f"{name} must not be empty")
    if len(value) > max_len:
        fail(f"{name} is over {max_len} bytes", OVER_LIMIT)
    if len(value) * 4 > max_len:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            fail(f"{name} is not valid UTF-8 text")
        if size > max_len:
            fail(f"{name} is over {max_len} bytes", OVER_LIMIT)


def check_bytes(name: str, value: object, *, size: int | None = None, max_len: int = 0) -> None:
    """``bytes`` of exactly ``size`` or at most ``max_len`` bytes."""
    if type(value) is not bytes:
        fail(f"{name} must be bytes")
    if size is not None and len(value) != size:
        fail(f"{name} must have {size} bytes")
    if size is None and len(value) > max_len:
        fail(f"{name} is over {max_len} bytes", OVER_LIMIT)


def check_node_id(name: str, value: object) -> None:
    if type(value) is not str or not is_valid_node_id(value):
        fail(f"{name} must be a node id")


def check_tuple(name: str, value: object, max_items: int) -> tuple[object, ...]:
    """A tuple of at most ``max_items`` items (lists are refused: messages are immutable values)."""
    if type(value) is not tuple:
        fail(f"{name} must be a tuple")
    if len(value) > max_items:
        fail(f"{name} has over {max_items} items", OVER_LIMIT)
    return value


def check_feature(value: object) -> None:
    check_str("feature", value, MAX_FEATURE_LEN, empty=False)
    assert isinstance(value, str)
    if not _FEATURE_RE.match(value):
        fail("a feature name is [a-z0-9][a-z0-9._/-]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """A dialable swarm address. Wire: ``[host: str, port: uint]``."""

    host: str
    """DNS name or IP literal (IPv6 without brackets), printable ASCII, no spaces."""
    port: int
    """1..65535 (0 is not dialable)."""

    def __post_init__(self) -> None:
        check_str("host", self.host, MAX_HOST_LEN, empty=False)
        if not _HOST_RE.match(self.host):
            fail("host must be printable ASCII without spaces")
        check_uint("port", self.port, 65535, 1)


def check_addresses(value: object) -> None:
    for item in check_tuple("addresses", value, MAX_ADDRESSES):
        if type(item) is not Address:
            fail("addresses must hold Address values")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """A node and where to reach it. Wire: ``[node_id: str, addresses: [Address...]]``."""

    node_id: str
    addresses: tuple[Address, ...]

    def __post_init__(self) -> None:
        check_node_id("node_id", self.node_id)
        check_addresses(self.addresses)


def check_peers(name: str, value: object, max_items: int) -> None:
    for item in check_tuple(name, value, max_items):
        if type(item) is not PeerInfo:
            fail(f"{name} must hold PeerInfo values")
