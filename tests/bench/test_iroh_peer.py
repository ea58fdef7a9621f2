"""bench.iroh_peer end to end at a tiny size: iroh-blobs moves 4 MiB between two node processes
on loopback, B's copy checked against the source, and nothing is left behind.

Skipped only where the ``iroh`` bindings cannot be imported; bindings that import but cannot
run this bench (no blobs API) must fail with the reason, not skip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.iroh_peer import iroh_version, run_iroh
from bench.pagecache import MIB, make_input

SIZE = 4 * MIB


@pytest.mark.timeout(60)
def test_four_mib_move_is_verified_and_leaves_nothing(tmp_path: Path) -> None:
    pytest.importorskip("iroh")
    src = tmp_path / "input.bin"
    make_input(src, SIZE)
    result = run_iroh(src, tmp_path, timeout_s=45)
    assert result["verified"] is True
    assert result["bytes"] == SIZE
    assert result["seconds"] > 0
    assert 0 < result["add_s"] < result["seconds"]
    assert 0 < result["transfer_s"] < result["seconds"]
    assert result["seconds_exported"] >= result["seconds"]
    assert iroh_version() is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.bin"]
    assert not _children_of_this_run(tmp_path)


@pytest.mark.timeout(60)
def test_a_missed_deadline_raises_and_cleans_up(tmp_path: Path) -> None:
    pytest.importorskip("iroh")
    src = tmp_path / "input.bin"
    make_input(src, SIZE)
    with pytest.raises(RuntimeError, match="timed out"):
        run_iroh(src, tmp_path, timeout_s=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.bin"]
    assert not _children_of_this_run(tmp_path)


def _children_of_this_run(work: Path) -> str:
    """Any node process still running with a store under ``work``."""
    found = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True)
    return found.stdout.strip()
