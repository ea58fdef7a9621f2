"""Blob files on disk: the directory layout, streaming ingest into a temp file, atomic publish.

Layout under ``<data-dir>/blobs/``::

    catalog.sqlite  the catalog (see catalog.py)
    tmp/            uploads in progress; whatever is here at start is a crash leftover: deleted
    data/<hex>      complete, verified blobs, named by the 64 hex digits of their handle
    partial/        for the replication issue: ``<hex>`` (the file being assembled, at its final
                    size) and ``<hex>.bitmap`` (verified chunks); kept across restarts to resume

Ingest (``IngestWriter``) hashes and writes in one pass on a worker thread: the event loop copies
what the HTTP body yields into a large pooled buffer and hands full buffers to the thread, so
reading the next piece overlaps hashing and writing the previous one (blake3 and ``os.write``
release the GIL on large buffers). Exactly one piece is in flight per upload, which keeps hashing
and file order trivially sequential. Buffers are reused across uploads (first touch of fresh memory
is slow here, DESIGN.md) and the pool bounds memory. ``publish_file`` makes a sealed temp file a
blob: fsync (done by ``finish``), rename into ``data/``, fsync the directory; a crash at any
instant leaves the whole blob under its final name or nothing there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import logging
import os
import secrets
import sys
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from protocol.outline import CHUNK_SIZE, OutlineBuilder
from swarmnode.store.errors import BlobTooLarge, DiskFull

__all__ = [
    "PIECE_SIZE",
    "BufferPool",
    "IngestWriter",
    "IngestedFile",
    "StoreLayout",
    "WriteFn",
    "fsync_dir",
    "raise_if_disk_full",
    "start_writeback",
    "tune_allocator",
]

log = logging.getLogger(__name__)

# Size of one hand-off to the worker thread. Large enough that a thread hop and blake3's thread
# fan-out cost little per byte; two per upload (one filling, one in flight) keep RSS small.
PIECE_SIZE = 4 * 1024 * 1024
# Buffers one upload may hold: one in the workers, one filling, one full and queued, so jitter
# on either side does not stall the other.
PIECES_PER_UPLOAD = 3
# Pieces the pool may allocate in total: four uploads at full speed, more wait (bounded memory).
POOL_PIECES = 4 * PIECES_PER_UPLOAD
TMP_SUFFIX = ".part"

WriteFn = Callable[[int, memoryview], int]
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _load_start_writeback() -> Callable[[int, int, int], None] | None:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` from libc, or None where absent.

    Starting writeback of each piece as soon as it is written lets the disk work during the
    upload, so the fsync before the 201 waits for the last piece or two instead of the whole
    blob (measured: the fsync of 512 MiB takes ~0.13 s here, a third of a raw upload's time).
    Durability does not depend on it: ``finish`` still fsyncs.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    sync_file_range_write = 2

    def start_writeback(fd: int, offset: int, length: int) -> None:
        func(fd, offset, length, sync_file_range_write)  # advisory: failures are ignored

    return start_writeback


start_writeback = _load_start_writeback()


# glibc mallopt parameters (malloc.h) and the values tune_allocator sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 8 * 1024 * 1024
_TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_allocator() -> bool:
    """Make glibc keep and reuse the memory of the HTTP body's pieces; True if it applied.

    The loop receives an upload as one fresh ``bytes`` object per socket read (64-256 KiB).
    With glibc's defaults those are mmapped or their heap space is trimmed back to the OS as
    soon as they are freed, so the next read faults fresh pages in: measured ~83,000 minor faults
    per 512 MiB upload, and on this VM first touch is slow (DESIGN.md). Serving allocations up to
    8 MiB from the heap (socket reads, the 1 MiB download reads, the 4 MiB ingest buffers) and
    keeping up to 32 MiB of free heap took the upload from ~0.65 to ~0.8 of a raw-body-to-disk
    handler (bench/http_blobs.py). 64 MiB, because a blob fetch keeps tens of MiB of 1 MiB frames
    in flight: with 32 MiB the fetching node took 75,000-135,000 minor faults per GiB fetched,
    with 64 MiB ~22,000. A fixed threshold must stay above the download piece size,
    or every download read would be mmapped afresh. Process-wide, idempotent; a no-op where libc
    has no ``mallopt``. The cost is at most 64 MiB of retained free memory per arena.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    )


def raise_if_disk_full(exc: OSError) -> None:
    """Re-raise an ENOSPC/EDQUOT ``OSError`` as ``DiskFull``; other errors stay the caller's."""
    if exc.errno in _DISK_FULL:
        raise DiskFull(str(exc)) from exc


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """Where the store keeps what; see the module docstring."""

    root: Path

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def partial(self) -> Path:
        return self.root / "partial"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite"

    def ensure(self) -> None:
        for path in (self.root, self.tmp, self.data, self.partial):
            path.mkdir(parents=True, exist_ok=True)

    def data_path(self, hex_digest: str) -> Path:
        return self.data / hex_digest

    def partial_path(self, hex_digest: str) -> Path:
        return self.partial / hex_digest

    def new_tmp_path(self) -> Path:
        return self.tmp / (secrets.token_hex(12) + TMP_SUFFIX)


class BufferPool:
    """A bounded set of reusable ``PIECE_SIZE`` buffers shared by all uploads (loop thread only)."""

    def __init__(self, *, piece_size: int = PIECE_SIZE, pieces: int = POOL_PIECES) -> None:
        self.piece_size = piece_size
        self._free: list[bytearray] = []
        self._available = pieces
        self._released = asyncio.Event()

    async def acquire(self) -> bytearray:
        """A buffer, waiting for one to be released when all are taken."""
        while self._available == 0:
            self._released.clear()
            await self._released.wait()
        return self._take()

    def try_acquire(self) -> bytearray | None:
        """A buffer if one is available now, else None."""
        return self._take() if self._available else None

    def _take(self) -> bytearray:
        self._available -= 1
        return self._free.pop() if self._free else bytearray(self.piece_size)

    def release(self, buf: bytearray) -> None:
        self._free.append(buf)
        self._available += 1
        self._released.set()


@dataclass(frozen=True, slots=True)
class IngestedFile:
    """A sealed (fsynced, closed) temp file with the content digest and outline of its bytes."""

    path: Path
    size: int
    digest: bytes
    outline: bytes
    chunk_size: int


class IngestWriter:
    """Streams one upload into a temp file while computing its handle digest and outline.

    Use: ``await open()``, ``await write(piece)`` any number of times, then ``await finish()``; on
    any failure (or if the upload is abandoned) ``await abort()``, which removes the temp file.
    ``write`` copies the piece, so the caller may reuse its memory at once. Raises ``BlobTooLarge``
    past ``max_bytes`` and ``DiskFull`` on ENOSPC/EDQUOT.

    Full buffers queue up and are processed strictly in order, the next one started from the
    previous one's completion callback: the event loop only waits when it has no buffer to fill.
    """

    def __init__(
        self,
        layout: StoreLayout,
        pool: BufferPool,
        executor: Executor,
        *,
        max_bytes: int,
        write: WriteFn = os.write,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._layout = layout
        self._pool = pool
        self._executor = executor
        self._max_bytes = max_bytes
        self._write = write
        self._chunk_size = chunk_size
        self._builder = OutlineBuilder(chunk_size)
        self._path = layout.new_tmp_path()
        self._fd = -1
        self._buffers: list[bytearray] = []  # owned, returned to the pool when done
        self._spare: list[bytearray] = []  # owned and free to fill
        self._current: bytearray | None = None
        self._fill = 0
        self._queued: collections.deque[tuple[bytearray, int]] = collections.deque()
        self._inflight: asyncio.Future[None] | None = None
        self._inflight_buf: bytearray | None = None
        self._failure: BaseException | None = None
        self._stopping = False
        self._progress = asyncio.Event()
        self._written = 0  # bytes in the file (worker thread only)
        self.size = 0

    @property
    def path(self) -> Path:
        return self._path

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self._fd = await loop.run_in_executor(self._executor, os.open, self._path, flags, 0o644)
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
        self._own(await self._pool.acquire())
        for _ in range(PIECES_PER_UPLOAD - 1):
            extra = self._pool.try_acquire()
            if extra is None:
                break
            self._own(extra)

    def _own(self, buf: bytearray) -> None:
        self._buffers.append(buf)
        self._spare.append(buf)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        total = len(view)
        if self.size + total > self._max_bytes:
            raise BlobTooLarge(f"blob exceeds the maximum of {self._max_bytes} bytes")
        self.size += total
        pos = 0
        while pos < total:
            if self._current is None:
                self._current = await self._next_buffer()
                self._fill = 0
            take = min(len(self._current) - self._fill, total - pos)
            self._current[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == len(self._current):
                self._submit()

    async def _wait_progress(self) -> None:
        # Checked by the caller just before; callbacks run on this thread, so none is missed.
        self._progress.clear()
        await self._progress.wait()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _next_buffer(self) -> bytearray:
        while not self._spare:
            self._raise_failure()
            await self._wait_progress()
        self._raise_failure()
        return self._spare.pop()

    def _submit(self) -> None:
        """Queue the current buffer; it starts at once if nothing is in flight."""
        buf, fill = self._current, self._fill
        assert buf is not None
        self._current = None
        self._fill = 0
        self._queued.append((buf, fill))
        if self._inflight is None:
            self._start_next()

    def _start_next(self) -> None:
        buf, fill = self._queued.popleft()
        self._inflight_buf = buf
        self._inflight = self._start_piece(memoryview(buf)[:fill])
        self._inflight.add_done_callback(self._piece_done)

    def _piece_done(self, job: asyncio.Future[None]) -> None:
        buf = self._inflight_buf
        assert buf is not None
        self._inflight = self._inflight_buf = None
        self._spare.append(buf)
        failure = job.exception()
        if failure is not None and self._failure is None:
            self._failure = failure
        if self._failure is not None or self._stopping:
            self._spare.extend(b for b, _ in self._queued)
            self._queued.clear()
        elif self._queued:
            self._start_next()
        self._progress.set()

    async def _drain(self) -> None:
        """Wait until every queued piece is processed; raises the first failure."""
        while self._inflight is not None or self._queued:
            await self._wait_progress()
        self._raise_failure()

    def _start_piece(self, view: memoryview) -> asyncio.Future[None]:
        """Hash and write one piece on two worker threads at once (both only read the buffer).

        The returned future completes when *both* are done, so whoever awaits it may reuse the
        buffer and close the descriptor; it carries the first failure.
        """
        loop = asyncio.get_running_loop()
        jobs = (
            loop.run_in_executor(self._executor, self._write_piece, view),
            loop.run_in_executor(self._executor, self._builder.update, view),
        )
        both: asyncio.Future[None] = loop.create_future()

        def settle(_: asyncio.Future[None]) -> None:
            if not all(job.done() for job in jobs) or both.done():
                return
            failures = [job.exception() for job in jobs]  # retrieves both
            failure = next((f for f in failures if f is not None), None)
            if failure is None:
                both.set_result(None)
            else:
                both.set_exception(failure)

        for job in jobs:
            job.add_done_callback(settle)
        return both

    def _write_piece(self, view: memoryview) -> None:
        """Worker thread: write one piece at the end of the temp file, start its writeback."""
        length = len(view)
        try:
            while view:
                view = view[self._write(self._fd, view) :]
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
        if start_writeback is not None:
            start_writeback(self._fd, self._written, length)
        self._written += length

    def _seal(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
        finally:
            os.close(self._fd)
            self._fd = -1

    async def finish(self) -> IngestedFile:
        """Flush, fsync and close the temp file; the caller publishes or removes it."""
        if self._current is not None and self._fill:
            self._submit()
        await self._drain()
        self._release_buffers()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._seal)
        digest, outline = self._builder.finish()
        return IngestedFile(self._path, self.size, digest, outline, self._chunk_size)

    async def abort(self) -> None:
        """Forget the upload: close and remove the temp file once the workers are done.

        The descriptor is never closed while a worker thread may still write to it (a reused
        descriptor number would send bytes into another file): if we are cancelled while waiting,
        the cleanup runs when the piece in flight completes.
        """
        self._stopping = True
        job = self._inflight
        if job is not None:
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                job.add_done_callback(lambda _: self._discard_later())
                raise
            except Exception:  # the piece failed; the upload is being discarded anyway
                log.debug("blob.ingest_piece_failed", exc_info=True)
        self._release_buffers()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._discard)

    def _discard_later(self) -> None:
        self._release_buffers()
        with contextlib.suppress(RuntimeError):  # the loop may be closing
            asyncio.get_running_loop().run_in_executor(self._executor, self._discard)

    def _discard(self) -> None:
        """Close the descriptor and unlink the temp file (worker thread)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        try:
            self._path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("blob.tmp_remove_failed", extra={"path": str(self._path), "error": str(exc)})

    def _release_buffers(self) -> None:
        """Give the buffers back to the pool (event loop thread only; idempotent)."""
        for buf in self._buffers:
            self._pool.release(buf)
        self._buffers.clear()
        self._spare.clear()
        self._current = None
