"""subscribe: held events after the lower bound, then live ones; woken by commits, pulled lazily."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from protocol.eventchain import EventRecord
from swarmnode.events.cursor import PAGE
from swarmnode.events.log import EventLog, LogClosedError
from swarmnode.ports import NewEvent, Subscription
from tests.helpers.events_chain import RemoteSource, identity_from_seed

ALL = [Subscription()]


def _events(n: int, name: str = "n") -> list[NewEvent]:
    return [NewEvent(semantics="sem", name=name, payload=str(i)) for i in range(n)]


async def _next(it: AsyncIterator[EventRecord]) -> EventRecord:
    async with asyncio.timeout(10):
        return await anext(it)


async def test_subscribe_delivers_history_then_wakes_on_publish(event_log: EventLog) -> None:
    await event_log.publish(_events(3))
    async with aclosing(event_log.subscribe(ALL, None)) as it:
        assert [(await _next(it)).offset for _ in range(3)] == [0, 1, 2]
        pending = asyncio.ensure_future(_next(it))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not pending.done()  # nothing more yet: it waits, it does not end
        await event_log.publish(_events(2))
        assert (await pending).offset == 3
        assert (await _next(it)).offset == 4


async def test_subscribe_wakes_on_ingest(event_log: EventLog) -> None:
    remote = RemoteSource(identity_from_seed(1))
    async with aclosing(event_log.subscribe([Subscription(source=remote.source)], None)) as it:
        pending = asyncio.ensure_future(_next(it))
        await event_log.publish(_events(1))  # another source: not selected
        batch = remote.batch([("s", "n", "1"), ("s", "n", "2")])
        assert await event_log.ingest(remote.public_key, batch) == 2
        assert await pending == batch[0]
        assert await _next(it) == batch[1]


async def test_lower_bound_is_exclusive_per_source(event_log: EventLog) -> None:
    remote = RemoteSource(identity_from_seed(1))
    await event_log.publish(_events(5))
    await event_log.ingest(remote.public_key, remote.batch([("s", "n", str(i)) for i in range(3)]))
    lower = {event_log.node_id: 2, remote.source: -1}
    async with aclosing(event_log.subscribe(ALL, lower)) as it:
        got = [await _next(it) for _ in range(5)]
    by_source: dict[str, list[int]] = {}
    for r in got:
        by_source.setdefault(r.source, []).append(r.offset)
    assert by_source == {event_log.node_id: [3, 4], remote.source: [0, 1, 2]}


async def test_subscription_filters_by_semantics_and_name(event_log: EventLog) -> None:
    await event_log.publish(
        [
            NewEvent(semantics="a", name="x", payload="1"),
            NewEvent(semantics="b", name="x", payload="2"),
            NewEvent(semantics="a", name="y", payload="3"),
        ]
    )
    subs = [Subscription(semantics="a", name="y"), Subscription(semantics="b")]
    async with aclosing(event_log.subscribe(subs, None)) as it:
        assert [(await _next(it)).payload for _ in range(2)] == ["2", "3"]


async def test_unread_subscriber_does_not_block_publishing(event_log: EventLog) -> None:
    async with aclosing(event_log.subscribe(ALL, None)) as it:
        pending = asyncio.ensure_future(_next(it))
        await event_log.publish(_events(1))
        assert (await pending).offset == 0
        # The subscriber now stops pulling; publishing goes on regardless.
        async with asyncio.timeout(30):
            for _ in range(40):
                await event_log.publish(_events(500))
        stats = event_log.statistics()
        assert stats.buffered_records <= PAGE
        assert stats.cached_records <= 4096
        # When it resumes it gets everything, gapless, from SQLite and then the cache.
        offsets = [(await _next(it)).offset for _ in range(20_000)]
        assert offsets == list(range(1, 20_001))


async def test_stop_ends_live_subscriptions_and_fails_incomplete_queries(
    event_log: EventLog,
) -> None:
    async def drain_subscription() -> int:
        count = 0
        async for _ in event_log.subscribe(ALL, None):
            count += 1
        return count

    async def incomplete_query() -> None:
        async for _ in event_log.query(ALL, None, {event_log.node_id: 10}, "lamport"):
            pass

    await event_log.publish(_events(2))
    sub = asyncio.create_task(drain_subscription())
    query = asyncio.create_task(incomplete_query())
    for _ in range(20):
        await asyncio.sleep(0)
    await event_log.stop()
    async with asyncio.timeout(10):
        assert await sub == 2
        with pytest.raises(LogClosedError):
            await query
    assert event_log.statistics().subscriptions == 0
    assert event_log.statistics().queries == 0


async def test_closing_a_subscription_frees_it(event_log: EventLog) -> None:
    await event_log.publish(_events(3))
    it = event_log.subscribe(ALL, None)
    await _next(it)
    assert event_log.statistics().subscriptions == 1
    assert event_log.statistics().buffered_records > 0
    await it.aclose()
    stats = event_log.statistics()
    assert stats.subscriptions == 0
    assert stats.buffered_records == 0
