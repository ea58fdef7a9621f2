"""Hops and payload copies of Plumtree dissemination in simulation (``netsim.swarm.SwarmSim``).

Real processes stop at about 20 nodes on a 2-core machine; the state machines on virtual time
show what the tree does at 100 and 1,000. Baseline: the theoretical hop count ⌈log₄ N⌉ + 1
(a tree of fan-out about 4, the active view's order of size, plus the first hop).

A node's distance to an event is ``hops + 1`` of the first ``EventBatch`` that brought it
(the origin pushes with hops 0); a first receipt by repair has none (``netsim.simmode.EventWatch``).
Payload copies count every event in every ``EventBatch`` delivered, repairs included, divided by
(events × receiving nodes): 1.0 is a perfect tree.
The first events of a fresh swarm still travel every eager edge (Plumtree prunes on duplicates),
so the figures are given for the warm-up events and for the events after it separately, and
for rounds in which every node publishes at once (what the real-process rounds do).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from netsim.simmode import EventWatch, theoretical_hops
from netsim.swarm import SwarmSim

__all__ = ["SimResult", "run_sim", "theoretical_hops"]

WARMUP_EVENTS = 5
MEASURED_EVENTS = 20
CONCURRENT_ROUNDS = 3
# Virtual seconds between publishes: lets each event finish (and the tree settle) before the next.
SPACING_S = 2.0


@dataclass(frozen=True, slots=True)
class SimResult:
    nodes: int
    join_virtual_s: float
    wall_s: float
    warmup_copies_per_node_event: float
    copies_per_node_event: float
    concurrent_copies_per_node_event: float
    """Every node publishing one event at the same instant, as the real benchmark's rounds do."""
    hops_p50: float
    hops_p99: float
    hops_max: int
    hops_histogram: dict[int, int]
    theoretical_hops: int

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["hops_histogram"] = {str(k): v for k, v in sorted(self.hops_histogram.items())}
        return out


def _publish_spaced(swarm: SwarmSim, watch: EventWatch, publishers: list[str]) -> None:
    for node in publishers:
        watch.publish(swarm, node)
        swarm.sim.run_for(SPACING_S)


def _quantile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def run_sim(n: int, *, seed: int = 1) -> SimResult:
    """Join ``n`` simulated nodes (chain of seeds), publish warm-up then measured events one at
    a time from random nodes, wait until every node holds all of them, and count."""
    start = time.perf_counter()
    swarm = SwarmSim(n, seed)
    joined = swarm.sim.run_until_true(swarm.membership_converged, 900.0, check_every=1.0)
    if joined is None:
        raise RuntimeError(f"simulated membership of {n} nodes did not converge")
    rng = random.Random(seed)
    warm, measured = EventWatch(), EventWatch()
    swarm.sim.on_deliver.append(warm)
    swarm.sim.on_deliver.append(measured)
    _publish_spaced(swarm, warm, [rng.choice(swarm.ids) for _ in range(WARMUP_EVENTS)])
    _publish_spaced(swarm, measured, [rng.choice(swarm.ids) for _ in range(MEASURED_EVENTS)])
    together = EventWatch()
    swarm.sim.on_deliver.append(together)
    for _ in range(CONCURRENT_ROUNDS):
        for node in swarm.ids:
            together.publish(swarm, node)
        swarm.sim.run_for(SPACING_S)
    want = swarm.disks[swarm.ids[0]].store.offsets()
    for node in swarm.ids:
        for source, head in swarm.disks[node].store.offsets().items():
            want[source] = max(want.get(source, -1), head)
    done = swarm.sim.run_until_true(
        lambda: swarm.offsets_converged(want), swarm.sim.now + 300.0, check_every=1.0
    )
    if done is None:
        raise RuntimeError(f"simulated events did not reach all {n} nodes")
    hops = measured.depths()
    receivers = n - 1
    return SimResult(
        nodes=n,
        join_virtual_s=round(joined, 2),
        wall_s=round(time.perf_counter() - start, 2),
        warmup_copies_per_node_event=round(warm.copies / (WARMUP_EVENTS * receivers), 3),
        copies_per_node_event=round(measured.copies / (MEASURED_EVENTS * receivers), 3),
        concurrent_copies_per_node_event=round(
            together.copies / (CONCURRENT_ROUNDS * n * receivers), 3
        ),
        hops_p50=statistics.median(hops),
        hops_p99=_quantile(hops, 0.99),
        hops_max=max(hops),
        hops_histogram=dict(Counter(hops)),
        theoretical_hops=theoretical_hops(n),
    )
