"""Blob outlines: fixed-size chunks, their BLAKE3 digests, and the outline root (DESIGN.md, "Data
model").

The outline of a blob is the concatenation of the 32-byte BLAKE3 digests of its chunks, in order;
the outline root is the BLAKE3 digest of that concatenation. The metadata event carries handle,
size, chunk size and outline root, so any chunk from any peer can be checked on arrival. An empty
blob has no chunks. All functions are pure; hashing is done by the ``blake3`` package, never per
byte in Python.
"""

from __future__ import annotations

import blake3

__all__ = [
    "CHUNK_SIZE",
    "DIGEST_SIZE",
    "OutlineBuilder",
    "chunk_count",
    "chunk_digest",
    "chunk_range",
    "outline_digests",
    "outline_root",
    "verify_chunk",
]

# One chunk size per protocol version, chosen by benchmark (DESIGN.md allows 64 KiB ... 1 MiB):
# 1 MiB. A 1 GiB node-to-node transfer (python -m bench.blob_transfer node) ran at 0.83 GB/s with
# 1 MiB chunks against 0.65 GB/s with 256 KiB in the same session: the receiving loop's cost is per
# chunk (a frame, a request, a write job). A 1 GiB blob still has 1,024 chunks to stripe across
# providers, and blobs up to 1 MiB are one chunk, fetched in one round trip.
CHUNK_SIZE = 1024 * 1024
DIGEST_SIZE = 32


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """How many chunks a blob of ``size`` bytes has (0 for an empty blob)."""
    if size < 0 or chunk_size <= 0:
        raise ValueError("size must be >= 0 and chunk_size > 0")
    return -(-size // chunk_size)


def chunk_range(index: int, size: int, chunk_size: int = CHUNK_SIZE) -> tuple[int, int]:
    """``(start, length)`` of chunk ``index`` in a blob of ``size`` bytes."""
    if not 0 <= index < chunk_count(size, chunk_size):
        raise ValueError("chunk index out of range")
    start = index * chunk_size
    return start, min(chunk_size, size - start)


def chunk_digest(data: bytes | memoryview) -> bytes:
    """BLAKE3 digest of one chunk's bytes."""
    return blake3.blake3(data).digest()


def outline_root(outline: bytes | memoryview) -> bytes:
    """BLAKE3 digest of the outline (the concatenated chunk digests)."""
    if len(outline) % DIGEST_SIZE:
        raise ValueError("an outline is a whole number of 32-byte digests")
    return blake3.blake3(outline).digest()


def outline_digests(outline: bytes | memoryview) -> list[bytes]:
    """Split an outline into its chunk digests."""
    if len(outline) % DIGEST_SIZE:
        raise ValueError("an outline is a whole number of 32-byte digests")
    view = memoryview(outline)
    return [bytes(view[i : i + DIGEST_SIZE]) for i in range(0, len(view), DIGEST_SIZE)]


def verify_chunk(outline: bytes | memoryview, index: int, data: bytes | memoryview) -> bool:
    """True when ``data`` is chunk ``index`` of the blob this outline describes."""
    start = index * DIGEST_SIZE
    if index < 0 or start + DIGEST_SIZE > len(outline):
        return False
    return blake3.blake3(data).digest() == bytes(memoryview(outline)[start : start + DIGEST_SIZE])


class OutlineBuilder:
    """Computes content digest and outline in one streaming pass over pieces of any size.

    ``update`` never copies whole pieces: it slices memoryviews at chunk boundaries.
    """

    __slots__ = ("_chunk", "_chunk_fill", "_chunk_size", "_digests", "_whole", "size")

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be > 0")
        self._chunk_size = chunk_size
        self._whole = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self._chunk = blake3.blake3()
        self._chunk_fill = 0
        self._digests = bytearray()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._whole.update(view)
        self.size += len(view)
        pos = 0
        while pos < len(view):
            take = min(self._chunk_size - self._chunk_fill, len(view) - pos)
            self._chunk.update(view[pos : pos + take])
            self._chunk_fill += take
            pos += take
            if self._chunk_fill == self._chunk_size:
                self._digests += self._chunk.digest()
                self._chunk = blake3.blake3()
                self._chunk_fill = 0

    def finish(self) -> tuple[bytes, bytes]:
        """``(content digest, outline)``; the builder must not be used afterwards."""
        if self._chunk_fill:
            self._digests += self._chunk.digest()
            self._chunk_fill = 0
        return self._whole.digest(), bytes(self._digests)
