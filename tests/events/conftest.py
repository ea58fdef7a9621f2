"""Fixtures for event-log tests: a started log in a temp dir, always stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from swarmnode.events.log import EventLog
from tests.helpers.events_chain import identity_from_seed


@pytest.fixture
async def event_log(tmp_path: Path) -> AsyncIterator[EventLog]:
    log = EventLog(tmp_path / "events.sqlite", identity_from_seed(0))
    await log.start()
    try:
        yield log
    finally:
        await log.stop()
