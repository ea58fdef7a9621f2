"""Hypothesis strategies for every wire message (one per class in ``MESSAGE_TYPES``).

Values stay small (a few items, short strings) so round trips are fast; the limit tests in
``test_messages.py`` cover the large end separately.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from protocol import messages as m
from protocol.errors import ErrorCode
from protocol.eventchain import EventRecord

__all__ = ["STRATEGIES", "any_message", "node_ids"]

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"

node_ids = st.text(_ID_ALPHABET, min_size=15, max_size=15)
counters = st.integers(0, m.MAX_COUNTER)
digests = st.binary(min_size=32, max_size=32)
short_text = st.text(max_size=40)

addresses = st.builds(
    m.Address,
    host=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    port=st.integers(1, 65535),
)
address_tuples = st.lists(addresses, max_size=3).map(tuple)
peers = st.builds(m.PeerInfo, node_id=node_ids, addresses=address_tuples)
peer_tuples = st.lists(peers, max_size=4).map(tuple)

member_updates = st.builds(
    m.MemberUpdate,
    node_id=node_ids,
    state=st.sampled_from(m.MemberState),
    incarnation=counters,
    addresses=address_tuples,
    origin=node_ids,
)
update_tuples = st.lists(member_updates, max_size=4).map(tuple)

features = st.lists(
    st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,20}", fullmatch=True), max_size=4, unique=True
).map(tuple)


@st.composite
def event_batches(draw: st.DrawFn) -> m.EventBatch:
    """Per source a contiguous ascending run, interleaved across sources in a random order."""
    sources = draw(st.lists(node_ids, max_size=3, unique=True))
    runs: list[list[EventRecord]] = []
    for source in sources:
        start = draw(st.integers(0, m.MAX_COUNTER - 10))
        count = draw(st.integers(1, 4))
        runs.append(
            [
                EventRecord(
                    source=source,
                    offset=start + i,
                    lamport=draw(counters),
                    timestamp=draw(counters),
                    semantics=draw(st.text(min_size=1, max_size=20)),
                    name=draw(st.text(min_size=1, max_size=20)),
                    payload=draw(st.text(max_size=40)),
                    chain=draw(digests),
                    signature=draw(st.none() | st.binary(min_size=64, max_size=64)),
                )
                for i in range(count)
            ]
        )
    order = draw(st.permutations([i for i, run in enumerate(runs) for _ in run]))
    events = tuple(runs[i].pop(0) for i in order)
    keyed = draw(st.lists(st.sampled_from(sources), unique=True)) if sources else []
    keys = tuple(sorted((source, draw(digests)) for source in keyed))
    return m.EventBatch(events=events, keys=keys, hops=draw(st.none() | st.integers(0, m.MAX_HOPS)))


@st.composite
def offset_ranges(draw: st.DrawFn) -> tuple[m.OffsetRange, ...]:
    sources = sorted(draw(st.lists(node_ids, max_size=4, unique=True)))
    out = []
    for source in sources:
        first = draw(counters)
        out.append(
            m.OffsetRange(source=source, first=first, last=draw(st.integers(first, m.MAX_COUNTER)))
        )
    return tuple(out)


@st.composite
def chunk_ranges(draw: st.DrawFn, min_size: int = 0) -> tuple[m.ChunkRange, ...]:
    out = []
    start = draw(st.integers(0, 1000))
    for _ in range(draw(st.integers(min_size, 4))):
        count = draw(st.integers(1, 50))
        out.append(m.ChunkRange(start=start, count=count))
        start += count + draw(st.integers(0, 100))
    return tuple(out)


@st.composite
def outlines(draw: st.DrawFn) -> m.Outline:
    chunk_size = 2 ** draw(st.integers(16, 20))
    total = draw(st.integers(0, 40))
    size = 0 if total == 0 else draw(st.integers((total - 1) * chunk_size + 1, total * chunk_size))
    start = 0 if total == 0 else draw(st.integers(0, total - 1))
    count = 0 if total == 0 else draw(st.integers(1, min(10, total - start)))
    return m.Outline(
        handle=draw(digests),
        size=size,
        chunk_size=chunk_size,
        start=start,
        digests=draw(st.binary(min_size=32 * count, max_size=32 * count)),
    )


@st.composite
def have_bitmaps(draw: st.DrawFn) -> m.HaveBitmap:
    count = draw(st.integers(0, 100))
    bits = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    bitmap = bytearray(m.bitmap_size(count))
    for i, bit in enumerate(bits):
        if bit:
            bitmap[i // 8] |= 0x80 >> i % 8
    return m.HaveBitmap(handle=draw(digests), chunk_count=count, bitmap=bytes(bitmap))


STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    m.Hello: st.builds(
        m.Hello,
        version=st.integers(1, 0xFFFF),
        node_id=node_ids,
        features=features,
        listen=address_tuples,
        agent=st.none() | short_text,
    ),
    m.Goodbye: st.builds(m.Goodbye, leaving=st.booleans(), reason=short_text),
    m.Error: st.builds(
        m.Error, code=st.sampled_from(ErrorCode) | st.integers(0, 0xFFFF), message=short_text
    ),
    m.Ping: st.builds(m.Ping, seq=counters, updates=update_tuples),
    m.Ack: st.builds(m.Ack, seq=counters, updates=update_tuples),
    m.PingReq: st.builds(m.PingReq, seq=counters, target=peers),
    m.PingReqAck: st.builds(m.PingReqAck, seq=counters, target=node_ids),
    m.PingReqNack: st.builds(m.PingReqNack, seq=counters, target=node_ids),
    m.MemberUpdates: st.builds(m.MemberUpdates, updates=update_tuples),
    m.Join: st.builds(m.Join),
    m.ForwardJoin: st.builds(m.ForwardJoin, peer=peers, ttl=st.integers(0, m.MAX_TTL)),
    m.Neighbor: st.builds(m.Neighbor, high_priority=st.booleans()),
    m.NeighborReply: st.builds(m.NeighborReply, accepted=st.booleans()),
    m.Disconnect: st.builds(m.Disconnect),
    m.Shuffle: st.builds(
        m.Shuffle,
        shuffle_id=counters,
        origin=peers,
        ttl=st.integers(0, m.MAX_TTL),
        sample=peer_tuples,
    ),
    m.ShuffleReply: st.builds(m.ShuffleReply, shuffle_id=counters, sample=peer_tuples),
    m.PeerRequest: st.builds(m.PeerRequest, limit=st.integers(1, m.MAX_PEER_LIST)),
    m.PeerList: st.builds(m.PeerList, peers=peer_tuples),
    m.OffsetMap: st.builds(
        m.OffsetMap.from_mapping,
        st.dictionaries(node_ids, counters, max_size=5),
        more=st.booleans(),
    ),
    m.EventBatch: event_batches(),
    m.EventIds: st.builds(m.EventIds, ranges=offset_ranges(), hops=st.integers(0, m.MAX_HOPS)),
    m.Graft: st.builds(m.Graft, ranges=offset_ranges()),
    m.Prune: st.builds(m.Prune),
    m.RequestRange: st.integers(0, m.MAX_COUNTER).flatmap(
        lambda first: st.builds(
            m.RequestRange,
            source=node_ids,
            first=st.just(first),
            last=st.integers(first, m.MAX_COUNTER),
        )
    ),
    m.RequestOutline: st.builds(
        m.RequestOutline, handle=digests, start=st.integers(0, m.MAX_CHUNK_COUNT - 1)
    ),
    m.Outline: outlines(),
    m.RequestChunks: st.builds(m.RequestChunks, handle=digests, ranges=chunk_ranges(min_size=1)),
    m.ChunkData: st.builds(
        m.ChunkData,
        handle=digests,
        index=st.integers(0, m.MAX_CHUNK_COUNT - 1),
        data=st.binary(min_size=1, max_size=600),
    ),
    m.HaveBitmap: have_bitmaps(),
    m.HaveUpdate: st.builds(
        m.HaveUpdate,
        handle=digests,
        indices=st.lists(st.integers(0, m.MAX_CHUNK_COUNT - 1), min_size=1, max_size=8, unique=True)
        .map(sorted)
        .map(tuple),
    ),
    m.Cancel: st.builds(m.Cancel, handle=digests, ranges=chunk_ranges()),
    m.DontHave: st.builds(m.DontHave, handle=digests, ranges=chunk_ranges()),
}

any_message: st.SearchStrategy[m.SendableMessage] = st.one_of(*STRATEGIES.values())
