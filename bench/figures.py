"""The one result format every benchmark reports in, so ``python -m bench all`` can put figures
from different modules into one JSON file, one table and the plots.

A *figure* is a measured quantity with its runs (median, min, max), the baseline measured in the
same run, the ratio value / baseline, and the goal an earlier issue set, judged met or not. A
*series* is one line of a plot (x against y). A module writes ``{"figures": [...], "series":
[...]}`` with ``write_report``; everything here is plain JSON-ready dicts.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Goal",
    "figure",
    "progress",
    "read_report",
    "series",
    "summary",
    "write_report",
]

Better = Literal["higher", "lower"]
Plot = Literal[
    "throughput_vs_size", "time_to_all_vs_n", "rss_vs_size", "membership_vs_n", "hops_vs_n"
]


@dataclass(frozen=True)
class Goal:
    """A target from an earlier issue: ``on`` says whether it bounds the ratio or the value."""

    op: Literal[">=", "<="]
    target: float
    on: Literal["ratio", "value"] = "ratio"
    source: str = ""  # e.g. "issue 2"

    def met(self, value: float, ratio: float | None) -> bool | None:
        subject = ratio if self.on == "ratio" else value
        if subject is None:
            return None
        return subject >= self.target if self.op == ">=" else subject <= self.target

    def text(self, unit: str = "") -> str:
        subject = " × baseline" if self.on == "ratio" else f" {unit}" if unit else ""
        where = f" ({self.source})" if self.source else ""
        return f"{self.op} {self.target:g}{subject}{where}".replace(">=", "≥").replace("<=", "≤")


def summary(runs: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of the runs, with the runs themselves (rounded for reading)."""
    values = [float(v) for v in runs]
    if not values:
        raise ValueError("a figure needs at least one run")
    return {
        "value": _round(statistics.median(values)),
        "min": _round(min(values)),
        "max": _round(max(values)),
        "runs": [_round(v) for v in values],
    }


def figure(
    fid: str,
    *,
    group: str,
    name: str,
    unit: str,
    runs: Sequence[float],
    better: Better = "higher",
    baseline: str | None = None,
    baseline_runs: Sequence[float] | None = None,
    baseline_unit: str | None = None,
    goal: Goal | None = None,
    params: dict[str, Any] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One figure. ``ratio`` is median value / median baseline (so for times below 1 is faster,
    for rates above 1 is faster); with no baseline runs the figure is an absolute one."""
    out: dict[str, Any] = {"id": fid, "group": group, "name": name, "unit": unit}
    out["better"] = better
    out |= summary(runs)
    ratio: float | None = None
    if baseline is not None:
        base: dict[str, Any] = {"name": baseline, "unit": baseline_unit or unit}
        if baseline_runs:
            base |= summary(baseline_runs)
            if base["value"]:
                ratio = _round(out["value"] / base["value"])
        out["baseline"] = base
    out["ratio"] = ratio
    if goal is not None:
        out["goal"] = {"text": goal.text(unit), "met": goal.met(out["value"], ratio)}
        out["goal"] |= {"op": goal.op, "target": goal.target, "on": goal.on}
    out["params"] = params or {}
    if note:
        out["note"] = note
    return out


def series(
    plot: Plot, label: str, xs: Sequence[float], ys: Sequence[float], *, style: str = "measured"
) -> dict[str, Any]:
    """One line of a plot; ``style`` is "measured", "baseline" or "bound" (drawn dashed)."""
    if len(xs) != len(ys):
        raise ValueError("x and y differ in length")
    return {"plot": plot, "label": label, "x": list(xs), "y": [_round(y) for y in ys]} | {
        "style": style
    }


def write_report(
    path: Path | None,
    figures: list[dict[str, Any]],
    plot_series: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> None:
    """Write a module's report (nothing when ``path`` is None); ``extra`` keeps raw detail."""
    if path is None:
        return
    data = {"figures": figures, "series": plot_series or []} | extra
    path.write_text(json.dumps(data, indent=2) + "\n")


def read_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    data.setdefault("series", [])
    return data


def progress(message: str) -> None:
    """Progress goes to stderr, one line at a time, so stdout stays the module's summary."""
    print(message, file=sys.stderr, flush=True)


def _round(value: float) -> float:
    if value == 0 or not isinstance(value, float):
        return value
    magnitude = abs(value)
    digits = 4 if magnitude < 10 else 3 if magnitude < 1000 else 1
    return round(value, digits)
