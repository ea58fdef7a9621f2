"""Blob replication's settings, and its one environment override.

``SWARMNODE_FLUSH_INTERVAL`` (seconds) is how often a download persists its verified-chunk bitmap:
the most work a ``kill -9`` can lose. The default (1 s, DESIGN.md) costs one fdatasync per second
per download; tests set it lower to bound what they re-fetch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from swarmnode.swarm.chunk_writer import WriteConfig
from swarmnode.swarm.fetcher import FetcherConfig

__all__ = ["FLUSH_INTERVAL_ENV", "TransferConfig", "transfer_config_from_env"]

FLUSH_INTERVAL_ENV: Final = "SWARMNODE_FLUSH_INTERVAL"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferConfig:
    """What the fetcher machine needs plus the node-side policy around it."""

    fetcher: FetcherConfig = field(default_factory=FetcherConfig)
    flush_interval_s: float = 1.0
    # Downloads with an open partial file at once; the rest wait in announcement order (an HTTP
    # GET jumps the queue). Bounds open files, and concentrates bandwidth on few blobs so each
    # finishes sooner than if all crawled.
    max_active: int = 64
    # One-chunk downloads in flight at once: they hold no file, only their content in memory
    # between arrival and their batch install, so they are bounded by count and by bytes.
    max_active_small: int = 256
    max_small_bytes: int = 64 << 20
    # While the disk is full, how often free space is checked before fetching resumes.
    disk_retry_s: float = 2.0
    # Free bytes that count as "space returned": a few chunks' worth beyond the next reservation.
    disk_headroom_bytes: int = 4 << 20
    # Where arriving chunks are verified and written (chunk_writer.py: on the loop while the
    # disk keeps up, else on the one worker thread, which also does the whole-blob hashing).
    writes: WriteConfig = field(default_factory=WriteConfig)


def transfer_config_from_env(environ: Mapping[str, str]) -> TransferConfig:
    """The default config with ``SWARMNODE_FLUSH_INTERVAL`` applied; ``ValueError`` if it is not
    a number in (0, 60]."""
    raw = environ.get(FLUSH_INTERVAL_ENV)
    if not raw:
        return TransferConfig()
    interval = float(raw)
    if not 0.0 < interval <= 60.0:
        raise ValueError(f"{FLUSH_INTERVAL_ENV} must be in (0, 60] seconds, got {raw!r}")
    return dataclasses.replace(TransferConfig(), flush_interval_s=interval)
