"""Micro-benchmark of the fetch scheduler alone: chunks/s through ``Fetcher`` for a 4,096-chunk
blob (256 KiB chunks) from 3 full providers that answer at once (no network, no hashing).

Baseline in the same run: the bare message traffic the machine causes (build the ChunkData each
chunk needs and one RequestChunks per chunk), so the ratio shows what scheduling adds.
Goal (issue 5 sub-task): >= 50,000 chunks/s through the machine.

    python -m bench.fetch_schedule [--chunks 4096] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import deque

import blake3

from protocol.messages_transfer import (
    ChunkData,
    ChunkRange,
    HaveBitmap,
    RequestChunks,
)
from swarmnode.swarm.fetcher import BlobSpec, Fetcher, WriteChunk

CHUNK = 256 * 1024
PEERS = ("a", "b", "c")


def run_machine(count: int) -> tuple[float, int, float]:
    data = bytes(CHUNK)
    outline = blake3.blake3(data).digest() * count
    handle = blake3.blake3(b"bench").digest()
    spec = BlobSpec(handle, count * CHUNK, CHUNK, blake3.blake3(outline).digest())
    f = Fetcher()
    for p in PEERS:
        f.peer_up(0.0, p)
    f.add(0.0, spec, outline=outline)
    full = HaveBitmap(handle=handle, chunk_count=count, bitmap=b"\xff" * (count // 8))
    queues: dict[str, deque[int]] = {p: deque() for p in PEERS}
    start = time.perf_counter()
    for p in PEERS:
        f.handle_message(0.0, p, full)
    done = False
    requests = 0
    while not done:
        fx = f.drain()
        for peer, msg in fx.sends:
            if isinstance(msg, RequestChunks):
                requests += 1
                q = queues[peer]
                for r in msg.ranges:
                    q.extend(range(r.start, r.start + r.count))
        for n in fx.notices:
            if isinstance(n, WriteChunk):
                f.chunk_stored(0.0, n.handle, n.index)
        progressed = False
        for p in PEERS:  # one chunk per peer per round: interleaved arrivals
            q = queues[p]
            if q:
                f.handle_message(0.0, p, ChunkData(handle=handle, index=q.popleft(), data=data))
                progressed = True
        done = not progressed and not fx
    elapsed = time.perf_counter() - start
    prog = f.progress(handle)
    assert prog is not None
    assert prog.stored_chunks == count, prog
    return elapsed, requests, prog.duplicate_bytes / (count * CHUNK)


def run_small(blobs: int) -> float:
    """``blobs`` single-chunk 4 KiB blobs (fast path) added at once, served by their origin."""
    datas = [i.to_bytes(4, "big") * 1024 for i in range(blobs)]
    specs = []
    for data in datas:
        handle = blake3.blake3(data).digest()
        specs.append(BlobSpec(handle, len(data), CHUNK, blake3.blake3(handle).digest(), "a"))
    by_handle = {s.handle: d for s, d in zip(specs, datas, strict=True)}
    f = Fetcher()
    f.peer_up(0.0, "a")
    start = time.perf_counter()
    for spec in specs:
        f.add(0.0, spec)
    pending: deque[bytes] = deque()
    complete = 0
    while complete < blobs:
        fx = f.drain()
        for _, msg in fx.sends:
            if isinstance(msg, RequestChunks):
                pending.append(msg.handle)
        for n in fx.notices:
            if isinstance(n, WriteChunk):
                f.chunk_stored(0.0, n.handle, n.index)
            elif type(n).__name__ == "FetchComplete":
                complete += 1
        if pending:
            h = pending.popleft()
            f.handle_message(0.0, "a", ChunkData(handle=h, index=0, data=by_handle[h]))
    return time.perf_counter() - start


def run_baseline(count: int) -> float:
    data = bytes(CHUNK)
    handle = blake3.blake3(b"bench").digest()
    start = time.perf_counter()
    for i in range(count):
        RequestChunks(handle=handle, ranges=(ChunkRange(start=i, count=1),))
        ChunkData(handle=handle, index=i, data=data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", type=int, default=1000, help="single-chunk blobs")
    args = parser.parse_args()
    machine, base, reqs, dup = [], [], 0, 0.0
    for _ in range(args.rounds):
        t, reqs, dup = run_machine(args.chunks)
        machine.append(t)
        base.append(run_baseline(args.chunks))
    small = statistics.median(run_small(args.small) for _ in range(args.rounds))
    m, b = statistics.median(machine), statistics.median(base)
    result = {
        "chunks": args.chunks,
        "machine_chunks_per_s": round(args.chunks / m),
        "baseline_chunks_per_s": round(args.chunks / b),
        "machine_over_baseline_time": round(m / b, 2),
        "request_messages": reqs,
        "duplicate_fraction": round(dup, 4),
        "small_blobs_per_s": round(args.small / small),
    }
    print(json.dumps(result))
    print(f"{'':<28}{'chunks/s':>12}")
    print(f"{'fetcher (3 providers)':<28}{result['machine_chunks_per_s']:>12,}")
    print(f"{'baseline (messages only)':<28}{result['baseline_chunks_per_s']:>12,}")
    print(f"{'4 KiB blobs, fast path':<28}{result['small_blobs_per_s']:>12,}  (blobs/s)")


if __name__ == "__main__":
    main()
