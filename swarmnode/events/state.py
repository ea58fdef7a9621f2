"""The loop-side view of the log that readers share: heads, recent events, wakeups, reader threads.

Updated only on the event loop, in one callback per group commit, before any publisher is answered;
so what a reader sees here is always committed and readable through the reader connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swarmnode.events.hub import Hub
from swarmnode.events.reader import ReaderPool
from swarmnode.events.recent import RecentEvents

__all__ = ["Head", "LogState"]


@dataclass(frozen=True, slots=True)
class Head:
    """Highest contiguous offset held of a source and the lamport of that event."""

    offset: int
    lamport: int


@dataclass(slots=True)
class LogState:
    readers: ReaderPool
    hub: Hub = field(default_factory=Hub)
    recent: RecentEvents = field(default_factory=RecentEvents)
    heads: dict[str, Head] = field(default_factory=dict)
    buffered: int = 0  # records read but not yet handed out, over all live readers

    def held(self, source: str) -> int:
        """Highest offset held of ``source`` (-1: none)."""
        head = self.heads.get(source)
        return -1 if head is None else head.offset

    def head_lamport(self, source: str) -> int:
        """Lamport of the newest event held of ``source`` (-1: none); later ones have higher
        lamports."""
        head = self.heads.get(source)
        return -1 if head is None else head.lamport
