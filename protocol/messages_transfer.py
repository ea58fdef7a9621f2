"""Blob transfer messages: outlines, chunk requests and data, have-state (SPEC.md §7.5).

A blob is named by ``handle``, the raw 32-byte BLAKE3 digest of its content (the app-facing handle
is ``"blake3:" + handle.hex()``). Chunks are checked against the outline, the outline against the
root in the blob's metadata event (``protocol.outline``), so any peer may serve any verified chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.messages_base import (
    DIGEST_SIZE,
    MAX_CHUNK_COUNT,
    MAX_CHUNK_RANGES,
    MAX_CHUNK_SIZE,
    MAX_COUNTER,
    MAX_HAVE_INDICES,
    MAX_OUTLINE_PAGE,
    MIN_CHUNK_SIZE,
    OVER_LIMIT,
    check_bytes,
    check_tuple,
    check_uint,
    fail,
)

__all__ = [
    "Cancel",
    "ChunkData",
    "ChunkRange",
    "DontHave",
    "HaveBitmap",
    "HaveUpdate",
    "Outline",
    "RequestChunks",
    "RequestOutline",
    "bitmap_size",
]


def bitmap_size(chunk_count: int) -> int:
    """Bytes of a have-bitmap for ``chunk_count`` chunks."""
    return (chunk_count + 7) // 8


def _check_handle(value: object) -> None:
    check_bytes("handle", value, size=DIGEST_SIZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRange:
    """Chunks ``start .. start + count - 1``. Wire: ``[start, count]``."""

    start: int
    count: int

    def __post_init__(self) -> None:
        check_uint("start", self.start, MAX_CHUNK_COUNT - 1)
        check_uint("count", self.count, MAX_CHUNK_COUNT, 1)
        if self.start + self.count > MAX_CHUNK_COUNT:
            fail("a chunk range ends beyond MAX_CHUNK_COUNT")


def _check_ranges(value: object) -> None:
    end = 0
    for item in check_tuple("ranges", value, MAX_CHUNK_RANGES):
        if type(item) is not ChunkRange:
            fail("ranges must hold ChunkRange values")
        if item.start < end:
            fail("chunk ranges must be ascending and must not overlap")
        end = item.start + item.count


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestOutline:
    """Asks for the outline page starting at digest ``start`` and registers interest in the blob:
    the provider answers ``Outline`` then ``HaveBitmap`` (or ``DontHave`` with no ranges), and sends
    ``HaveUpdate`` as it verifies more chunks until ``Cancel`` with no ranges (SPEC §7.5.1)."""

    TAG: ClassVar[int] = 60
    handle: bytes
    start: int = 0

    def __post_init__(self) -> None:
        _check_handle(self.handle)
        check_uint("start", self.start, MAX_CHUNK_COUNT - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outline:
    """One page of a blob's outline: the digests of chunks ``start ..``, at most MAX_OUTLINE_PAGE of
    them.

    The receiver checks the assembled outline against the outline root of the metadata event before
    it trusts any digest of it; ``size`` and ``chunk_size`` must match that event too.
    """

    TAG: ClassVar[int] = 61
    handle: bytes
    size: int
    chunk_size: int
    start: int
    digests: bytes

    def __post_init__(self) -> None:
        _check_handle(self.handle)
        check_uint("size", self.size, MAX_COUNTER)
        check_uint("chunk_size", self.chunk_size, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE)
        if self.chunk_size & (self.chunk_size - 1):
            fail("chunk_size must be a power of two")
        total = -(-self.size // self.chunk_size)
        if total > MAX_CHUNK_COUNT:
            fail("the blob has over MAX_CHUNK_COUNT chunks", OVER_LIMIT)
        check_uint("start", self.start, MAX_CHUNK_COUNT - 1)
        check_bytes("digests", self.digests, max_len=MAX_OUTLINE_PAGE * DIGEST_SIZE)
        if len(self.digests) % DIGEST_SIZE:
            fail("digests must be whole 32-byte digests")
        count = len(self.digests) // DIGEST_SIZE
        if total == 0 and (self.start or count):
            fail("an empty blob has an empty outline")
        if total and (count == 0 or self.start + count > total):
            fail("the outline page must hold 1+ digests within the blob's chunks")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestChunks:
    """Asks for the chunks in ``ranges``; each is answered by ``ChunkData`` or covered by
    ``DontHave``."""

    TAG: ClassVar[int] = 62
    handle: bytes
    ranges: tuple[ChunkRange, ...]

    def __post_init__(self) -> None:
        _check_handle(self.handle)
        _check_ranges(self.ranges)
        if not self.ranges:
            fail("a chunk request names 1+ ranges")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkData:
    """One chunk's bytes; the receiver verifies them against the outline before storing or serving.

    ``codec.encode_frame`` hands ``data`` on uncopied (its own buffer in the list for
    ``writelines``).
    """

    TAG: ClassVar[int] = 63
    handle: bytes
    index: int
    data: bytes | memoryview
    """``bytes``, or a read-only byte view (``codec.decode`` hands out a view of the frame body
    instead of copying up to 1 MiB per chunk)."""

    def __post_init__(self) -> None:
        _check_handle(self.handle)
        check_uint("index", self.index, MAX_CHUNK_COUNT - 1)
        data = self.data
        if type(data) is memoryview:
            if not (data.readonly and data.format == "B" and data.c_contiguous):
                fail("chunk data must be bytes or a read-only contiguous byte view")
            if len(data) > MAX_CHUNK_SIZE:
                fail(f"data is over {MAX_CHUNK_SIZE} bytes", OVER_LIMIT)
        else:
            check_bytes("data", data, max_len=MAX_CHUNK_SIZE)
        if not data:
            fail("chunk data is never empty (an empty blob has no chunks)")


@dataclass(frozen=True, slots=True, kw_only=True)
class HaveBitmap:
    """Which chunks the sender holds verified: bit ``i`` is bit ``7 - i % 8`` of byte ``i // 8``
    (most significant first, as BitTorrent); spare bits of the last byte are zero."""

    TAG: ClassVar[int] = 64
    handle: bytes
    chunk_count: int
    bitmap: bytes

    def __post_init__(self) -> None:
        _check_handle(self.handle)
        check_uint("chunk_count", self.chunk_count, MAX_CHUNK_COUNT)
        check_bytes("bitmap", self.bitmap, size=bitmap_size(self.chunk_count))
        spare = -self.chunk_count % 8
        if spare and self.bitmap[-1] & ((1 << spare) - 1):
            fail("spare bits of a have-bitmap must be zero")

    def has(self, index: int) -> bool:
        return 0 <= index < self.chunk_count and bool(self.bitmap[index // 8] & (0x80 >> index % 8))


@dataclass(frozen=True, slots=True, kw_only=True)
class HaveUpdate:
    """Chunks the sender verified since its last ``HaveBitmap``/``HaveUpdate``, ascending."""

    TAG: ClassVar[int] = 65
    handle: bytes
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_handle(self.handle)
        indices = check_tuple("indices", self.indices, MAX_HAVE_INDICES)
        if not indices:
            fail("a have-update names 1+ chunks")
        previous = -1
        for index in indices:
            check_uint("index", index, MAX_CHUNK_COUNT - 1)
            assert isinstance(index, int)
            if index <= previous:
                fail("indices must be strictly ascending")
            previous = index


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """Withdraws requested chunks (endgame duplicates, a fetch that finished elsewhere); no ranges:
    all requests for the blob and the interest registered by ``RequestOutline``."""

    TAG: ClassVar[int] = 66
    handle: bytes
    ranges: tuple[ChunkRange, ...] = ()

    def __post_init__(self) -> None:
        _check_handle(self.handle)
        _check_ranges(self.ranges)


@dataclass(frozen=True, slots=True, kw_only=True)
class DontHave:
    """The sender cannot serve these requested chunks (any more); no ranges: it holds nothing of the
    blob, not even the outline (answer to ``RequestOutline``)."""

    TAG: ClassVar[int] = 67
    handle: bytes
    ranges: tuple[ChunkRange, ...] = ()

    def __post_init__(self) -> None:
        _check_handle(self.handle)
        _check_ranges(self.ranges)
