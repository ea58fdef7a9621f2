"""The full set: every scenario (or some) at its default size for several seeds, one run after
another (runs share the machine's two cores, so never in parallel), and one table of results.

``python -m netsim run all --seeds 1-5 --report-dir DIR`` runs it; each run's JSON report goes to
``DIR/<scenario>-<seed>.json`` and the table to stdout. CI runs a small set through pytest
(tests/netsim/test_scenarios.py) instead.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from netsim.runner import DEFAULT_DEADLINE_S, Report, run_scenario

__all__ = ["parse_seeds", "run_suite", "suite_table", "write_report"]


def parse_seeds(text: str) -> list[int]:
    """``"1-5"`` → 1..5, ``"1,3,7"`` → those, ``"4"`` → [4]."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if dash:
            low, high = int(first), int(last)
            if high < low:
                raise ValueError(f"empty seed range {part!r}")
            seeds.extend(range(low, high + 1))
        else:
            seeds.append(int(first))
    return seeds


async def run_suite(
    names: Sequence[str],
    seeds: Sequence[int],
    *,
    nodes: int | None = None,
    report_dir: Path | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> list[Report]:
    """Run each scenario for each seed, in order; write each report as it finishes."""
    reports: list[Report] = []
    total = len(names) * len(seeds)
    for name in names:
        for seed in seeds:
            print(
                f"[netsim] run {len(reports) + 1}/{total}: {name} seed {seed}",
                file=sys.stderr,
                flush=True,
            )
            report = await run_scenario(name, nodes=nodes, seed=seed, deadline_s=deadline_s)
            reports.append(report)
            print(report.summary(), flush=True)
            if report_dir is not None:
                write_report(report, report_dir / f"{name}-{seed}.json")
    return reports


def write_report(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_json(), indent=2) + "\n")


def suite_table(reports: Sequence[Report]) -> str:
    """Per scenario: nodes, runs passed, and convergence time (median, min-max) over seeds."""
    by_name: dict[str, list[Report]] = {}
    for report in reports:
        by_name.setdefault(report.scenario, []).append(report)
    lines = [f"{'scenario':20s} {'nodes':>5s} {'passed':>7s}  convergence after the faults (s)"]
    for name, runs in by_name.items():
        times = [r.convergence_s for r in runs if r.convergence_s is not None]
        passed = sum(1 for r in runs if r.ok)
        spread = (
            f"median {statistics.median(times):.2f}, {min(times):.2f}-{max(times):.2f}"
            if times
            else "n/a"
        )
        failed = [str(r.seed) for r in runs if not r.ok]
        note = f"  FAILED seeds {', '.join(failed)}" if failed else ""
        lines.append(f"{name:20s} {runs[0].nodes:5d} {passed:3d}/{len(runs):<3d}  {spread}{note}")
    ok = all(r.ok for r in reports)
    lines.append(f"{'ALL PASS' if ok else 'SOME FAILED'}: {len(reports)} runs")
    return "\n".join(lines)
