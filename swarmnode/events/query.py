"""``query`` and ``subscribe`` over the log (API.md, "Event Service").

Both are pull-driven async generators: they read a page only when the consumer asks for more, so a
slow consumer holds at most a page per source cursor and never slows the writer or other readers.
They wait for new events on the hub (never by polling).

Orders:
- ``source-ordered``: each source ascending; sources take turns a page at a time, and a source
  still waiting for offsets below its bound never holds back the others.
- ``lamport``: a k-way merge of per-source cursors by ``(lamport, source)``. Within a source lamport
  rises with the offset, so an event not held yet has a lamport above that source's newest held one:
  every event at or below that lamport can be delivered before it arrives, and only the rest waits.
- ``lamport-reverse``: the exact reverse, so it can only start once every bound is held.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass

from protocol.eventchain import EventRecord
from swarmnode.events.cursor import DescendingCursor, SourceCursor
from swarmnode.events.filters import SourceFilter, source_filter
from swarmnode.events.hub import LogClosedError
from swarmnode.events.state import LogState
from swarmnode.ports import Order, Subscription

__all__ = ["MERGE_PAGE", "query_events", "subscribe_events"]

# Page per source in a merge: the merge holds one page per source, so it is kept smaller than a
# sequential cursor's page.
MERGE_PAGE = 64
# Sorts after every source id (ids are [a-z0-9]): marks "this source may still send events at this
# lamport".
_BLOCKED = "\U0010ffff"


@dataclass(frozen=True, slots=True)
class _Plan:
    source: str
    selected: SourceFilter
    after: int
    upto: int


def _plans(
    subscriptions: Sequence[Subscription],
    lower_bound: Mapping[str, int] | None,
    upper_bound: Mapping[str, int],
) -> list[_Plan]:
    plans = []
    for source in sorted(upper_bound):
        upto = upper_bound[source]
        after = -1 if lower_bound is None else max(-1, lower_bound.get(source, -1))
        if upto > after:
            plans.append(_Plan(source, source_filter(subscriptions, source), after, upto))
    return plans


async def _wait_until(state: LogState, condition: Callable[[], bool]) -> None:
    while True:
        generation = state.hub.generation
        if condition():
            return
        await state.hub.wait(generation)


def query_events(
    state: LogState,
    subscriptions: Sequence[Subscription],
    lower_bound: Mapping[str, int] | None,
    upper_bound: Mapping[str, int],
    order: Order,
) -> AsyncGenerator[EventRecord, None]:
    """Selected events in ``(lower, upper]`` per source, in ``order``; ends once every bound is
    reached.

    Raises ``LogClosedError`` when the log stops before the query is complete.
    """
    plans = _plans(subscriptions, lower_bound, upper_bound)
    if order == "lamport-reverse":
        return _lamport_reverse(state, plans)
    if order == "lamport":
        return _lamport(
            state,
            [SourceCursor(state, p.source, p.selected, p.after, p.upto, MERGE_PAGE) for p in plans],
        )
    return _source_ordered(
        state, [SourceCursor(state, p.source, p.selected, p.after, p.upto) for p in plans]
    )


async def _source_ordered(
    state: LogState, cursors: list[SourceCursor]
) -> AsyncGenerator[EventRecord, None]:
    active = cursors
    try:
        while active:
            generation = state.hub.generation
            progressed = False
            for cursor in active:
                if cursor.can_read():
                    progressed = True
                    await cursor.fill()
                    while cursor.buf:
                        yield cursor.pop()
            active = [c for c in active if not c.done]
            if active and not progressed:
                await state.hub.wait(generation)
    finally:
        for cursor in cursors:
            cursor.release()


async def _lamport(
    state: LogState, cursors: list[SourceCursor]
) -> AsyncGenerator[EventRecord, None]:
    heap: list[tuple[int, str, int]] = []

    async def push(index: int) -> None:
        cursor = cursors[index]
        while not cursor.buf:
            if cursor.done:
                return
            if not cursor.can_read():
                # Everything held is merged; what is missing sorts after this source's newest
                # lamport.
                heapq.heappush(heap, (state.head_lamport(cursor.source), _BLOCKED, index))
                return
            await cursor.fill()
        head = cursor.buf[0]
        heapq.heappush(heap, (head.lamport, head.source, index))

    try:
        for index in range(len(cursors)):
            await push(index)
        while heap:
            _, source, index = heapq.heappop(heap)
            cursor = cursors[index]
            if source == _BLOCKED:
                await _wait_until(state, cursor.can_read)
            else:
                yield cursor.pop()
            await push(index)
    finally:
        for cursor in cursors:
            cursor.release()


@dataclass(frozen=True, slots=True)
class _Descending:
    """Orders source ids in reverse, for a min-heap that must pop the highest ``(lamport,
    source)``."""

    source: str

    def __lt__(self, other: _Descending) -> bool:
        return self.source > other.source


async def _lamport_reverse(
    state: LogState, plans: list[_Plan]
) -> AsyncGenerator[EventRecord, None]:
    await _wait_until(state, lambda: all(state.held(p.source) >= p.upto for p in plans))
    cursors = [
        DescendingCursor(state, p.source, p.selected, p.after, p.upto, MERGE_PAGE) for p in plans
    ]
    heap: list[tuple[int, _Descending, int]] = []

    async def push(index: int) -> None:
        cursor = cursors[index]
        while not cursor.buf:
            if cursor.done:
                return
            await cursor.fill()
        head = cursor.buf[0]
        heapq.heappush(heap, (-head.lamport, _Descending(head.source), index))

    try:
        for index in range(len(cursors)):
            await push(index)
        while heap:
            _, _, index = heapq.heappop(heap)
            yield cursors[index].pop()
            await push(index)
    finally:
        for cursor in cursors:
            cursor.release()


async def subscribe_events(
    state: LogState,
    subscriptions: Sequence[Subscription],
    lower_bound: Mapping[str, int] | None,
) -> AsyncGenerator[EventRecord, None]:
    """Selected events after ``lower_bound``, source-ordered: what is held, then live events as they
    are committed (local publish or ingest). Ends only when the log stops."""
    cursors: dict[str, SourceCursor] = {}
    try:
        while True:
            generation = state.hub.generation
            if state.hub.closed:
                return
            for source in state.heads:
                if source not in cursors:
                    after = -1 if lower_bound is None else max(-1, lower_bound.get(source, -1))
                    selected = source_filter(subscriptions, source)
                    cursors[source] = SourceCursor(state, source, selected, after, None)
            progressed = False
            for cursor in list(cursors.values()):
                if cursor.can_read():
                    progressed = True
                    await cursor.fill()
                    while cursor.buf:
                        yield cursor.pop()
            if not progressed:
                await state.hub.wait(generation)
    except LogClosedError:
        return
    finally:
        for cursor in cursors.values():
            cursor.release()
