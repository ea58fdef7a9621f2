"""bench.membership end to end at N=3 (quick), plus the timer arithmetic its params report.

Detection waits out real suspicion timeouts (several seconds on both systems), so the end-to-end
test is slow; what must hold is that swarmnode's figures exist with positive runs and that Serf
either gave the baseline or the report says why it was skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.figures import read_report
from bench.membership import main, parse_args, serf_timers, swarmnode_timers


def test_quick_and_full_defaults() -> None:
    quick, full = parse_args(["--quick"]), parse_args([])
    assert (quick.nodes, quick.runs) == ([3], 1)
    assert (full.nodes, full.runs) == ([5, 10, 20], 3)
    assert parse_args(["--nodes", "4,6", "--runs", "2"]).nodes == [4, 6]


def test_timer_params_follow_both_configs() -> None:
    # memberlist expects no confirmations with fewer than mult - 2 other observers.
    assert serf_timers(3)["suspicion_timeout_s_max"] == serf_timers(3)["suspicion_timeout_s_min"]
    assert (
        serf_timers(5)["suspicion_timeout_s_max"] == 6 * serf_timers(5)["suspicion_timeout_s_min"]
    )
    assert serf_timers(100)["suspicion_timeout_s_min"] == pytest.approx(8.0)
    ours = swarmnode_timers(5)
    assert ours["protocol_period"] == 1.0
    assert ours["suspicion_timeout_s_max"] == pytest.approx(6 * ours["suspicion_timeout_s_min"])
    # Two members: the lone observer can never be confirmed, so min and max coincide.
    assert (
        swarmnode_timers(2)["suspicion_timeout_s_max"]
        == swarmnode_timers(2)["suspicion_timeout_s_min"]
    )


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_run_reports_both_systems(tmp_path: Path) -> None:
    out = tmp_path / "membership.json"
    main(["--quick", "--json", str(out)])
    report = read_report(out)
    figures = {f["id"]: f for f in report["figures"]}
    for kind in ("converge", "settle", "detect"):
        fig = figures[f"membership.{kind}.n3"]
        assert fig["unit"] == "s"
        assert fig["better"] == "lower"
        assert len(fig["runs"]) == 1
        if kind != "settle":  # settle can be ~0: a node may know the others once it is up
            assert all(v > 0 for v in fig["runs"])
        assert "swarmnode_timers" in fig["params"]
        if "serf" in report["skipped"]:
            assert report["skipped"]["serf"]
        else:
            assert all(v >= 0 for v in fig["baseline"]["runs"])
            assert fig["baseline"]["name"].startswith("Serf")
    detect = figures["membership.detect.n3"]
    assert detect["params"]["first_dead_s"][0] <= detect["runs"][0]
    labels = {s["label"] for s in report["series"] if s["plot"] == "membership_vs_n"}
    assert {"swarmnode converge", "swarmnode detect"} <= labels
    assert report["errors"] == []
