"""Writing a download to disk: PartialBlob vs plain pwrite of the same bytes, in the same run.

    python -m bench.partial_write [--size-mib 1024] [--runs 3] [--json FILE]

Baseline: ``pwrite`` of every chunk, in order, into a fresh file, one ``fsync`` at the end (what
a raw TCP copy into a file costs on the disk side); also shown without the ``fsync`` (page cache
only: the CPU-side floor). Candidates, each ending with ``finish()``
(the check against the handle) and a final ``flush``:

- ``partial_1t``: ``write_chunk`` (verify + pwrite + in-order hash) in order on one thread,
  ``flush`` whenever ``flush_due`` (every 1 s).
- ``partial_2t``: the same chunks split across two threads (even/odd), a third thread flushing
  every 1 s, as the asyncio glue would do it through an executor.
- ``finish_resumed``: ``finish()`` of a complete download reopened after a restart (nothing
  hashed in order: one full read-back, blake3 on all cores) vs ``blake3.update_mmap`` of the
  same file with ``max_threads=AUTO`` (the fastest full hash of a stored file).

Content: a 64 MiB random pattern repeated (so the source costs no memory per GiB). Medians of
``--runs``; progress on stderr, JSON on stdout (or ``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3

from protocol.outline import CHUNK_SIZE
from swarmnode.store.partial import PartialBlob

MIB = 1024 * 1024
PATTERN = 64 * MIB
ROOT = Path(__file__).resolve().parent.parent
WORK_PARENT = ROOT / "bench" / "results" / "tmp"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Source:
    """The blob: ``size`` bytes of a repeated random pattern, with digests and handle."""

    def __init__(self, size: int, chunk_size: int) -> None:
        self.size = size
        self.chunk_size = chunk_size
        self.pattern = memoryview(os.urandom(PATTERN))
        self.per_pattern = PATTERN // chunk_size
        self.count = -(-size // chunk_size)
        self.digests = [
            blake3.blake3(self.pattern[i * chunk_size : (i + 1) * chunk_size]).digest()
            for i in range(self.per_pattern)
        ]
        whole = blake3.blake3(max_threads=blake3.blake3.AUTO)
        outline = bytearray()
        for i in range(self.count):
            data = self.chunk(i)
            whole.update(data)
            outline += self.digest(i) if len(data) == chunk_size else blake3.blake3(data).digest()
        self.handle = "blake3:" + whole.hexdigest()
        self.root = blake3.blake3(bytes(outline)).digest()

    def chunk(self, index: int) -> memoryview:
        start = (index % self.per_pattern) * self.chunk_size
        length = min(self.chunk_size, self.size - index * self.chunk_size)
        return self.pattern[start : start + length]

    def digest(self, index: int) -> bytes:
        if index == self.count - 1 and self.size % self.chunk_size:
            return blake3.blake3(self.chunk(index)).digest()
        return self.digests[index % self.per_pattern]


def baseline(src: Source, work: Path, *, sync: bool = True) -> float:
    path = work / "plain"
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(src.count):
            view = src.chunk(i)
            offset = i * src.chunk_size
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def _open(src: Source, work: Path) -> PartialBlob:
    return PartialBlob.open(
        work, src.handle, size=src.size, chunk_size=src.chunk_size, outline_root=src.root
    )


def partial_one_thread(src: Source, work: Path) -> float:
    start = time.perf_counter()
    partial = _open(src, work)
    for i in range(src.count):
        if not partial.write_chunk(i, src.chunk(i), src.digest(i)):
            raise RuntimeError("chunk did not verify")
        if partial.flush_due(time.monotonic()):
            partial.flush()
    ok = partial.finish()
    partial.close()
    elapsed = time.perf_counter() - start
    if not ok:
        raise RuntimeError("finish() failed")
    partial.discard()
    return elapsed


def partial_two_threads(src: Source, work: Path) -> float:
    start = time.perf_counter()
    partial = _open(src, work)
    done = threading.Event()

    def writer(first: int) -> None:
        for i in range(first, src.count, 2):
            if not partial.write_chunk(i, src.chunk(i), src.digest(i)):
                raise RuntimeError("chunk did not verify")

    def flusher() -> None:
        while not done.wait(0.05):
            if partial.flush_due(time.monotonic()):
                partial.flush()

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    flush_thread = threading.Thread(target=flusher)
    flush_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    flush_thread.join()
    ok = partial.finish()
    partial.close()
    elapsed = time.perf_counter() - start
    if not ok or partial.verified_chunks != src.count:
        raise RuntimeError("finish() failed")
    partial.discard()
    return elapsed


def finish_resumed(src: Source, work: Path) -> tuple[float, float]:
    """(PartialBlob.finish after a reopen, update_mmap with AUTO threads) on the same warm file."""
    partial = _open(src, work)
    for i in range(src.count):
        partial.write_chunk(i, src.chunk(i), src.digest(i))
    partial.close()
    resumed = _open(src, work)
    start = time.perf_counter()
    ok = resumed.finish()
    ours = time.perf_counter() - start
    start = time.perf_counter()
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(str(resumed.content_path))
    mmap_s = time.perf_counter() - start
    if not ok or "blake3:" + hasher.hexdigest() != src.handle:
        raise RuntimeError("hash mismatch")
    resumed.discard()
    return ours, mmap_s


def _median(fn: Callable[[], float], runs: int, name: str) -> float:
    times = []
    for _ in range(runs):
        times.append(fn())
        _log(f"  {name}: {times[-1]:.3f} s")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    size = args.size_mib * MIB
    WORK_PARENT.mkdir(parents=True, exist_ok=True)
    work = WORK_PARENT / f"partial-{os.getpid()}"
    work.mkdir()
    try:
        _log("preparing the source")
        src = Source(size, CHUNK_SIZE)
        base: list[float] = []
        cached: list[float] = []
        one: list[float] = []
        two: list[float] = []
        for run in range(args.runs):  # interleaved, so drift hits all alike
            _log(f"run {run + 1}/{args.runs}")
            base.append(_median(lambda: baseline(src, work), 1, "pwrite+fsync"))
            cached.append(_median(lambda: baseline(src, work, sync=False), 1, "pwrite, no fsync"))
            one.append(_median(lambda: partial_one_thread(src, work), 1, "partial 1 thread"))
            two.append(_median(lambda: partial_two_threads(src, work), 1, "partial 2 threads"))
        ours, mmap_s = finish_resumed(src, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    b, o, t = statistics.median(base), statistics.median(one), statistics.median(two)
    c = statistics.median(cached)
    result: dict[str, Any] = {
        "size_bytes": size,
        "chunk_size": CHUNK_SIZE,
        "runs": args.runs,
        "baseline_pwrite_s": b,
        "pwrite_no_fsync_s": c,
        "partial_1t_s": o,
        "partial_2t_s": t,
        "ratio_1t": b / o,
        "ratio_2t": b / t,
        "baseline_gbps": size / b / 1e9,
        "partial_1t_gbps": size / o / 1e9,
        "partial_2t_gbps": size / t / 1e9,
        "finish_resumed_s": ours,
        "update_mmap_auto_s": mmap_s,
        "finish_resumed_ratio": mmap_s / ours,
    }
    _log(f"{'case':<24}{'seconds':>10}{'GB/s':>8}{'ratio':>8}")
    _log(f"{'pwrite + fsync':<24}{b:>10.3f}{size / b / 1e9:>8.2f}{1.0:>8.2f}")
    _log(f"{'pwrite, no fsync':<24}{c:>10.3f}{size / c / 1e9:>8.2f}{b / c:>8.2f}")
    _log(f"{'partial, 1 thread':<24}{o:>10.3f}{size / o / 1e9:>8.2f}{b / o:>8.2f}")
    _log(f"{'partial, 2 threads':<24}{t:>10.3f}{size / t / 1e9:>8.2f}{b / t:>8.2f}")
    ratio = mmap_s / ours
    _log(f"{'finish() after resume':<24}{ours:>10.3f}{size / ours / 1e9:>8.2f}{ratio:>8.2f}")
    text = json.dumps(result, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
