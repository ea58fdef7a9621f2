"""One scheduling pass of the fetcher for one peer, and the per-peer state it budgets against.

A pass fills the peer's free byte budget at once (STYLE.md §7: every buffer has a limit): the
priority blobs first, greedily, in the order they were prioritized; then the other blobs
round-robin, one chunk per blob per turn, so downloads sharing a peer split its pipeline evenly.
Chunk choice within a blob is ``BlobState.pick`` (rarest first, streaming order, endgame).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from swarmnode.swarm.fetcher_blob import BlobState

__all__ = ["RATE_SAMPLE_S", "PeerState", "note_busy", "note_delivery", "plan", "window"]


class PeerState:
    """What we asked of one peer and how it behaves."""

    __slots__ = (
        "connected",
        "cooling",
        "inflight",
        "inflight_bytes",
        "last_progress",
        "rate",
        "sample_bytes",
        "sample_start",
        "strikes",
    )

    def __init__(self) -> None:
        self.connected = False
        self.rate = 0.0
        """Bytes per second it delivered while busy (0: not measured yet)."""
        self.sample_start = 0.0
        self.sample_bytes = 0
        self.inflight: dict[bytes, set[int]] = {}
        """handle -> chunk indices requested and not yet arrived, cancelled or refused."""
        self.inflight_bytes = 0
        self.last_progress = 0.0
        """When it last delivered a requested chunk (or got its first request after idling)."""
        self.strikes = 0
        self.cooling = False
        """Timed out lately: no new requests until its cooling timer fires."""


# A delivery rate is sampled over at least this long (one chunk's arrival says little).
RATE_SAMPLE_S = 0.1


def note_delivery(ps: PeerState, now: float, size: int) -> None:
    """Count ``size`` delivered bytes towards ``ps.rate`` (moving average of busy-time samples)."""
    ps.sample_bytes += size
    elapsed = now - ps.sample_start
    if elapsed >= RATE_SAMPLE_S:
        sample = ps.sample_bytes / elapsed
        ps.rate = sample if ps.rate == 0.0 else (ps.rate + sample) / 2
        ps.sample_start, ps.sample_bytes = now, 0


def note_busy(ps: PeerState, now: float) -> None:
    """``ps`` gets requests after idling: its idle time must not count against its rate."""
    ps.sample_start, ps.sample_bytes = now, 0


def window(ps: PeerState, *, target_s: float, initial: int, least: int, most: int) -> int:
    """Bytes to keep requested from ``ps``: what it delivers in ``target_s``, within bounds.

    A fixed deep pipeline would queue seconds of requests at a slow peer, where a priority
    blob, a Range start or a second download could not overtake them and a faster peer could
    not take them over; sized by rate, the queue drains in about ``target_s`` whatever the link.
    """
    if ps.rate == 0.0:
        return min(initial, most)
    return max(min(least, most), min(most, int(ps.rate * target_s)))


def plan(
    peer: str,
    ps: PeerState,
    priority: Iterable[BlobState],
    others: Iterable[BlobState],
    *,
    cap: int,
    copies: int,
    endgame_chunks: int,
) -> dict[bytes, list[int]]:
    """Pick chunks for ``peer`` up to ``cap`` in-flight bytes and record them as requested.

    Returns handle -> picked indices (unsorted). A single chunk larger than the budget may go to
    an idle peer, or that blob could never be fetched.
    """
    picks: dict[bytes, list[int]] = {}
    skipped: dict[bytes, list[tuple[int, int]]] = {}

    def take(blob: BlobState) -> bool:
        if ps.inflight_bytes and ps.inflight_bytes + blob.max_chunk > cap:
            return False
        handle = blob.spec.handle
        i = blob.pick(peer, skipped.setdefault(handle, []), copies, endgame_chunks)
        if i is None:
            return False
        picks.setdefault(handle, []).append(i)
        blob.requested.setdefault(i, set()).add(peer)
        ps.inflight.setdefault(handle, set()).add(i)
        ps.inflight_bytes += blob.chunk_len(i)
        return True

    blobs: dict[bytes, BlobState] = {}
    for blob in priority:
        blobs[blob.spec.handle] = blob
        blob.scan = blob.cursor
        while take(blob):
            pass
    turn = list(others)
    for blob in turn:
        blobs[blob.spec.handle] = blob
    while turn and ps.inflight_bytes < cap:
        turn = [b for b in turn if take(b)]
    for handle, items in skipped.items():
        if items:  # what the peer lacked goes back for the next pass (lazy heap, see BlobState)
            heap = blobs[handle].heap
            heap.extend(items)
            heapq.heapify(heap)
    return picks
