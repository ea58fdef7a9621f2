"""query against a simple in-memory model: bounds, subscriptions and all three orders.

Scenarios mix local publishes with signed events of a few remote sources (ingested), then compare
queries (bounds within what is held) with what the model says, order by order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.eventchain import EventRecord
from swarmnode.events.log import EventLog
from swarmnode.ports import NewEvent, Order, Subscription
from tests.helpers.events_chain import RemoteSource, identity_from_seed
from tests.strategies import NAMES, SEMANTICS, new_events, subscriptions

OWN = identity_from_seed(0)
REMOTES = [identity_from_seed(i) for i in (1, 2, 3)]
SOURCES = [OWN.node_id] + [r.node_id for r in REMOTES]

publish_op = st.tuples(st.just("publish"), st.lists(new_events, min_size=1, max_size=4))
ingest_op = st.tuples(
    st.just("ingest"),
    st.integers(min_value=0, max_value=len(REMOTES) - 1),
    st.lists(
        st.tuples(
            st.sampled_from(SEMANTICS),
            st.sampled_from(NAMES),
            st.integers(min_value=1, max_value=4),
        ),
        min_size=1,
        max_size=4,
    ),
)
scenarios = st.lists(st.one_of(publish_op, ingest_op), min_size=1, max_size=8)


def expected(
    model: Mapping[str, list[EventRecord]],
    subs: Sequence[Subscription],
    lower: Mapping[str, int] | None,
    upper: Mapping[str, int],
) -> list[EventRecord]:
    """Selected events in (lower, upper] per source, in (lamport, source) order."""
    out = []
    for source, upto in upper.items():
        after = -1 if lower is None else lower.get(source, -1)
        out += [
            r
            for r in model.get(source, [])
            if after < r.offset <= upto
            and any(s.matches(r.semantics, r.name, source) for s in subs)
        ]
    return sorted(out, key=lambda r: (r.lamport, r.source))


def per_source(records: Sequence[EventRecord]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in records:
        out.setdefault(r.source, []).append(r.offset)
    return out


async def run_scenario(
    log: EventLog, ops: list[tuple[object, ...]]
) -> dict[str, list[EventRecord]]:
    remotes = [RemoteSource(identity) for identity in REMOTES]
    model: dict[str, list[EventRecord]] = {}
    seen_lamport = 0
    for op in ops:
        if op[0] == "publish":
            batch: list[NewEvent] = op[1]  # type: ignore[assignment]
            stored = await log.publish(batch)
            # A new event's lamport is above every lamport the node had seen.
            assert stored[0].lamport > seen_lamport
            model.setdefault(log.node_id, []).extend(stored)
        else:
            remote = remotes[cast(int, op[1])]
            spec: list[tuple[str, str, int]] = op[2]  # type: ignore[assignment]
            records = remote.batch(
                [(sem, name, f'{{"i":{len(remote.records)}}}') for sem, name, _ in spec],
                lamport_steps=[step for _, _, step in spec],
            )
            assert await log.ingest(remote.public_key, records) == len(records)
            model.setdefault(remote.source, []).extend(records)
        seen_lamport = max(r.lamport for records in model.values() for r in records)
        assert log.offsets() == {s: rs[-1].offset for s, rs in model.items()}
    return model


@settings(max_examples=60)
@given(ops=scenarios, data=st.data())
def test_query_matches_the_model(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[object, ...]], data: st.DataObject
) -> None:
    async def scenario() -> None:
        log = EventLog(tmp_path_factory.mktemp("q") / "events.sqlite", OWN)
        await log.start()
        try:
            model = await run_scenario(log, ops)
            for _ in range(3):
                subs = data.draw(subscriptions(SOURCES), label="subscriptions")
                upper = data.draw(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            s: st.integers(min_value=-1, max_value=len(model[s]) - 1) for s in model
                        },
                    ),
                    label="upper",
                )
                lower = data.draw(
                    st.none()
                    | st.fixed_dictionaries(
                        {},
                        optional={
                            s: st.integers(min_value=-1, max_value=len(model[s])) for s in model
                        },
                    ),
                    label="lower",
                )
                want = expected(model, subs, lower, upper)
                for order in ("lamport", "lamport-reverse", "source-ordered"):
                    got = await collect(log, subs, lower, upper, order)
                    if order == "lamport":
                        assert got == want
                    elif order == "lamport-reverse":
                        assert got == want[::-1]
                    else:
                        assert per_source(got) == per_source(want)
                        assert sorted(got, key=lambda r: (r.lamport, r.source)) == want
        finally:
            await log.stop()

    asyncio.run(scenario())


async def collect(
    log: EventLog,
    subs: Sequence[Subscription],
    lower: Mapping[str, int] | None,
    upper: Mapping[str, int],
    order: Order,
) -> list[EventRecord]:
    async with asyncio.timeout(10):
        return [r async for r in log.query(subs, lower, upper, order)]


ALL = [Subscription()]


async def test_empty_upper_bound_completes_at_once(event_log: EventLog) -> None:
    await event_log.publish([NewEvent(semantics="s", name="n", payload="1")])
    for order in ("lamport", "lamport-reverse", "source-ordered"):
        assert await collect(event_log, ALL, None, {}, order) == []


async def test_upper_bound_above_held_waits_for_publish(event_log: EventLog) -> None:
    await event_log.publish([NewEvent(semantics="s", name="n", payload="0")])
    upper = {event_log.node_id: 2}
    tasks = {
        order: asyncio.create_task(collect(event_log, ALL, None, upper, order))
        for order in ("lamport", "lamport-reverse", "source-ordered")
    }
    # Let the queries run until they wait for offsets 1 and 2.
    for _ in range(20):
        await asyncio.sleep(0)
    assert not any(t.done() for t in tasks.values())
    await event_log.publish([NewEvent(semantics="s", name="n", payload=str(i)) for i in (1, 2, 3)])
    async with asyncio.timeout(10):
        results = {order: await task for order, task in tasks.items()}
    assert [r.offset for r in results["lamport"]] == [0, 1, 2]
    assert [r.offset for r in results["source-ordered"]] == [0, 1, 2]
    assert [r.offset for r in results["lamport-reverse"]] == [2, 1, 0]


async def test_lamport_query_delivers_what_is_safe_before_waiting(event_log: EventLog) -> None:
    remote = RemoteSource(identity_from_seed(1))
    await event_log.ingest(remote.public_key, remote.batch([("s", "n", "1")], lamport_steps=[100]))
    own = await event_log.publish([NewEvent(semantics="s", name="n", payload="1")])
    upper = {remote.source: 1, event_log.node_id: 0}
    received: list[EventRecord] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for r in event_log.query(ALL, None, upper, "lamport"):
            received.append(r)
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(10):
        await first.wait()  # remote offset 0 (lamport 100) is below anything still missing
    assert [(r.source, r.offset) for r in received] == [(remote.source, 0)]
    await event_log.ingest(remote.public_key, remote.batch([("s", "n", "2")], lamport_steps=[1]))
    async with asyncio.timeout(10):
        await task
    # Remote offset 1 has lamport 101, our event has a higher one: (lamport, source) order.
    assert own[0].lamport > 101
    assert [(r.source, r.offset) for r in received] == [
        (remote.source, 0),
        (remote.source, 1),
        (event_log.node_id, 0),
    ]


async def test_source_ordered_query_does_not_wait_on_other_sources(event_log: EventLog) -> None:
    await event_log.publish([NewEvent(semantics="s", name="n", payload="1")])
    missing = identity_from_seed(7).node_id
    upper = {event_log.node_id: 0, missing: 0}
    got: list[EventRecord] = []
    delivered = asyncio.Event()

    async def consume() -> None:
        async for r in event_log.query(ALL, None, upper, "source-ordered"):
            got.append(r)
            delivered.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(10):
        await delivered.wait()
    assert [(r.source, r.offset) for r in got] == [(event_log.node_id, 0)]
    assert not task.done()  # still waiting for the other source's offset 0
    remote = RemoteSource(identity_from_seed(7))
    await event_log.ingest(remote.public_key, remote.batch([("s", "n", "1")]))
    async with asyncio.timeout(10):
        await task
    assert [(r.source, r.offset) for r in got] == [(event_log.node_id, 0), (missing, 0)]


async def test_large_query_streams_in_bounded_pages(event_log: EventLog, tmp_path: Path) -> None:
    for _ in range(10):
        await event_log.publish(
            [NewEvent(semantics="s", name="n", payload=str(i)) for i in range(1000)]
        )
    upper = event_log.offsets()
    for order in ("lamport", "lamport-reverse", "source-ordered"):
        count = 0
        peak = 0
        async for _ in event_log.query(ALL, None, upper, order):
            count += 1
            peak = max(peak, event_log.statistics().buffered_records)
        assert count == 10_000
        assert peak <= 256
    assert event_log.statistics().buffered_records == 0
