"""Event replication messages: anti-entropy offset maps and ranges, Plumtree push/IHAVE/GRAFT/PRUNE
(SPEC.md §7.4).

Events travel as ``protocol.eventchain.EventRecord`` values exactly as hashed and stored, so a relay
forwards the origin's bytes and signatures untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

from protocol.eventchain import EventRecord
from protocol.messages_base import (
    DIGEST_SIZE,
    MAX_BATCH_EVENTS,
    MAX_BATCH_KEYS,
    MAX_COUNTER,
    MAX_HOPS,
    MAX_ID_RANGES,
    MAX_OFFSET_MAP_ENTRIES,
    MAX_PAYLOAD_LEN,
    MAX_STREAM_NAME_LEN,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    check_bool,
    check_bytes,
    check_node_id,
    check_str,
    check_tuple,
    check_uint,
    fail,
)

__all__ = [
    "EventBatch",
    "EventIds",
    "Graft",
    "OffsetMap",
    "OffsetRange",
    "Prune",
    "RequestRange",
    "check_event_record",
]


def check_event_record(record: object) -> None:
    """Field shapes and limits of one replicated event; chain and signature are checked by the
    receiver."""
    if not _plainly_valid(record):
        _check_event_fields(record)
    assert isinstance(record, EventRecord)
    check_node_id("source", record.source)


def _plainly_valid(r: object) -> bool:
    """The common case in one expression (batches hold thousands of events); conservative: when it
    says False, ``_check_event_fields`` decides and names the failing field. Source not checked."""
    return (
        type(r) is EventRecord
        and type(r.offset) is int
        and type(r.lamport) is int
        and type(r.timestamp) is int
        and 0 <= r.offset <= MAX_COUNTER
        and 0 <= r.lamport <= MAX_COUNTER
        and 0 <= r.timestamp <= MAX_COUNTER
        and type(r.semantics) is str
        and type(r.name) is str
        and type(r.payload) is str
        and 0 < len(r.semantics) <= _STREAM_NAME_CHARS
        and 0 < len(r.name) <= _STREAM_NAME_CHARS
        and len(r.payload) <= _PAYLOAD_CHARS
        and type(r.chain) is bytes
        and len(r.chain) == DIGEST_SIZE
        and (
            r.signature is None
            or (type(r.signature) is bytes and len(r.signature) == SIGNATURE_SIZE)
        )
    )


# Below these character counts a str is within its byte limit whatever it holds (4 bytes per char).
_STREAM_NAME_CHARS = MAX_STREAM_NAME_LEN // 4
_PAYLOAD_CHARS = MAX_PAYLOAD_LEN // 4


def _check_event_fields(record: object) -> None:
    if type(record) is not EventRecord:
        fail("events must hold EventRecord values")
    check_uint("offset", record.offset)
    check_uint("lamport", record.lamport)
    check_uint("timestamp", record.timestamp)
    check_str("semantics", record.semantics, MAX_STREAM_NAME_LEN, empty=False)
    check_str("name", record.name, MAX_STREAM_NAME_LEN, empty=False)
    check_str("payload", record.payload, MAX_PAYLOAD_LEN)
    check_bytes("chain", record.chain, size=DIGEST_SIZE)
    if record.signature is not None:
        check_bytes("signature", record.signature, size=SIGNATURE_SIZE)


def _check_sorted_sources(name: str, sources: list[str]) -> None:
    if any(a >= b for a, b in pairwise(sources)):
        fail(f"{name} must be sorted by source, each source once")


@dataclass(frozen=True, slots=True, kw_only=True)
class OffsetMap:
    """Anti-entropy cursor: source → highest contiguous offset the sender holds (SPEC §7.4.2).

    ``entries`` is sorted by source, each source once; a source the sender holds nothing of is
    absent. ``more`` is true on every page but the last of one snapshot; only a complete snapshot
    lets the receiver conclude that an absent source is missing at the sender.
    """

    TAG: ClassVar[int] = 40
    entries: tuple[tuple[str, int], ...]
    more: bool = False

    def __post_init__(self) -> None:
        entries = check_tuple("entries", self.entries, MAX_OFFSET_MAP_ENTRIES)
        for entry in entries:
            if type(entry) is not tuple or len(entry) != 2:
                fail("an offset map entry is a (source, offset) pair")
            check_node_id("source", entry[0])
            check_uint("offset", entry[1])
        _check_sorted_sources("entries", [entry[0] for entry in self.entries])
        check_bool("more", self.more)

    @classmethod
    def from_mapping(cls, offsets: Mapping[str, int], *, more: bool = False) -> OffsetMap:
        return cls(entries=tuple(sorted(offsets.items())), more=more)

    def as_dict(self) -> dict[str, int]:
        return dict(self.entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBatch:
    """Events, per source contiguous and ascending, plus the origin keys to verify their signed
    heads.

    ``hops`` is the Plumtree round of an eager push (0 from the origin); None marks an answer to
    ``RequestRange``/``Graft``/an offset map, whose duplicates must never prune a tree edge (SPEC
    §7.4.3). ``keys`` (source → Ed25519 public key, sorted by source) covers sources of this batch
    only.
    """

    TAG: ClassVar[int] = 41
    events: tuple[EventRecord, ...]
    keys: tuple[tuple[str, bytes], ...] = ()
    hops: int | None = None

    def __post_init__(self) -> None:
        last: dict[str, int] = {}
        for record in check_tuple("events", self.events, MAX_BATCH_EVENTS):
            if not _plainly_valid(record):
                _check_event_fields(record)
            assert isinstance(record, EventRecord)
            before = last.get(record.source)
            if before is None:
                check_node_id("source", record.source)  # once per source, not per event
            elif record.offset != before + 1:
                fail("a batch holds each source's events contiguous and ascending")
            last[record.source] = record.offset
        for pair in check_tuple("keys", self.keys, MAX_BATCH_KEYS):
            if type(pair) is not tuple or len(pair) != 2:
                fail("a key entry is a (source, public key) pair")
            check_node_id("source", pair[0])
            check_bytes("public key", pair[1], size=PUBLIC_KEY_SIZE)
            if pair[0] not in last:
                fail("keys may only cover sources of the batch")
        _check_sorted_sources("keys", [pair[0] for pair in self.keys])
        if self.hops is not None:
            check_uint("hops", self.hops, MAX_HOPS)


def _check_span(source: str, first: int, last: int) -> None:
    """A source and an inclusive, non-empty offset span (OffsetRange, RequestRange)."""
    check_node_id("source", source)
    check_uint("first", first)
    check_uint("last", last)
    if last < first:
        fail("last must not be below first")


@dataclass(frozen=True, slots=True, kw_only=True)
class OffsetRange:
    """Offsets ``first..last`` (inclusive) of one source. Wire: ``[source, first, last]``."""

    source: str
    first: int
    last: int

    def __post_init__(self) -> None:
        _check_span(self.source, self.first, self.last)


def _check_ranges(value: object) -> None:
    sources: list[str] = []
    for item in check_tuple("ranges", value, MAX_ID_RANGES):
        if type(item) is not OffsetRange:
            fail("ranges must hold OffsetRange values")
        sources.append(item.source)
    _check_sorted_sources("ranges", sources)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventIds:
    """Plumtree IHAVE on a lazy edge: the sender has these events; ``hops`` as in ``EventBatch``."""

    TAG: ClassVar[int] = 42
    ranges: tuple[OffsetRange, ...]
    hops: int

    def __post_init__(self) -> None:
        _check_ranges(self.ranges)
        check_uint("hops", self.hops, MAX_HOPS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Graft:
    """Plumtree GRAFT: make this edge eager again and send these events (answered with
    ``EventBatch``)."""

    TAG: ClassVar[int] = 43
    ranges: tuple[OffsetRange, ...]

    def __post_init__(self) -> None:
        _check_ranges(self.ranges)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prune:
    """Plumtree PRUNE: the sender got a duplicate over this edge; the receiver makes it lazy for
    ``sources`` (each source has its own tree, SPEC §7.4.6), or for every source when empty."""

    TAG: ClassVar[int] = 44
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for source in check_tuple("sources", self.sources, MAX_ID_RANGES):
            check_node_id("sources", source)
        _check_sorted_sources("sources", list(self.sources))


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRange:
    """Anti-entropy: send ``source``'s events ``first..last`` (inclusive), in batches, as far as
    held."""

    TAG: ClassVar[int] = 45
    source: str
    first: int
    last: int

    def __post_init__(self) -> None:
        _check_span(self.source, self.first, self.last)
