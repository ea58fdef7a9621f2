"""The recent-events cache: serves exact offset ranges and stays within its bounds."""

from __future__ import annotations

from protocol.eventchain import EventRecord
from swarmnode.events.recent import RecentEvents


def _record(source: str, offset: int, payload: str = "0") -> EventRecord:
    return EventRecord(
        source=source,
        offset=offset,
        lamport=offset + 1,
        timestamp=0,
        semantics="s",
        name="n",
        payload=payload,
        chain=bytes(32),
    )


def test_reads_exact_ranges() -> None:
    cache = RecentEvents()
    cache.add(_record("a", i) for i in range(10))
    got = cache.read("a", 3, 7, 100)
    assert got is not None
    assert [r.offset for r in got] == [4, 5, 6, 7]
    limited = cache.read("a", -1, 9, 3)
    assert limited is not None
    assert [r.offset for r in limited] == [0, 1, 2]
    assert cache.read("b", -1, 5, 10) is None


def test_evicts_oldest_first_across_sources() -> None:
    cache = RecentEvents(max_records=5)
    for i in range(4):
        cache.add([_record("a", i), _record("b", i)])
    assert cache.records == 5
    # The oldest records went first: a0 b0 a1 (evicted), b1 kept.
    assert cache.read("a", -1, 3, 10) is None
    assert cache.read("a", 0, 3, 10) is None
    assert cache.read("b", 0, 3, 10) is not None
    a_tail = cache.read("a", 1, 3, 10)
    assert a_tail is not None
    assert [r.offset for r in a_tail] == [2, 3]


def test_byte_budget_bounds_the_cache() -> None:
    cache = RecentEvents(max_records=10_000, max_bytes=10_000)
    cache.add(_record("a", i, payload="x" * 1000) for i in range(100))
    assert cache.bytes <= 10_000
    assert 0 < cache.records < 100
    newest = cache.read("a", 98, 99, 10)
    assert newest is not None
    assert [r.offset for r in newest] == [99]


def test_long_runs_are_compacted_and_still_correct() -> None:
    cache = RecentEvents(max_records=100)
    cache.add(_record("a", i) for i in range(5000))
    assert cache.records == 100
    got = cache.read("a", 4949, 4999, 1000)
    assert got is not None
    assert [r.offset for r in got] == list(range(4950, 5000))
    assert cache.read("a", 4898, 4999, 10) is None
