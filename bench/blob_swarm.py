"""Swarming on real node processes: time for a blob of S bytes to reach all N nodes when every
node's uplink is capped at R (issue 6: within 2 × S/R, where a lone source needs (N−1) × S/R).

    python -m bench.blob_swarm [--quick] [--nodes 2,4,8] [--size-mib S] [--rate-mib R] [--runs K]
                               [--json FILE]

For each N, N unmodified nodes start through netsim's ``Cluster`` (every link through a proxy, so
``cap_uplink`` caps everything a node sends, over all its connections), join, and get their
uplinks capped at R. Each run uploads a new blob (content from ``netsim.blobs``) over HTTP on one
node (a different one each run) and times from the upload's 201 until every node's catalog says
it holds the blob, polled from outside every 50 ms; then every copy is read back and hashed. The
clock starts at the 201 because before it the blob does not exist for the swarm; upload time is
kept in the raw detail.

Baselines in the same run: N = 2 is always measured (one capped link: S/R as this machine and
proxy achieve it), next to the nominal S/R and the lone-source bound (N−1)·S/R. Every node is
stopped and every temp dir removed on error, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import signal
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.figures import Goal, figure, progress, series, write_report
from bench.swarm_procs import all_alive, wait_until
from netsim.blobs import BlobSpec, blob_is_local, read_blob, upload_blob
from netsim.cluster import Cluster, Member

__all__ = ["Params", "RunResult", "main", "measure", "report_figures"]

MIB = 1 << 20
SWARM_KEY = hashlib.blake2s(b"swarmnode bench blob swarm").hexdigest()
POLL_S = 0.05
JOIN_DEADLINE_S = 90.0
GOAL = Goal("<=", 2.0, on="value", source="issue 6")
GROUP = "blob swarm"


@dataclass(frozen=True, slots=True)
class Params:
    """What one invocation measures: node counts, blob size and uplink cap (bytes, bytes/s)."""

    nodes: tuple[int, ...]
    size: int
    rate: float
    runs: int

    @property
    def s_over_r(self) -> float:
        """Nominal S/R: one link's transfer time at exactly the cap."""
        return self.size / self.rate

    def lone_source_s(self, n: int) -> float:
        """(N−1)·S/R: a source that sends every other node its own copy."""
        return (n - 1) * self.s_over_r

    def deadline_s(self, n: int) -> float:
        """How long a run may take before it is called failed: well past the lone source."""
        return 3 * self.lone_source_s(n) + 60.0


@dataclass(slots=True)
class RunResult:
    """One upload: seconds from start to 201, and from the 201 until each node held the blob."""

    nodes: int
    source: str
    upload_s: float
    per_node_s: dict[str, float] = field(default_factory=dict)

    @property
    def time_s(self) -> float:
        return max(self.per_node_s.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "source": self.source,
            "upload_s": round(self.upload_s, 3),
            "time_s": round(self.time_s, 3),
            "per_node_s": {k: round(v, 3) for k, v in self.per_node_s.items()},
        }


# -- one run ---------------------------------------------------------------------------------------


async def _held_at(session: aiohttp.ClientSession, member: Member, handle: str) -> float:
    """Loop time at which ``member`` first says it holds the blob, polled every POLL_S."""
    loop = asyncio.get_running_loop()
    # Polling is the point: the node has no notification for "complete here" (netsim.blobs).
    while not await blob_is_local(session, member.proc, handle):  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
    return loop.time()


async def _verify(
    session: aiohttp.ClientSession, members: Sequence[Member], spec: BlobSpec
) -> None:
    """Every copy reads back byte-exact (hashed as it streams), or this raises."""
    for m in members:
        got = await read_blob(session, m.proc, m.name, spec.handle)
        if not (got.complete and got.length == spec.size and "blake3:" + got.digest == spec.handle):
            raise RuntimeError(f"{m.name} served a wrong copy: {got.as_json()}")


async def one_run(
    session: aiohttp.ClientSession, cluster: Cluster, source: Member, params: Params, tag: str
) -> RunResult:
    """Upload a fresh blob on ``source``; time until every node holds it; verify every copy."""
    loop = asyncio.get_running_loop()
    spec = BlobSpec.make(f"bench-swarm-{tag}-{secrets.token_hex(8)}", params.size)
    started = loop.time()
    status, handle = await upload_blob(session, source.proc, spec, semantics="bench.swarm")
    acked = loop.time()
    if status != 201 or handle != spec.handle:
        raise RuntimeError(f"upload on {source.name} answered {status}, handle {handle}")
    result = RunResult(cluster.count, source.name, acked - started)
    async with asyncio.timeout(params.deadline_s(cluster.count)):
        held = await asyncio.gather(*(_held_at(session, m, spec.handle) for m in cluster))
    result.per_node_s = {m.name: t - acked for m, t in zip(cluster, held, strict=True)}
    await _verify(session, [m for m in cluster if m is not source], spec)
    return result


async def measure(root: Path, n: int, params: Params) -> list[RunResult]:
    """Start N nodes, cap every uplink, and do ``params.runs`` uploads from rotating sources."""
    progress(f"N = {n}: starting {n} nodes")
    timeout = aiohttp.ClientTimeout(total=None)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        Cluster(root / f"n{n}", n, swarm_key=SWARM_KEY) as cluster,
    ):
        procs = [m.proc for m in cluster]
        await wait_until(lambda: all_alive(session, procs), JOIN_DEADLINE_S, f"{n} nodes alive")
        for m in cluster:
            cluster.cap_uplink(m.name, params.rate)
        results = []
        for r in range(params.runs):
            source = cluster.members[r % n]
            result = await one_run(session, cluster, source, params, f"{n}-{r}")
            progress(
                f"  run {r + 1}/{params.runs}: upload on {source.name} {result.upload_s:.2f} s,"
                f" all {n} nodes {result.time_s:.2f} s after the 201"
                f" ({result.time_s / params.s_over_r:.2f} x S/R)"
            )
            results.append(result)
        return results


async def measure_all(root: Path, params: Params) -> dict[int, list[RunResult]]:
    """Every N, and N = 2 (the one-link baseline) whether asked for or not, smallest first."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return {n: await measure(root, n, params) for n in sorted({2, *params.nodes})}


# -- the report ------------------------------------------------------------------------------------


def _times(runs: Sequence[RunResult]) -> list[float]:
    return [r.time_s for r in runs]


def report_figures(results: dict[int, list[RunResult]], params: Params) -> list[dict[str, Any]]:
    """Per N: the time against the lone source, and the time in S/R against issue 6's goal and
    against one capped link as measured (N = 2)."""
    common: dict[str, Any] = {
        "size_mib": params.size / MIB,
        "rate_mib_s": params.rate / MIB,
        "nominal_s_over_r_s": round(params.s_over_r, 4),
        "measured_s_over_r_s": round(statistics.median(_times(results[2])), 4),
        "timed_from": "upload 201",
    }
    one_link = [t / params.s_over_r for t in _times(results[2])]
    out: list[dict[str, Any]] = []
    for n in sorted(results):
        out += _figures_for(n, _times(results[n]), one_link, params, common)
    return out


def _figures_for(
    n: int, runs: list[float], one_link: list[float], params: Params, common: dict[str, Any]
) -> list[dict[str, Any]]:
    here = common | {"nodes": n, "runs": len(runs), "lone_source_s": params.lone_source_s(n)}
    what = f"{params.size / MIB:g} MiB to all {n} nodes, every uplink {params.rate / MIB:g} MiB/s"
    time_figure = figure(
        f"blob_swarm_time_n{n}",
        group=GROUP,
        name=f"time, {what}",
        unit="s",
        better="lower",
        runs=runs,
        baseline="lone source (N−1)·S/R, nominal",
        baseline_runs=[params.lone_source_s(n)],
        params=here,
    )
    multiple_figure = figure(
        f"blob_swarm_s_over_r_n{n}",
        group=GROUP,
        name=f"time in multiples of S/R, {what}",
        unit="× S/R",
        better="lower",
        runs=[t / params.s_over_r for t in runs],
        baseline="one capped link as measured (N = 2), × S/R",
        baseline_runs=one_link,
        goal=GOAL,
        params=here,
    )
    return [time_figure, multiple_figure]


def plot_series(results: dict[int, list[RunResult]], params: Params) -> list[dict[str, Any]]:
    ns = sorted(results)
    sr = params.s_over_r
    return [
        series(
            "time_to_all_vs_n", "measured", ns, [statistics.median(_times(results[n])) for n in ns]
        ),
        series("time_to_all_vs_n", "2 × S/R (issue 6)", ns, [2 * sr] * len(ns), style="bound"),
        series(
            "time_to_all_vs_n",
            "lone source (N−1)·S/R",
            ns,
            [params.lone_source_s(n) for n in ns],
            style="baseline",
        ),
    ]


def table(results: dict[int, list[RunResult]], params: Params) -> str:
    sr = params.s_over_r
    lines = [
        f"blob {params.size / MIB:g} MiB, every uplink {params.rate / MIB:g} MiB/s, nominal S/R"
        f" {sr:.2f} s; timed from the upload's 201",
        f"{'N':>3} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7} {'x S/R':>6}"
        f" {'2·S/R s':>8} {'(N-1)·S/R s':>12} {'goal':>5}",
    ]
    for n in sorted(results):
        times = _times(results[n])
        median = statistics.median(times)
        met = "met" if median / sr <= GOAL.target else "NOT"
        lines.append(
            f"{n:>3} {len(times):>4} {median:>9.2f} {min(times):>7.2f} {max(times):>7.2f}"
            f" {median / sr:>6.2f} {2 * sr:>8.2f} {params.lone_source_s(n):>12.2f} {met:>5}"
        )
    return "\n".join(lines)


def _args(argv: Sequence[str] | None) -> tuple[Params, Path | None]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 3, 8 MiB, 1 run")
    parser.add_argument("--nodes", help="node counts, comma-separated (2,4,8; quick 3)")
    parser.add_argument("--size-mib", type=float, help="blob size (64; quick 8)")
    parser.add_argument("--rate-mib", type=float, default=8.0, help="uplink cap, MiB/s (8)")
    parser.add_argument("--runs", type=int, help="uploads per N (3; quick 1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    nodes = args.nodes or ("3" if args.quick else "2,4,8")
    params = Params(
        nodes=tuple(int(x) for x in nodes.split(",") if x.strip()),
        size=int((args.size_mib or (8 if args.quick else 64)) * MIB),
        rate=args.rate_mib * MIB,
        runs=args.runs or (1 if args.quick else 3),
    )
    if min(params.nodes) < 2 or params.size <= 0 or params.rate <= 0 or params.runs < 1:
        parser.error("need N >= 2, a positive size and rate, and at least one run")
    return params, args.json


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run, print the table, write the report; returns the figures, series and raw detail."""
    params, json_path = _args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-blob-swarm-") as tmp:
        try:
            results = asyncio.run(measure_all(Path(tmp), params))
        except (KeyboardInterrupt, asyncio.CancelledError):
            progress("interrupted: nodes stopped, temp dir removed")
            raise SystemExit(130) from None
    figures = report_figures(results, params)
    lines = plot_series(results, params)
    raw = {str(n): [r.as_json() for r in runs] for n, runs in results.items()}
    print(table(results, params))
    write_report(json_path, figures, lines, raw=raw)
    return {"figures": figures, "series": lines, "raw": raw}


if __name__ == "__main__":
    main()
