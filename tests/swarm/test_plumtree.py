"""Plumtree rules of ``Dissemination`` driven by hand: two or three machines, a clock we own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import pairwise

import pytest

from protocol.messages_replication import (
    EventBatch,
    EventIds,
    Graft,
    OffsetMap,
    OffsetRange,
    Prune,
    RequestRange,
)
from swarmnode.swarm.plumtree import (
    DisseminationConfig,
    Edge,
    EventsStored,
    PeerMisbehaved,
    next_edge,
)
from tests.helpers.dissemination import Replica, deliver, exchange, sends_to
from tests.helpers.events_chain import resign


def connect(now: float, *pairs: tuple[Replica, Replica]) -> None:
    for a, b in pairs:
        a.machine.handle_neighbor_up(now, b.node_id)
        b.machine.handle_neighbor_up(now, a.node_id)


def batches(msgs: Sequence[object]) -> list[EventBatch]:
    return [m for m in msgs if isinstance(m, EventBatch)]


def test_edge_table() -> None:
    assert next_edge(None, "up") is Edge.EAGER
    assert next_edge(Edge.EAGER, "prune_received") is Edge.LAZY
    assert next_edge(Edge.EAGER, "duplicate_received") is Edge.LAZY
    assert next_edge(Edge.LAZY, "graft_received") is Edge.EAGER
    assert next_edge(Edge.LAZY, "graft_sent") is Edge.EAGER
    assert next_edge(Edge.LAZY, "down") is None
    assert next_edge(None, "graft_received") is None  # a non-neighbour never gains an edge


def test_neighbour_up_is_eager_and_sends_offset_map() -> None:
    a, b = Replica(1), Replica(2)
    a.publish(0.0, 3)
    a.machine.drain()
    a.machine.handle_neighbor_up(0.0, b.node_id)
    fx = a.machine.drain()
    assert a.machine.edge(b.node_id) is Edge.EAGER
    assert sends_to(fx, b.node_id) == [OffsetMap(entries=((a.node_id, 2),))]
    assert fx.deadline is not None  # the anti-entropy round is armed


def test_eager_push_to_every_neighbour_with_hops_zero() -> None:
    a, b, c = Replica(1), Replica(2), Replica(3)
    connect(0.0, (a, b), (a, c))
    exchange(0.0, [a, b, c])
    records = a.publish(1.0, 3)
    fx = a.machine.drain()
    for peer in (b, c):
        (batch,) = batches(sends_to(fx, peer.node_id))
        assert batch.hops == 0
        assert list(batch.events) == records
        assert batch.keys == ((a.node_id, a.identity.public_key),)
        deliver(1.0, [batch], a.node_id, peer)
        assert peer.store.records(a.node_id) == records
        assert EventsStored(peer=a.node_id, count=3) in peer.machine.drain().notices


def test_store_and_forward_along_a_line() -> None:
    a, b, c = Replica(1), Replica(2), Replica(3)
    connect(0.0, (a, b), (b, c))  # c never talks to a
    exchange(0.0, [a, b, c])
    records = a.publish(1.0, 5)
    delivered = exchange(1.0, [a, b, c])
    to_c = [m for src, dst, m in delivered if dst == c.node_id and isinstance(m, EventBatch)]
    assert [m.hops for m in to_c] == [1]
    assert c.store.records(a.node_id) == records
    assert c.machine.statistics().max_hops == 1
    assert not any(src == a.node_id and dst == c.node_id for src, dst, _ in delivered)


def test_duplicate_eager_push_prunes_the_edge_both_ways() -> None:
    a, b, c = Replica(1), Replica(2), Replica(3)
    connect(0.0, (a, b), (a, c), (b, c))
    exchange(0.0, [a, b, c])
    a.publish(1.0, 2)
    delivered = exchange(1.0, [a, b, c])
    prunes = [(src, dst) for src, dst, m in delivered if isinstance(m, Prune)]
    assert sorted(prunes) == sorted([(b.node_id, c.node_id), (c.node_id, b.node_id)])
    assert b.machine.edge(c.node_id) is Edge.LAZY
    assert c.machine.edge(b.node_id) is Edge.LAZY
    assert a.machine.edge(b.node_id) is Edge.EAGER
    assert b.machine.edge(a.node_id) is Edge.EAGER
    # Next time b relays a's events to c only as ids, after the lazy delay.
    a.publish(2.0, 1)
    delivered = exchange(2.0, [a, b, c])
    assert not any(isinstance(m, EventBatch) for src, dst, m in delivered if src == b.node_id)
    b.machine.handle_timer(2.0 + b.config.lazy_delay)
    ids = sends_to(b.machine.drain(), c.node_id)
    assert ids == [EventIds(ranges=(OffsetRange(source=a.node_id, first=2, last=2),), hops=1)]


def test_lazy_edge_grafts_missing_events_after_timeout() -> None:
    a, b = Replica(1), Replica(2)
    connect(0.0, (a, b))
    exchange(0.0, [a, b])
    deliver(0.0, [Prune()], b.node_id, a)  # a's edge to b becomes lazy
    assert a.machine.edge(b.node_id) is Edge.LAZY
    records = a.publish(1.0, 4)
    fx = a.machine.drain()
    assert batches(sends_to(fx, b.node_id)) == []
    assert fx.deadline == pytest.approx(1.0 + a.config.lazy_delay)
    a.machine.handle_timer(1.0 + a.config.lazy_delay)
    ids = sends_to(a.machine.drain(), b.node_id)
    assert ids == [EventIds(ranges=(OffsetRange(source=a.node_id, first=0, last=3),), hops=0)]
    t = 1.0 + a.config.lazy_delay
    deliver(t, ids, a.node_id, b)
    fx = b.machine.drain()
    assert fx.sends == []
    assert fx.deadline == pytest.approx(t + b.config.graft_timeout)
    b.machine.handle_timer(t + b.config.graft_timeout)
    graft = sends_to(b.machine.drain(), a.node_id)
    assert graft == [Graft(ranges=(OffsetRange(source=a.node_id, first=0, last=3),))]
    assert b.machine.statistics().grafts_sent == 1
    deliver(t, graft, b.node_id, a)
    assert a.machine.edge(b.node_id, a.node_id) is Edge.EAGER  # edges are per source
    answer = sends_to(a.machine.drain(), b.node_id)
    assert [m.hops for m in batches(answer)] == [None]
    deliver(t, answer, a.node_id, b)
    assert b.store.records(a.node_id) == records
    assert not any(isinstance(m, Prune) for _, m in b.machine.drain().sends)


def test_ids_then_eager_copy_before_timeout_does_not_graft() -> None:
    a, b = Replica(1), Replica(2)
    connect(0.0, (a, b))
    exchange(0.0, [a, b])
    records = a.make_events(2)
    a.store.ingest([(a.identity.public_key, records)])
    ids = EventIds(ranges=(OffsetRange(source=a.node_id, first=0, last=1),), hops=0)
    deliver(0.0, [ids], a.node_id, b)
    keys = ((a.node_id, a.identity.public_key),)
    deliver(0.1, [EventBatch(events=tuple(records), keys=keys, hops=0)], a.node_id, b)
    b.machine.handle_timer(0.1 + b.config.graft_timeout)
    assert not any(isinstance(m, Graft) for _, m in b.machine.drain().sends)
    assert b.store.records(a.node_id) == records


def test_gap_in_eager_push_pulls_the_hole_from_the_sender() -> None:
    a, b = Replica(1), Replica(2)
    connect(0.0, (a, b))
    exchange(0.0, [a, b])
    first = a.publish(1.0, 3)
    a.machine.drain()  # lost
    second = a.publish(1.0, 2)
    push = batches(sends_to(a.machine.drain(), b.node_id))
    deliver(1.0, push, a.node_id, b)
    assert b.store.head(a.node_id) == -1
    request = sends_to(b.machine.drain(), a.node_id)
    assert request == [RequestRange(source=a.node_id, first=0, last=4)]
    assert b.machine.statistics().gaps == 1
    deliver(1.0, request, b.node_id, a)
    exchange(1.0, [a, b])
    assert b.store.records(a.node_id) == first + second


def test_anti_entropy_requests_exact_missing_ranges() -> None:
    a, b = Replica(1), Replica(2)
    a_events = a.make_events(100, per_batch=10)
    a.store.ingest([(a.identity.public_key, a_events)])
    b.store.ingest([(a.identity.public_key, a_events[:40])])
    b_events = b.make_events(10)
    b.store.ingest([(b.identity.public_key, b_events)])
    connect(0.0, (a, b))
    delivered = exchange(0.0, [a, b])
    requests = [(src, m) for src, _, m in delivered if isinstance(m, RequestRange)]
    assert sorted(requests, key=lambda x: x[0]) == sorted(
        [
            (b.node_id, RequestRange(source=a.node_id, first=40, last=99)),
            (a.node_id, RequestRange(source=b.node_id, first=0, last=9)),
        ],
        key=lambda x: x[0],
    )
    assert a.store.offsets() == b.store.offsets() == {a.node_id: 99, b.node_id: 9}
    assert b.store.records(a.node_id) == a_events
    assert a.store.records(b.node_id) == b_events
    # Only what was missing travelled: 60 + 10 events, no prunes for request answers.
    sent = sum(len(m.events) for _, _, m in delivered if isinstance(m, EventBatch))
    assert sent == 70
    assert not any(isinstance(m, Prune) for _, _, m in delivered)
    # Lag is measured against b's last map (sent before it caught up): 100 - 40 events.
    assert a.machine.statistics().lag == {b.node_id: 60}


def test_forged_batch_is_dropped_and_the_relay_penalised() -> None:
    a, b, c = Replica(1), Replica(2), Replica(3)
    connect(0.0, (b, c), (c, a))
    exchange(0.0, [a, b, c])
    good = a.make_events(3, per_batch=1)
    c.store.ingest([(a.identity.public_key, good[:1])])
    forged = [good[1], replace(good[2], payload='"evil"')]
    for bad in (
        forged,  # chain mismatch
        [good[1], resign(b.identity, good[2])],  # a head signed by the relay, not the origin
    ):
        batch = EventBatch(events=tuple(bad), keys=((a.node_id, a.identity.public_key),), hops=1)
        deliver(1.0, [batch], b.node_id, c)
        fx = c.machine.drain()
        assert [type(n) for n in fx.notices] == [PeerMisbehaved]
        assert fx.notices[0].peer == b.node_id  # type: ignore[attr-defined]
        assert fx.sends == []  # neither forwarded nor pruned
        assert c.store.records(a.node_id) == good[:1]
    assert c.machine.statistics().rejected_batches == 2


def test_one_forged_source_stores_nothing_of_the_batch() -> None:
    a, b, c = Replica(1), Replica(2), Replica(3)
    connect(0.0, (b, c))
    exchange(0.0, [b, c])
    a_ok = a.make_events(2)
    b_bad = [replace(r, lamport=r.lamport + 5) for r in b.make_events(2)]
    keys = tuple(sorted([(a.node_id, a.identity.public_key), (b.node_id, b.identity.public_key)]))
    deliver(0.0, [EventBatch(events=(*a_ok, *b_bad), keys=keys, hops=0)], b.node_id, c)
    assert c.store.offsets() == {}
    assert any(isinstance(n, PeerMisbehaved) for n in c.machine.drain().notices)


def test_bounded_requests_in_flight_during_catch_up() -> None:
    config = DisseminationConfig(request_span=500, request_window=2)
    a, b = Replica(1, config), Replica(2, config)
    events = a.make_events(5000, per_batch=100)
    a.store.ingest([(a.identity.public_key, events)])
    connect(0.0, (a, b))
    b.machine.drain()  # b's own map to a: a lacks nothing
    deliver(0.0, sends_to(a.machine.drain(), b.node_id), a.node_id, b)
    rounds = 0
    while b.store.head(a.node_id) < 4999:
        requests = [m for m in sends_to(b.machine.drain(), a.node_id)]
        assert all(isinstance(m, RequestRange) for m in requests)
        assert b.machine.statistics().requests_in_flight <= 2
        assert len(requests) <= 2
        deliver(0.0, requests[:1], b.node_id, a)  # answer one at a time
        deliver(0.0, sends_to(a.machine.drain(), b.node_id), a.node_id, b)
        if len(requests) == 2:
            deliver(0.0, requests[1:], b.node_id, a)
            deliver(0.0, sends_to(a.machine.drain(), b.node_id), a.node_id, b)
        rounds += 1
        assert rounds < 20
    assert b.store.records(a.node_id) == events
    assert b.machine.statistics().requests_sent == 10  # 5000 / 500, none twice


def test_a_request_is_served_up_to_the_cap() -> None:
    config = DisseminationConfig(max_serve_events=1000)
    a, b = Replica(1, config), Replica(2)
    a.store.ingest([(a.identity.public_key, a.make_events(5000, per_batch=250))])
    connect(0.0, (a, b))
    a.machine.drain()
    deliver(0.0, [RequestRange(source=a.node_id, first=10, last=4000)], b.node_id, a)
    sent = [r for m in batches(sends_to(a.machine.drain(), b.node_id)) for r in m.events]
    assert [r.offset for r in sent] == list(range(10, 1250))  # cap, then on to a signed head
    assert sent[-1].signature is not None


def test_unanswered_request_is_asked_again_after_timeout() -> None:
    a, b = Replica(1), Replica(2)
    a.store.ingest([(a.identity.public_key, a.make_events(10))])
    connect(0.0, (a, b))
    deliver(0.0, sends_to(a.machine.drain(), b.node_id), a.node_id, b)
    fx = b.machine.drain()
    request = RequestRange(source=a.node_id, first=0, last=9)
    assert request in sends_to(fx, a.node_id)
    assert fx.deadline == pytest.approx(b.config.request_timeout)
    b.machine.handle_timer(b.config.request_timeout)
    assert sends_to(b.machine.drain(), a.node_id) == [request]


def test_non_neighbours_gain_no_edge_and_are_asked_nothing() -> None:
    a, b = Replica(1), Replica(2)
    connect(0.0, (a, b))
    exchange(0.0, [a, b])
    b.machine.handle_neighbor_down(0.0, a.node_id)
    assert b.machine.edge(a.node_id) is None
    events = a.make_events(4, per_batch=2)
    keys = ((a.node_id, a.identity.public_key),)
    # A straggler push is still verified and stored, a gap is not pulled from a non-neighbour.
    deliver(0.0, [EventBatch(events=tuple(events[2:]), keys=keys, hops=0)], a.node_id, b)
    deliver(0.0, [EventBatch(events=tuple(events[:2]), keys=keys, hops=0)], a.node_id, b)
    deliver(0.0, [Graft(ranges=()), OffsetMap(entries=((a.node_id, 9),))], a.node_id, b)
    deliver(
        0.0,
        [EventIds(ranges=(OffsetRange(source=a.node_id, first=0, last=9),), hops=0)],
        a.node_id,
        b,
    )
    assert b.store.records(a.node_id) == events[:2]
    fx = b.machine.drain()
    assert fx.sends == []
    assert fx.deadline is not None  # only the anti-entropy round
    assert b.machine.edge(a.node_id) is None
    assert b.machine.statistics().requests_in_flight == 0


def test_first_offset_map_is_always_answered() -> None:
    a, c = Replica(1), Replica(4)
    a.store.ingest([(a.identity.public_key, a.make_events(3))])
    a.machine.handle_neighbor_up(0.0, c.node_id)
    a.machine.drain()  # a's map is lost: it overtook c's neighbour-up
    c.machine.handle_neighbor_up(0.0, a.node_id)
    deliver(0.1, sends_to(c.machine.drain(), a.node_id), c.node_id, a)  # c's first map
    ours = OffsetMap(entries=((a.node_id, 2),))
    assert sends_to(a.machine.drain(), c.node_id) == [ours]
    deliver(0.2, [OffsetMap(entries=())], c.node_id, a)  # within map_reply_gap: not again
    assert sends_to(a.machine.drain(), c.node_id) == []
    deliver(0.1 + a.config.map_reply_gap, [OffsetMap(entries=())], c.node_id, a)
    assert sends_to(a.machine.drain(), c.node_id) == [ours]


def test_a_much_shorter_lazy_path_replaces_the_eager_sender() -> None:
    a, x1, x2, x3, d = (Replica(i) for i in range(1, 6))
    line = [a, x1, x2, x3, d]
    connect(0.0, *pairwise(line), (a, d))
    exchange(0.0, line)
    deliver(0.0, [Prune()], d.node_id, a)  # the direct edge a–d is lazy on both ends
    deliver(0.0, [Prune()], a.node_id, d)
    exchange(0.0, line)
    a.publish(0.5, 1)  # a source's first round prunes the default tree: no optimisation yet
    exchange(0.5, line)
    a.machine.handle_timer(0.5 + a.config.lazy_delay)
    deliver(0.6, sends_to(a.machine.drain(), d.node_id), a.node_id, d)
    assert not any(isinstance(m, Graft) for _, m in d.machine.drain().sends)
    records = a.publish(1.0, 1)
    exchange(1.0, line)
    assert d.store.records(a.node_id)[-1:] == records
    assert d.machine.statistics().max_hops == 3
    a.machine.handle_timer(1.0 + a.config.lazy_delay)
    ihave = sends_to(a.machine.drain(), d.node_id)
    assert ihave == [EventIds(ranges=(OffsetRange(source=a.node_id, first=1, last=1),), hops=0)]
    deliver(1.1, ihave, a.node_id, d)
    fx = d.machine.drain()
    # per-source trees: the graft names the source (from its next offset), the prune too
    assert sends_to(fx, a.node_id) == [
        Graft(ranges=(OffsetRange(source=a.node_id, first=2, last=2),))
    ]
    assert sends_to(fx, x3.node_id) == [Prune(sources=(a.node_id,))]
    assert d.machine.edge(a.node_id, a.node_id) is Edge.EAGER  # edges are per source
    assert d.machine.edge(x3.node_id, a.node_id) is Edge.LAZY
    assert d.machine.statistics().optimizations == 1
    deliver(1.1, sends_to(fx, a.node_id), d.node_id, a)
    deliver(1.1, sends_to(fx, x3.node_id), d.node_id, x3)
    assert a.machine.edge(d.node_id, a.node_id) is Edge.EAGER
    assert x3.machine.edge(d.node_id, a.node_id) is Edge.LAZY
    # Now d gets a's events straight from a; x3's ids (hops 3) are longer, so nothing changes.
    a.publish(2.0, 1)
    delivered = exchange(2.0, line)
    to_d = [m for _, dst, m in delivered if dst == d.node_id and isinstance(m, EventBatch)]
    assert [m.hops for m in to_d] == [0]
    x3.machine.handle_timer(2.0 + x3.config.lazy_delay)
    ids = sends_to(x3.machine.drain(), d.node_id)
    assert [type(m) for m in ids] == [EventIds]
    deliver(2.1, ids, x3.node_id, d)
    assert d.machine.drain().sends == []
    assert d.machine.statistics().optimizations == 1
