"""The simulation kernel's own cost per input, against a bare heap loop measured in the same run.

    python -m bench.netsim_kernel [--inputs N] [--json PATH]

- kernel: N toy nodes, each sending one message to a random node every 10 ms of virtual time and
  doing nothing else, run until about ``--inputs`` inputs were processed. Machines do no work,
  so this is the kernel's own overhead (routing, loss/latency draws, FIFO clamp, timers).
- baseline: the same number of ``heapq`` push/pop pairs of the same entry shape calling a no-op:
  the least any heap-driven simulator in Python can cost per input.
- scaling: the kernel at 100 and at 1,000 nodes for the same number of inputs; a per-input cost
  that does not grow with N shows there is no O(N) work per step.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import time
from pathlib import Path
from typing import Any

from netsim.sim import Simulator


class _Fx:
    __slots__ = ("deadline", "dials", "hangups", "notices", "sends")

    def __init__(self, sends: list[tuple[str, Any]], deadline: float | None) -> None:
        self.sends = sends
        self.dials: list[Any] = []
        self.hangups: list[str] = []
        self.notices: list[object] = []
        self.deadline = deadline


class _Chatter:
    """Sends one message to a random node per tick; ignores what it receives."""

    def __init__(self, names: list[str], now: float, rng: random.Random) -> None:
        self.names = names
        self.rng = rng
        self.next = now + 0.01 * rng.random()
        self.out: list[tuple[str, Any]] = []

    def handle_message(self, now: float, peer: str, msg: Any) -> None:
        pass

    def handle_timer(self, now: float) -> None:
        self.out.append((self.rng.choice(self.names), "m"))
        self.next = now + 0.01

    def handle_connected(self, now: float, peer: str) -> None:
        pass

    def handle_disconnected(self, now: float, peer: str) -> None:
        pass

    def handle_dial_failed(self, now: float, target: Any) -> None:
        pass

    def drain(self) -> _Fx:
        out, self.out = self.out, []
        return _Fx(out, self.next)


def kernel(n: int, inputs: int) -> float:
    """Seconds per processed input for ``n`` chatty nodes."""
    names = [f"n{i}" for i in range(n)]
    sim: Simulator[_Chatter] = Simulator(1, latency=(0.001, 0.005), loss=0.01)
    for name in names:
        sim.add_node(name, lambda _id, now, rng: _Chatter(names, now, rng))
    # one timer and about one message per node per 10 ms
    horizon = inputs / (2 * n) * 0.01
    start = time.perf_counter()
    sim.run_until(horizon)
    return (time.perf_counter() - start) / sim.steps


def baseline(inputs: int) -> float:
    """Seconds per push/pop/call of a bare heap with the kernel's entry shape."""
    rng = random.Random(1)
    heap: list[tuple[float, int, int, str, int, Any, Any]] = []

    def noop(_entry: object) -> None:
        pass

    for seq in range(1000):
        heapq.heappush(heap, (rng.random(), seq, 0, "n", 0, None, None))
    start = time.perf_counter()
    for seq in range(1000, 1000 + inputs):
        entry = heapq.heappop(heap)
        noop(entry)
        heapq.heappush(heap, (entry[0] + rng.random(), seq, 0, "n", 0, None, None))
    return (time.perf_counter() - start) / inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=300_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = baseline(args.inputs)
    small = kernel(100, args.inputs)
    large = kernel(1000, args.inputs)
    results = {
        "baseline_us_per_input": base * 1e6,
        "kernel_100_us_per_input": small * 1e6,
        "kernel_1000_us_per_input": large * 1e6,
        "kernel_vs_baseline": small / base,
        "n1000_vs_n100": large / small,
    }
    print(f"{'case':<26} {'µs/input':>9}")
    print(f"{'bare heap (baseline)':<26} {base * 1e6:9.2f}")
    print(f"{'kernel, 100 nodes':<26} {small * 1e6:9.2f}  x{small / base:.1f} of baseline")
    print(f"{'kernel, 1000 nodes':<26} {large * 1e6:9.2f}  x{large / small:.2f} of 100 nodes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
