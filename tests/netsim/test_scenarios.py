"""netsim on real node processes: the CLI lists and runs scenarios, the report says what happened,
and a run whose partition never heals is reported as not converged, with exit status 1.

Small sizes here (CI); ``python -m netsim run partition-heal --nodes 12`` is the full one.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

import netsim.scenario
from netsim.invariants import Check
from netsim.nodeproc import REPO_ROOT
from netsim.runner import Report, run_scenario
from netsim.scenario import CHURN_STEPS, SCENARIOS, Run, scenario

pytestmark = pytest.mark.slow


async def _netsim(*args: str, within: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "netsim",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_list_names_every_scenario() -> None:
    code, out, _ = await _netsim("list", within=30)
    assert code == 0
    for name in SCENARIOS:
        assert name in out


async def test_partition_heal_converges_and_reports(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    code, out, err = await _netsim(
        "run",
        "partition-heal",
        "--nodes",
        "4",
        "--seed",
        "3",
        "--report",
        str(report_path),
        within=110,
    )
    assert code == 0, out + err
    report = json.loads(report_path.read_text())
    assert report["scenario"] == "partition-heal"
    assert report["seed"] == 3
    assert report["nodes"] == 4
    assert report["converged"] is True
    assert 0 < report["convergence_s"] < 60
    assert [c["ok"] for c in report["invariants"]] == [True, True, True]
    assert set(report["bytes_sent"]) == {"n0", "n1", "n2", "n3"}
    assert all(sent > 0 for sent in report["bytes_sent"].values())
    assert report["max_hops"] >= 1
    assert "PASS" in out
    assert "each side marked the other dead" in err  # progress on stderr


async def test_a_killed_node_restarts_and_catches_up(tmp_path: Path) -> None:
    report = await run_scenario("crash-restart", nodes=4, seed=2, root=tmp_path)
    assert report.ok, report.summary()
    victim = next(p for p in report.phases if p.startswith("killed "))[len("killed ") :]
    assert f"{victim} marked dead" in report.phases
    assert f"restarted {victim}" in report.phases
    # Its new subscription delivered everything again from offset 0, in order.
    [_, _, gapless] = report.invariants
    assert "5 subscriptions" in gapless.detail


async def test_writes_cross_a_bridge_node_while_the_halves_are_apart(tmp_path: Path) -> None:
    report = await run_scenario("bridge", nodes=5, seed=2, root=tmp_path)
    assert report.ok, report.summary()
    phases = list(report.phases)
    # Everyone held both sides' writes before the heal: they crossed through the bridge.
    assert phases.index("converged through the bridge") < phases.index("faults over")


async def test_flapping_links_lose_no_acknowledged_write(tmp_path: Path) -> None:
    report = await run_scenario("flaky-links", nodes=4, seed=4, root=tmp_path)
    assert report.ok, report.summary()
    [acked, _, _] = report.invariants
    # begin + 10 flaps with 2 writers + the final round, 5 events each
    assert acked.detail.startswith(f"{(4 + 10 * 2 + 4) * 5} acknowledged events")


def _check(report: Report, name: str) -> Check:
    [check] = [c for c in report.invariants if c.name == name]
    return check


async def test_split_brain_with_blobs_on_every_side_converges(tmp_path: Path) -> None:
    report = await run_scenario("split-brain", nodes=6, seed=1, root=tmp_path)
    assert report.ok, report.summary()
    assert report.blobs == 3  # one per side, each acknowledged
    blobs = _check(report, "acknowledged blobs byte-exact on every live node")
    assert "3 blobs" in blobs.detail
    assert "all 6 nodes" in blobs.detail
    phases = list(report.phases)
    assert phases.index("each side holds its own blob") < phases.index("faults over")


async def test_churn_loses_no_acknowledged_write(tmp_path: Path) -> None:
    report = await run_scenario("churn", nodes=5, seed=2, root=tmp_path)
    assert report.ok, report.summary()
    left = [p for p in report.phases if p.startswith("step ")]
    assert len(left) == CHURN_STEPS
    assert report.blobs == CHURN_STEPS  # one upload per step, while nodes were away


async def test_a_blob_swarm_with_capped_uplinks_beats_a_lone_source(tmp_path: Path) -> None:
    report = await run_scenario("blob-swarm", nodes=4, seed=1, root=tmp_path)
    assert report.ok, report.summary()
    bound = _check(report, "blob on all nodes within 2 x size / R")
    assert "for 4 nodes" in bound.detail


async def test_a_node_killed_mid_download_resumes(tmp_path: Path) -> None:
    report = await run_scenario("crash-mid-transfer", nodes=4, seed=3, root=tmp_path)
    assert report.ok, report.summary()
    assert _check(report, "the killed node resumed its download").ok
    assert _check(report, "a read during the download got the whole blob").ok
    served = _check(report, "no node served bytes that are not the blob's")
    assert served.ok
    assert "reads" in served.detail


async def test_a_slow_node_is_never_marked_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netsim.scenario, "SLOW_FOR_S", 5.0)  # CI size; the default is 20 s
    report = await run_scenario("slow-node", nodes=4, seed=1, root=tmp_path)
    assert report.ok, report.summary()
    [never_dead] = [c for c in report.invariants if c.name.endswith("never marked dead")]
    assert "observations" in never_dead.detail


async def test_skewed_clocks_show_in_events_and_converge(tmp_path: Path) -> None:
    report = await run_scenario("clock-skew", nodes=4, seed=1, root=tmp_path)
    assert report.ok, report.summary()
    skew = _check(report, "events carry their node's skewed clock")
    assert "n1 +3600 s" in skew.detail
    assert "n2 -3600 s" in skew.detail


async def test_an_asymmetric_partition_heals(tmp_path: Path) -> None:
    report = await run_scenario("one-way", nodes=4, seed=1, root=tmp_path)
    assert report.ok, report.summary()
    assert "the rest marked them dead" in report.phases


async def never_heals(run: Run) -> None:
    await run.all_alive()
    run.cluster.partition([["n0"], ["n1"]])
    await run.publish_everywhere("during")
    run.faults_over()


async def test_a_partition_that_never_heals_is_reported_as_not_converged(tmp_path: Path) -> None:
    scenario("never-heals", nodes=2, summary="test only: a partition never lifted")(never_heals)
    try:
        report = await run_scenario("never-heals", seed=1, root=tmp_path, deadline_s=5.0)
    finally:
        del SCENARIOS["never-heals"]
    assert not report.converged
    assert not report.ok
    assert report.error is not None
    assert "no convergence" in report.error
    assert "FAIL" in report.summary()
    # Each side holds only its own write: the report names what the other lacks.
    [acked, _identical, _gapless] = report.invariants
    assert not acked.ok
    assert "lacks 5" in acked.detail
