"""Wakes readers when the log changes: one generation counter and one event per generation.

Queries and subscriptions read what they need, then wait for the *next* change; nothing polls. A
reader notes ``generation`` before looking at the log and waits with that value, so a change that
lands between its look and its wait is never missed. ``close`` wakes everyone for good (the log is
stopping).
"""

from __future__ import annotations

import asyncio

__all__ = ["Hub", "LogClosedError"]


class LogClosedError(Exception):
    """The event log was stopped while a reader was still using it."""


class Hub:
    """Change notifications for the event log; lives on the event loop thread."""

    def __init__(self) -> None:
        self._generation = 0
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self) -> None:
        """Something was committed: wake every waiter of the current generation."""
        self._generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        self._closed = True
        self.notify()

    async def wait(self, generation: int) -> None:
        """Return once the generation has moved past ``generation``; raise if the log is closed."""
        if self._closed:
            raise LogClosedError("event log stopped")
        if self._generation == generation:
            await self._changed.wait()
        if self._closed:
            raise LogClosedError("event log stopped")
