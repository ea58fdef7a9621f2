"""One event-loop timer for a pure machine's earliest deadline (STYLE.md §3: one timer).

Machines report their next deadline after every input; most inputs leave it where it was, so the
timer is re-armed only when the deadline moved. ``fire(now)`` gets the loop time, never earlier
than the deadline (``call_at`` may fire a hair early, and a machine must see its deadline passed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["DeadlineTimer"]


class DeadlineTimer:
    """See the module docstring."""

    __slots__ = ("_at", "_fire", "_handle")

    def __init__(self, fire: Callable[[float], None]) -> None:
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        """Fire at ``deadline`` (``None``: not at all), unless already armed for it."""
        if deadline == self._at:
            return
        self.cancel()
        self._at = deadline
        if deadline is not None:
            self._handle = loop.call_at(deadline, self._on_time, loop)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = None

    def _on_time(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline, self._handle, self._at = self._at, None, None
        self._fire(max(loop.time(), deadline or 0.0))
