"""bench.peers_transfer end to end at a tiny size: swarmnode, Syncthing and libtorrent each move
4 MiB between two local instances.

Whether a peer system is installed depends on the machine, so each peer must show up either as a
figure against swarmnode or as a skip with its reason; swarmnode itself must always be measured.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.figures import read_report
from bench.peers_transfer import _event_time, main

SIZE_MIB = 4


def test_syncthing_event_times_keep_their_microseconds() -> None:
    nanos = _event_time("2024-05-01T12:00:00.123456789+02:00")
    assert nanos == pytest.approx(1714557600.123456, abs=1e-6)
    assert _event_time("2024-05-01T10:00:00Z") == 1714557600.0


@pytest.mark.timeout(120)
def test_tiny_run_reports_swarmnode_and_each_peer_or_why_not(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    assert main(["--quick", "--size-mib", str(SIZE_MIB), "--json", str(out)]) == 0
    report = read_report(out)
    figures = {f["id"]: f for f in report["figures"]}
    skipped: dict[str, str] = report["skipped"]
    assert "swarmnode" not in skipped, skipped
    swarm = figures["peers.gbps.swarmnode"]
    assert swarm["runs"]
    assert all(v > 0 for v in swarm["runs"])
    for peer in ("syncthing", "libtorrent"):
        if peer in skipped:
            assert skipped[peer], f"{peer} skipped without a reason"
            continue
        fig = figures[f"peers.{peer}"]
        assert fig["better"] == "lower"
        assert fig["params"]["size_mib"] == SIZE_MIB
        assert all(v > 0 for v in fig["runs"] + fig["baseline"]["runs"])
        assert fig["ratio"] > 0
        assert fig["goal"]["target"] == 0.25
