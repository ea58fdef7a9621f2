"""bench.blob_swarm end to end at a tiny size: two real nodes behind netsim's proxies, a 2 MiB
blob, uplinks capped at 8 MiB/s (S/R = 0.25 s).

Timings on a shared machine vary; what must hold is that the figures exist, are measured
(positive), agree with each other (the multiple is the time over S/R) and carry issue 6's goal,
and that the plot has its three lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.blob_swarm import main
from bench.figures import read_report

SIZE_MIB = 2
RATE_MIB = 8


@pytest.mark.timeout(120)
def test_tiny_run_reports_time_and_multiple(tmp_path: Path) -> None:
    out = tmp_path / "swarm.json"
    argv = ["--nodes", "2", "--size-mib", str(SIZE_MIB), "--rate-mib", str(RATE_MIB)]
    main([*argv, "--runs", "1", "--json", str(out)])
    report = read_report(out)
    figures = {f["id"]: f for f in report["figures"]}
    s_over_r = SIZE_MIB / RATE_MIB

    time_s = figures["blob_swarm_time_n2"]
    assert time_s["unit"] == "s"
    assert len(time_s["runs"]) == 1
    assert time_s["value"] > 0
    assert time_s["baseline"]["value"] == pytest.approx(s_over_r)  # (N-1)·S/R at N = 2

    multiple = figures["blob_swarm_s_over_r_n2"]
    assert multiple["unit"] == "× S/R"
    assert multiple["value"] == pytest.approx(time_s["value"] / s_over_r, rel=1e-3)
    assert multiple["goal"]["target"] == 2.0
    assert multiple["goal"]["on"] == "value"
    assert isinstance(multiple["goal"]["met"], bool)
    assert multiple["ratio"] == pytest.approx(1.0)  # N = 2 is its own one-link baseline

    lines = {s["label"]: s for s in report["series"] if s["plot"] == "time_to_all_vs_n"}
    assert {s["style"] for s in lines.values()} == {"measured", "bound", "baseline"}
    assert all(s["x"] == [2] for s in lines.values())
    assert report["raw"]["2"][0]["per_node_s"].keys() == {"n0", "n1"}
