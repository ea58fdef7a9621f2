"""Catch-up after a partition: a node missing N events pulls them from a neighbour through the
dissemination machines (offset maps → RequestRange spans → packed EventBatches → verify → store).

Baseline, same run: the least work any receiver must do for those events — the same packed
batches encoded, decoded, verified and stored with no machine in between. Messages between the
two machines also go through the codec, so the ratio is the machines' own overhead.
Issue goal: 100,000 events in ≤ 10 s. Run: ``python -m bench.dissemination_catchup [N]``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import deque

from protocol.codec import decode, encode
from protocol.messages_replication import EventBatch
from swarmnode.swarm.antientropy import pack_batches
from swarmnode.swarm.eventstore import MemoryEventStore
from tests.helpers.dissemination import Replica

SIGN_EVERY = 1024  # as events/writer.py signs long publish batches


def _baseline(origin: Replica) -> float:
    records = origin.store.records(origin.node_id)
    key = origin.identity.public_key
    start = time.perf_counter()
    store = MemoryEventStore()
    for batch in pack_batches(records, origin.store.public_key, hops=None):
        got = decode(encode(batch))
        assert isinstance(got, EventBatch)
        store.ingest([(key, got.events)])
    elapsed = time.perf_counter() - start
    assert store.head(origin.node_id) == len(records) - 1
    return elapsed


def _machines(origin: Replica, seed: int) -> tuple[float, int]:
    """Seconds until the empty node holds everything, and the peak encoded bytes in flight."""
    target = Replica(seed)
    count = origin.store.head(origin.node_id) + 1
    start = time.perf_counter()
    origin.machine.handle_neighbor_up(0.0, target.node_id)
    target.machine.handle_neighbor_up(0.0, origin.node_id)
    queue: deque[tuple[Replica, str, bytes]] = deque()
    peak = in_flight = 0
    nodes = {origin.node_id: origin, target.node_id: target}
    while True:
        for node in (origin, target):
            for peer, msg in node.machine.drain().sends:
                body = encode(msg)
                in_flight += len(body)
                queue.append((nodes[peer], node.node_id, body))
        peak = max(peak, in_flight)
        if not queue:
            break
        dst, src, body = queue.popleft()
        in_flight -= len(body)
        dst.machine.handle_message(0.0, src, decode(body))
    elapsed = time.perf_counter() - start
    assert target.store.head(origin.node_id) == count - 1
    origin.machine.handle_neighbor_down(0.0, target.node_id)
    return elapsed, peak


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    origin = Replica(1)
    origin.store.ingest(
        [(origin.identity.public_key, origin.make_events(count, size=80, per_batch=SIGN_EVERY))]
    )
    base, machine, peaks = [], [], []
    for i in range(3):
        base.append(_baseline(origin))
        elapsed, peak = _machines(origin, 100 + i)
        machine.append(elapsed)
        peaks.append(peak)
    b, m = statistics.median(base), statistics.median(machine)
    report = {
        "events": count,
        "baseline_s": round(b, 3),
        "machines_s": round(m, 3),
        "ratio_machines_over_baseline": round(m / b, 3),
        "events_per_s": round(count / m),
        "peak_bytes_in_flight": max(peaks),
        "goal_s": 10.0 * count / 100_000,
    }
    print(json.dumps(report))
    print(f"{'events':>8} {'baseline s':>11} {'machines s':>11} {'ratio':>6} {'peak MiB':>9}")
    print(f"{count:>8} {b:>11.3f} {m:>11.3f} {m / b:>6.3f} {max(peaks) / 2**20:>9.2f}")


if __name__ == "__main__":
    main()
