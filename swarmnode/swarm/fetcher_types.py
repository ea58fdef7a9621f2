"""Values the fetch scheduler (``swarm/fetcher.py``) takes and hands back: blob spec, config,
notices for the driver and progress snapshots. Pure data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BlobSpec",
    "FetchComplete",
    "FetchProgress",
    "FetcherConfig",
    "OutlineVerified",
    "WriteChunk",
]


@dataclass(frozen=True, slots=True)
class BlobSpec:
    """What the signed metadata event says about a blob (SPEC §7.5.1)."""

    handle: bytes
    """32-byte BLAKE3 digest of the content."""
    size: int
    chunk_size: int
    outline_root: bytes
    origin: str | None = None
    """Node id that announced the blob (a likely provider), if known."""


@dataclass(frozen=True, slots=True)
class FetcherConfig:
    """Tunables, frozen so netsim can vary them per run."""

    max_inflight_bytes_per_peer: int = 32 * 1024 * 1024
    """Deep pipelines: 32 chunks of 1 MiB keep a LAN link busy across a round trip."""
    window_target_s: float = 0.25
    """A peer is kept busy with what it delivers in this long (its measured rate), between
    ``min_window_bytes`` and ``max_inflight_bytes_per_peer``: deep enough to fill a fast link,
    short enough that a priority read, a Range or another download overtakes within a moment."""
    initial_window_bytes: int = 4 * 1024 * 1024
    """The window before a peer's rate is known."""
    min_window_bytes: int = 2 * 1024 * 1024
    max_unstored_bytes: int = 16 * 1024 * 1024
    """Arrived but not yet reported stored (node-wide): back-pressure from the disk, and most of
    what a download holds in memory."""
    request_timeout_s: float = 10.0
    """A peer delivering nothing this long while it has requests loses them (requeued)."""
    reprobe_s: float = 5.0
    """Re-send RequestOutline to silent / DontHave peers while chunks have no provider."""
    endgame_copies: int = 2
    """At most this many outstanding requests per chunk in endgame."""
    bad_data_strikes: int = 2
    """Strikes (bad chunks, timeouts) that make a peer ``PeerMisbehaved``."""
    max_probe_peers: int = 8
    """RequestOutline goes to at most this many connected peers per blob."""
    refill_bytes: int = 4 * 1024 * 1024
    """A busy peer is topped up only once this much of its budget is free: one RequestChunks
    per ~16 chunks instead of one per arriving chunk (measured: per-chunk requests cost the
    receiving loop ~14 % of its time in sends on a 1 GiB transfer)."""
    endgame_chunks: int = 16
    """Endgame starts when at most this many chunks (and at most 2 % of the blob, at least 1)
    are still missing: every duplicate is waste, so only the tail is raced (issue 5: <= 2 %)."""


@dataclass(frozen=True, slots=True)
class WriteChunk:
    """The driver verifies ``blake3(data) == digest`` and writes the chunk (``ChunkWriter``),
    then calls ``chunk_stored`` or ``chunk_rejected``: hashing stays off the machine."""

    handle: bytes
    index: int
    data: bytes | memoryview
    digest: bytes
    peer: str


@dataclass(frozen=True, slots=True)
class OutlineVerified:
    """The outline matched the spec's root; the driver persists it (resume, partial serving)."""

    handle: bytes
    outline: bytes


@dataclass(frozen=True, slots=True)
class FetchComplete:
    """Every chunk is reported stored; the driver checks the file against the handle."""

    handle: bytes


@dataclass(frozen=True, slots=True)
class FetchProgress:
    """Snapshot for status (issue 5 §7)."""

    chunk_count: int
    stored_chunks: int
    stored_bytes: int
    bytes_received: int
    """ChunkData payload bytes, duplicates included."""
    duplicate_bytes: int
    peers_used: tuple[str, ...]
    """Sorted peers that delivered a stored chunk."""
    providers: tuple[str, ...]
    """Sorted peers known to hold at least one chunk."""
    priority: bool
    paused: bool
