"""``python -m netsim list`` and ``python -m netsim run SCENARIO [--nodes N] [--seed S]
[--report FILE]``: progress on stderr, a readable summary on stdout, the JSON report in FILE.
Exit status 0 only when the run converged and every invariant held.
``python -m netsim run all [--seeds 1-5] [--report-dir DIR]``: the full set, every scenario at its
default size for each seed, one after another, then a table (netsim.suite).
``python -m netsim sim [--nodes N] [--seed S] [--report FILE]``: simulation mode (netsim.simmode),
same outputs; exit status 0 only when every check held."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from netsim.runner import DEFAULT_DEADLINE_S, run_scenario
from netsim.scenario import SCENARIOS
from netsim.simmode import run_simulation
from netsim.suite import parse_seeds, run_suite, suite_table


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m netsim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the scenarios, with their default sizes")
    run = sub.add_parser("run", help="run one scenario (or all) on real nodes")
    run.add_argument("scenario", choices=[*sorted(SCENARIOS), "all"])
    run.add_argument("--nodes", type=int, default=None, help="default: the scenario's own")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument(
        "--seeds", type=parse_seeds, default=None, help="several seeds, e.g. 1-5 or 1,3 (suite)"
    )
    run.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    run.add_argument("--report-dir", type=Path, default=None, help="suite: one report per run")
    run.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S, help="seconds per phase")
    sim = sub.add_parser("sim", help="simulation mode: the swarm machines of N nodes, virtual time")
    sim.add_argument("--nodes", type=int, default=1000)
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    return parser.parse_args(argv)


def _simulate(args: argparse.Namespace) -> int:
    """``sim``: every simmode phase on one process; exit 0 only when every check held."""
    if args.nodes < 2:
        print("--nodes must be at least 2", file=sys.stderr)
        return 2
    report = run_simulation(
        args.nodes, args.seed, progress=lambda t: print(f"[netsim] sim {t}", file=sys.stderr)
    )
    print(report.summary())
    if args.report is not None:
        args.report.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return 0 if report.ok else 1


def _suite(args: argparse.Namespace) -> int:
    """``run all`` or ``--seeds``: each scenario for each seed, then the table."""
    names = sorted(SCENARIOS) if args.scenario == "all" else [args.scenario]
    seeds = args.seeds if args.seeds is not None else [args.seed]
    try:
        reports = asyncio.run(
            run_suite(
                names,
                seeds,
                nodes=args.nodes,
                report_dir=args.report_dir,
                deadline_s=args.deadline,
            )
        )
    except KeyboardInterrupt:
        print("interrupted: nodes stopped", file=sys.stderr)
        return 130
    print(suite_table(reports))
    return 0 if all(r.ok for r in reports) else 1


def main(argv: list[str] | None = None) -> int:
    # SIGTERM stops a run like Ctrl-C does: the nodes are stopped, not left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = _args(argv)
    if args.command == "list":
        for spec in sorted(SCENARIOS.values(), key=lambda s: s.name):
            print(f"{spec.name:20s} {spec.nodes:4d} nodes  {spec.summary}")
        return 0
    if args.command == "sim":
        return _simulate(args)
    if args.nodes is not None and args.nodes < 2:
        print("--nodes must be at least 2", file=sys.stderr)
        return 2
    if args.scenario == "all" or args.seeds is not None:
        return _suite(args)
    try:
        report = asyncio.run(
            run_scenario(args.scenario, nodes=args.nodes, seed=args.seed, deadline_s=args.deadline)
        )
    except KeyboardInterrupt:
        print("interrupted: nodes stopped", file=sys.stderr)
        return 130
    print(report.summary())
    if args.report is not None:
        args.report.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
