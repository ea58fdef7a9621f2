"""Swarm benchmarks of issue 4, on real node processes and in simulation.

    python -m bench.swarm [--nodes 5,20] [--events N] [--rounds R] [--sim 20,100] [--sim-large]
                          [--quick] [--json FILE]

- convergence (per N in ``--nodes``): join time of a chain of N processes, median time for a
  round of concurrent publishes (100 events per node) to reach every node, payload copies per
  node per event (goal ≤ 1.3), max hops; one warm-up round first, reported apart (bench.swarm_real).
- catch-up: ``--events`` published on A while B is stopped; B's catch-up in events/s against raw
  SQLite inserts of the same rows in the same run (node schema, WAL, synchronous=FULL, one
  transaction per 1,000 rows). Goal: 100,000 events in ≤ 10 s.
- simulation (per N in ``--sim``, plus 1,000 with ``--sim-large``): copies per node per event and
  the hop distribution against ⌈log₄ N⌉ + 1 (bench.swarm_sim).

``--quick``: N = 5 only, 10,000 catch-up events, 2 rounds, simulation at 20 (under a minute).
Each part can be left out (``--nodes ''``, ``--events 0``, ``--sim ''``), so ``python -m bench all``
runs them as separate benchmarks.
Every process and temp dir is removed on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.swarm_procs import progress
from bench.swarm_real import catch_up, convergence, event_payload
from bench.swarm_sim import run_sim
from swarmnode.events.schema import SCHEMA

GOAL_S_PER_100K = 10.0
COPIES_GOAL = 1.3
SQLITE_TXN = 1000
BASELINE_RUNS = 3
ROUND_BATCH = 100


def _rows(source: str, count: int) -> list[tuple[Any, ...]]:
    """Rows shaped like the node's: same payload text, a 32-byte chain, one signature per txn."""
    rows = []
    for i in range(count):
        payload = json.dumps(event_payload(i), separators=(",", ":"))
        signature = os.urandom(64) if (i + 1) % SQLITE_TXN == 0 or i == count - 1 else None
        rows.append(
            (source, i, i + 1, 1_700_000_000_000_000 + i, "bench", "catchup", payload,
             os.urandom(32), signature)
        )  # fmt: skip
    return rows


def sqlite_baseline(count: int, root: Path) -> float:
    """Seconds to insert ``count`` rows into a fresh log DB, one transaction per 1,000."""
    rows = _rows("abcdefghijklmno", count)
    path = root / f"baseline-{time.monotonic_ns()}.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(SCHEMA)
        start = time.perf_counter()
        for first in range(0, count, SQLITE_TXN):
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows[first : first + SQLITE_TXN],
            )
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        (got,) = conn.execute("SELECT count(*) FROM events").fetchone()
        if got != count:
            raise RuntimeError(f"baseline stored {got} rows, expected {count}")
    finally:
        conn.close()
    return elapsed


def _parse_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=_parse_list, default=[5, 20])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sim", type=_parse_list, default=[20, 100])
    parser.add_argument("--sim-large", action="store_true", help="also simulate 1,000 nodes")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.events, args.rounds, args.sim = [5], 10_000, 2, [20]
    if args.sim_large:
        args.sim = [*args.sim, 1000]
    return args


async def _real(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    out: dict[str, Any] = {"convergence": []}
    for n in args.nodes:
        out["convergence"].append(
            await convergence(root / f"conv{n}", n, rounds=args.rounds, batch=ROUND_BATCH)
        )
    if args.events:
        out["catchup"] = await catch_up(root / "catchup", args.events)
    return out


def _report_real(results: dict[str, Any]) -> None:
    print(f"{'N':>5} {'join s':>8} {'event s warm-up':>16} {'event s median':>15}"
          f" {'copies warm-up':>15} {'copies median':>14} {'max hops':>9}")  # fmt: skip
    for c in results["convergence"]:
        print(
            f"{c['nodes']:>5} {c['join_s']:>8.2f} {c['warmup_event_s']:>16.3f}"
            f" {c['event_median_s']:>15.3f} {c['warmup_copies_per_node_event']:>15.3f}"
            f" {c['copies_per_node_event_median']:>14.3f} {c['max_hops']:>9}"
        )
    if "catchup" not in results:
        return
    cu = results["catchup"]
    print(
        f"catch-up {cu['events']} events: {cu['catchup_s']:.2f} s from process start"
        f" ({cu['events_per_s']} ev/s), {cu['catchup_after_ready_s']:.2f} s from ready"
        f" | raw SQLite {cu['baseline_s']:.3f} s ({cu['baseline_events_per_s']} ev/s)"
        f" | node/SQLite rate {cu['ratio_vs_sqlite']:.3f}"
        f" | goal ≤ {cu['goal_s']:.1f} s: {'met' if cu['goal_met'] else 'NOT met'}"
    )


def _report_sim(results: dict[str, Any]) -> None:
    print(f"{'sim N':>6} {'copies warm-up':>15} {'copies':>7} {'all at once':>12} {'p50':>5}"
          f" {'p99':>5} {'max':>4} {'⌈log4 N⌉+1':>11}")  # fmt: skip
    for s in results["simulation"]:
        print(
            f"{s['nodes']:>6} {s['warmup_copies_per_node_event']:>15.3f}"
            f" {s['copies_per_node_event']:>7.3f} {s['concurrent_copies_per_node_event']:>12.3f}"
            f" {s['hops_p50']:>5.0f} {s['hops_p99']:>5.0f}"
            f" {s['hops_max']:>4} {s['theoretical_hops']:>11}"
        )


def main() -> None:
    args = _args()
    with tempfile.TemporaryDirectory(prefix="bench-swarm-") as tmp:
        root = Path(tmp)
        try:
            results = asyncio.run(_real(args, root))
        except (KeyboardInterrupt, asyncio.CancelledError):
            progress("interrupted: nodes stopped, temp dir removed")
            raise SystemExit(130) from None
        if args.events:
            progress("baseline: raw SQLite inserts")
            runs = [sqlite_baseline(args.events, root) for _ in range(BASELINE_RUNS)]
            _add_baseline(results["catchup"], args.events, runs)
    results["copies_goal"] = COPIES_GOAL
    # Real-process figures are printed and saved before the simulation runs, so a failure there
    # does not lose them.
    _report_real(results)
    _save(args.json, results)
    results["simulation"] = []
    for n in args.sim:
        progress(f"simulation: {n} nodes")
        results["simulation"].append(run_sim(n).as_json())
    _report_sim(results)
    _save(args.json, results)


def _add_baseline(cu: dict[str, Any], events: int, runs: list[float]) -> None:
    base = statistics.median(runs)
    goal_s = GOAL_S_PER_100K * events / 100_000
    cu.update(
        baseline_s=round(base, 3),
        baseline_runs_s=[round(r, 4) for r in runs],
        baseline_events_per_s=round(events / base),
        ratio_vs_sqlite=round(cu["events_per_s"] / (events / base), 4),
        goal_s=goal_s,
        goal_met=cu["catchup_s"] <= goal_s,
    )


def _save(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
