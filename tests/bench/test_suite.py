"""``python -m bench``: the common figure format, the adapters of the older modules, the page
generator, and the suite runner (a module's failure or overrun costs its own entry only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bench.suite as suite
from bench.adapters import http, node_to_node, providers
from bench.figures import Goal, figure, series, summary
from bench.report import NOT_RUN, render_plots, write_markdown

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def test_summary_gives_median_min_max_of_the_runs() -> None:
    s = summary([3.0, 1.0, 2.0, 10.0])
    assert (s["value"], s["min"], s["max"]) == (2.5, 1.0, 10.0)
    with pytest.raises(ValueError, match="at least one run"):
        summary([])


def test_figure_ratio_is_median_over_baseline_median_and_judges_its_goal() -> None:
    fast = figure(
        "x", group="g", name="n", unit="GB/s", runs=[0.9, 1.0, 1.1], baseline="raw",
        baseline_runs=[2.0, 2.0], goal=Goal(">=", 0.7, source="issue 2"),
    )  # fmt: skip
    assert fast["ratio"] == 0.5
    assert fast["goal"]["met"] is False
    assert "≥ 0.7 × baseline (issue 2)" in fast["goal"]["text"]
    bounded = figure(
        "y", group="g", name="n", unit="MiB", runs=[70.0], better="lower",
        goal=Goal("<=", 64, on="value"),
    )  # fmt: skip
    assert bounded["ratio"] is None
    assert bounded["goal"]["met"] is False
    assert "≤ 64 MiB" in bounded["goal"]["text"]
    with pytest.raises(ValueError, match="differ in length"):
        series("rss_vs_size", "l", [1, 2], [1.0])


def _http_raw(size_mib: int, node_s: float, base_s: float, rss: float) -> dict[str, Any]:
    def side(seconds: float, growth: float) -> dict[str, Any]:
        return {
            "seconds": seconds,
            "runs_seconds": [seconds, seconds * 1.1],
            "rss_growth_mib": growth,
            "rss_idle_mib": 40.0,
        }

    return {
        "size_bytes": size_mib * MIB,
        "runs": 2,
        "upload": {"node": side(node_s, rss), "baseline": side(base_s, 1.0)},
        "download": {"node": side(node_s, rss / 2), "baseline": side(base_s, 1.0)},
    }


def test_http_adapter_takes_figures_from_the_largest_size_and_plots_every_size() -> None:
    raws = [_http_raw(1024, 2.0, 1.0, 80.0), _http_raw(16, 0.05, 0.04, 5.0)]
    figures, plot = http(raws)
    by_id = {f["id"]: f for f in figures}
    upload = by_id["http.upload"]
    assert upload["params"]["size_bytes"] == 1024 * MIB
    assert upload["ratio"] == pytest.approx(0.5, rel=1e-3)
    assert upload["goal"]["met"] is False  # 0.5 < 0.7
    assert by_id["memory.http_upload"]["goal"]["met"] is False  # 80 MiB > 64
    assert by_id["memory.http_download"]["goal"]["met"] is True  # 40 MiB
    up = next(s for s in plot if s["label"] == "HTTP upload (node)")
    assert up["x"] == [16, 1024]
    assert up["y"][1] == pytest.approx(1024 * MIB / 2.0 / 1e9, rel=1e-3)


def test_node_adapter_fails_loudly_when_the_node_never_finished() -> None:
    raw = {"node": {"size_bytes": MIB, "node": None, "node_errors": ["B never held it"]}}
    with pytest.raises(RuntimeError, match="B never held it"):
        node_to_node([raw])


def test_providers_adapter_reports_in_multiples_of_the_cap() -> None:
    run = {
        "single": {"rate_mib_s": 49.0, "duplicate_fraction": 0.0},
        "triple": {"rate_mib_s": 140.0, "duplicate_fraction": 0.01},
    }
    raw = {"providers": {"size_bytes": 256 * MIB, "rate_cap_mib_s": 50.0, "runs": [run]}}
    figures, _ = providers([raw])
    rate, dups = figures
    assert rate["value"] == pytest.approx(2.8)
    assert rate["goal"]["met"] is True
    assert rate["ratio"] == pytest.approx(140 / 49, rel=1e-3)
    assert dups["value"] == pytest.approx(1.0)


def _report(figures: list[dict[str, Any]], plot: list[dict[str, Any]]) -> dict[str, Any]:
    machine = {
        "cores": 2, "cpu_model": "cpu", "memory_gib": 1.0, "kernel": "k", "filesystem": "ext4",
        "python": "3.11", "implementation": "CPython", "uvloop": True,
        "packages": {"aiohttp": "3"}, "commit": "abc", "dirty": False,
    }  # fmt: skip
    bench = {
        "name": "b", "title": "A benchmark", "status": "ok", "seconds": 1.0, "error": "",
        "figures": figures, "series": plot, "skipped": {"Syncthing": "not installed"},
        "load_before": 0.5, "load_after": 0.6, "invocations": ["python -m bench.x"],
    }  # fmt: skip
    failed = bench | {"name": "broken", "status": "failed", "error": "exited with 1"}
    return {
        "mode": "full", "started": "2026-11-26T00:00:00+00:00", "duration_s": 60,
        "machine": machine, "benchmarks": [bench, failed | {"figures": []}],
    }  # fmt: skip


def test_page_lists_every_figure_its_goal_skips_failures_and_plots(tmp_path: Path) -> None:
    met = figure("a", group="G", name="rate one", unit="GB/s", runs=[2.0], baseline="raw",
                 baseline_runs=[2.0], goal=Goal(">=", 0.8))  # fmt: skip
    missed = figure("b", group="G", name="time two", unit="s", runs=[3.0], better="lower",
                    goal=Goal("<=", 1.0, on="value"))  # fmt: skip
    plot = [series("rss_vs_size", "node", [1, 2], [3.0, 3.0])]
    report = _report([met, missed], plot)
    pytest.importorskip("matplotlib")
    plots = render_plots(report, tmp_path / "plots")
    assert plots["rss_vs_size"].read_bytes().startswith(b"\x89PNG")
    page = tmp_path / "B.md"
    write_markdown(report, page, plots)
    text = page.read_text()
    assert "1 of 2 goals met" in text
    for expected in ("rate one", "**met**", "time two", "**NOT met**"):
        assert expected in text
    assert "**Syncthing**: not installed" in text
    assert all(name in text for name in NOT_RUN)
    assert "](plots/rss_vs_size.png)" in text
    assert "**broken**: exited with 1" in text


def _fake(name: str, argv: list[str]) -> suite.Benchmark:
    return suite.Benchmark(name, name, "passthrough", full=[argv], quick=[argv], quick_timeout_s=3)


@pytest.mark.timeout(60)
def test_a_failing_or_hanging_module_costs_only_its_own_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    benches = [
        _fake("missing", ["bench.no_such_module"]),
        _fake("hangs", ["tests.bench.hanging_module"]),
        _fake("fine", ["tests.bench.hanging_module", "--report-now"]),
    ]
    monkeypatch.setattr(suite, "BENCHMARKS", benches)
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    report = suite.run_suite(quick=True, out=Out())  # type: ignore[arg-type]
    status = {b["name"]: b for b in report["benchmarks"]}
    assert status["missing"]["status"] == "failed"
    assert "exited with 1" in status["missing"]["error"]
    assert status["hangs"]["status"] == "failed"
    assert "did not finish within 3 s" in status["hangs"]["error"]
    assert status["fine"]["status"] == "ok"
    assert status["fine"]["figures"][0]["value"] == 7.0
    assert any("[3/3 fine]" in line and "reporting now" in line for line in lines)


@pytest.mark.timeout(120)
def test_bench_all_quick_of_one_benchmark_writes_json_page_and_exit_status(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run.json"
    page = tmp_path / "page.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--quick", "--only", "events", "--json", str(out),
         "--markdown", str(page), "--plots", str(tmp_path / "plots")],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    assert report["machine"]["cores"] >= 1
    (events,) = report["benchmarks"]
    assert events["status"] == "ok"
    assert {f["id"] for f in events["figures"]} >= {"events.publish_batches", "events.http_query"}
    assert all(f["value"] > 0 and f["baseline"]["value"] > 0 for f in events["figures"])
    assert "[1/1 events]" in proc.stderr
    assert "publish, 100-event batches" in page.read_text()


def _entry(name: str, value: float) -> dict[str, Any]:
    fig = figure(f"{name}.x", group="g", name=name, unit="s", runs=[value])
    return {"name": name, "seconds": value, "figures": [fig], "status": "ok"}


def test_a_rerun_replaces_its_namesake_in_suite_order_and_is_marked() -> None:
    earlier = {
        "mode": "full",
        "benchmarks": [_entry("http", 1.0), _entry("channel", 2.0), _entry("small", 3.0)],
    }
    rerun = {"mode": "full", "benchmarks": [_entry("http", 5.0)]}
    merged = suite.merge(earlier, rerun)
    assert [b["name"] for b in merged["benchmarks"]] == ["http", "channel", "small"]
    assert merged["benchmarks"][0]["figures"][0]["value"] == 5.0
    assert merged["rerun"] == ["http"]
    assert merged["duration_s"] == 10.0
    with pytest.raises(ValueError, match="quick run into a full report"):
        suite.merge(earlier, rerun | {"mode": "quick"})
