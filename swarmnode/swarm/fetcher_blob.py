"""Per-blob state of the fetch scheduler: chunk states, who holds and who was asked for what, and
the choice of the next chunk for a peer (rarest first, streaming order for prioritized blobs,
endgame at the tail). Pure; used only by ``swarm/fetcher.py``.

Cost: chunk choice is a heap of ``(availability, rank)`` with lazy deletion, so an arrived chunk
costs O(log n), never a scan of the blob (the issue's 50,000 chunks/s target). Availability
changes push a fresh entry; stale entries are dropped when they surface.

Order among equally rare chunks: ascending index (``rank == index``) while we fetch alone, which
keeps writes and the whole-blob hash in order. Once a fellow fetcher shows up, ``diversify``
ranks the chunks in a shuffled order of our own: fetchers that all took chunk 0, 1, 2, ... from
the one origin had nothing to give each other, and a swarm fetched no faster than a lone source.
A shuffle, not a rotation: fetchers rotated to different starts caught up with each other and
then raced for the same chunks just ahead of the leader (netsim blob-swarm: the origin sent each
chunk twice). The whole-blob hash then reads the chunks back at the end (``PartialBlob``).
"""

from __future__ import annotations

import heapq
import random

import blake3

from protocol.messages_transfer import ChunkRange
from swarmnode.swarm.fetcher_types import BlobSpec, FetchProgress

__all__ = [
    "MISSING",
    "STORED",
    "WRITING",
    "BlobState",
    "bitmap_to_bits",
    "bits_to_bitmap",
    "ranges",
]

MISSING = 0
STORED = 1
WRITING = 2
"""Chunk states: WRITING = handed to the driver in a WriteChunk, not yet reported stored."""

# A pick pass stops skipping chunks a peer lacks after this many, so one partial provider cannot
# make a pass O(chunks); what is skipped goes back to the heap when the pass ends.
MAX_SKIPS_PER_PASS = 4096

_TO_FLAGS = bytes.maketrans(b"01", b"\x00\x01")
_STORED_TO_TEXT = bytes.maketrans(b"\x00\x01\x02", b"010")


def bitmap_to_bits(bitmap: bytes, count: int) -> bytearray:
    """SPEC §7.5.6 bitmap (MSB first) -> one 0/1 byte per chunk, without a Python loop per bit."""
    if count == 0:
        return bytearray()
    text = bin(int.from_bytes(bitmap, "big"))[2:].zfill(len(bitmap) * 8)[:count]
    return bytearray(text.encode().translate(_TO_FLAGS))


def bits_to_bitmap(states: bytearray | bytes, count: int) -> bytes:
    """Chunk states -> SPEC §7.5.6 bitmap of the STORED ones (spare bits zero)."""
    nbytes = (count + 7) // 8
    if count == 0:
        return b""
    text = bytes(states).translate(_STORED_TO_TEXT) + b"0" * (nbytes * 8 - count)
    return int(text, 2).to_bytes(nbytes, "big")


def ranges(indices: list[int]) -> list[ChunkRange]:
    """Sorted distinct indices -> adjacent runs as ChunkRanges."""
    out: list[ChunkRange] = []
    if not indices:
        return out
    start = prev = indices[0]
    for i in indices[1:]:
        if i != prev + 1:
            out.append(ChunkRange(start=start, count=prev - start + 1))
            start = i
        prev = i
    out.append(ChunkRange(start=start, count=prev - start + 1))
    return out


class BlobState:
    """One download. ``outline`` is None until verified; scheduling starts after that."""

    __slots__ = (
        "asked",
        "avail",
        "bad_outline",
        "bitmaps",
        "bytes_received",
        "count",
        "cursor",
        "dont_have",
        "duplicate_bytes",
        "fast",
        "fast_target",
        "fast_tried",
        "first",
        "heap",
        "held",
        "index_by_rank",
        "last_size",
        "outline",
        "parts",
        "peers_used",
        "priority",
        "probed",
        "rank_by_index",
        "remaining",
        "requested",
        "scan",
        "spec",
        "state",
        "stored_bytes",
        "stored_chunks",
        "stream",
        "writer",
    )

    def __init__(self, spec: BlobSpec) -> None:
        self.spec = spec
        self.count = -(-spec.size // spec.chunk_size)
        self.last_size = spec.size - (self.count - 1) * spec.chunk_size if self.count else 0
        self.state = bytearray(self.count)
        self.avail = [0] * self.count
        self.heap: list[tuple[int, int]] = []
        """(availability, rank) of candidate chunks; ``index_of`` turns a rank back."""
        self.index_by_rank: list[int] | None = None
        """None: rank == index; else the shuffled order ``diversify`` chose."""
        self.rank_by_index: list[int] | None = None
        self.requested: dict[int, set[str]] = {}
        self.writer: dict[int, str] = {}
        self.bitmaps: dict[str, bytearray] = {}
        self.held: dict[str, int] = {}
        self.outline: bytes | None = None
        self.parts: dict[str, tuple[bytearray, bytearray, list[int]]] = {}
        self.probed: dict[str, float] = {}
        self.dont_have: set[str] = set()
        self.bad_outline: set[str] = set()
        self.asked: set[str] = set()
        self.fast = False
        """Single-chunk fast path (no outline round trip): ``fast_target`` is asked for it."""
        self.fast_target: str | None = None
        self.fast_tried: set[str] = set()
        self.priority = False
        self.stream = False
        self.first = 0
        self.cursor = 0
        self.scan = 0
        self.remaining = self.count
        self.stored_chunks = 0
        self.stored_bytes = 0
        self.bytes_received = 0
        self.duplicate_bytes = 0
        self.peers_used: set[str] = set()

    # -- sizes and states ------------------------------------------------------------------

    def chunk_len(self, index: int) -> int:
        return self.last_size if index == self.count - 1 else self.spec.chunk_size

    @property
    def max_chunk(self) -> int:
        return min(self.spec.chunk_size, self.spec.size)

    @property
    def complete(self) -> bool:
        return self.stored_chunks == self.count

    def load_have(self, have: bytes) -> None:
        """Resume: mark the chunks of a persisted bitmap stored."""
        if len(have) != (self.count + 7) // 8:
            return
        for i, bit in enumerate(bitmap_to_bits(have, self.count)):
            if bit:
                self.state[i] = STORED
                self.stored_chunks += 1
                self.stored_bytes += self.chunk_len(i)
        self.remaining = self.count - self.stored_chunks

    def start(self, outline: bytes) -> None:
        """The outline is verified: every missing chunk becomes a candidate."""
        self.outline = outline
        self.parts.clear()
        self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        state, avail, rank = self.state, self.avail, self.rank_of
        self.heap = [(avail[i], rank(i)) for i in range(self.count) if state[i] == MISSING]
        heapq.heapify(self.heap)

    def rank_of(self, index: int) -> int:
        ranks = self.rank_by_index
        return index if ranks is None else ranks[index]

    def index_of(self, rank: int) -> int:
        order = self.index_by_rank
        return rank if order is None else order[rank]

    @property
    def diversified(self) -> bool:
        return self.index_by_rank is not None

    def diversify(self, seed: int) -> None:
        """Take equally rare chunks in an order shuffled by ``seed`` instead of ascending
        (module docstring); once per download."""
        if self.index_by_rank is not None or self.count < 2:
            return
        order = list(range(self.count))
        random.Random(seed).shuffle(order)
        ranks = [0] * self.count
        for rank, index in enumerate(order):
            ranks[index] = rank
        self.index_by_rank, self.rank_by_index = order, ranks
        if self.outline is not None:
            self._rebuild_heap()

    def outline_page(self, peer: str, start: int, digests: bytes) -> bytes | None:
        """Add one ``Outline`` page from ``peer`` (pages are kept per peer, so a bad outline is
        blamed on its sender alone); the whole outline, unverified, once every digest is in."""
        part = self.parts.get(peer)
        if part is None:
            part = self.parts[peer] = (bytearray(self.count * 32), bytearray(self.count), [0])
        buf, covered, filled = part
        n = len(digests) // 32
        buf[start * 32 : (start + n) * 32] = digests
        filled[0] += n - sum(covered[start : start + n])
        covered[start : start + n] = b"\x01" * n
        return bytes(buf) if filled[0] >= self.count else None

    def digest(self, index: int) -> bytes:
        assert self.outline is not None
        return self.outline[index * 32 : index * 32 + 32]

    def requeue(self, index: int) -> None:
        """``index`` may be missing and unrequested again: make it a candidate."""
        if self.state[index] == MISSING and index not in self.requested:
            if self.outline is not None:
                heapq.heappush(self.heap, (self.avail[index], self.rank_of(index)))
            if self.stream and self.first <= index < self.cursor:
                self.cursor = index

    # -- have-state -----------------------------------------------------------------------

    def set_bit(self, peer: str, index: int, value: int) -> bool:
        """Set one chunk of ``peer``'s bitmap; True when it changed."""
        bits = self.bitmaps.get(peer)
        if bits is None:
            if not value:
                return False
            bits = self.bitmaps[peer] = bytearray(self.count)
            self.held[peer] = 0
        if bits[index] == value:
            return False
        bits[index] = value
        delta = 1 if value else -1
        self.held[peer] += delta
        self.avail[index] += delta
        if self.held[peer] == 0:
            del self.bitmaps[peer]
            del self.held[peer]
        if (
            self.outline is not None
            and self.state[index] == MISSING
            and index not in self.requested
        ):
            heapq.heappush(self.heap, (self.avail[index], self.rank_of(index)))
        return True

    def set_bitmap(self, peer: str, bits: bytearray) -> None:
        """Replace ``peer``'s bitmap (HaveBitmap), adjusting availability where it changed."""
        old = self.bitmaps.get(peer)
        if old is None:
            old = bytearray(self.count)
        if old == bits:
            return
        avail, state, req = self.avail, self.state, self.requested
        push = self.outline is not None
        changed = []
        for i in range(self.count):
            if old[i] != bits[i]:
                avail[i] += 1 if bits[i] else -1
                if push and state[i] == MISSING and i not in req:
                    changed.append((avail[i], self.rank_of(i)))
        held = sum(bits)
        if held:
            self.bitmaps[peer] = bits
            self.held[peer] = held
        else:
            self.bitmaps.pop(peer, None)
            self.held.pop(peer, None)
        if len(changed) > len(self.heap) // 2:
            self.heap.extend(changed)
            heapq.heapify(self.heap)
        else:
            for entry in changed:
                heapq.heappush(self.heap, entry)

    def prioritize(self, first_index: int) -> None:
        """Stream order: missing chunks from ``first_index`` on go first, ascending."""
        self.priority = True
        self.first = self.cursor = self.scan = max(0, min(first_index, self.count))
        self.stream = self.first < self.count

    def has(self, peer: str, index: int) -> bool:
        bits = self.bitmaps.get(peer)
        return (bits is not None and bits[index] == 1) or self.fast_target == peer

    # -- choosing chunks --------------------------------------------------------------------

    def pick(
        self, peer: str, skipped: list[tuple[int, int]], copies: int, endgame_chunks: int
    ) -> int | None:
        """The next chunk to request from ``peer``, or None. Chunks it lacks that surface from the
        heap go to ``skipped`` (the caller pushes them back after the pass)."""
        state, req = self.state, self.requested
        if self.stream:
            i = self.cursor
            while i < self.count and state[i] != MISSING:
                i += 1
            self.cursor = i
            j = max(self.scan, i)
            while j < self.count:
                if state[j] == MISSING and j not in req and self.has(peer, j):
                    self.scan = j + 1
                    return j
                j += 1
            self.scan = j
            if i >= self.count:
                self.stream = False
        heap, avail = self.heap, self.avail
        while heap and len(skipped) < MAX_SKIPS_PER_PASS:
            a, rank = heapq.heappop(heap)
            i = self.index_of(rank)
            if state[i] != MISSING or i in req or avail[i] != a:
                continue
            if not self.has(peer, i):
                skipped.append((a, rank))
                continue
            return i
        if not self.in_endgame(endgame_chunks):
            return None
        for i, peers in req.items():
            if (
                len(peers) < copies
                and peer not in peers
                and state[i] == MISSING
                and self.has(peer, i)
            ):
                return i
        return None

    def in_endgame(self, endgame_chunks: int) -> bool:
        """Only the tail is raced: at most ``endgame_chunks`` and 2 % of the chunks (at least
        one) missing. Fast-path blobs ask one peer at a time by design and never race."""
        return not self.fast and self.remaining <= max(1, min(endgame_chunks, self.count // 50))

    def has_work(self, endgame_chunks: int) -> bool:
        """O(1): some missing chunk is unrequested (every requested chunk is MISSING), or the
        tail may be raced."""
        return self.outline is not None and (
            self.remaining > len(self.requested) or self.in_endgame(endgame_chunks)
        )

    def providers(self) -> tuple[str, ...]:
        return tuple(sorted(self.held))

    def outline_ok(self, outline: bytes) -> bool:
        """A persisted outline (resume) still matches the spec's root."""
        return len(outline) == self.count * 32 and (
            blake3.blake3(outline).digest() == self.spec.outline_root
        )

    def progress(self, paused: bool) -> FetchProgress:
        return FetchProgress(
            chunk_count=self.count,
            stored_chunks=self.stored_chunks,
            stored_bytes=self.stored_bytes,
            bytes_received=self.bytes_received,
            duplicate_bytes=self.duplicate_bytes,
            peers_used=tuple(sorted(self.peers_used)),
            providers=self.providers(),
            priority=self.priority,
            paused=paused,
        )
