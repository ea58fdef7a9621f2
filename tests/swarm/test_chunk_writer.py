"""ChunkWriter: chunks verified and written on the loop while the disk keeps up, on the worker
thread once it stalls; outcomes always in a later loop callback; writeback batched on the thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from swarmnode.store import partial as partial_module
from swarmnode.store.errors import DiskFull
from swarmnode.store.partial import PartialBlob
from swarmnode.swarm.chunk_writer import ChunkWriter, WriteConfig, _start_writeback
from tests.store.test_partial import CHUNK, Blob

DEADLINE = 10.0


class Outcomes:
    """The ``done`` callback: records each outcome and the thread it ran on."""

    def __init__(self) -> None:
        self.seen: list[Future[bool]] = []
        self.threads: list[int] = []
        self.changed = asyncio.Event()

    def __call__(self, outcome: Future[bool]) -> None:
        self.seen.append(outcome)
        self.threads.append(threading.get_ident())
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE):
            while len(self.seen) < count:
                self.changed.clear()
                await self.changed.wait()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TimedPartial:
    """Stands in for a PartialBlob: each write takes the next duration on the fake clock and
    records the thread it ran on."""

    handle = "blake3:" + "00" * 32

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.durations: list[float] = []
        self.threads: list[int] = []

    def write_chunk(
        self, index: int, data: bytes | memoryview, digest: bytes, *, writeback: bool = True
    ) -> bool:
        self.threads.append(threading.get_ident())
        self.clock.now += self.durations.pop(0) if self.durations else 0.0001
        return True

    def start_writeback(self, first: int, count: int) -> None:
        pass


async def _write_all(
    writer: ChunkWriter, partial: object, count: int, outcomes: Outcomes, first: int = 0
) -> None:
    for index in range(first, first + count):
        writer.write(partial, index, b"x", b"d", outcomes)  # type: ignore[arg-type]
    await outcomes.wait_for(first + count)


async def test_a_chunk_is_written_on_the_loop_and_reported_in_a_later_callback(
    tmp_path: Path,
) -> None:
    blob = Blob(3 * CHUNK + 5)
    partial = blob.open(tmp_path)
    writer = ChunkWriter(WriteConfig(), asyncio.get_running_loop())
    outcomes = Outcomes()
    try:
        writer.write(partial, 1, blob.chunk(1), blob.digest(1), outcomes)
        writer.write(partial, 2, b"\x00" * CHUNK, blob.digest(2), outcomes)  # corrupt
        assert outcomes.seen == []  # never from inside write(): the caller may be mid-drain
        assert partial.has_chunk(1)  # but written already, here on the loop
        await outcomes.wait_for(2)
        assert [o.result() for o in outcomes.seen] == [True, False]
        assert outcomes.threads == [threading.get_ident()] * 2
        assert not partial.has_chunk(2)
        assert writer.counters["inlineWrites"] == 2
        assert writer.counters["threadedWrites"] == 0
    finally:
        partial.close()
        await writer.close()


async def test_a_blob_written_out_of_order_finishes_against_its_handle(tmp_path: Path) -> None:
    blob = Blob(9 * CHUNK + 17, seed=3)
    partial = blob.open(tmp_path)
    writer = ChunkWriter(WriteConfig(writeback_batch=4), asyncio.get_running_loop())
    outcomes = Outcomes()
    try:
        order = [3, 0, 1, 9, 2, 4, 8, 5, 7, 6]
        for index in order:
            writer.write(partial, index, blob.chunk(index), blob.digest(index), outcomes)
        await outcomes.wait_for(len(order))
        assert all(o.result() for o in outcomes.seen)
        assert await writer.run(partial.finish)
        assert partial.read(0, blob.size) == blob.data
    finally:
        partial.close()
        await writer.close()


async def test_a_full_disk_reaches_the_callback_as_the_exception() -> None:
    class FullPartial(TimedPartial):
        def write_chunk(
            self, index: int, data: bytes | memoryview, digest: bytes, *, writeback: bool = True
        ) -> bool:
            raise DiskFull("no space left")

    writer = ChunkWriter(WriteConfig(), asyncio.get_running_loop())
    outcomes = Outcomes()
    try:
        await _write_all(writer, FullPartial(FakeClock()), 1, outcomes)
        assert isinstance(outcomes.seen[0].exception(), DiskFull)
    finally:
        await writer.close()


def _timed_writer() -> tuple[FakeClock, TimedPartial, ChunkWriter, Outcomes]:
    """A writer on a fake clock (slow: 20 ms, twice within 1 s; stall: 100 ms; 0.5 s away)."""
    clock = FakeClock()
    config = WriteConfig(slow_write_s=0.02, slow_window_s=1.0, stall_s=0.1, threaded_for_s=0.5)
    writer = ChunkWriter(config, asyncio.get_running_loop(), clock)
    return clock, TimedPartial(clock), writer, Outcomes()


async def test_one_slow_write_is_no_trend_but_two_move_writes_to_the_thread() -> None:
    clock, partial, writer, outcomes = _timed_writer()
    loop_thread = threading.get_ident()
    try:
        partial.durations = [0.03]  # one slow write: the next one stays on the loop
        await _write_all(writer, partial, 2, outcomes)
        assert partial.threads == [loop_thread] * 2
        partial.durations = [0.05]  # a second slow one within the window: to the thread
        await _write_all(writer, partial, 3, outcomes, first=2)
        assert partial.threads[2] == loop_thread
        assert all(t != loop_thread for t in partial.threads[3:])
        assert writer.counters["threadedWrites"] == 2
        assert outcomes.threads[3:] == [loop_thread] * 2  # outcomes still come to the loop
        clock.now += 0.6  # past threaded_for_s: back on the loop
        await _write_all(writer, partial, 1, outcomes, first=5)
        assert partial.threads[5] == loop_thread
    finally:
        await writer.close()


async def test_a_stall_moves_writes_at_once_and_the_time_on_the_thread_doubles() -> None:
    clock, partial, writer, outcomes = _timed_writer()
    loop_thread = threading.get_ident()

    async def where_next_write_runs() -> bool:
        before = len(partial.threads)
        await _write_all(writer, partial, 1, outcomes, first=len(outcomes.seen))
        return partial.threads[before] == loop_thread

    try:
        partial.durations = [0.2]  # a stall: threaded until 0.5 s after it ended
        assert await where_next_write_runs()
        assert not await where_next_write_runs()
        clock.now += 0.6
        partial.durations = [0.2]  # stalls again at once: now 1.0 s on the thread
        assert await where_next_write_runs()
        clock.now += 0.6
        assert not await where_next_write_runs()
        clock.now += 0.5
        assert await where_next_write_runs()
        assert writer.counters["slowWrites"] == 2
    finally:
        await writer.close()


async def test_inline_writes_start_writeback_on_the_thread_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, int]] = []
    on_loop: list[bool] = []
    loop_thread = threading.get_ident()

    def record(fd: int, offset: int, length: int) -> None:
        calls.append((fd, offset, length))
        on_loop.append(threading.get_ident() == loop_thread)

    monkeypatch.setattr(partial_module, "start_writeback", record)
    blob = Blob(10 * CHUNK, seed=5)
    partial = blob.open(tmp_path)
    writer = ChunkWriter(WriteConfig(writeback_batch=4), asyncio.get_running_loop())
    outcomes = Outcomes()
    try:
        for index in range(10):
            writer.write(partial, index, blob.chunk(index), blob.digest(index), outcomes)
        await outcomes.wait_for(10)
        await writer.run(lambda: None)  # behind the submitted writeback jobs
        # Chunks 0-3 and 4-7 each as one range; 8-9 wait for the next batch (or the fsync).
        assert [(offset, length) for _, offset, length in calls] == [
            (0, 4 * CHUNK),
            (4 * CHUNK, 4 * CHUNK),
        ]
        assert on_loop == [False, False]
    finally:
        partial.close()
        await writer.close()


def test_writeback_runs_merge_adjacent_chunks_of_one_download() -> None:
    ranges: list[tuple[str, int, int]] = []

    class Recording:
        def __init__(self, name: str) -> None:
            self.name = name

        def start_writeback(self, first: int, count: int) -> None:
            ranges.append((self.name, first, count))

    a, b = Recording("a"), Recording("b")
    written: list[tuple[object, int]] = [(a, 0), (a, 1), (a, 2), (b, 5), (a, 7), (a, 8), (a, 10)]
    _start_writeback(written)  # type: ignore[arg-type]
    assert ranges == [("a", 0, 3), ("b", 5, 1), ("a", 7, 2), ("a", 10, 1)]


def test_partial_writeback_range_stops_at_the_blob_end_and_after_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []

    def record(fd: int, offset: int, length: int) -> None:
        calls.append((offset, length))

    monkeypatch.setattr(partial_module, "start_writeback", record)
    blob = Blob(4 * CHUNK + 5)
    partial: PartialBlob = blob.open(tmp_path)
    partial.start_writeback(3, 2)
    partial.start_writeback(0, 0)
    partial.close()
    partial.start_writeback(0, 1)
    assert calls == [(3 * CHUNK, CHUNK + 5)]
