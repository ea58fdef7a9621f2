"""The newest committed events, kept in memory so live readers do not go to SQLite for them.

Bounded in records and payload bytes over all sources together, oldest evicted first. A reader that
is behind what is still held here (a slow subscriber, a query over history) reads from SQLite
instead: the cache never grows for a slow reader, it only lets fast ones skip a disk read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from protocol.eventchain import EventRecord

__all__ = ["RecentEvents"]

# About 4k events or 8 MiB of payload: a few group commits of a busy node, enough for live
# subscribers to be served from memory while their HTTP writes keep up.
DEFAULT_MAX_RECORDS = 4096
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
# Fixed cost charged per record besides its payload (the other fields and the object itself).
_RECORD_OVERHEAD = 200
# Dropped prefixes are compacted away once they are this long and over half the list.
_COMPACT_AFTER = 1024


class _Tail:
    """One source's cached events: consecutive offsets from ``items[start].offset``."""

    __slots__ = ("items", "start")

    def __init__(self) -> None:
        self.items: list[EventRecord] = []
        self.start = 0


class RecentEvents:
    """Per-source runs of the newest events; add in commit order, read by offset range."""

    def __init__(
        self, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._tails: dict[str, _Tail] = {}
        self._order: deque[str] = deque()  # source of each cached record, oldest first
        self._bytes = 0

    @property
    def records(self) -> int:
        return len(self._order)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, records: Iterable[EventRecord]) -> None:
        """Append newly committed records; each source's must continue its cached run."""
        for r in records:
            tail = self._tails.get(r.source)
            if tail is None:
                tail = self._tails[r.source] = _Tail()
            elif tail.items[-1].offset + 1 != r.offset:
                tail.items.clear()
                tail.start = 0
                self._drop_source_order(r.source)
            tail.items.append(r)
            self._order.append(r.source)
            self._bytes += len(r.payload) + _RECORD_OVERHEAD
        while self._order and (
            len(self._order) > self._max_records or self._bytes > self._max_bytes
        ):
            self._evict_oldest()

    def read(self, source: str, after: int, upto: int, limit: int) -> list[EventRecord] | None:
        """Up to ``limit`` records of ``source`` with ``after < offset <= upto``, or ``None`` when
        the cache does not hold offset ``after + 1`` (the caller reads SQLite instead)."""
        tail = self._tails.get(source)
        if tail is None:
            return None
        first = tail.items[tail.start].offset
        index = after + 1 - first
        if index < 0 or after + 1 > tail.items[-1].offset:
            return None
        count = min(limit, upto - after)
        begin = tail.start + index
        return tail.items[begin : begin + count]

    def _evict_oldest(self) -> None:
        source = self._order.popleft()
        tail = self._tails[source]
        self._bytes -= len(tail.items[tail.start].payload) + _RECORD_OVERHEAD
        tail.start += 1
        if tail.start == len(tail.items):
            del self._tails[source]
        elif tail.start >= _COMPACT_AFTER and 2 * tail.start > len(tail.items):
            del tail.items[: tail.start]
            tail.start = 0

    def _drop_source_order(self, source: str) -> None:
        """Forget a source's run entirely (it did not continue: never expected, kept for safety)."""
        kept = [s for s in self._order if s != source]
        removed = len(self._order) - len(kept)
        if removed:
            self._order = deque(kept)
        self._bytes = sum(
            len(r.payload) + _RECORD_OVERHEAD
            for t in self._tails.values()
            for r in t.items[t.start :]
        )
