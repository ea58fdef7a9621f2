"""Per-source read cursors: walk one source's selected events in offset order, one page at a time.

A cursor holds at most one page. Ascending cursors take a page from the recent-events cache when it
still holds the next offset and read SQLite otherwise; they only ever read offsets the log already
holds, and say when they are blocked (waiting for offsets not yet held) or done (past their upper
bound). The descending cursor serves ``lamport-reverse``, which only starts once every bound is
held.
"""

from __future__ import annotations

import functools
from collections import deque

from protocol.eventchain import EventRecord
from swarmnode.events.filters import SourceFilter
from swarmnode.events.reader import fetch_page
from swarmnode.events.state import LogState

__all__ = ["PAGE", "DescendingCursor", "SourceCursor"]

# Events per page for a single cursor: large enough to amortise a thread hop and a query (~0.1 ms),
# small enough that a reader's memory stays a few hundred events whatever the query matches.
PAGE = 256


class SourceCursor:
    """Selected events of ``source`` with ``after < offset <= upto`` (``upto`` None: no end)."""

    __slots__ = ("_state", "buf", "page", "pos", "selected", "source", "upto")

    def __init__(
        self,
        state: LogState,
        source: str,
        selected: SourceFilter,
        after: int,
        upto: int | None,
        page: int = PAGE,
    ) -> None:
        self._state = state
        self.source = source
        self.selected = selected
        self.pos = after  # highest offset looked at
        self.upto = upto
        self.page = page
        self.buf: deque[EventRecord] = deque()

    def _limit(self) -> int:
        held = self._state.held(self.source)
        return held if self.upto is None else min(held, self.upto)

    @property
    def done(self) -> bool:
        return self.upto is not None and self.pos >= self.upto and not self.buf

    def can_read(self) -> bool:
        """True when held offsets remain that this cursor has not looked at."""
        return self.pos < self._limit()

    async def fill(self) -> None:
        """Look at the next page of held offsets; selected events land in ``buf``."""
        target = self._limit()
        if self.pos >= target:
            return
        if self.selected.nothing:
            self.pos = target
            return
        cached = self._state.recent.read(self.source, self.pos, target, self.page)
        if cached is not None:
            self.pos = cached[-1].offset
            matches = self.selected.matches
            records = [r for r in cached if matches(r.semantics, r.name)]
        else:
            records, self.pos = await self._state.readers.run(
                functools.partial(
                    fetch_page,
                    source=self.source,
                    after=self.pos,
                    upto=target,
                    selected=self.selected,
                    limit=self.page,
                )
            )
        self.buf.extend(records)
        self._state.buffered += len(records)

    def pop(self) -> EventRecord:
        self._state.buffered -= 1
        return self.buf.popleft()

    def release(self) -> None:
        """Drop what is buffered (the reader went away)."""
        self._state.buffered -= len(self.buf)
        self.buf.clear()


class DescendingCursor:
    """Selected events of ``source`` with ``after < offset <= upto``, highest offset first; every
    one of those offsets must already be held."""

    __slots__ = ("_state", "after", "buf", "page", "pos", "selected", "source")

    def __init__(
        self,
        state: LogState,
        source: str,
        selected: SourceFilter,
        after: int,
        upto: int,
        page: int = PAGE,
    ) -> None:
        self._state = state
        self.source = source
        self.selected = selected
        self.after = after
        self.pos = upto + 1  # lowest offset looked at
        self.page = page
        self.buf: deque[EventRecord] = deque()

    @property
    def done(self) -> bool:
        return self.pos <= self.after + 1 and not self.buf

    async def fill(self) -> None:
        if self.pos <= self.after + 1:
            return
        if self.selected.nothing:
            self.pos = self.after + 1
            return
        records, self.pos = await self._state.readers.run(
            functools.partial(
                fetch_page,
                source=self.source,
                after=self.after,
                upto=self.pos - 1,
                selected=self.selected,
                limit=self.page,
                descending=True,
            )
        )
        self.buf.extend(records)
        self._state.buffered += len(records)

    def pop(self) -> EventRecord:
        self._state.buffered -= 1
        return self.buf.popleft()

    def release(self) -> None:
        self._state.buffered -= len(self.buf)
        self.buf.clear()
