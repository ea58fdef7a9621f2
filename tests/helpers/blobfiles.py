"""Test files for blob uploads, written in pieces so a large one is never whole in memory."""

from __future__ import annotations

import os
from pathlib import Path

import blake3

__all__ = ["PIECE", "write_random_file"]

PIECE = 1 << 20


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes in 1 MiB pieces; returns the handle they must get."""
    hasher = blake3.blake3()
    with path.open("wb") as out:
        left = size
        while left:
            piece = os.urandom(min(PIECE, left))
            hasher.update(piece)
            out.write(piece)
            left -= len(piece)
    return "blake3:" + hasher.hexdigest()
