"""PartialBlob: verified writes, durable bitmap, resume after a crash, reads, final hash check."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from protocol.outline import OutlineBuilder, chunk_digest
from swarmnode.store.errors import DiskFull
from swarmnode.store.partial import PartialBlob, discard_partial, partial_handles
from tests.helpers.tmpfs import mounted_tmpfs

CHUNK = 1024


class Blob:
    """A random blob with everything a download needs to know about it."""

    def __init__(self, size: int, *, seed: int = 1, chunk_size: int = CHUNK) -> None:
        self.data = random.Random(seed).randbytes(size)
        builder = OutlineBuilder(chunk_size)
        builder.update(self.data)
        digest, self.outline = builder.finish()
        self.handle = "blake3:" + digest.hex()
        self.hex = digest.hex()
        self.root = blake3.blake3(self.outline).digest()
        self.size = size
        self.chunk_size = chunk_size
        self.count = -(-size // chunk_size)

    def chunk(self, index: int) -> bytes:
        return self.data[index * self.chunk_size : (index + 1) * self.chunk_size]

    def digest(self, index: int) -> bytes:
        return self.outline[index * 32 : (index + 1) * 32]

    def open(self, directory: Path, **kwargs: float) -> PartialBlob:
        return PartialBlob.open(
            directory,
            self.handle,
            size=self.size,
            chunk_size=self.chunk_size,
            outline_root=self.root,
            **kwargs,
        )

    def write(self, partial: PartialBlob, indices: range | list[int]) -> None:
        for i in indices:
            assert partial.write_chunk(i, self.chunk(i), self.digest(i))


def crash(partial: PartialBlob) -> None:
    """What ``kill -9`` does to the object: the descriptor goes away, nothing is flushed."""
    os.close(partial._fd)
    partial._fd = -1


@pytest.fixture
def blob() -> Blob:
    return Blob(10 * CHUNK + 300)  # 11 chunks, the last one short


def bitmap_of(indices: set[int], count: int) -> bytes:
    out = bytearray((count + 7) // 8)
    for i in indices:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def test_write_read_and_finish(tmp_path: Path, blob: Blob) -> None:
    partial = blob.open(tmp_path)
    try:
        assert partial.chunk_count == 11
        assert os.path.getsize(tmp_path / blob.hex) == blob.size
        blob.write(partial, [0, 1, 2, 5, 10])
        assert partial.have_bitmap() == bitmap_of({0, 1, 2, 5, 10}, 11)
        assert partial.has_chunk(5)
        assert not partial.has_chunk(4)
        assert not partial.has_chunk(11)
        assert partial.verified_chunks == 5
        assert partial.verified_bytes == 4 * CHUNK + 300
        assert partial.durable_bytes == 0
        assert partial.verified_prefix() == 3 * CHUNK
        assert partial.read(100, 2 * CHUNK) == blob.data[100 : 100 + 2 * CHUNK]
        assert partial.read(10 * CHUNK, 300) == blob.data[10 * CHUNK :]
        with pytest.raises(ValueError, match="not verified"):
            partial.read(2 * CHUNK, CHUNK + 1)
        with pytest.raises(ValueError, match="not verified"):
            partial.read(4 * CHUNK, 1)
        with pytest.raises(ValueError, match="outside"):
            partial.read(blob.size - 1, 2)
        with pytest.raises(ValueError, match="not all chunks"):
            partial.finish()
        blob.write(partial, [3, 4, 6, 7, 8, 9])
        assert partial.verified_prefix() == blob.size
        assert partial.finish()
    finally:
        partial.close()


def test_corrupt_chunk_is_never_marked(tmp_path: Path, blob: Blob) -> None:
    partial = blob.open(tmp_path)
    try:
        bad = bytearray(blob.chunk(3))
        bad[7] ^= 1
        assert not partial.write_chunk(3, bytes(bad), blob.digest(3))
        assert not partial.write_chunk(3, blob.chunk(3)[:-1], blob.digest(3))  # wrong length
        assert not partial.write_chunk(3, blob.chunk(4), blob.digest(3))  # another chunk
        partial.set_outline(blob.outline)  # known outline: a digest not in it is refused too
        assert not partial.write_chunk(3, blob.chunk(4), blob.digest(4))
        assert not partial.has_chunk(3)
        assert partial.verified_chunks == 0
        with open(tmp_path / blob.hex, "rb") as file:  # nothing was written either
            file.seek(3 * CHUNK)
            assert file.read(CHUNK) == bytes(CHUNK)
        assert partial.write_chunk(3, blob.chunk(3), blob.digest(3))
        assert partial.write_chunk(3, blob.chunk(3), blob.digest(3))  # again: no-op
        assert partial.verified_chunks == 1
        with pytest.raises(ValueError, match="out of range"):
            partial.write_chunk(11, b"x", blob.digest(0))
    finally:
        partial.close()


def test_resume_after_crash_keeps_exactly_the_flushed_chunks(tmp_path: Path, blob: Blob) -> None:
    partial = blob.open(tmp_path)
    partial.set_outline(blob.outline)
    blob.write(partial, [0, 1, 4, 10])
    partial.flush()
    assert partial.durable_bytes == 3 * CHUNK + 300
    blob.write(partial, [2, 3, 7])
    assert partial.durable_bytes == 3 * CHUNK + 300
    crash(partial)

    resumed = blob.open(tmp_path)
    try:
        assert resumed.have_bitmap() == bitmap_of({0, 1, 4, 10}, 11)
        assert resumed.durable_bytes == resumed.verified_bytes == 3 * CHUNK + 300
        assert resumed.outline == blob.outline
        assert resumed.read(0, 2 * CHUNK) == blob.data[: 2 * CHUNK]
        assert resumed.read(4 * CHUNK, CHUNK) == blob.chunk(4)
        assert resumed.read(10 * CHUNK, 300) == blob.chunk(10)
        blob.write(resumed, [2, 3, 5, 6, 7, 8, 9])
        assert resumed.finish()
    finally:
        resumed.close()


def test_close_flushes(tmp_path: Path, blob: Blob) -> None:
    partial = blob.open(tmp_path)
    blob.write(partial, [1, 2])
    partial.close()
    resumed = blob.open(tmp_path)
    try:
        assert resumed.have_bitmap() == bitmap_of({1, 2}, 11)
        assert resumed.outline is None  # never set
    finally:
        resumed.close()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "empty"])
def test_damaged_side_files_mean_a_fresh_start(tmp_path: Path, blob: Blob, damage: str) -> None:
    partial = blob.open(tmp_path)
    partial.set_outline(blob.outline)
    blob.write(partial, range(5))
    partial.close()
    for name in (blob.hex + ".bitmap", blob.hex + ".outline"):
        path = tmp_path / name
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        elif damage == "garbage":
            data = bytearray(random.Random(3).randbytes(len(data)))
        elif damage == "flip":
            data[-20] ^= 0x40
        else:
            data = bytearray()
        path.write_bytes(bytes(data))
    resumed = blob.open(tmp_path)
    try:
        assert resumed.verified_chunks == 0
        assert resumed.have_bitmap() == bytes(2)
        assert resumed.outline is None
        with pytest.raises(ValueError, match="not verified"):
            resumed.read(0, 1)
        blob.write(resumed, range(11))
        assert resumed.finish()
    finally:
        resumed.close()


@pytest.mark.parametrize("change", ["size", "root", "chunk_size"])
def test_header_mismatch_means_a_fresh_start(tmp_path: Path, blob: Blob, change: str) -> None:
    partial = blob.open(tmp_path)
    partial.set_outline(blob.outline)
    blob.write(partial, range(4))
    partial.close()
    size, chunk_size, root = blob.size, blob.chunk_size, blob.root
    if change == "size":
        size += 1
    elif change == "root":
        root = bytes(32)
    else:
        chunk_size *= 2
    other = PartialBlob.open(
        tmp_path, blob.handle, size=size, chunk_size=chunk_size, outline_root=root
    )
    try:
        assert other.verified_chunks == 0
        assert other.outline is None
        assert os.path.getsize(tmp_path / blob.hex) == size
    finally:
        other.close()


def test_missing_content_file_drops_the_bitmap(tmp_path: Path, blob: Blob) -> None:
    partial = blob.open(tmp_path)
    blob.write(partial, range(3))
    partial.close()
    (tmp_path / blob.hex).unlink()
    resumed = blob.open(tmp_path)
    try:
        assert resumed.verified_chunks == 0
    finally:
        resumed.close()


def test_set_outline_rejects_a_wrong_outline(tmp_path: Path, blob: Blob) -> None:
    partial = blob.open(tmp_path)
    try:
        with pytest.raises(ValueError, match="outline"):
            partial.set_outline(bytes(len(blob.outline)))
        with pytest.raises(ValueError, match="outline"):
            partial.set_outline(blob.outline[:-32])
        assert partial.outline is None
        assert not (tmp_path / (blob.hex + ".outline")).exists()
    finally:
        partial.close()


def test_finish_detects_bytes_altered_on_disk(tmp_path: Path, blob: Blob) -> None:
    partial = blob.open(tmp_path)
    try:
        blob.write(partial, range(1, 11))  # out of order: nothing is hashed in order yet
        with open(tmp_path / blob.hex, "r+b") as file:
            file.seek(6 * CHUNK + 17)
            file.write(b"\xff")
        blob.write(partial, [0])  # closes the gap: the rest is read back, altered byte included
        assert not partial.finish()
    finally:
        partial.discard()


def test_finish_detects_bytes_altered_while_stopped(tmp_path: Path, blob: Blob) -> None:
    partial = blob.open(tmp_path)
    blob.write(partial, range(11))
    partial.close()
    with open(tmp_path / blob.hex, "r+b") as file:
        file.seek(2 * CHUNK)
        file.write(b"\x00\x01")
    resumed = blob.open(tmp_path)
    try:
        assert resumed.verified_chunks == 11
        assert not resumed.finish()
    finally:
        resumed.close()


def test_finish_after_resume_with_in_order_writes(tmp_path: Path) -> None:
    blob = Blob(64 * CHUNK, seed=9)
    partial = blob.open(tmp_path)
    blob.write(partial, range(20))
    partial.close()
    resumed = blob.open(tmp_path)
    try:
        blob.write(resumed, range(20, 64))
        assert resumed.finish()
    finally:
        resumed.close()


def test_empty_blob(tmp_path: Path) -> None:
    blob = Blob(0)
    partial = blob.open(tmp_path)
    try:
        assert partial.chunk_count == 0
        assert partial.have_bitmap() == b""
        assert partial.read(0, 0) == b""
        assert partial.finish()
    finally:
        partial.close()


def test_flush_due(tmp_path: Path, blob: Blob) -> None:
    partial = blob.open(tmp_path, flush_interval_s=1.0)
    try:
        later = time.monotonic() + 5.0
        assert not partial.flush_due(later)  # nothing verified yet
        blob.write(partial, [0])
        assert partial.flush_due(later)
        assert not partial.flush_due(time.monotonic() - 5.0)  # interval not over
        partial.flush()
        assert not partial.flush_due(time.monotonic() + 5.0)
        assert partial.durable_bytes == CHUNK
    finally:
        partial.close()


def test_partial_handles_and_discard(tmp_path: Path, blob: Blob) -> None:
    other = Blob(3000, seed=2)
    first = blob.open(tmp_path)
    second = other.open(tmp_path)
    blob.write(first, [0])
    first.close()
    second.close()
    (tmp_path / "unrelated.txt").write_bytes(b"x")
    assert partial_handles(tmp_path) == sorted([blob.handle, other.handle])
    discard_partial(tmp_path, blob.handle)
    assert partial_handles(tmp_path) == [other.handle]
    reopened = other.open(tmp_path)
    reopened.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.txt"]


def test_concurrent_writes_from_two_threads(tmp_path: Path) -> None:
    blob = Blob(400 * CHUNK + 5, seed=4)
    partial = blob.open(tmp_path)
    evens = list(range(0, blob.count, 2))
    odds = list(range(1, blob.count, 2))
    failures: list[BaseException] = []

    def run(indices: list[int]) -> None:
        try:
            blob.write(partial, indices)
            partial.flush_due(time.monotonic())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(part,)) for part in (evens, odds)]
    for thread in threads:
        thread.start()
    flushes = 0
    while any(t.is_alive() for t in threads):
        partial.flush()  # concurrent with the writers
        flushes += 1
        if flushes > 10:
            break
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not failures
        assert partial.verified_chunks == blob.count
        assert partial.have_bitmap() == bitmap_of(set(range(blob.count)), blob.count)
        assert partial.verified_prefix() == blob.size
        assert partial.read(0, blob.size) == blob.data
        assert partial.finish()
        partial.flush()
        assert partial.durable_bytes == blob.size
    finally:
        partial.close()


def test_chunk_digest_matches_outline(blob: Blob) -> None:
    # Guards the fixture itself: the digests the tests pass are the protocol's chunk digests.
    assert blob.digest(3) == chunk_digest(blob.chunk(3))


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with mounted_tmpfs(tmp_path / "mnt", "1m") as mount_point:
        yield mount_point


def test_disk_full_leaves_no_files(tiny_fs: Path) -> None:
    big = Blob(2 * 1024 * 1024, seed=5, chunk_size=64 * 1024)
    with pytest.raises(DiskFull):
        big.open(tiny_fs)
    assert list(tiny_fs.iterdir()) == []
    small = Blob(100 * 1024, seed=6, chunk_size=64 * 1024)  # space is there again
    partial = small.open(tiny_fs)
    try:
        small.write(partial, range(small.count))
        assert partial.finish()
    finally:
        partial.close()


def test_disk_full_on_write_leaves_chunk_unmarked(
    tmp_path: Path, blob: Blob, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = blob.open(tmp_path)
    try:

        def full(fd: int, data: object, offset: int) -> int:
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(os, "pwrite", full)
            with pytest.raises(DiskFull):
                partial.write_chunk(2, blob.chunk(2), blob.digest(2))
        assert not partial.has_chunk(2)
        assert partial.write_chunk(2, blob.chunk(2), blob.digest(2))
    finally:
        partial.close()


@pytest.mark.parametrize("code", [95, 22])  # EOPNOTSUPP, EINVAL: the filesystem cannot fallocate
def test_fallocate_unsupported_falls_back_to_ftruncate(
    tmp_path: Path, blob: Blob, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    partial = blob.open(tmp_path)
    try:
        assert os.path.getsize(tmp_path / blob.hex) == blob.size
        blob.write(partial, range(blob.count))
        assert partial.finish()
    finally:
        partial.close()


def test_fallocate_enospc_is_disk_full_and_leaves_no_files(
    tmp_path: Path, blob: Blob, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "posix_fallocate", full)
        with pytest.raises(DiskFull):
            blob.open(tmp_path)
    assert list(tmp_path.iterdir()) == []
    partial = blob.open(tmp_path)
    partial.close()
    assert partial_handles(tmp_path) == [blob.handle]


def test_seal_syncs_the_content_but_not_the_bitmap(tmp_path: Path, blob: Blob) -> None:
    """install_replica seals: the content is whole on disk; a resume (a crash before the install's
    rename) trusts only the chunks the last flush vouched for."""
    partial = blob.open(tmp_path)
    partial.set_outline(blob.outline)
    blob.write(partial, [0, 1])
    partial.flush()
    blob.write(partial, range(2, blob.count))
    partial.seal()
    with pytest.raises(ValueError, match="closed"):
        partial.seal()
    partial.close()  # still idempotent after a seal
    assert partial.content_path.read_bytes() == blob.data
    resumed = blob.open(tmp_path)
    try:
        assert resumed.have_bitmap() == bitmap_of({0, 1}, blob.count)
        blob.write(resumed, range(2, blob.count))
        assert resumed.finish()
    finally:
        resumed.close()
