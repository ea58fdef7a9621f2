"""Membership machine driven directly: SWIM probing, suspicion, refutation, Lifeguard, bounds."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest

from protocol.messages import (
    Ack,
    Address,
    Goodbye,
    Join,
    MemberState,
    MemberUpdate,
    MemberUpdates,
    Ping,
    PingReq,
    PingReqAck,
    PingReqNack,
    SendableMessage,
    Unrecognized,
)
from swarmnode.swarm.effects import Effects
from swarmnode.swarm.membership import (
    Membership,
    MembershipConfig,
    PeerAlive,
    PeerDead,
    PeerLeft,
    PeerSuspect,
    supersedes,
)
from swarmnode.swarm.membership_types import suspicion_timeout
from swarmnode.swarm.views import ViewConfig
from tests.helpers.membership_sim import make_id, make_info

ME = make_info(0)
S = MemberState


def machine(config: MembershipConfig | None = None) -> Membership:
    return Membership(config or MembershipConfig(), self_info=ME, rng=random.Random(7))


def alive(i: int, inc: int = 0) -> MemberUpdate:
    info = make_info(i)
    return MemberUpdate(
        node_id=info.node_id,
        state=S.ALIVE,
        incarnation=inc,
        addresses=info.addresses,
        origin=info.node_id,
    )


def with_members(m: Membership, count: int, now: float = 0.0) -> Effects:
    m.handle_message(
        now, make_id(1), MemberUpdates(updates=tuple(alive(i) for i in range(1, count + 1)))
    )
    return m.drain()


def sent(fx: Effects, kind: type[SendableMessage]) -> list[tuple[str, SendableMessage]]:
    return [(p, msg) for p, msg in fx.sends if isinstance(msg, kind)]


def run_to(m: Membership, until: float) -> list[Effects]:
    """Fire timers at each deadline up to ``until``; the effects of each step."""
    out = []
    fx = m.drain()
    out.append(fx)
    while fx.deadline is not None and fx.deadline <= until:
        m.handle_timer(fx.deadline)
        fx = m.drain()
        out.append(fx)
    return out


def test_precedence_matches_spec_rule() -> None:
    for (i, s), (j, t) in itertools.product(itertools.product(range(3), S), repeat=2):
        expected = i > j or (i == j and list(S).index(s) > list(S).index(t))
        assert supersedes((i, s), (j, t)) is expected


def test_ping_gets_ack_with_same_seq_and_gossip() -> None:
    m = machine()
    with_members(m, 2)
    m.handle_message(1.0, make_id(2), Ping(seq=41, updates=()))
    acks = sent(m.drain(), Ack)
    assert len(acks) == 1
    peer, ack = acks[0]
    assert peer == make_id(2)
    assert isinstance(ack, Ack)
    assert ack.seq == 41
    assert {u.node_id for u in ack.updates} >= {ME.node_id}


def test_new_member_notice_and_precedence_on_updates() -> None:
    m = machine()
    fx = with_members(m, 1)
    assert PeerAlive(node_id=make_id(1), incarnation=0) in fx.notices
    sus = MemberUpdate(
        node_id=make_id(1), state=S.SUSPECT, incarnation=0, addresses=(), origin=make_id(3)
    )
    m.handle_message(1.0, make_id(3), MemberUpdates(updates=(sus,)))
    assert m.state_of(make_id(1)) == S.SUSPECT
    m.handle_message(1.0, make_id(3), MemberUpdates(updates=(alive(1, 0),)))  # stale: ignored
    assert m.state_of(make_id(1)) == S.SUSPECT
    m.handle_message(1.0, make_id(1), MemberUpdates(updates=(alive(1, 1),)))  # refuted
    assert m.state_of(make_id(1)) == S.ALIVE
    notices = m.drain().notices
    assert PeerSuspect(node_id=make_id(1), incarnation=0) in notices
    assert PeerAlive(node_id=make_id(1), incarnation=1) in notices


@pytest.mark.parametrize("state", [S.SUSPECT, S.DEAD])
def test_refutation_raises_incarnation_and_gossips_alive(state: MemberState) -> None:
    m = machine()
    with_members(m, 2)
    claim = MemberUpdate(
        node_id=ME.node_id, state=state, incarnation=3, addresses=(), origin=make_id(2)
    )
    m.handle_message(1.0, make_id(2), Ping(seq=1, updates=(claim,)))
    assert m.incarnation == 4
    ((_, ack),) = sent(m.drain(), Ack)
    assert isinstance(ack, Ack)
    mine = [u for u in ack.updates if u.node_id == ME.node_id]
    assert mine == [
        MemberUpdate(
            node_id=ME.node_id,
            state=S.ALIVE,
            incarnation=4,
            addresses=ME.addresses,
            origin=ME.node_id,
        )
    ]
    old = MemberUpdate(
        node_id=ME.node_id, state=state, incarnation=2, addresses=(), origin=make_id(2)
    )
    m.handle_message(2.0, make_id(2), MemberUpdates(updates=(old,)))
    assert m.incarnation == 4  # a stale claim does not move it


def test_failed_probe_goes_indirect_then_suspect_then_dead() -> None:
    cfg = MembershipConfig()
    m = machine(cfg)
    with_members(m, 5)
    m.join(0.0, [])
    steps = run_to(m, 1.0)
    pings = [s for fx in steps for s in sent(fx, Ping)]
    assert len(pings) == 1
    target = pings[0][0]
    steps = run_to(m, 1.5)
    reqs = [s for fx in steps for s in sent(fx, PingReq)]
    assert len(reqs) == cfg.indirect_probes
    assert all(isinstance(r, PingReq) and r.target.node_id == target for _, r in reqs)
    assert target not in {p for p, _ in reqs}
    steps = run_to(m, 2.5)
    assert PeerSuspect(node_id=target, incarnation=0) in [n for fx in steps for n in fx.notices]
    # No nacks came back: Lifeguard counts them against our own health.
    assert m.local_health >= cfg.indirect_probes - 1
    steps = run_to(m, 200.0)
    assert PeerDead(node_id=target, incarnation=0) in [n for fx in steps for n in fx.notices]
    assert m.state_of(target) == S.DEAD


def test_indirect_ack_prevents_suspicion_and_heals_health() -> None:
    m = machine()
    with_members(m, 5)
    m.join(0.0, [])
    m.local_health = 2
    fx = run_to(m, 1.0)
    ((target, _),) = [s for f in fx for s in sent(f, Ping)]
    fx = run_to(m, 1.0 + 0.5 * 3)
    ((helper, req),) = [s for f in fx for s in sent(f, PingReq)][:1]
    assert isinstance(req, PingReq)
    m.handle_message(2.6, helper, PingReqAck(seq=req.seq, target=target))
    fx = run_to(m, 5.5)
    assert not any(isinstance(n, PeerSuspect) for f in fx for n in f.notices)
    assert m.local_health == 1


def test_probe_interval_stretches_with_local_health() -> None:
    cfg = MembershipConfig()
    m = machine(cfg)
    with_members(m, 3)
    m.join(0.0, [])
    m.local_health = 3
    times: list[float] = []
    fx = m.drain()
    while fx.deadline is not None and fx.deadline < 40.0:
        now = fx.deadline
        m.handle_timer(now)
        fx = m.drain()
        for p, msg in fx.sends:
            if isinstance(msg, Ping):
                times.append(now)
                m.handle_message(now, p, Ack(seq=msg.seq))  # healthy targets: health recovers
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == pytest.approx(cfg.protocol_period * 4)
    assert gaps[-1] == pytest.approx(cfg.protocol_period)
    assert m.local_health == 0


def test_helper_relays_ack_or_nacks() -> None:
    cfg = MembershipConfig()
    m = machine(cfg)
    with_members(m, 3)
    target = make_info(2)
    m.handle_message(0.0, make_id(1), PingReq(seq=9, target=target))
    ((peer, ping),) = sent(m.drain(), Ping)
    assert peer == target.node_id
    assert isinstance(ping, Ping)
    m.handle_message(0.1, target.node_id, Ack(seq=ping.seq))
    assert sent(m.drain(), PingReqAck) == [(make_id(1), PingReqAck(seq=9, target=target.node_id))]
    m.handle_message(1.0, make_id(1), PingReq(seq=10, target=target))
    fx = m.drain()
    assert fx.deadline == pytest.approx(1.0 + cfg.ack_timeout)
    m.handle_timer(1.0 + cfg.ack_timeout)
    assert sent(m.drain(), PingReqNack) == [
        (make_id(1), PingReqNack(seq=10, target=target.node_id))
    ]


def test_helper_over_its_bound_nacks_at_once() -> None:
    m = machine(MembershipConfig(max_pending_probes=2))
    with_members(m, 3)
    for seq in range(3):
        m.handle_message(0.0, make_id(1), PingReq(seq=seq, target=make_info(2)))
    fx = m.drain()
    assert len(sent(fx, Ping)) == 2
    assert sent(fx, PingReqNack) == [(make_id(1), PingReqNack(seq=2, target=make_id(2)))]


def test_suspicion_timeout_shrinks_with_independent_confirmations() -> None:
    def dead_at(confirmers: int) -> float:
        m = machine()
        with_members(m, 20)
        for c in range(confirmers):
            sus = MemberUpdate(
                node_id=make_id(1),
                state=S.SUSPECT,
                incarnation=0,
                addresses=(),
                origin=make_id(2 + c),
            )
            m.handle_message(0.0, make_id(2 + c), MemberUpdates(updates=(sus,)))
        fx = m.drain()
        now = 0.0
        while m.state_of(make_id(1)) != S.DEAD:
            assert fx.deadline is not None
            now = fx.deadline
            m.handle_timer(now)
            fx = m.drain()
        return now

    cfg = MembershipConfig()
    low = cfg.suspicion_alpha * math.log10(21) * cfg.protocol_period  # 20 members + us
    assert dead_at(1) == pytest.approx(cfg.suspicion_beta * low)
    assert low < dead_at(2) < cfg.suspicion_beta * low
    assert dead_at(cfg.suspicion_k + 1) == pytest.approx(low)


def test_a_small_swarm_needs_only_the_suspicions_its_members_can_give() -> None:
    cfg = MembershipConfig()
    low = cfg.suspicion_alpha * cfg.protocol_period  # log10 N < 1 below 10 members
    # Two members: the one observer can never be confirmed, so it waits the minimum.
    assert suspicion_timeout(cfg, 2, 1) == pytest.approx(low)
    # Three: both observers suspecting is all there can be; one alone waits the maximum.
    assert suspicion_timeout(cfg, 3, 1) == pytest.approx(cfg.suspicion_beta * low)
    assert suspicion_timeout(cfg, 3, 2) == pytest.approx(low)
    # Large enough for K: unchanged, the minimum needs K + 1 suspicions.
    assert suspicion_timeout(cfg, 9, 3) > low
    assert suspicion_timeout(cfg, 9, cfg.suspicion_k + 1) == pytest.approx(low)


def _suspect(node: int, origin: int) -> MemberUpdate:
    return MemberUpdate(
        node_id=make_id(node), state=S.SUSPECT, incarnation=0, addresses=(), origin=make_id(origin)
    )


def _updates(fx: Effects) -> list[MemberUpdate]:
    out: list[MemberUpdate] = []
    for _, msg in fx.sends:
        if isinstance(msg, Ping | Ack | MemberUpdates):
            out += msg.updates
    return out


def run_answering(m: Membership, until: float, silent: str) -> tuple[list[MemberUpdate], float]:
    """Fire timers up to ``until`` with every member but ``silent`` answering our pings (and
    nacking our indirect probes); every update we sent, and when ``silent`` was marked dead."""
    sent_updates: list[MemberUpdate] = []
    dead_at = math.inf
    fx = m.drain()
    while fx.deadline is not None and fx.deadline <= until:
        now = fx.deadline
        m.handle_timer(now)
        fx = m.drain()
        sent_updates += _updates(fx)
        for peer, msg in fx.sends:
            if isinstance(msg, Ping) and peer != silent:
                m.handle_message(now, peer, Ack(seq=msg.seq, updates=()))
            elif isinstance(msg, PingReq):
                m.handle_message(now, peer, PingReqNack(seq=msg.seq, target=msg.target.node_id))
        more = m.drain()
        sent_updates += _updates(more)
        fx.deadline = more.deadline
        if m.state_of(silent) == S.DEAD and dead_at == math.inf:
            dead_at = now
    return sent_updates, dead_at


def test_own_failed_probe_of_a_suspect_confirms_it_and_is_gossiped() -> None:
    cfg = MembershipConfig()
    m = machine(cfg)
    with_members(m, 5)
    m.join(0.0, [])
    m.handle_message(0.0, make_id(2), MemberUpdates(updates=(_suspect(1, origin=2),)))
    updates, dead_at = run_answering(m, 60.0, silent=make_id(1))
    low = cfg.suspicion_alpha * cfg.protocol_period
    # Two independent suspicions (member 2's and ours): well before the one-suspicion maximum.
    assert dead_at == pytest.approx(suspicion_timeout(cfg, 6, 2), abs=1e-6)
    assert dead_at < cfg.suspicion_beta * low
    ours = [u for u in updates if u.node_id == make_id(1) and u.state == S.SUSPECT]
    assert any(u.origin == ME.node_id for u in ours)


def test_a_new_independent_suspicion_is_passed_on_and_a_repeat_is_not() -> None:
    cfg = dataclasses.replace(MembershipConfig(), protocol_period=1000.0)  # no probing here
    m = machine(cfg)
    with_members(m, 20)
    for peer in (2, 3, 4):
        m.handle_connected(0.0, make_id(peer), make_info(peer))
    m.handle_message(0.0, make_id(2), MemberUpdates(updates=(_suspect(1, origin=2),)))
    first = [u for fx in run_to(m, 5.0) for u in _updates(fx) if u.node_id == make_id(1)]
    assert {u.origin for u in first} == {make_id(2)}
    m.handle_message(5.0, make_id(3), MemberUpdates(updates=(_suspect(1, origin=3),)))
    again = [u for fx in run_to(m, 10.0) for u in _updates(fx) if u.node_id == make_id(1)]
    assert make_id(3) in {u.origin for u in again}
    m.handle_message(10.0, make_id(4), MemberUpdates(updates=(_suspect(1, origin=3),)))
    repeat = [u for fx in run_to(m, 15.0) for u in _updates(fx) if u.node_id == make_id(1)]
    assert repeat == []


def test_pending_updates_go_out_every_gossip_interval_and_a_quiet_swarm_sends_none() -> None:
    cfg = dataclasses.replace(MembershipConfig(), protocol_period=1000.0)  # no probing here
    m = machine(cfg)
    with_members(m, 8)
    for peer in range(1, 6):
        m.handle_connected(0.0, make_id(peer), make_info(peer))
    m.drain()
    rounds: list[tuple[float, set[str]]] = []
    fx = m.drain()
    while fx.deadline is not None and fx.deadline <= 20.0:
        now = fx.deadline
        m.handle_timer(now)
        fx = m.drain()
        to = {p for p, msg in fx.sends if isinstance(msg, MemberUpdates)}
        if to:
            rounds.append((now, to))
    assert rounds[0][0] == pytest.approx(cfg.gossip_interval)
    assert all(1 <= len(to) <= cfg.gossip_fanout for _, to in rounds)
    assert all(to <= {make_id(i) for i in range(1, 6)} for _, to in rounds)
    # Every update goes out a bounded number of times; then the rounds fall silent.
    assert rounds[-1][0] < 5.0
    assert m.statistics()["gossip_queue"] == 0


def test_goodbye_leaving_marks_left_and_stops_probing() -> None:
    m = machine()
    with_members(m, 2)
    m.handle_connected(0.0, make_id(1), make_info(1))
    m.handle_message(0.0, make_id(1), Goodbye(leaving=True))
    fx = m.drain()
    assert m.state_of(make_id(1)) == S.LEFT
    assert PeerLeft(node_id=make_id(1), incarnation=0) in fx.notices
    assert make_id(1) in fx.hangups
    m.join(0.0, [])
    steps = run_to(m, 300.0)
    assert all(p != make_id(1) for f in steps for p, _ in f.sends)


def test_dead_member_is_reprobed_with_capped_backoff() -> None:
    cfg = MembershipConfig(reprobe_initial=2.0, reprobe_max=16.0)
    m2 = machine(cfg)
    with_members(m2, 2)
    dead = MemberUpdate(
        node_id=make_id(1), state=S.DEAD, incarnation=0, addresses=(), origin=make_id(2)
    )
    m2.handle_message(10.0, make_id(2), MemberUpdates(updates=(dead,)))
    pings_at = []
    fx = m2.drain()
    while fx.deadline is not None and fx.deadline < 120.0:
        now = fx.deadline
        m2.handle_timer(now)
        fx = m2.drain()
        for p, msg in fx.sends:
            if p == make_id(1) and isinstance(msg, Ping):
                pings_at.append(now)
                assert any(u.node_id == make_id(1) and u.state == S.DEAD for u in msg.updates)
            elif isinstance(msg, Ping):
                m2.handle_message(now, p, Ack(seq=msg.seq))
    gaps = [b - a for a, b in itertools.pairwise(pings_at)]
    assert pings_at[0] == pytest.approx(12.0)
    assert gaps[:3] == pytest.approx([4.0, 8.0, 16.0])
    assert all(g == pytest.approx(16.0) for g in gaps[3:])
    # The dead node answers with a refutation: it is ALIVE again.
    m2.handle_message(130.0, make_id(1), Ack(seq=1, updates=(alive(1, 1),)))
    assert m2.state_of(make_id(1)) == S.ALIVE


def test_join_retries_seeds_with_capped_backoff_until_connected() -> None:
    cfg = MembershipConfig(join_backoff_initial=1.0, join_backoff_max=8.0)
    m = machine(cfg)
    seed = Address(host="10.9.9.9", port=4001)
    m.join(0.0, [seed])
    fx = m.drain()
    dial_times = [0.0] if seed in fx.dials else []
    while fx.deadline is not None and fx.deadline < 40.0:
        now = fx.deadline
        m.handle_timer(now)
        fx = m.drain()
        if seed in fx.dials:
            dial_times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(dial_times)]
    assert gaps[:4] == pytest.approx([1.0, 2.0, 4.0, 8.0])
    assert all(g == pytest.approx(8.0) for g in gaps[4:])
    # A seed answers: we join through it.
    m.handle_connected(40.0, make_id(1), make_info(1))
    fx = m.drain()
    assert (make_id(1), Join()) in fx.sends
    assert make_id(1) in m.views.active


def test_member_table_and_tombstones_are_bounded() -> None:
    cfg = MembershipConfig(max_members=10, max_tombstones=3)
    m = machine(cfg)
    with_members(m, 10)
    for i in range(1, 7):
        dead = MemberUpdate(
            node_id=make_id(i), state=S.DEAD, incarnation=0, addresses=(), origin=make_id(9)
        )
        m.handle_message(float(i), make_id(9), MemberUpdates(updates=(dead,)))
    stats = m.statistics()
    assert stats["dead"] == 3
    assert m.state_of(make_id(1)) is None  # oldest evicted first
    assert m.state_of(make_id(6)) == S.DEAD
    m.handle_message(9.0, make_id(9), MemberUpdates(updates=tuple(alive(i) for i in range(20, 40))))
    assert len(m.members()) <= cfg.max_members
    assert m.statistics()["dropped"] > 0


def test_piggyback_is_bounded() -> None:
    cfg = MembershipConfig(max_piggyback=5)
    m = machine(cfg)
    with_members(m, 40)
    m.handle_message(1.0, make_id(2), Ping(seq=1))
    ((_, ack),) = sent(m.drain(), Ack)
    assert isinstance(ack, Ack)
    assert len(ack.updates) == 5


def test_odd_input_is_dropped_and_counted() -> None:
    m = machine()
    with_members(m, 2)
    before = m.statistics()["dropped"]
    m.handle_message(0.0, ME.node_id, Ping(seq=1))  # "from ourselves"
    m.handle_message(0.0, make_id(2), PingReqAck(seq=999, target=make_id(1)))  # unknown probe
    m.handle_message(0.0, make_id(2), PingReqNack(seq=999, target=make_id(1)))
    m.handle_connected(0.0, make_id(2), make_info(3))  # Hello id does not match the channel
    m.handle_message(0.0, make_id(2), Unrecognized(tag=200))  # a later version's hint
    assert m.statistics()["dropped"] == before + 5
    assert m.drain().sends == []
    assert m.state_of(make_id(1)) == S.ALIVE


def test_members_snapshot_reports_views() -> None:
    m = machine()
    m.join(0.0, [Address(host="10.0.0.1", port=4001)])
    m.handle_connected(1.0, make_id(1), make_info(1))
    rows = {r.node_id: r for r in m.members()}
    assert rows[make_id(1)].view == "active"
    assert rows[make_id(1)].last_seen == 1.0
    assert rows[make_id(1)].addresses == make_info(1).addresses


def test_idle_connection_outside_the_active_view_is_closed() -> None:
    # Two members probed in turn: each link idles 2 periods between probes, over the 1.5 s limit.
    cfg = MembershipConfig(idle_timeout=1.5, views=ViewConfig(max_active=1))  # peer 2 stays out
    m = machine(cfg)
    m.join(0.0, [Address(host="10.0.0.1", port=4001)])
    m.handle_connected(0.0, make_id(1), make_info(1))  # joined through it: active
    m.handle_connected(0.0, make_id(2), make_info(2))  # a probe's connection: not in the view
    hangups: list[str] = []
    redialled = False
    fx = m.drain()
    while fx.deadline is not None and fx.deadline < 12.0:
        now = fx.deadline
        m.handle_timer(now)
        fx = m.drain()
        hangups += fx.hangups
        for h in fx.hangups:
            m.handle_disconnected(now, h)
        for p, msg in fx.sends:
            if isinstance(msg, Ping):
                redialled = redialled or (p == make_id(2) and make_info(2) in fx.dials)
                m.handle_message(now, p, Ack(seq=msg.seq))
    assert make_id(2) in hangups
    assert make_id(1) not in hangups  # the active view is never reaped
    assert redialled  # the next probe dials again
    assert make_id(1) in m.views.active
