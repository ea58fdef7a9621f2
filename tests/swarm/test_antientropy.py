"""Anti-entropy parts alone: batch packing, offset-map pages and comparison, the pull scheduler,
and the in-memory store's verification."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import encode, event_record_size
from protocol.eventchain import EventRecord
from protocol.framing import MAX_FRAME_SIZE
from protocol.messages_base import EVENT_BATCH_BUDGET, MAX_OFFSET_MAP_ENTRIES
from protocol.messages_replication import (
    EventBatch,
    EventIds,
    Graft,
    OffsetMap,
    OffsetRange,
    Prune,
    RequestRange,
)
from swarmnode.swarm.antientropy import (
    HARD_BATCH_BYTES,
    PullScheduler,
    lacking,
    offset_map_pages,
    pack_batches,
)
from swarmnode.swarm.eventstore import SIGNED_RUN_LIMIT, MemoryEventStore
from tests.helpers.dissemination import Replica
from tests.helpers.events_chain import RemoteSource, identity_from_seed


def _chain(
    count: int, *, per_batch: int, size: int = 100
) -> tuple[RemoteSource, list[EventRecord]]:
    src = RemoteSource(identity_from_seed(7))
    out: list[EventRecord] = []
    for start in range(0, count, per_batch):
        n = min(per_batch, count - start)
        out.extend(src.batch([("s", "n", json.dumps("p" * size))] * n))
    return src, out


def test_pack_batches_stays_under_budget_and_ends_on_signed_heads() -> None:
    src, records = _chain(20_000, per_batch=50)
    key = {src.source: src.public_key}
    batches = pack_batches(records, key.get, hops=None)
    assert len(batches) > 3
    assert [r for b in batches for r in b.events] == records
    for batch in batches:
        size = sum(event_record_size(r) for r in batch.events)
        assert size <= EVENT_BATCH_BUDGET
        assert batch.events[-1].signature is not None
        assert batch.keys == ((src.source, src.public_key),)
        assert len(encode(batch)) <= MAX_FRAME_SIZE
    # Large batches: all but the last are within one signed run of the budget.
    run = max(event_record_size(r) for r in records) * 50
    assert all(
        sum(event_record_size(r) for r in b.events) > EVENT_BATCH_BUDGET - run for b in batches[:-1]
    )
    # Each batch stores completely on a receiver that holds the ones before.
    store = MemoryEventStore()
    for batch in batches:
        assert len(store.ingest([(src.public_key, batch.events)]).stored) == len(batch.events)


def test_pack_batches_grows_to_a_far_signed_head_within_the_hard_cap() -> None:
    src, records = _chain(1024, per_batch=1024, size=1000)  # one signature, ~1 MiB of events
    batches = pack_batches(records, {src.source: src.public_key}.get, hops=3)
    for batch in batches:
        assert sum(event_record_size(r) for r in batch.events) <= HARD_BATCH_BYTES
        assert batch.hops == 3
    assert [r for b in batches for r in b.events] == records


def test_an_event_larger_than_the_budget_goes_alone() -> None:
    src, records = _chain(3, per_batch=1, size=EVENT_BATCH_BUDGET // 2 + 1)
    batches = pack_batches(records, {src.source: src.public_key}.get, hops=0)
    assert [len(b.events) for b in batches] == [1, 1, 1]


def test_offset_map_pages_split_large_maps() -> None:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    rng = random.Random(1)
    offsets = {"".join(rng.choices(alphabet, k=15)): i for i in range(MAX_OFFSET_MAP_ENTRIES + 5)}
    pages = offset_map_pages(offsets)
    assert [len(p.entries) for p in pages] == [MAX_OFFSET_MAP_ENTRIES, 5]
    assert [p.more for p in pages] == [True, False]
    assert {k: v for p in pages for k, v in p.entries} == offsets
    assert offset_map_pages({}) == [OffsetMap(entries=())]


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.integers(-1, 50)),
    st.dictionaries(st.sampled_from("abcdef"), st.integers(-1, 50)),
)
def test_lacking_gives_exact_ranges(have: dict[str, int], other: dict[str, int]) -> None:
    ranges = lacking(have, other)
    for source, last in other.items():
        mine = have.get(source, -1)
        if last > mine:
            assert ranges[source] == (mine + 1, last)
        else:
            assert source not in ranges
    assert set(ranges) <= set(other)


def test_pull_scheduler_bounds_the_window_and_never_asks_twice() -> None:
    S = "sssssssssssssss"
    heads = {S: -1}
    pull = PullScheduler(span=100, window=3, timeout=2.0, max_retries=1)
    pull.want("p", S, 999)
    pull.want("q", S, 999)
    first = pull.issue(0.0, heads.__getitem__)
    assert [(p, r.first, r.last) for p, r in first] == [
        ("p", 0, 99),
        ("p", 100, 199),
        ("p", 200, 299),
        ("q", 300, 399),
        ("q", 400, 499),
        ("q", 500, 599),
    ]
    assert pull.issue(0.0, heads.__getitem__) == []  # windows full
    heads[S] = 99
    pull.progress(heads.__getitem__)
    assert [(p, r.first) for p, r in pull.issue(0.0, heads.__getitem__)] == [("p", 600)]
    # q's requests time out: its spans are asked for again, from whoever has room.
    pull.forget_peer("p")
    pull.expire(2.0, heads.__getitem__)
    again = pull.issue(2.0, heads.__getitem__)
    assert [(p, r.first, r.last) for p, r in again] == [
        ("q", 100, 199),
        ("q", 200, 299),
        ("q", 300, 399),
    ]
    pull.expire(4.0, heads.__getitem__)  # second failure: past max_retries, given up
    assert pull.issue(4.0, heads.__getitem__) == []
    assert pull.next_deadline() is None


def test_pull_scheduler_rejects_a_zero_window() -> None:
    with pytest.raises(ValueError, match="positive"):
        PullScheduler(span=1, window=0, timeout=1.0, max_retries=0)


def test_memory_store_keeps_a_verified_gapless_prefix() -> None:
    src, records = _chain(10, per_batch=5)
    store = MemoryEventStore()
    assert store.ingest([(src.public_key, records[5:])]).forged  # a gap is refused
    result = store.ingest([(src.public_key, records[:7])])
    assert result.stored == records[:5]  # the unsigned tail waits for its head
    assert result.problem is not None
    assert "unsigned tail" in result.problem
    assert not result.forged
    result = store.ingest([(src.public_key, records)])
    assert result.stored == records[5:]
    assert result.duplicates == 5
    assert store.offsets() == {src.source: 9}
    assert store.lamport == records[-1].lamport + 1
    tampered = replace(records[9], payload='"x"')
    other = RemoteSource(identity_from_seed(8))
    before = store.offsets()
    assert store.ingest([(other.public_key, [tampered])]).forged
    assert store.offsets() == before


def test_memory_store_read_range_ends_on_a_signed_head() -> None:
    src, records = _chain(3000, per_batch=1000)
    store = MemoryEventStore()
    store.ingest([(src.public_key, records)])
    got = store.read_range(src.source, 9, 100)
    assert got == records[10:1000]
    assert len(got) - 100 <= SIGNED_RUN_LIMIT
    assert store.read_range(src.source, 2999, 10) == []
    assert store.read_range("nobody", -1, 10) == []


_NODE = st.sampled_from(["aaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbb"])
_RANGE = st.builds(
    lambda s, a, n: OffsetRange(source=s, first=a, last=a + n),
    _NODE,
    st.integers(0, 2**40),
    st.integers(0, 2**40),
)
_MESSAGES = st.one_of(
    st.builds(lambda r: Graft(ranges=(r,)), _RANGE),
    st.builds(lambda r, h: EventIds(ranges=(r,), hops=h), _RANGE, st.integers(0, 255)),
    st.builds(lambda r: RequestRange(source=r.source, first=r.first, last=r.last), _RANGE),
    st.builds(
        lambda entries, more: OffsetMap(entries=tuple(sorted(entries.items())), more=more),
        st.dictionaries(_NODE, st.integers(0, 2**40)),
        st.booleans(),
    ),
    st.just(Prune()),
    st.just(EventBatch(events=())),
)


@given(st.lists(st.tuples(_MESSAGES, st.floats(0, 100)), max_size=30))
def test_arbitrary_peer_messages_never_raise_nor_change_the_store(
    inputs: list[tuple[object, float]],
) -> None:
    node = Replica(5)
    node.store.ingest([(node.identity.public_key, node.make_events(3))])
    node.machine.handle_neighbor_up(0.0, "aaaaaaaaaaaaaaa")
    now = 0.0
    for msg, dt in inputs:
        now += dt
        node.machine.handle_message(now, "aaaaaaaaaaaaaaa", msg)
        node.machine.handle_timer(now)
        fx = node.machine.drain()
        assert fx.deadline is None or fx.deadline > now
        served = sum(len(m.events) for _, m in fx.sends if isinstance(m, EventBatch))
        assert served <= 3 * len(inputs)
    assert node.store.offsets() == {node.node_id: 2}


def test_progress_from_a_peer_moves_its_deadlines() -> None:
    src = "sssssssssssssss"
    heads = {src: -1}
    pull = PullScheduler(span=10, window=2, timeout=2.0, max_retries=0)
    pull.want("p", src, 99)
    assert len(pull.issue(0.0, heads.__getitem__)) == 2
    assert pull.next_deadline() == 2.0
    heads[src] = 4  # half a span arrived at 1.5
    pull.touch(1.5, "p")
    pull.expire(2.0, heads.__getitem__)
    assert pull.in_flight("p") == 2
    assert pull.next_deadline() == 3.5
    pull.expire(3.5, heads.__getitem__)  # then silence: both are dropped, the want given up
    assert pull.in_flight("p") == 0
    assert pull.issue(3.5, heads.__getitem__) == []
