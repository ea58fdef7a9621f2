"""HyParView views driven directly: join, forward join, neighbor, disconnect, shuffle, bounds."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from protocol.messages import (
    Disconnect,
    ForwardJoin,
    Join,
    Neighbor,
    NeighborReply,
    PeerInfo,
    PeerList,
    PeerRequest,
    Ping,
    Shuffle,
    ShuffleReply,
)
from swarmnode.swarm.views import ActivePeerAdded, ActivePeerRemoved, ViewConfig, Views
from tests.helpers.membership_sim import make_id, make_info

ME = make_info(0)


def views(config: ViewConfig | None = None, connected: range = range(0)) -> Views:
    v = Views(config or ViewConfig(), self_info=ME, rng=random.Random(3))
    for i in connected:
        v.on_connected(0.0, make_info(i))
    return v


def test_join_adds_sender_and_forwards_to_the_others() -> None:
    v = views(connected=range(1, 5))
    for i in (1, 2, 3):
        v.handle(0.0, make_id(i), Neighbor(high_priority=True))
    v.take()
    v.handle(0.0, make_id(4), Join())
    fx = v.take()
    assert make_id(4) in v.active
    assert ActivePeerAdded(peer=make_id(4)) in fx.notices
    fwd = {p: m for p, m in fx.sends if isinstance(m, ForwardJoin)}
    assert set(fwd) == {make_id(1), make_id(2), make_id(3)}
    assert all(m == ForwardJoin(peer=make_info(4), ttl=ViewConfig().arwl) for m in fwd.values())


def test_join_without_hello_is_dropped() -> None:
    v = views()
    v.handle(0.0, make_id(4), Join())
    assert not v.active
    assert v.dropped == 1
    assert v.take().sends == []


def test_forward_join_walks_then_ends_in_a_neighbor_request() -> None:
    cfg = ViewConfig()
    v = views(cfg, connected=range(1, 4))
    for i in (1, 2, 3):
        v.handle(0.0, make_id(i), Neighbor(high_priority=True))
    v.take()
    v.handle(0.0, make_id(1), ForwardJoin(peer=make_info(9), ttl=cfg.prwl))
    fx = v.take()
    assert make_id(9) in v.passive  # ttl == PRWL: remembered
    ((peer, msg),) = fx.sends
    assert peer in {make_id(2), make_id(3)}
    assert msg == ForwardJoin(peer=make_info(9), ttl=cfg.prwl - 1)
    v.handle(0.0, make_id(1), ForwardJoin(peer=make_info(8), ttl=0))
    fx = v.take()
    assert make_info(8) in fx.dials  # ttl 0: connect and ask to be neighbours
    v.on_connected(0.1, make_info(8))
    assert (make_id(8), Neighbor(high_priority=False)) in v.take().sends
    v.handle(0.2, make_id(8), NeighborReply(accepted=True))
    assert make_id(8) in v.active


def test_low_priority_neighbor_refused_when_full_high_priority_evicts() -> None:
    cfg = ViewConfig(max_active=2)
    v = views(cfg, connected=range(1, 5))
    v.handle(0.0, make_id(1), Neighbor(high_priority=False))
    v.handle(0.0, make_id(2), Neighbor(high_priority=False))
    v.handle(0.0, make_id(3), Neighbor(high_priority=False))
    fx = v.take()
    assert (make_id(3), NeighborReply(accepted=False)) in fx.sends
    assert set(v.active) == {make_id(1), make_id(2)}
    v.handle(0.0, make_id(4), Neighbor(high_priority=True))
    fx = v.take()
    assert (make_id(4), NeighborReply(accepted=True)) in fx.sends
    assert len(v.active) == 2
    assert make_id(4) in v.active
    ((victim, _),) = [s for s in fx.sends if isinstance(s[1], Disconnect)]
    assert victim in v.passive
    assert ActivePeerRemoved(peer=victim) in fx.notices


def test_disconnect_and_connection_loss_promote_a_passive_peer() -> None:
    v = views(connected=range(1, 3))
    v.handle(0.0, make_id(1), Neighbor(high_priority=True))
    v.handle(0.0, make_id(2), Neighbor(high_priority=True))
    v.add_passive(make_info(7))
    v.take()
    v.handle(1.0, make_id(1), Disconnect())
    fx = v.take()
    assert make_id(1) not in v.active
    assert make_id(1) in v.passive
    assert fx.dials or any(isinstance(m, Neighbor) for _, m in fx.sends)
    v.on_disconnected(2.0, make_id(2))
    assert not v.active
    fx = v.take()
    assert ActivePeerRemoved(peer=make_id(2)) in fx.notices


def test_passive_view_is_bounded() -> None:
    cfg = ViewConfig(max_passive=5)
    v = views(cfg)
    for i in range(1, 40):
        v.add_passive(make_info(i))
    assert len(v.passive) == 5
    v.handle(0.0, make_id(2), PeerList(peers=tuple(make_info(i) for i in range(50, 90))))
    assert len(v.passive) == 5
    assert ME.node_id not in v.passive


def test_active_view_is_bounded_and_excludes_self() -> None:
    cfg = ViewConfig(max_active=3)
    v = views(cfg, connected=range(1, 10))
    for i in range(1, 10):
        v.handle(0.0, make_id(i), Neighbor(high_priority=True))
    assert len(v.active) == 3
    v.on_connected(0.0, ME)
    v.handle(0.0, ME.node_id, Neighbor(high_priority=True))
    assert ME.node_id not in v.active
    assert not set(v.active) & set(v.passive)


def test_shuffle_end_replies_to_origin_and_merges() -> None:
    v = views(connected=range(1, 2))
    v.handle(0.0, make_id(1), Neighbor(high_priority=True))
    for i in range(20, 25):
        v.add_passive(make_info(i))
    v.take()
    sample = tuple(make_info(i) for i in range(30, 33))
    v.handle(0.0, make_id(1), Shuffle(shuffle_id=5, origin=make_info(9), ttl=3, sample=sample))
    fx = v.take()
    replies = [(p, m) for p, m in fx.sends if isinstance(m, ShuffleReply)]
    assert len(replies) == 1
    assert replies[0][0] == make_id(9)
    reply = replies[0][1]
    assert isinstance(reply, ShuffleReply)
    assert reply.shuffle_id == 5
    assert {i.node_id for i in reply.sample} <= {make_id(i) for i in range(20, 25)}
    assert {make_id(i) for i in (9, 30, 31, 32)} <= set(v.passive)


def test_own_shuffle_round_trip_and_unknown_reply_dropped() -> None:
    cfg = ViewConfig(shuffle_interval=1.0, max_passive=4)
    v = views(cfg, connected=range(1, 2))
    v.handle(0.0, make_id(1), Neighbor(high_priority=True))
    for i in range(20, 24):
        v.add_passive(make_info(i))
    v.start(0.0)
    v.take()
    v.on_timer(1.0)
    shuffles = [m for _, m in v.take().sends if isinstance(m, Shuffle)]
    assert len(shuffles) == 1
    sid = shuffles[0].shuffle_id
    v.handle(1.1, make_id(1), ShuffleReply(shuffle_id=sid + 100, sample=(make_info(40),)))
    assert v.dropped == 1
    v.handle(1.1, make_id(1), ShuffleReply(shuffle_id=sid, sample=(make_info(40), make_info(41))))
    assert len(v.passive) == 4
    assert {make_id(40), make_id(41)} <= set(v.passive)


def test_peer_request_answers_within_limit() -> None:
    v = views()
    for i in range(1, 30):
        v.add_passive(make_info(i))
    v.handle(0.0, make_id(5), PeerRequest(limit=7))
    ((peer, msg),) = v.take().sends
    assert peer == make_id(5)
    assert isinstance(msg, PeerList)
    assert len(msg.peers) == 7
    assert make_info(5) not in msg.peers


def test_foreign_message_is_dropped_not_raised() -> None:
    v = views()
    v.handle(0.0, make_id(1), Ping(seq=1))
    v.handle(0.0, make_id(1), NeighborReply(accepted=True))  # never asked
    assert v.dropped == 2
    assert not v.active


def _dialled(dials: Sequence[object]) -> PeerInfo:
    [info] = dials
    assert isinstance(info, PeerInfo)
    return info


def _full_view_in_a_big_swarm(config: ViewConfig) -> Views:
    """A started node of a 1,000-node swarm: a full active view, ten passive peers."""
    v = views(config, connected=range(1, 20))
    v.n_estimate = 1000
    v.start(0.0)
    for i in range(1, 1 + v.target()):
        v.handle(0.0, make_id(i), Neighbor(high_priority=True))
    for i in range(100, 110):
        v.add_passive(make_info(i))
    v.take()
    return v


def test_a_full_view_swaps_a_link_for_a_random_passive_peer() -> None:
    cfg = ViewConfig(rewire_interval=10.0)
    v = _full_view_in_a_big_swarm(cfg)
    before = set(v.active)
    v.on_timer(cfg.rewire_interval)
    fx = v.take()
    assert not [m for _, m in fx.sends if isinstance(m, Neighbor)]  # not connected: dial first
    info = _dialled(fx.dials)
    assert info.node_id in v.passive
    v.on_connected(cfg.rewire_interval, info)
    [(peer, msg)] = v.take().sends
    # High priority: the passive peer takes us even when its own view is full.
    assert (peer, msg) == (info.node_id, Neighbor(high_priority=True))
    v.handle(cfg.rewire_interval, peer, NeighborReply(accepted=True))
    fx = v.take()
    assert peer in v.active
    assert len(v.active) == len(before)  # one old link went, so the view stays at its target
    [gone] = before - set(v.active)
    assert (gone, Disconnect()) in fx.sends
    assert gone in v.passive
    assert ActivePeerRemoved(peer=gone) in fx.notices


def test_no_swap_in_a_small_swarm_or_after_a_refusal() -> None:
    small = _full_view_in_a_big_swarm(ViewConfig())
    small.n_estimate = 8  # the active views cover most of such a swarm already
    small.on_timer(ViewConfig().rewire_interval)
    assert small.take().dials == []

    v = _full_view_in_a_big_swarm(ViewConfig())
    before = set(v.active)
    v.on_timer(ViewConfig().rewire_interval)
    info = _dialled(v.take().dials)
    v.on_connected(10.0, info)
    v.take()
    v.handle(10.0, info.node_id, NeighborReply(accepted=False))
    assert set(v.active) == before  # nothing dropped for a swap that did not happen
    assert info.node_id in v.passive


def test_swaps_slow_down_after_the_first_rounds() -> None:
    cfg = ViewConfig(rewire_interval=10.0, rewire_rounds=2, rewire_slow_interval=300.0)
    v = _full_view_in_a_big_swarm(cfg)
    dials_at = []
    now = 0.0
    while now < 700.0:
        now += 10.0
        v.on_timer(now)
        fx = v.take()
        if fx.dials:
            info = _dialled(fx.dials)
            dials_at.append(now)
            v.on_connected(now, info)
            v.take()
            v.handle(now, info.node_id, NeighborReply(accepted=False))
            v.take()
    assert dials_at[:2] == [10.0, 20.0]
    assert all(b - a >= 300.0 for a, b in itertools.pairwise(dials_at[1:]))
    assert len(dials_at) >= 3
