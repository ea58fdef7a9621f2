"""Runs one scenario on a fresh cluster and writes the report (JSON, and a readable summary).

After the scenario's script returns, the runner waits (up to the deadline) until every live node
holds every acknowledged event and sees every other live node alive: that is convergence, timed
from the scenario's ``faults_over()``. Then it reads every node's events and status and checks
the invariants (netsim/invariants.py). The run passed only if it converged and every invariant
held.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from netsim.blobs import BlobRead, read_blob, wait_local
from netsim.cluster import Cluster, Member
from netsim.invariants import (
    Check,
    acknowledged_blobs_everywhere,
    acknowledged_events_everywhere,
    gapless_subscriptions,
    identical_events,
    served_bytes_match,
)
from netsim.nodeproc import http_offsets
from netsim.observe import node_status, wait_holds
from netsim.scenario import SCENARIOS, Run
from swarmnode.swarm.driver_config import PROBE_PERIOD_ENV

__all__ = ["Report", "run_scenario"]

# Per phase (membership, detection, convergence): cold starts and probing on a loaded machine.
DEFAULT_DEADLINE_S = 60.0
PROBE_S_PER_NODE_PER_CORE = 0.02


@dataclass(slots=True)
class Report:
    scenario: str
    seed: int
    nodes: int
    converged: bool = False
    convergence_s: float | None = None
    invariants: list[Check] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    duplicate_bytes: int = 0
    duplicate_events: int = 0
    max_hops: int = 0
    blobs: int = 0
    blob_reads: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.converged and self.error is None and all(c.ok for c in self.invariants)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "nodes": self.nodes,
            "ok": self.ok,
            "converged": self.converged,
            "convergence_s": self.convergence_s,
            "invariants": [c.as_json() for c in self.invariants],
            "bytes_sent": self.bytes_sent,
            "duplicate_bytes": self.duplicate_bytes,
            "duplicate_events": self.duplicate_events,
            "max_hops": self.max_hops,
            "blobs": self.blobs,
            "blob_reads": self.blob_reads,
            "phases_s": self.phases,
            "error": self.error,
        }

    def summary(self) -> str:
        conv = "n/a" if self.convergence_s is None else f"{self.convergence_s:.2f} s"
        lines = [
            f"scenario {self.scenario}  nodes {self.nodes}  seed {self.seed}",
            f"converged {'yes' if self.converged else 'NO'} in {conv}",
        ]
        lines += [f"  phase {name}: +{at:.2f} s" for name, at in self.phases.items()]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.invariants]
        sent = sum(self.bytes_sent.values())
        lines.append(
            f"bytes sent {sent:,} over {len(self.bytes_sent)} nodes, duplicate events "
            f"{self.duplicate_events}, duplicate blob bytes {self.duplicate_bytes}, "
            f"max hops {self.max_hops}, {self.blobs} blobs read {self.blob_reads} times"
        )
        if self.error:
            lines.append(f"error: {self.error}")
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def _progress(text: str) -> None:
    print(f"[netsim] {text}", file=sys.stderr, flush=True)


async def run_scenario(
    name: str,
    *,
    nodes: int | None = None,
    seed: int = 1,
    root: Path | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> Report:
    """Run scenario ``name`` on ``nodes`` real nodes (its default if None) under ``root`` (a
    temporary directory, removed afterwards, if None)."""
    spec = SCENARIOS[name]
    count = nodes if nodes is not None else spec.nodes
    report = Report(scenario=name, seed=seed, nodes=count)
    work = root if root is not None else Path(tempfile.mkdtemp(prefix=f"netsim-{name}-"))
    key = hashlib.blake2s(f"netsim/{name}/{seed}".encode()).hexdigest()
    started = time.monotonic()
    try:
        _progress(f"{name}: starting {count} nodes (seed {seed})")
        async with (
            Cluster(
                work,
                count,
                swarm_key=key,
                env=_node_env(spec.env, count),
                # The network's own draws (jitter, loss), apart from the script's choices.
                rng=random.Random(f"netsim-network/{seed}"),
                clock_skew=spec.clock_skew,
            ) as cluster,
            aiohttp.ClientSession() as session,
        ):
            run = Run(
                cluster, session, random.Random(seed), deadline_s=deadline_s, progress=_progress
            )
            run.mark("nodes started")
            try:
                await spec.script(run)
                run.marks.setdefault("faults over", time.monotonic())
                await _converge(run, report)
                await _collect(run, report)
            except TimeoutError:
                last = next(reversed(run.marks), "start")
                report.error = f"timed out after {deadline_s:.0f} s in the phase after {last!r}"
            except Exception as exc:  # a broken scenario step: reported, nodes still stopped
                report.error = f"{type(exc).__name__}: {exc}"
            finally:
                await run.stop_subscriptions()
                report.phases = {k: round(v - started, 3) for k, v in run.marks.items()}
    finally:
        if root is None:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _node_env(env: dict[str, str], count: int) -> dict[str, str]:
    """The scenario's node environment, with fast probing slowed down for big clusters: a probe
    is answered within half a period only while the machine runs every node's loop that often.
    At 100 nodes on 2 cores, 0.2 s periods made nodes suspect each other for ever; the period
    grows with the nodes per core (0.02 s each: 0.2 s up to 20 nodes on 2 cores, 1 s, the
    production default, at 100)."""
    raw = env.get(PROBE_PERIOD_ENV)
    if raw is None:
        return env
    per_core = count / (os.cpu_count() or 1)
    period = max(float(raw), PROBE_S_PER_NODE_PER_CORE * per_core)
    return {**env, PROBE_PERIOD_ENV: f"{period:g}"}


async def _converge(run: Run, report: Report) -> None:
    live = run.cluster.live()
    want = run.history.upper_bounds()
    _progress(f"waiting for {len(live)} nodes to converge")
    blobs = list(run.history.blobs)
    try:
        async with asyncio.timeout(run.deadline_s):
            await asyncio.gather(
                *(wait_holds(run.session, m.proc, want) for m in live),
                *(wait_local(run.session, m.proc, h) for m in live for h in blobs),
            )
        await run.all_alive(live)
    except TimeoutError:
        report.converged = False
        report.error = f"no convergence within {run.deadline_s:.0f} s of the faults' end"
        return
    report.converged = True
    report.convergence_s = round(time.monotonic() - run.marks["faults over"], 3)
    run.mark("converged")


async def _collect(run: Run, report: Report) -> None:
    """Check the invariants on what every live node holds: everything acknowledged once it
    converged, else whatever it has (the report then names what is missing)."""
    live = run.cluster.live()
    held = {}
    for m in live:
        upto = run.history.upper_bounds() if report.converged else None
        if upto is None:
            upto = await http_offsets(run.session, m.proc)
        held[m.name] = await wait_holds(run.session, m.proc, upto)
    final_reads = await _read_every_blob(run)
    report.invariants = [
        acknowledged_events_everywhere(run.history, held),
        identical_events(held),
        gapless_subscriptions(run.history),
    ]
    if run.history.blobs or run.history.reads or run.history.wrong_handles:
        report.invariants += [
            acknowledged_blobs_everywhere(run.history, final_reads),
            served_bytes_match(run.history),
        ]
    report.invariants += [check(run.history) for check in run.checks]
    report.invariants += run.results
    report.blobs = len(run.history.blobs)
    report.blob_reads = len(run.history.reads)
    for m in live:
        status = await node_status(run.session, m.proc)
        report.bytes_sent[m.name] = int(status.get("counters", {}).get("bytes_out", 0))
        dissemination = status.get("dissemination", {})
        report.duplicate_events += int(dissemination.get("duplicates", 0))
        report.max_hops = max(report.max_hops, int(dissemination.get("max_hops", 0)))
        totals = status.get("transferTotals", {})
        report.duplicate_bytes += int(totals.get("duplicateBytes", 0))


async def _read_every_blob(run: Run) -> dict[str, list[BlobRead]]:
    """Every acknowledged blob read whole from every live node (nodes in parallel, one read at
    a time per node); each read also goes into the history for the served-bytes check."""

    async def node_reads(m: Member) -> list[BlobRead]:
        reads = []
        for handle in run.history.blobs:
            result = await read_blob(run.session, m.proc, m.name, handle)
            run.history.read(result)
            reads.append(result)
        return reads

    live = run.cluster.live()
    async with asyncio.timeout(run.deadline_s):
        results = await asyncio.gather(*(node_reads(m) for m in live))
    return {m.name: reads for m, reads in zip(live, results, strict=True)}
