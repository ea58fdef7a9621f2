"""What the figures were measured on: a benchmark figure means little without the machine, the
interpreter, the event loop and how busy the machine was while it ran."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["describe", "describe_commit", "load_average"]

ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("aiohttp", "blake3", "cryptography", "msgpack", "uvloop", "libtorrent", "matplotlib")


def describe(work: Path) -> dict[str, Any]:
    """Cores, memory, CPU model, kernel, the filesystem the benchmarks write to, Python, whether
    the nodes run on uvloop, the versions of the libraries measured, and the commit."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(_meminfo_kib("MemTotal") / (1 << 20), 1),
        "kernel": platform.release(),
        "filesystem": _filesystem(work),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "uvloop": _uvloop_used(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": _dirty(),
    }


def describe_commit() -> str:
    """The commit measured, marked when tracked files differ from it."""
    return _git("rev-parse", "--short", "HEAD") + (" (with local changes)" if _dirty() else "")


def _dirty() -> bool:
    """Tracked files differ from the commit (untracked results do not count)."""
    return bool(_git("status", "--porcelain", "--untracked-files=no"))


def load_average() -> float:
    """The 1-minute load average: above the core count, the figures shared the CPU."""
    return round(os.getloadavg()[0], 2)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kib(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _filesystem(path: Path) -> str:
    """The mount holding ``path`` (longest mount-point prefix), as "type on device"."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    target = str(path.resolve())
    best: list[str] | None = None
    for fields in mounts:
        point = fields[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[1])):
            best = fields
    return f"{best[2]} ({best[3].split(',')[0]}) at {best[1]}" if best else "unknown"


def _uvloop_used() -> bool:
    """The node runs on uvloop whenever it imports (``swarmnode.__main__``)."""
    return _version("uvloop") is not None and sys.platform != "win32"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()
