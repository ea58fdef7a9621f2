"""Streaming ingest: digest and outline in one pass, bounded pieces, clean failure."""

from __future__ import annotations

import asyncio
import errno
import os
import random
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest

from protocol.outline import CHUNK_SIZE, outline_root
from swarmnode.store.errors import BlobTooLarge, DiskFull
from swarmnode.store.files import BufferPool, IngestWriter, StoreLayout, WriteFn

PIECE = 64 * 1024  # small pieces so tests cross many piece boundaries quickly


@pytest.fixture
def layout(tmp_path: Path) -> StoreLayout:
    out = StoreLayout(tmp_path / "blobs")
    out.ensure()
    return out


@pytest.fixture
async def executor() -> AsyncIterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def make_writer(
    layout: StoreLayout,
    executor: ThreadPoolExecutor,
    *,
    max_bytes: int = 10**9,
    write: WriteFn = os.write,
) -> tuple[IngestWriter, BufferPool]:
    pool = BufferPool(piece_size=PIECE, pieces=2)
    return IngestWriter(layout, pool, executor, max_bytes=max_bytes, write=write), pool


def expected_outline(data: bytes) -> bytes:
    return b"".join(
        blake3.blake3(data[i : i + CHUNK_SIZE]).digest() for i in range(0, len(data), CHUNK_SIZE)
    )


@pytest.mark.parametrize("size", [0, 1, PIECE - 1, PIECE, CHUNK_SIZE + 3, 3 * CHUNK_SIZE + PIECE])
async def test_digest_outline_and_bytes(
    layout: StoreLayout, executor: ThreadPoolExecutor, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    writer, _ = make_writer(layout, executor)
    await writer.open()
    rnd = random.Random(1)
    pos = 0
    while pos < size:
        step = rnd.choice([1, 7, 1000, PIECE, PIECE + 5, 300_000])
        await writer.write(memoryview(data)[pos : pos + step])
        pos += step
    done = await writer.finish()
    assert done.digest == blake3.blake3(data).digest()
    assert done.outline == expected_outline(data)
    assert done.size == size
    assert done.path.read_bytes() == data
    assert outline_root(done.outline) == blake3.blake3(expected_outline(data)).digest()


async def test_too_large_is_refused(layout: StoreLayout, executor: ThreadPoolExecutor) -> None:
    writer, _ = make_writer(layout, executor, max_bytes=100)
    await writer.open()
    await writer.write(b"x" * 100)
    with pytest.raises(BlobTooLarge):
        await writer.write(b"y")
    await writer.abort()
    assert list(layout.tmp.iterdir()) == []


async def test_enospc_becomes_disk_full_and_leaves_nothing(
    layout: StoreLayout, executor: ThreadPoolExecutor
) -> None:
    written = 0

    def failing_write(fd: int, view: memoryview) -> int:
        nonlocal written
        if written > 2 * PIECE:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, view)
        written += n
        return n

    writer, pool = make_writer(layout, executor, write=failing_write)
    await writer.open()

    async def fill() -> None:
        for _ in range(10):
            await writer.write(b"z" * PIECE)
        await writer.finish()

    with pytest.raises(DiskFull):
        await fill()
    await writer.abort()
    assert list(layout.tmp.iterdir()) == []
    # Buffers went back to the pool: a new upload gets both at once.
    assert pool.try_acquire() is not None
    assert pool.try_acquire() is not None


async def test_abort_removes_temp_file(layout: StoreLayout, executor: ThreadPoolExecutor) -> None:
    writer, _ = make_writer(layout, executor)
    await writer.open()
    await writer.write(b"a" * (PIECE * 3 + 1))
    assert writer.path.exists()
    await writer.abort()
    assert not writer.path.exists()


async def test_pool_bounds_buffers(layout: StoreLayout, executor: ThreadPoolExecutor) -> None:
    pool = BufferPool(piece_size=PIECE, pieces=2)
    first = IngestWriter(layout, pool, executor, max_bytes=10**6)
    await first.open()  # takes both buffers
    assert pool.try_acquire() is None
    await first.write(b"q" * (PIECE * 2 + 10))
    done = await first.finish()
    assert done.size == PIECE * 2 + 10
    assert pool.try_acquire() is not None


async def test_upload_waits_for_a_buffer(layout: StoreLayout, executor: ThreadPoolExecutor) -> None:
    pool = BufferPool(piece_size=PIECE, pieces=1)
    first = IngestWriter(layout, pool, executor, max_bytes=10**6)
    await first.open()
    second = IngestWriter(layout, pool, executor, max_bytes=10**6)
    opening = asyncio.create_task(second.open())
    for _ in range(5):
        await asyncio.sleep(0)  # yield only: the task cannot finish while the pool is empty
    assert not opening.done()
    await first.write(b"x" * 10)
    await first.finish()
    async with asyncio.timeout(5):
        await opening
    await second.write(b"y")
    assert (await second.finish()).size == 1
