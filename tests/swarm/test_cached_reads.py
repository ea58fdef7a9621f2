"""CachedReads: chunk reads made on the loop only when the page cache holds every byte."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from swarmnode.swarm.transfer_source import CachedReads


def _file(tmp_path: Path, size: int = 10_000) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)  # just written: in the page cache
    return path, data


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="no RWF_NOWAIT on this platform")
def test_cached_bytes_come_back_read_only(tmp_path: Path) -> None:
    path, data = _file(tmp_path)
    got = CachedReads().read(path, 1000, 4000)
    assert got is not None
    assert got.readonly
    assert bytes(got) == data[1000:5000]


def test_missing_file_or_short_read_leaves_it_to_the_thread(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, 100)
    reads = CachedReads()
    assert reads.read(tmp_path / "absent", 0, 10) is None
    assert reads.read(path, 50, 100) is None  # only 50 bytes there: not a whole chunk


def test_a_read_that_would_block_returns_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _file(tmp_path)

    def would_block(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        raise BlockingIOError(errno.EAGAIN, "not cached")

    monkeypatch.setattr(os, "RWF_NOWAIT", 8, raising=False)
    monkeypatch.setattr(os, "preadv", would_block)
    reads = CachedReads()
    assert reads.read(path, 0, 100) is None


def test_a_filesystem_without_nowait_reads_turns_the_loop_path_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _file(tmp_path)
    calls: list[int] = []

    def unsupported(fd: int, buffers: list[bytearray], offset: int, flags: int) -> int:
        calls.append(offset)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "RWF_NOWAIT", 8, raising=False)
    monkeypatch.setattr(os, "preadv", unsupported)
    reads = CachedReads()
    assert reads.read(path, 0, 100) is None
    assert reads.read(path, 100, 100) is None
    assert calls == [0]  # asked once, then never again
