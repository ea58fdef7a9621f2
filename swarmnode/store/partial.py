"""One blob download in progress under ``blobs/partial/``, resumable across crashes.

Files (formats in partial_files.py): ``<hex>`` holds the content at its final size (space reserved
up front, chunks written in place with ``pwrite``), ``<hex>.outline`` the verified outline,
``<hex>.bitmap`` the chunks that are verified *and durable*. ``flush`` fdatasyncs the content
before it persists the bitmap, so a persisted bit always points at durable bytes; flushing about
once a second bounds what a crash loses without an fsync per chunk (DESIGN.md, "store/").

The blob is checked against its handle without a second full read where possible: an in-order
hasher advances over the contiguous verified prefix as chunks arrive (hashing the data in hand
for the next chunk, reading back chunks that arrived early once the gap before them closes), so
``finish`` only hashes what is left. Bytes hashed from the data in hand are not re-read: a chunk
altered on disk after it was hashed goes unnoticed by ``finish``; one altered before is caught.

Threads: ``write_chunk`` for different chunks may run on several worker threads at once (``pwrite``
at distinct offsets; the bookkeeping is under ``_lock``, the in-order hasher under
``_hash_lock``); ``flush``/``finish``/``close`` are never concurrent with each other.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from pathlib import Path

import blake3

from protocol.outline import DIGEST_SIZE, chunk_count, outline_root
from swarmnode.store.errors import DiskFull
from swarmnode.store.files import raise_if_disk_full, start_writeback
from swarmnode.store.metadata import hex_of_handle
from swarmnode.store.partial_files import (
    BITMAP_MAGIC,
    OUTLINE_MAGIC,
    discard_partial,
    partial_handles,
    read_side_file,
    side_paths,
    write_side_file,
)

__all__ = ["PartialBlob", "discard_partial", "partial_handles"]

log = logging.getLogger(__name__)

# Read-back piece for finish(): large enough that blake3's threads pay off, small in memory.
_FINISH_PIECE = 4 * 1024 * 1024
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})


def _reserve(fd: int, size: int) -> None:
    """Give the content file its final size, reserving the blocks where the filesystem can."""
    if size > 0:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            raise_if_disk_full(exc)
            if exc.errno not in _NO_FALLOCATE:
                raise
    os.ftruncate(fd, size)


class PartialBlob:
    """A download in progress; create or resume with ``PartialBlob.open``."""

    def __init__(
        self,
        paths: tuple[Path, Path, Path],
        fd: int,
        handle: str,
        *,
        size: int,
        chunk_size: int,
        root: bytes,
        bitmap: bytearray,
        outline: bytes | None,
        flush_interval_s: float,
    ) -> None:
        self._content_path, self._outline_path, self._bitmap_path = paths
        self._fd = fd
        self.handle = handle
        self.size = size
        self.chunk_size = chunk_size
        self.chunk_count = chunk_count(size, chunk_size)
        self.outline = outline
        self._root = root
        self._digest = bytes.fromhex(hex_of_handle(handle))
        self._flush_interval_s = flush_interval_s
        self._lock = threading.Lock()
        self._bitmap = bitmap
        self._verified = int.from_bytes(bitmap, "big").bit_count()
        self._durable_bitmap = bytes(bitmap)
        self._durable = self._verified
        self._prefix = 0  # chunks [0, _prefix) are verified
        self._advance_prefix()
        self._marks = 0  # bumped per newly verified chunk
        self._flushed_marks = 0
        self._last_flush = time.monotonic()
        self._hash_lock = threading.Lock()
        self._hasher = blake3.blake3()
        self._hashed = 0  # chunks [0, _hashed) are in _hasher
        self._readback: bytearray | None = None

    @classmethod
    def open(
        cls,
        partial_dir: Path,
        handle: str,
        *,
        size: int,
        chunk_size: int,
        outline_root: bytes,
        flush_interval_s: float = 1.0,
    ) -> PartialBlob:
        """Create the download of ``handle``, or resume what a previous run left.

        Side files whose header does not match (size, chunk size, outline root), torn or garbage
        ones are discarded: a chunk the bitmap does not vouch for is never trusted. Raises
        ``DiskFull`` (and leaves no files) when the space cannot be reserved.
        """
        if size < 0 or chunk_size <= 0 or len(outline_root) != DIGEST_SIZE:
            raise ValueError("invalid size, chunk size or outline root")
        paths = side_paths(partial_dir, hex_of_handle(handle))
        content, outline_path, bitmap_path = paths
        count = chunk_count(size, chunk_size)
        try:
            fd = os.open(content, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            discard_partial(partial_dir, handle)
            raise_if_disk_full(exc)
            raise
        try:
            existing = os.fstat(fd).st_size
            body = read_side_file(
                bitmap_path, BITMAP_MAGIC, size, chunk_size, outline_root, (count + 7) // 8
            )
            if body is None or existing != size or not _spare_bits_clear(body, count):
                bitmap = bytearray((count + 7) // 8)
                bitmap_path.unlink(missing_ok=True)
            else:
                bitmap = bytearray(body)
            _reserve(fd, size)
            outline = read_side_file(
                outline_path, OUTLINE_MAGIC, size, chunk_size, outline_root, count * DIGEST_SIZE
            )
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, DiskFull):
                discard_partial(partial_dir, handle)
            raise
        blob = cls(
            paths,
            fd,
            handle,
            size=size,
            chunk_size=chunk_size,
            root=outline_root,
            bitmap=bitmap,
            outline=outline,
            flush_interval_s=flush_interval_s,
        )
        log.debug(
            "blob.partial_opened",
            extra={"handle": handle, "size": size, "verified_chunks": blob.verified_chunks},
        )
        return blob

    # -- state ---------------------------------------------------------------------------------

    def _bit(self, index: int) -> bool:
        return bool(self._bitmap[index >> 3] & (0x80 >> (index & 7)))

    def _advance_prefix(self) -> None:
        while self._prefix < self.chunk_count and self._bit(self._prefix):
            self._prefix += 1

    def _chunk_len(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def _bytes_of(self, chunks: int, bitmap: bytes | bytearray) -> int:
        """Bytes of ``chunks`` set chunks, accounting for a short last chunk."""
        last = self.chunk_count - 1
        if chunks and bitmap[last >> 3] & (0x80 >> (last & 7)):
            return (chunks - 1) * self.chunk_size + self._chunk_len(last)
        return chunks * self.chunk_size

    def have_bitmap(self) -> bytes:
        """Verified chunks (durable or not), SPEC §7.5.6 layout: MSB first, spare bits zero."""
        with self._lock:
            return bytes(self._bitmap)

    def has_chunk(self, index: int) -> bool:
        return 0 <= index < self.chunk_count and self._bit(index)

    @property
    def verified_chunks(self) -> int:
        return self._verified

    @property
    def verified_bytes(self) -> int:
        with self._lock:
            return self._bytes_of(self._verified, self._bitmap)

    @property
    def durable_bytes(self) -> int:
        """What the persisted bitmap vouches for."""
        with self._lock:
            return self._bytes_of(self._durable, self._durable_bitmap)

    def verified_prefix(self) -> int:
        """Bytes from offset 0 that are verified and written, without a gap."""
        return min(self._prefix * self.chunk_size, self.size)

    def set_outline(self, outline: bytes) -> None:
        """Keep the (caller-verified) outline; persisted atomically."""
        if len(outline) != self.chunk_count * DIGEST_SIZE or outline_root(outline) != self._root:
            raise ValueError("outline does not match the outline root")
        write_side_file(
            self._outline_path, OUTLINE_MAGIC, self.size, self.chunk_size, self._root, outline
        )
        self.outline = bytes(outline)

    # -- writing -------------------------------------------------------------------------------

    def write_chunk(
        self, index: int, data: bytes | memoryview, digest: bytes, *, writeback: bool = True
    ) -> bool:
        """Verify chunk ``index`` against ``digest`` and write it in place.

        False (nothing written or marked) when the data does not match (or, once the outline
        is known, ``digest`` is not chunk ``index``'s); True when written, or already held.
        Raises ``DiskFull`` on ENOSPC/EDQUOT (the chunk stays unverified). ``writeback`` False
        leaves starting the chunk's writeback to the caller (``start_writeback``).
        """
        if not 0 <= index < self.chunk_count:
            raise ValueError(f"chunk index {index} out of range")
        view = memoryview(data).cast("B")
        outline = self.outline
        if (
            outline is not None
            and outline[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE] != digest
        ):
            return False
        if len(view) != self._chunk_len(index) or blake3.blake3(view).digest() != digest:
            return False
        if self._bit(index):
            return True
        offset = index * self.chunk_size
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
        if writeback:
            self.start_writeback(index, 1)
        with self._lock:
            if self._bit(index):  # another thread wrote the same chunk meanwhile
                return True
            self._bitmap[index >> 3] |= 0x80 >> (index & 7)
            self._verified += 1
            self._marks += 1
            self._advance_prefix()
        self._hash_in_order(index, data)
        return True

    def start_writeback(self, first: int, count: int) -> None:
        """Start writing chunks ``[first, first + count)`` to the disk now, so ``flush`` and the
        final ``seal`` wait for the last few chunks instead of every dirty page (store/files.py
        does the same for uploads). Advisory: on a file closed meanwhile (its descriptor number
        perhaps reused) it at worst starts writeback of another file early."""
        fd = self._fd
        if start_writeback is not None and fd >= 0 and count > 0:
            offset = first * self.chunk_size
            start_writeback(fd, offset, min(self.size, (first + count) * self.chunk_size) - offset)

    def _hash_in_order(self, index: int, data: bytes | memoryview) -> None:
        """Advance the in-order hasher over the verified prefix (see the module docstring)."""
        with self._hash_lock:
            if self._hashed == index:
                self._hasher.update(data)
                self._hashed += 1
            while self._hashed < self.chunk_count and self._bit(self._hashed):
                self._hasher.update(self._read_back(self._hashed))
                self._hashed += 1

    def _read_back(self, index: int) -> memoryview:
        if self._readback is None:
            self._readback = bytearray(self.chunk_size)
        view = memoryview(self._readback)[: self._chunk_len(index)]
        _pread_into(self._fd, view, index * self.chunk_size)
        return view

    def flush_due(self, now: float) -> bool:
        """True when verified chunks wait for a flush and the interval has passed.

        ``now`` is ``time.monotonic()`` (the clock ``flush`` stamps).
        """
        return (
            self._marks != self._flushed_marks and now - self._last_flush >= self._flush_interval_s
        )

    def flush(self) -> None:
        """Make the verified chunks durable: fdatasync the content, then persist the bitmap.

        The bitmap is snapshotted *before* the fdatasync, so every bit it holds belongs to a
        chunk whose ``pwrite`` completed before the sync.
        """
        with self._lock:
            marks = self._marks
            snapshot = bytes(self._bitmap)
            verified = self._verified
        self._last_flush = time.monotonic()
        if marks == self._flushed_marks:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
        write_side_file(
            self._bitmap_path, BITMAP_MAGIC, self.size, self.chunk_size, self._root, snapshot
        )
        with self._lock:
            self._durable_bitmap = snapshot
            self._durable = verified
        self._flushed_marks = marks

    # -- reading and completing ----------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of verified chunks only; ``ValueError`` if any byte of the range is not."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("range outside the blob")
        if length == 0:
            return b""
        first = offset // self.chunk_size
        last = (offset + length - 1) // self.chunk_size
        if first >= self._prefix or last >= self._prefix:
            for index in range(first, last + 1):
                if not self._bit(index):
                    raise ValueError(f"chunk {index} is not verified")
        data = os.pread(self._fd, length, offset)
        if len(data) == length:
            return data
        out = bytearray(length)  # a short read (rare): fill the rest in place
        out[: len(data)] = data
        _pread_into(self._fd, memoryview(out)[len(data) :], offset + len(data))
        return bytes(out)

    def finish(self) -> bool:
        """True when the assembled content hashes to the handle; all chunks must be verified.

        Hashes only what the in-order hasher has not seen yet, in large pieces on all cores.
        """
        if self._verified != self.chunk_count:
            raise ValueError("not all chunks are verified")
        with self._hash_lock:
            if self._hashed == 0:
                hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            else:
                hasher = self._hasher
            offset = self._hashed * self.chunk_size
            if offset < self.size:
                buf = bytearray(min(_FINISH_PIECE, self.size - offset))
                while offset < self.size:
                    view = memoryview(buf)[: min(len(buf), self.size - offset)]
                    _pread_into(self._fd, view, offset)
                    hasher.update(view)
                    offset += len(view)
            self._hasher = hasher
            self._hashed = self.chunk_count
            ok: bool = hasher.digest() == self._digest
        if not ok:
            log.warning("blob.partial_hash_mismatch", extra={"handle": self.handle})
        return ok

    @property
    def content_path(self) -> Path:
        return self._content_path

    def close(self) -> None:
        """Flush what is verified, then close the content file (idempotent)."""
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1

    def seal(self) -> None:
        """Make the content durable and close it, without persisting the bitmap: for a finished
        download about to be installed, whose side files are deleted right after. A crash before
        the install leaves a bitmap that may lag; the resume re-fetches what it does not vouch for.
        """
        if self._fd < 0:
            raise ValueError("the partial is closed")
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise_if_disk_full(exc)
            raise
        finally:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Close without flushing and delete all files of this download."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        discard_partial(self._content_path.parent, self.handle)


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    while view:
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise OSError(errno.EIO, "unexpected end of a partial download's file")
        view = view[got:]
        offset += got


def _spare_bits_clear(bitmap: bytes, count: int) -> bool:
    spare = len(bitmap) * 8 - count
    return spare == 0 or bitmap[-1] & ((1 << spare) - 1) == 0
