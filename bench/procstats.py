"""What a benchmark reads about a process from /proc: CPU seconds so far, and RSS growth while a
block runs (sampled every 10 ms by a thread, so a peak between two reads of the caller counts)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["cpu_seconds", "rss_growth", "rss_kib"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (``/proc/<pid>/stat`` utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the ")" closing comm: fields[0] is state (field 3), so utime (14) is fields[11].
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def rss_growth(pid: int, out: dict[str, float]) -> Iterator[None]:
    """Samples the RSS of ``pid`` every 10 ms while the block runs; sets ``out["rss_idle_mib"]``
    (before) and ``out["rss_growth_mib"]`` (peak minus before, 0.1 MiB resolution)."""
    idle = rss_kib(pid)
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            with contextlib.suppress(OSError, RuntimeError):
                peak = max(peak, rss_kib(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        out["rss_idle_mib"] = idle / 1024
        out["rss_growth_mib"] = round((peak - idle) / 1024, 1)
