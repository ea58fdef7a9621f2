"""Input files and page-cache preparation shared by the benchmarks.

On this VM a page the guest never touched costs a slow first touch (writes into fresh page cache
run at ~0.4 GB/s, into recycled pages at several GB/s), and whoever allocates first takes the
recycled ones: without ``recycle_memory`` before each measured run, the order of the runs, not
the code, would decide the figures (DESIGN.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3

__all__ = ["MIB", "blake3_file", "make_input", "recycle_memory", "warm"]

MIB = 1 << 20
_PIECE = 4 * MIB


def make_input(path: Path, size: int) -> None:
    """A file of ``size`` random bytes (incompressible, like photos and models)."""
    with open(path, "wb") as f:
        left = size
        while left:
            piece = min(left, _PIECE)
            f.write(os.urandom(piece))
            left -= piece


def warm(path: Path) -> None:
    """Read ``path`` once so the next reader finds it in the page cache."""
    buf = bytearray(_PIECE)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def recycle_memory(path: Path, size: int) -> None:
    """Write ``size`` bytes to a scratch file and delete it, so the next writer finds free,
    already-touched pages for its page cache (module docstring)."""
    buf = bytes(_PIECE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, buf[: min(left, len(buf))])
    finally:
        os.close(fd)
        path.unlink()


def blake3_file(path: Path) -> str:
    """The file's BLAKE3 as hex, on every core (to check a copy, outside every timed span)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.hexdigest()
