"""Fixtures for the official-client tests: the npm project in ``js/`` (installed on demand), a node.

``npm ci`` runs once per session when ``js/node_modules`` is missing or older than the lock file,
so CI installs the pinned ``@actyx/os-sdk`` 0.3.1 and ``request`` 2.88.2 by itself.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from netsim.nodeproc import NodeProcess

JS_DIR = Path(__file__).resolve().parent / "js"
_INSTALLED_MARKER = JS_DIR / "node_modules" / ".package-lock.json"
_NPM_TIMEOUT_S = 300


def _needs_install() -> bool:
    lock = JS_DIR / "package-lock.json"
    if not _INSTALLED_MARKER.exists():
        return True
    return lock.exists() and lock.stat().st_mtime > _INSTALLED_MARKER.stat().st_mtime


@pytest.fixture(scope="session")
def js_dir() -> Path:
    """``tests/compat/js`` with its dependencies installed."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed for the compat tests (apt-get install nodejs npm)")
    if _needs_install():
        cmd = ["npm", "ci"] if (JS_DIR / "package-lock.json").exists() else ["npm", "install"]
        done = subprocess.run(
            [*cmd, "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=_NPM_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return JS_DIR


async def run_js(js_dir: Path, script: str, *args: str, within: float = 90.0) -> dict[str, Any]:
    """Run ``node script args`` in ``js_dir``; asserts exit 0, returns its stdout parsed as JSON."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        script,
        *args,
        cwd=js_dir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"node {script} exited {proc.returncode}:\n{err.decode()}"
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[NodeProcess]:
    """A fresh node process on its own data dir, reaped after the test."""
    async with NodeProcess(tmp_path / "node") as proc:
        yield proc
