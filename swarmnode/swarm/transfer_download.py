"""One download on a node, and the HTTP reader that streams its verified prefix as it grows.

``Download`` is the node-side record of a blob being fetched: its partial file, the writes in
flight on worker threads, and a pulse that wakes readers whenever a chunk is stored, the download
completes, or retention removes it. The fetcher machine keeps the protocol state; this keeps what
touches files.

``GrowingBlob`` is what ``GET /api/v1/blobs?<handle>`` gets for a blob still arriving: each
``read`` returns the verified bytes at its offset as soon as the chunks holding them are stored,
asking the fetcher to fetch from that offset first (a Range read starts where the client asked).
It reads through its own file descriptor, so the partial file being renamed into ``data/`` on
completion, or unlinked by retention, does not disturb a response in progress.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from swarmnode.store.catalog import BlobRow
from swarmnode.store.errors import BlobDeleted, BlobNotAvailable
from swarmnode.store.metadata import hex_of_handle
from swarmnode.store.partial import PartialBlob

__all__ = ["Download", "GrowingBlob", "digest_of"]

# Rate samples kept per download: a few seconds at one sample per stored chunk batch.
_RATE_WINDOW_S = 3.0


def digest_of(handle: str) -> bytes:
    """The wire handle (32 raw bytes) of an app-facing ``blake3:<hex>`` handle."""
    return bytes.fromhex(hex_of_handle(handle))


@dataclass(slots=True, eq=False)
class Download:
    """See the module docstring."""

    row: BlobRow
    digest: bytes
    priority: bool = False
    partial: PartialBlob | None = None
    outline: bytes | None = None
    data: bytes | None = None
    """A one-chunk blob's verified content, until the batch installer wrote it."""
    resumed_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    logged_at: float = field(default_factory=time.monotonic)
    writes: int = 0
    finishing: bool = False
    done: bool = False
    replaced: bool = False
    """The bytes became local by another way (an upload); the partial file is discarded."""
    gone: bool = False
    failed: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    _pulse: asyncio.Event = field(default_factory=asyncio.Event)
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def small(self) -> bool:
        """One chunk at most: fetched in one message, installed in batches without a partial
        file (store/replicas.py)."""
        return self.row.size <= self.row.chunk_size

    @property
    def handle(self) -> str:
        return self.row.handle

    def write_started(self) -> None:
        self.writes += 1
        self.idle.clear()

    def write_ended(self) -> None:
        self.writes -= 1
        if self.writes == 0:
            self.idle.set()

    def pulse(self) -> None:
        """Wake every reader waiting on this download."""
        self._pulse.set()
        self._pulse = asyncio.Event()

    async def changed(self) -> None:
        """Wait for the next ``pulse``."""
        await self._pulse.wait()

    def sample(self, stored_bytes: int) -> None:
        now = time.monotonic()
        samples = self._samples
        samples.append((now, stored_bytes))
        while len(samples) > 2 and samples[0][0] < now - _RATE_WINDOW_S:
            samples.popleft()

    def rate(self) -> float:
        """Bytes stored per second over the last few seconds."""
        samples = self._samples
        if len(samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = samples[0], samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def available(self, offset: int, length: int) -> int:
        """How many bytes from ``offset`` (at most ``length``) are verified and written."""
        if self.done:
            return min(length, self.row.size - offset)
        partial = self.partial
        if partial is None:
            return 0
        size, chunk = self.row.size, self.row.chunk_size
        end = min(offset + length, size)
        index = offset // chunk
        reach = offset
        while reach < end and partial.has_chunk(index):
            index += 1
            reach = min(index * chunk, size)
        return min(reach, end) - offset


class GrowingBlob:
    """A ``BlobReader`` over a download in progress (module docstring)."""

    def __init__(
        self,
        download: Download,
        *,
        content_type: str,
        paths: tuple[Path, Path],
        prioritize: Callable[[Download, int], None],
    ) -> None:
        """``paths``: the partial file, and where it is installed once complete."""
        self.handle = download.handle
        self.size = download.row.size
        self.content_type = content_type
        self._download = download
        self._prioritize = prioritize
        self._paths = paths
        self._fd: int | None = None
        self._on_partial = False

    async def read(self, offset: int, length: int) -> bytes:
        download = self._download
        loop = asyncio.get_running_loop()
        while True:
            if download.gone:
                raise BlobDeleted(self.handle)
            if download.failed is not None:
                raise BlobNotAvailable(self.handle)
            count = download.available(offset, length)
            if count > 0:
                fd = self._open()
                job = loop.run_in_executor(None, os.pread, fd, count, offset)
                try:
                    piece = await asyncio.shield(job)
                except asyncio.CancelledError:
                    await asyncio.wait([job])  # cancel-safe: close() must not race the read
                    raise
                if not piece:
                    raise ConnectionResetError("partial blob file shorter than expected")
                return piece
            self._prioritize(download, offset)
            await download.changed()

    def _open(self) -> int:
        partial_path, data_path = self._paths
        if self._download.replaced and self._on_partial:
            self.close()  # an upload made the blob local: the partial file is incomplete
        if self._fd is None:
            self._on_partial = not self._download.replaced
            try:
                self._fd = os.open(partial_path if self._on_partial else data_path, os.O_RDONLY)
            except FileNotFoundError:  # installed meanwhile: the same inode, renamed
                self._on_partial = False
                self._fd = os.open(data_path, os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
