"""Simulation mode (netsim.simmode, ``python -m netsim sim``) at small N: the report's figures
account for every receipt, crashes are detected, the swarm converges after a heal, the same seed
gives the same figures, and the checks and the CLI's exit status follow the figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from netsim.__main__ import main
from netsim.simmode import (
    HopStats,
    SimReport,
    SimSettings,
    depth_percentile,
    evaluate,
    run_simulation,
    theoretical_hops,
)

NODES = 40
SEED = 3
SMALL = SimSettings(
    publishers=4,
    warmup_rounds=3,
    measured_rounds=2,
    cold_sources=2,
    concurrent_rounds=2,
    concurrent_publishers=NODES // 2,
    crash_share=0.05,
    partition_max_s=240.0,
)


@pytest.fixture(scope="module")
def report() -> SimReport:
    return run_simulation(NODES, SEED, settings=SMALL)


def _groups(report: SimReport) -> dict[str, HopStats]:
    groups = {
        "warmup": report.warmup,
        "measured": report.measured,
        "cold": report.cold,
        "concurrent": report.concurrent,
    }
    return {name: g for name, g in groups.items() if g is not None}


def _figures(report: SimReport) -> dict[str, Any]:
    """The report without wall-clock times (the only figures allowed to differ between runs)."""
    out = report.as_json()
    del out["wall_s"]
    out["phases"] = [{k: v for k, v in p.items() if k != "wall_s"} for p in out["phases"]]
    return out


def test_bound_is_one_plus_ceil_log4() -> None:
    assert [theoretical_hops(n) for n in (2, 4, 5, 16, 17, 40, 1000, 1024, 1025)] == [
        *(2, 2, 3, 3, 4, 4, 6, 6, 7)
    ]
    assert depth_percentile({1: 50, 2: 49, 7: 1}, 0.99) == 2
    assert depth_percentile({1: 50, 2: 48, 7: 2}, 0.99) == 7
    assert depth_percentile({}, 0.5) is None


def test_every_receipt_is_in_the_histogram_or_pulled(report: SimReport) -> None:
    groups = _groups(report)
    assert set(groups) == {"warmup", "measured", "cold", "concurrent"}
    events = {
        "warmup": SMALL.publishers * SMALL.warmup_rounds,
        "measured": SMALL.publishers * SMALL.measured_rounds,
        "cold": SMALL.cold_sources,
        "concurrent": SMALL.concurrent_publishers * SMALL.concurrent_rounds,
    }
    for name, g in groups.items():
        assert g.events == events[name], name
        assert g.receivers == NODES - 1
        assert g.converged, name
        assert sum(g.histogram.values()) + g.pulled_first == g.events * g.receivers, name
        assert g.p50 is not None
        assert g.p99 is not None
        assert g.max is not None
        assert 1 <= g.p50 <= g.p99 <= g.max == max(g.histogram)
        # every receiver got every event at least once, so at least one copy each
        assert g.copies_per_node_event >= 1.0, name


def test_overlay_shortest_paths_reach_every_node_from_every_publisher(report: SimReport) -> None:
    o = report.overlay
    assert o is not None
    assert sum(o.histogram.values()) == SMALL.publishers * (NODES - 1)
    assert 1 <= o.active_min <= o.active_mean <= o.active_max
    assert o.p50 is not None
    assert o.p99 is not None
    assert 1 <= o.p50 <= o.p99 <= (o.max or 0)


def test_every_crashed_node_is_detected_by_every_live_node(report: SimReport) -> None:
    d = report.detection
    assert d is not None
    assert len(d.crashed) == 2  # 5 % of 40
    assert d.observers == NODES - 2
    assert d.detected
    first_suspect, first_dead = d.first_suspect_s["max"], d.first_dead_s["max"]
    all_dead, pair_max = d.all_dead_s["max"], d.pair_dead_s["max"]
    assert first_suspect is not None
    assert first_dead is not None
    assert all_dead is not None
    assert 0 < first_suspect <= first_dead <= all_dead == pair_max


def test_the_swarm_converges_after_the_heal(report: SimReport) -> None:
    h = report.heal
    assert h is not None
    assert h.left + h.right == NODES - 2  # the crashed nodes stay down
    assert h.events_published == 2 * SMALL.partition_events_per_side
    assert h.apart  # 240 s is enough for 38 nodes to mark the other side dead
    assert h.apart_share == 1.0
    assert h.converged
    assert h.events_s is not None
    assert h.events_s > 0
    assert h.membership_s is not None
    assert h.membership_s > 0


def test_checks_follow_the_figures(report: SimReport) -> None:
    names = [c.name for c in report.checks]
    assert names == [
        "membership converged after join",
        "every event reached every live node",
        "p99 hops <= 1+ceil(log4 N)",
        "payload copies per node per event <= 1.3",
        "every crashed node detected by every live node",
        "converged after heal",
    ]
    assert report.ok, report.summary()
    assert report.summary().endswith("PASS")
    assert report.measured is not None
    deep = dataclasses.replace(report, measured=dataclasses.replace(report.measured, p99=99))
    costly = dataclasses.replace(
        report, measured=dataclasses.replace(report.measured, copies_per_node_event=1.31)
    )
    for broken, name in ((deep, "p99 hops"), (costly, "payload copies")):
        broken.checks = evaluate(broken)
        assert not broken.ok
        assert next(c.name for c in broken.checks if not c.ok).startswith(name)
        assert broken.summary().endswith("FAIL")


def test_same_seed_same_figures(report: SimReport) -> None:
    again = run_simulation(NODES, SEED, settings=SMALL)
    assert _figures(again) == _figures(report)


def test_cli_sim_prints_the_summary_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sim.json"
    assert main(["sim", "--nodes", "20", "--seed", "2", "--report", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "simulation  nodes 20  seed 2" in out
    assert out.rstrip().endswith("PASS")
    assert "partition-heal done" in err
    data = json.loads(path.read_text())
    assert data["ok"] is True
    assert data["nodes"] == 20
    assert data["hop_bound"] == 4
    assert set(data["dissemination"]) == {
        *("warmup", "measured", "cold_sources", "concurrent", "overlay_shortest_paths")
    }
    assert data["dissemination"]["measured"]["p99"] <= 4
    assert data["detection"]["detected"] is True
    assert data["heal"]["converged"] is True
    assert next(p["name"] for p in data["phases"]) == "join"
    assert all(c["ok"] for c in data["checks"])
