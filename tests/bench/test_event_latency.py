"""bench.event_latency end to end at a tiny size: two real nodes, a few dozen events per case.

The figures are noisy by nature; what must hold is that every one exists, is measured from
real samples (positive, as many as asked for) and is ordered sensibly (p99 ≥ p50).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.event_latency import main, percentile
from bench.figures import read_report

EVENTS = 60
RUNS = 2


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


@pytest.mark.timeout(90)
def test_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    argv = ["--events", str(EVENTS), "--runs", str(RUNS), "--interval-ms", "2", "--json", str(out)]
    main(argv)
    figures = {f["id"]: f for f in read_report(out)["figures"]}
    for case in ("local", "remote"):
        p50, p99 = figures[f"event_latency_{case}_p50"], figures[f"event_latency_{case}_p99"]
        for fig in (p50, p99):
            assert fig["unit"] == "ms"
            assert fig["better"] == "lower"
            assert len(fig["runs"]) == RUNS
            assert all(v > 0 for v in fig["runs"])
            assert fig["params"]["samples"] == EVENTS
            assert all(v > 0 for v in fig["baseline"]["runs"])
            assert fig["ratio"] > 0
        assert all(hi >= lo for lo, hi in zip(p50["runs"], p99["runs"], strict=True))
        # The figures round (3 decimals above 10 ms): compare to within that.
        maxima = p99["params"]["max_ms"]
        assert all(m >= hi - 1e-3 for hi, m in zip(p99["runs"], maxima, strict=True))
        assert p99["baseline"]["value"] >= p50["baseline"]["value"]
    assert figures["event_latency_remote_p50"]["params"]["tcp_loopback_one_way_p50_ms"] > 0
