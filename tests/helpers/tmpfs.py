"""A small tmpfs for real full-disk tests (mounting needs root, as CI has; skips elsewhere)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["mounted_tmpfs"]


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str, *, lazy_unmount: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"2m"``) at ``mount_point``; skip the test where refused.

    ``lazy_unmount`` detaches it even while a (stopped) node process may still hold it open;
    otherwise a failing unmount fails the test.
    """
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        if lazy_unmount:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
        else:
            subprocess.run(["umount", str(mount_point)], check=True)
