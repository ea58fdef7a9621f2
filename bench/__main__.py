"""``python -m bench``: run the whole suite, or regenerate BENCHMARKS.md from a run's JSON.

    python -m bench all [--quick] [--only a,b [--update]] [--json FILE] [--markdown FILE]
                        [--plots DIR]
    python -m bench report FILE [--markdown FILE] [--plots DIR]
    python -m bench list

A full run writes ``bench/results/full.json``, ``BENCHMARKS.md`` and ``bench/plots/*.png`` (the
committed page); ``--quick`` writes under ``bench/results/quick/`` instead, so a quick run never
overwrites the committed figures. The exit status is 1 when a benchmark failed to run or report
(CI runs ``--quick`` and checks only that); goals not met do not fail the run.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from bench.report import render_plots, write_markdown
from bench.suite import BENCHMARKS, ROOT, merge, run_suite

FULL = {"json": "bench/results/full.json", "markdown": "BENCHMARKS.md", "plots": "bench/plots"}
QUICK = {
    "json": "bench/results/quick/quick.json",
    "markdown": "bench/results/quick/BENCHMARKS.md",
    "plots": "bench/results/quick/plots",
}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("all", help="run every benchmark (or --only some)")
    run.add_argument("--quick", action="store_true", help="small sizes, ≤ 3 min on 2 cores")
    run.add_argument("--only", default="", help="comma-separated names (python -m bench list)")
    for p in (run, sub.add_parser("report", help="BENCHMARKS.md and plots from a run's JSON")):
        p.add_argument("--markdown", type=Path, default=None)
        p.add_argument("--plots", type=Path, default=None)
    run.add_argument("--json", type=Path, default=None)
    run.add_argument(
        "--update",
        action="store_true",
        help="with --only: rerun those into the existing --json report instead of a new one",
    )
    sub.choices["report"].add_argument("file", type=Path)
    sub.add_parser("list", help="the benchmarks, in the order they run")
    return parser.parse_args(argv)


def _paths(args: argparse.Namespace, quick: bool) -> tuple[Path, Path, Path]:
    defaults = QUICK if quick else FULL
    json_path = getattr(args, "json", None) or getattr(args, "file", None)
    return (
        json_path or ROOT / defaults["json"],
        args.markdown or ROOT / defaults["markdown"],
        args.plots or ROOT / defaults["plots"],
    )


def _publish(report: dict[str, Any], markdown: Path, plots_dir: Path) -> None:
    plots = render_plots(report, plots_dir)
    write_markdown(report, markdown, plots)
    print(f"wrote {markdown} and {len(plots)} plots in {plots_dir}", file=sys.stderr)


def _summary(report: dict[str, Any]) -> str:
    lines = [f"{'figure':<70} {'value':>16} {'ratio':>7}  goal"]
    for bench in report["benchmarks"]:
        if bench["status"] != "ok":
            lines.append(f"{bench['name']}: FAILED: {bench['error'][-200:]}")
            continue
        for fig in bench["figures"]:
            name = f"{bench['name']}: {fig['name']}"[:70]
            value = f"{fig['value']:g} {fig['unit']}"
            ratio = "" if fig["ratio"] is None else f"{fig['ratio']:.3f}"
            goal = fig.get("goal")
            verdict = "" if not goal else f"{goal['text']} {'met' if goal['met'] else 'NOT met'}"
            lines.append(f"{name:<70} {value:>16} {ratio:>7}  {verdict}")
    return "\n".join(lines)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.command == "list":
        for bench in BENCHMARKS:
            print(f"{bench.name:<14} {bench.title}")
        return 0
    if args.command == "report":
        json_path, markdown, plots_dir = _paths(args, quick=False)
        report = json.loads(json_path.read_text())
        _publish(report, markdown, plots_dir)
        return 0
    json_path, markdown, plots_dir = _paths(args, quick=args.quick)
    only = [name for name in args.only.split(",") if name]
    unknown = set(only) - {b.name for b in BENCHMARKS}
    if unknown:
        print(f"unknown benchmarks: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if args.update and not (only and json_path.exists()):
        print("--update needs --only and an existing report at --json", file=sys.stderr)
        return 2
    earlier = json.loads(json_path.read_text()) if args.update else None

    def save(report: dict[str, Any]) -> None:
        if earlier is not None:
            report = merge(earlier, report)
        report["json_path"] = _relative(json_path)
        json_path.write_text(json.dumps(report, indent=2) + "\n")

    # SIGTERM (CI's timeout, an operator) ends the run like Ctrl-C: each module stops its nodes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = run_suite(quick=args.quick, only=only, save=save)
    except KeyboardInterrupt:
        print("interrupted: the report so far is in " + str(json_path), file=sys.stderr)
        return 130
    save(report)
    report = json.loads(json_path.read_text())  # merged with the earlier report under --update
    print(_summary(report))
    _publish(report, markdown, plots_dir)
    failed = [b["name"] for b in report["benchmarks"] if b["status"] != "ok"]
    if failed:
        print(f"failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(report['benchmarks'])} benchmarks ran in {report['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
