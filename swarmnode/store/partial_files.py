"""The side files of a partial download: self-checking headers, atomic replacement, cleanup.

A download of ``blake3:<hex>`` keeps three files in ``blobs/partial/``: ``<hex>`` (the content at
its final size), ``<hex>.outline`` and ``<hex>.bitmap``. Both side files share one format::

    magic (8) | size (u64) | chunk_size (u32) | outline_root (32) | body | blake3(all before)[:16]

so a file left by another download of the same handle (different size or root: the announcement
lied), a torn write or garbage is recognised and ignored rather than trusted. They are replaced
atomically (write a temp file, fsync, rename, fsync the directory), so a crash leaves the old or
the new version, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from pathlib import Path

import blake3

from swarmnode.store.files import fsync_dir, raise_if_disk_full
from swarmnode.store.metadata import HANDLE_PREFIX, hex_of_handle

__all__ = [
    "BITMAP_MAGIC",
    "OUTLINE_MAGIC",
    "discard_partial",
    "partial_handles",
    "read_side_file",
    "side_paths",
    "write_side_file",
]

BITMAP_MAGIC = b"SNBITMP1"
OUTLINE_MAGIC = b"SNOUTLN1"
_HEADER = struct.Struct("<8sQI32s")
_CHECK = 16
_TMP = ".tmp"
_SUFFIXES = (".bitmap", ".outline")
_NAME = re.compile(r"^([0-9a-f]{64})(\.bitmap|\.outline)?(\.tmp)?$")


def side_paths(partial_dir: Path, hex_digest: str) -> tuple[Path, Path, Path]:
    """``(content, outline, bitmap)`` paths of one download."""
    base = partial_dir / hex_digest
    return base, base.with_name(hex_digest + ".outline"), base.with_name(hex_digest + ".bitmap")


def _checksum(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data).digest()[:_CHECK]


def write_side_file(
    path: Path, magic: bytes, size: int, chunk_size: int, root: bytes, body: bytes
) -> None:
    """Atomically replace ``path`` with a header, ``body`` and a checksum (durable on return)."""
    data = bytearray(_HEADER.pack(magic, size, chunk_size, root))
    data += body
    data += _checksum(data)
    tmp = path.with_name(path.name + _TMP)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise_if_disk_full(exc)
        raise


def read_side_file(
    path: Path, magic: bytes, size: int, chunk_size: int, root: bytes, body_len: int
) -> bytes | None:
    """The body of ``path`` if its header matches and its checksum holds, else ``None``."""
    expected = _HEADER.size + body_len + _CHECK
    try:
        with path.open("rb") as file:
            data = file.read(expected + 1)
    except FileNotFoundError:
        return None
    if len(data) != expected:
        return None
    if data[: _HEADER.size] != _HEADER.pack(magic, size, chunk_size, root):
        return None
    if _checksum(memoryview(data)[:-_CHECK]) != data[-_CHECK:]:
        return None
    return data[_HEADER.size : -_CHECK]


def partial_handles(partial_dir: Path) -> list[str]:
    """Handles (``blake3:<hex>``) with any file of a partial download on disk, sorted."""
    found: set[str] = set()
    with os.scandir(partial_dir) as entries:
        for entry in entries:
            match = _NAME.match(entry.name)
            if match is not None:
                found.add(HANDLE_PREFIX + match.group(1))
    return sorted(found)


def discard_partial(partial_dir: Path, handle: str) -> None:
    """Delete every file of the partial download of ``handle`` (absent files are fine)."""
    hex_digest = hex_of_handle(handle)
    removed = False
    for suffix in ("", *_SUFFIXES):
        for tail in ("", _TMP):
            path = partial_dir / (hex_digest + suffix + tail)
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
    if removed:
        fsync_dir(partial_dir)
