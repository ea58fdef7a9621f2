"""Where an arriving chunk is verified and written: on the event loop while the disk keeps up,
on a worker thread when it does not.

A 1 MiB chunk costs ~0.1 ms of BLAKE3 to verify, ~0.2 ms of ``pwrite`` into the page cache and
~0.1 ms more for the whole-blob hash. Doing all of it on the loop, right after the channel
decrypted the chunk (still in this core's cache), beat handing it to a thread: a 1 GiB fetch took
0.72–0.80 s against 0.80–0.87 s (4 alternating runs each) and 0.65–0.75 against 0.78–0.86 CPU-s on
the fetching node. A thread costs a wake-up and a GIL hand-over per chunk, and on two cores the
sender's loop and the receiver's loop fit where three busy threads took turns. Moving only the
whole-blob hash to the thread, one job per chunk or per 8 chunks, was slower still (0.82–0.93
CPU-s).

A ``pwrite`` can block, though (dirty-page throttling, a slow card or disk). The loop must not
wait on the disk for long — heartbeats, HTTP and other peers run on it — but one stall is no
trend (this VM stalls a fresh page now and then): a write slower than ``slow_write_s`` for the
second time within ``slow_window_s``, or one slower than ``stall_s``, sends writes to the thread
for ``threaded_for_s``, doubling while the disk stays slow, up to ``threaded_max_s``. Jobs run on
the one worker thread in submission order, and ``run(finish)`` goes behind them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from swarmnode.store.partial import PartialBlob

__all__ = ["ChunkWriter", "WriteConfig"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteConfig:
    """Where chunk writes run (see the module docstring)."""

    # False: every chunk is verified and written on the worker thread.
    inline: bool = True
    # A write on the loop slower than this (page cache: ~0.3 ms per MiB with both hashes) twice
    # within slow_window_s, or one slower than stall_s, means the disk is pushing back.
    slow_write_s: float = 0.02
    slow_window_s: float = 1.0
    stall_s: float = 0.1
    # Then writes go to the thread for this long, doubled after each slow write in a row.
    threaded_for_s: float = 0.5
    threaded_max_s: float = 8.0
    # Chunks written on the loop have their writeback started on the thread, this many at a
    # time (submitting the disk writes is kernel work the loop need not do; measured below).
    writeback_batch: int = 8


class ChunkWriter:
    """Verifies and writes chunks into partial downloads; owns the worker thread."""

    def __init__(
        self,
        config: WriteConfig,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._loop = loop
        self._clock = clock
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="blob-fetch")
        self._threaded_until = 0.0
        self._backoff_s = config.threaded_for_s
        self._last_slow = -1e9  # when the last slow write ended (monotonic)
        self._unsubmitted: list[tuple[PartialBlob, int]] = []  # written here, writeback not started
        self.counters = {"inlineWrites": 0, "threadedWrites": 0, "slowWrites": 0}

    async def close(self) -> None:
        await asyncio.to_thread(self._thread.shutdown)

    def write(
        self,
        partial: PartialBlob,
        index: int,
        data: bytes | memoryview,
        digest: bytes,
        done: Callable[[Future[bool]], None],
    ) -> None:
        """Verify chunk ``index`` and write it; ``done`` gets the outcome (``write_chunk``'s
        result or exception) in a later loop callback, never from inside this call (the caller
        may be in the middle of draining its effects)."""
        if self.config.inline and self._clock() >= self._threaded_until:
            self._write_here(partial, index, data, digest, done)
            return
        self.counters["threadedWrites"] += 1
        job = self._thread.submit(partial.write_chunk, index, data, digest)
        loop = self._loop
        job.add_done_callback(lambda finished: loop.call_soon_threadsafe(done, finished))

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the worker thread, after every write submitted to it before."""
        return await self._loop.run_in_executor(self._thread, fn, *args)

    def _write_here(
        self,
        partial: PartialBlob,
        index: int,
        data: bytes | memoryview,
        digest: bytes,
        done: Callable[[Future[bool]], None],
    ) -> None:
        self.counters["inlineWrites"] += 1
        outcome: Future[bool] = Future()
        started = self._clock()
        try:
            stored = partial.write_chunk(index, data, digest, writeback=False)
        except Exception as exc:
            outcome.set_exception(exc)
        else:
            outcome.set_result(stored)
            if stored:
                self._unsubmitted.append((partial, index))
                if len(self._unsubmitted) >= self.config.writeback_batch:
                    batch, self._unsubmitted = self._unsubmitted, []
                    self._thread.submit(_start_writeback, batch)
        finished = self._clock()
        took = finished - started
        if took > self.config.slow_write_s:
            self._slow(partial, took, finished)
        elif finished - self._last_slow > self.config.slow_window_s:
            self._backoff_s = self.config.threaded_for_s
        self._loop.call_soon(done, outcome)

    def _slow(self, partial: PartialBlob, took: float, now: float) -> None:
        config = self.config
        self.counters["slowWrites"] += 1
        again = now - self._last_slow <= config.slow_window_s
        self._last_slow = now
        if not again and took <= config.stall_s:
            return
        self._threaded_until = now + self._backoff_s
        log.info(
            "blob.slow_write",
            extra={
                "handle": partial.handle,
                "seconds": round(took, 4),
                "threadedForS": self._backoff_s,
            },
        )
        self._backoff_s = min(2 * self._backoff_s, self.config.threaded_max_s)


def _start_writeback(written: list[tuple[PartialBlob, int]]) -> None:
    """Start writeback of chunks written on the loop, one call per run of adjacent chunks."""
    runs: list[tuple[PartialBlob, int, int]] = []
    for partial, index in written:
        if runs and runs[-1][0] is partial and runs[-1][1] + runs[-1][2] == index:
            runs[-1] = (partial, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((partial, index, 1))
    for partial, first, count in runs:
        partial.start_writeback(first, count)
