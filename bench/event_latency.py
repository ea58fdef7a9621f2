"""Subscribe latency on real node processes: how long an event takes from a publish request to an
open ``/subscribe`` stream, on the node it was published on (local) and on a second node of the
swarm (remote).

    python -m bench.event_latency [--quick] [--events N] [--runs R] [--interval-ms MS] [--json FILE]

A publisher sends one event at a time over HTTP, paced at one every ``--interval-ms`` (a publish
slower than that delays the next one: there is never more than one in flight). Each event carries
``time.monotonic_ns()`` taken just before its request; the subscriber, in the same process, reads
the clock as soon as the event's line arrives. Latency = arrival - send, for every event, after a
warm-up the subscriber must have received first (so the stream is live, not replaying). The
``--events`` of a case are split over ``--runs`` repetitions, local and remote interleaved; a
figure's runs are the per-repetition percentiles.

Baselines, measured in the same run: a raw SQLite durable insert (node schema, WAL,
synchronous=FULL, one commit per event, timed per commit): the floor any durable publish pays; and
for the remote case, one line written on a loopback TCP connection until the reader has it (the
floor of one hop). Publish throughput is ``bench.events_log``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.figures import figure, progress, write_report
from bench.swarm_procs import all_alive, chain, publish, wait_until
from netsim.nodeproc import NodeProcess
from swarmnode.events.schema import SCHEMA

__all__ = ["Stats", "main", "measure_all", "percentile", "report_figures"]

SEMANTICS = "bench.latency"
WARMUP_EVENTS = 20
JOIN_DEADLINE_S = 60.0
# Generous: a case is a few seconds of pacing; this only stops a run whose events never arrive.
CASE_DEADLINE_S = 120.0
NS_PER_MS = 1e6
GROUP = "event latency"
CASES = {
    "local": "publish and subscribe on one node",
    "remote": "publish on A, subscribe on B (two nodes in a swarm)",
}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: a value that occurred, so p99 of a few hundred is a real event."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Stats:
    """The percentiles of one sample, in ms."""

    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Stats:
        return cls(
            len(values_ms), percentile(values_ms, 50), percentile(values_ms, 99), max(values_ms)
        )

    def as_json(self) -> dict[str, float]:
        return {"count": self.count, "p50": self.p50, "p99": self.p99, "max": self.max}


@dataclass(slots=True)
class Results:
    """Per case (local, remote, sqlite, tcp): one Stats per repetition."""

    per_run: dict[str, list[Stats]] = field(default_factory=dict)

    def add(self, case: str, values_ms: Sequence[float]) -> Stats:
        stats = Stats.of(values_ms)
        self.per_run.setdefault(case, []).append(stats)
        return stats


# -- the subscriber --------------------------------------------------------------------------------


class Subscriber:
    """An open subscribe stream that stamps every event's arrival before parsing it."""

    def __init__(self) -> None:
        self.latency_ns: dict[int, int] = {}
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        async for line in resp.content:
            now = time.monotonic_ns()
            if not line.strip():
                continue
            event = json.loads(line)
            if "payload" not in event:
                raise RuntimeError(f"subscribe stream failed: {line[:200]!r}")
            payload = event["payload"]
            self.latency_ns[int(payload["i"])] = now - int(payload["t"])
            self._arrived.set()
        raise RuntimeError("subscribe stream ended")

    async def until(self, ids: set[int]) -> None:
        """Return once every event in ``ids`` arrived (callers bound this with a deadline)."""
        while not ids <= self.latency_ns.keys():
            if self._task is not None and self._task.done():
                self._task.result()  # the stream failed: raise why
            self._arrived.clear()
            waiter = asyncio.ensure_future(self._arrived.wait())
            assert self._task is not None
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, session: aiohttp.ClientSession, node: NodeProcess, name: str
    ) -> AsyncIterator[Subscriber]:
        """Subscribe on ``node`` to this bench's events named ``name``; closed on exit."""
        sub = cls()
        body = {"subscriptions": [{"semantics": SEMANTICS, "name": name}]}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with session.post(node.events_url + "/subscribe", json=body, timeout=timeout) as r:
            if r.status != 200:
                raise RuntimeError(f"subscribe answered {r.status}: {await r.text()}")
            sub._task = asyncio.create_task(sub._read(r))
            try:
                yield sub
            finally:
                sub._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sub._task


# -- one case --------------------------------------------------------------------------------------


async def _publish_one(
    session: aiohttp.ClientSession, node: NodeProcess, name: str, i: int
) -> None:
    """Publish event ``i`` stamped with the time just before its request."""
    payload = {"i": i, "t": time.monotonic_ns()}
    await publish(session, node, [{"semantics": SEMANTICS, "name": name, "payload": payload}])


async def paced(
    session: aiohttp.ClientSession,
    publisher: NodeProcess,
    subscriber: NodeProcess,
    name: str,
    events: int,
    interval_s: float,
) -> list[float]:
    """Latencies (ms) of ``events`` events published on ``publisher``, read on ``subscriber``."""
    loop = asyncio.get_running_loop()
    async with Subscriber.open(session, subscriber, name) as sub:
        # Warm-up: until these arrive the stream may still be setting up (or replicating).
        warmup = set(range(-WARMUP_EVENTS, 0))
        async with asyncio.timeout(CASE_DEADLINE_S):
            for i in sorted(warmup):
                await _publish_one(session, publisher, name, i)
            await sub.until(warmup)
            start = loop.time()
            for i in range(events):
                delay = start + i * interval_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the publish rate, not a synchronisation
                await _publish_one(session, publisher, name, i)
            await sub.until(set(range(events)))
        return [sub.latency_ns[i] / NS_PER_MS for i in range(events)]


# -- baselines -------------------------------------------------------------------------------------


def sqlite_commit_latencies(path: Path, events: int) -> list[float]:
    """Time (ms) of each of ``events`` one-row durable commits into a fresh DB of the node's
    schema (WAL, synchronous=FULL): what the node's own durable publish cannot go below."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(SCHEMA)
        out: list[float] = []
        for i in range(events):
            payload = json.dumps({"i": i, "t": time.monotonic_ns()}, separators=(",", ":"))
            row = ("abcdefghijklmno", i, i + 1, 1_700_000_000_000_000 + i, SEMANTICS, "raw",
                   payload, bytes(32), bytes(64))  # fmt: skip
            start = time.perf_counter_ns()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            conn.execute("COMMIT")
            out.append((time.perf_counter_ns() - start) / NS_PER_MS)
        return out
    finally:
        conn.close()


async def tcp_one_way_latencies(events: int) -> list[float]:
    """Time (ms) from writing a timestamped line on a loopback TCP connection until the reader's
    loop has it, one line at a time: one hop with no node in it."""
    arrivals: asyncio.Queue[int] = asyncio.Queue()

    async def reader_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.closing(writer):
            while line := await reader.readline():
                arrivals.put_nowait(time.monotonic_ns() - int(line))

    server = await asyncio.start_server(reader_side, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            out: list[float] = []
            async with asyncio.timeout(CASE_DEADLINE_S):
                for _ in range(events):
                    writer.write(b"%d\n" % time.monotonic_ns())
                    await writer.drain()
                    out.append(await arrivals.get() / NS_PER_MS)
            return out
        finally:
            writer.close()
            await writer.wait_closed()


# -- the run ---------------------------------------------------------------------------------------


async def measure_all(root: Path, events: int, runs: int, interval_s: float) -> Results:
    """Both cases and both baselines, ``runs`` repetitions of ``events`` each, interleaved."""
    results = Results()
    async with aiohttp.ClientSession() as session, chain(root / "nodes", 2) as (a, b):
        await wait_until(lambda: all_alive(session, [a, b]), JOIN_DEADLINE_S, "2 nodes alive")
        for rep in range(runs):
            for case, subscriber in (("local", a), ("remote", b)):
                values = await paced(session, a, subscriber, f"{case}-{rep}", events, interval_s)
                _say(f"run {rep + 1}/{runs} {case}", results.add(case, values))
            values = await asyncio.to_thread(
                sqlite_commit_latencies, root / f"raw-{rep}.sqlite", events
            )
            _say(f"run {rep + 1}/{runs} raw SQLite commit", results.add("sqlite", values))
            values = await tcp_one_way_latencies(events)
            _say(f"run {rep + 1}/{runs} raw TCP one-way", results.add("tcp", values))
    return results


def _say(what: str, s: Stats) -> None:
    progress(f"  {what}: p50 {s.p50:.3f} ms, p99 {s.p99:.3f} ms, max {s.max:.3f} ms")


# -- the report ------------------------------------------------------------------------------------


def report_figures(results: Results, interval_ms: float) -> list[dict[str, Any]]:
    """Local and remote p50 and p99 against the raw SQLite commit's p50 and p99."""
    tcp = results.per_run["tcp"]
    out: list[dict[str, Any]] = []
    for case in CASES:
        stats = results.per_run[case]
        params: dict[str, Any] = {
            "events_per_run": stats[0].count,
            "samples": sum(s.count for s in stats),
            "runs": len(stats),
            "interval_ms": interval_ms,
            "max_ms": [round(s.max, 4) for s in stats],
        }
        if case == "remote":
            params["tcp_loopback_one_way_p50_ms"] = _median(s.p50 for s in tcp)
            params["tcp_loopback_one_way_p99_ms"] = _median(s.p99 for s in tcp)
        out += [_figure(results, case, q, params) for q in ("p50", "p99")]
    return out


def _figure(results: Results, case: str, q: str, params: dict[str, Any]) -> dict[str, Any]:
    return figure(
        f"event_latency_{case}_{q}",
        group=GROUP,
        name=f"subscribe latency {q}, {case}: {CASES[case]}",
        unit="ms",
        better="lower",
        runs=[getattr(s, q) for s in results.per_run[case]],
        baseline=f"raw SQLite durable commit {q} (WAL, synchronous=FULL, 1 row)",
        baseline_runs=[getattr(s, q) for s in results.per_run["sqlite"]],
        params=params,
    )


def _median(values: Iterable[float]) -> float:
    return round(statistics.median(values), 4)


def table(results: Results) -> str:
    """One row per case: median over runs of p50 and p99, and the largest latency seen."""
    labels = {
        "local": "local: " + CASES["local"],
        "remote": "remote: " + CASES["remote"],
        "sqlite": "baseline: raw SQLite durable commit",
        "tcp": "baseline: raw TCP one-way line, loopback",
    }
    width = max(map(len, labels.values()))
    lines = [f"{'case':<{width}}  {'samples':>7}  {'p50 ms':>8}  {'p99 ms':>8}  {'max ms':>8}"]
    for case, label in labels.items():
        stats = results.per_run[case]
        lines.append(
            f"{label:<{width}}  {sum(s.count for s in stats):>7}"
            f"  {_median(s.p50 for s in stats):>8.3f}  {_median(s.p99 for s in stats):>8.3f}"
            f"  {max(s.max for s in stats):>8.3f}"
        )
    return "\n".join(lines)


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 events, 1 run")
    parser.add_argument("--events", type=int, help="events per case, over all runs (2,000)")
    parser.add_argument("--runs", type=int, help="repetitions (3; quick 1)")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="publish pacing (5)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.events = args.events or (300 if args.quick else 2000)
    args.runs = args.runs or (1 if args.quick else 3)
    if args.events < args.runs:
        parser.error("--events must be at least --runs")
    return args


async def _run(args: argparse.Namespace, root: Path) -> Results:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    per_run = args.events // args.runs
    progress(f"event latency: 2 nodes, {args.runs} x {per_run} events per case")
    return await measure_all(root, per_run, args.runs, args.interval_ms / 1000)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run, print the table, write the report; returns the report's figures and raw detail."""
    args = _args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        try:
            results = asyncio.run(_run(args, Path(tmp)))
        except (KeyboardInterrupt, asyncio.CancelledError):
            progress("interrupted: nodes stopped, temp dir removed")
            raise SystemExit(130) from None
    figures = report_figures(results, args.interval_ms)
    raw = {case: [s.as_json() for s in stats] for case, stats in results.per_run.items()}
    print(table(results))
    write_report(args.json, figures, raw=raw)
    return {"figures": figures, "raw": raw}


if __name__ == "__main__":
    main()
