"""Fixtures for tests that run the real node process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from netsim.nodeproc import NodeProcess


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[NodeProcess]:
    """A fresh node process on its own data dir, reaped after the test."""
    async with NodeProcess(tmp_path / "node") as proc:
        yield proc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session (keep-alive, like an app's)."""
    async with aiohttp.ClientSession() as session:
        yield session
