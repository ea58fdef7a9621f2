"""Membership machines in a deterministic simulator: join, crash, slow node, partition, loss."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from protocol.messages import MemberState
from swarmnode.swarm.membership import MembershipConfig, PeerDead
from tests.helpers.membership_sim import Sim


def false_deaths(sim: Sim, healthy: set[str], since: float = 0.0) -> list[tuple[float, str, str]]:
    return [
        (t, node, n.node_id)
        for t, node, n in sim.notices
        if isinstance(n, PeerDead) and n.node_id in healthy and t >= since
    ]


def asymmetric(sim: Sim) -> list[tuple[str, str]]:
    live = set(sim.live())
    return [
        (a, b)
        for a in live
        for b in sim.nodes[a].views.active
        if b in live and a not in sim.nodes[b].views.active
    ]


@pytest.mark.parametrize("seed", [1, 2])
def test_join_converges_with_bounded_symmetric_views(seed: int) -> None:
    sim = Sim(n=32, seed=seed)
    sim.start(seeds=2)
    assert sim.run_until_converged(30.0) is not None
    deadline = sim.now + 60.0
    while asymmetric(sim) and sim.now < deadline:
        sim.run_until(sim.now + 1.0)
    assert asymmetric(sim) == []
    cfg = MembershipConfig().views
    target = min(cfg.max_active, math.ceil(math.log2(32)) + cfg.active_extra)
    sizes = [len(sim.nodes[n].views.active) for n in sim.ids]
    assert all(1 <= s <= cfg.max_active for s in sizes)
    assert sum(sizes) / len(sizes) >= target - 1
    assert all(len(sim.nodes[n].views.passive) <= cfg.max_passive for n in sim.ids)
    assert false_deaths(sim, set(sim.ids)) == []


def test_connections_per_node_do_not_grow_with_the_swarm() -> None:
    """Probes dial members on demand; idle ones are closed, so a node holds about its active view
    plus the probes of the last idle_timeout (DESIGN.md invariant 6)."""
    cfg = MembershipConfig()
    averages = []
    for n in (32, 128):
        sim = Sim(n=n, seed=8)
        sim.start(seeds=3)
        sim.run_until(60.0)
        counts = [len(sim.nodes[i].views.connected) for i in sim.ids]
        per_window = math.ceil(cfg.idle_timeout / cfg.protocol_period) + 1
        assert max(counts) <= cfg.views.max_active + 4 * per_window
        averages.append(sum(counts) / n)
    assert averages[1] < 1.5 * averages[0]


def test_crashed_node_is_declared_dead_and_no_one_else() -> None:
    sim = Sim(n=16, seed=3)
    sim.start()
    sim.run_until(10.0)
    victim = sim.ids[5]
    sim.crash(victim)
    sim.run_until(100.0)
    assert all(sim.nodes[n].state_of(victim) == MemberState.DEAD for n in sim.live())
    assert all(victim not in sim.nodes[n].views.active for n in sim.live())
    assert false_deaths(sim, set(sim.live())) == []
    assert all(sim.nodes[n].views.active for n in sim.live())


def test_slow_node_does_not_get_healthy_nodes_declared_dead() -> None:
    sim = Sim(n=16, seed=4)
    sim.start()
    sim.run_until(5.0)
    slow = sim.ids[2]
    sim.out_delay[slow] = 0.8  # longer than the ack timeout: its acks and probes come late
    sim.run_until(200.0)
    healthy = set(sim.ids) - {slow}
    assert false_deaths(sim, healthy) == []
    assert all(
        sim.nodes[a].state_of(b) == MemberState.ALIVE for a in healthy for b in healthy if a != b
    )


def test_local_health_stops_a_slow_node_from_accusing_healthy_ones() -> None:
    """Lifeguard's point, measured against itself switched off in the same run: a node whose
    messages leave 2 s late (beyond its whole probe window) fails every probe it makes."""

    def run(max_local_health: int) -> tuple[int, list[tuple[float, str, str]]]:
        sim = Sim(n=16, seed=9, config=MembershipConfig(max_local_health=max_local_health))
        sim.start()
        sim.run_until(5.0)
        slow = sim.ids[2]
        sim.out_delay[slow] = 2.0
        sim.run_until(200.0)
        return sim.nodes[slow].statistics()["suspicions"], false_deaths(sim, set(sim.ids) - {slow})

    without, deaths_without = run(0)
    with_lhm, deaths_with = run(MembershipConfig().max_local_health)
    assert deaths_with == []
    assert deaths_without == []  # refutation alone saves them, at the cost of the churn below
    assert with_lhm * 10 < without


def test_partition_heals_without_operator_action() -> None:
    sim = Sim(n=16, seed=5)
    sim.start()
    sim.run_until(10.0)
    left, right = sim.ids[:8], sim.ids[8:]
    sim.partition([left, right])

    def split() -> bool:
        return all(
            sim.nodes[a].state_of(b) == sim.nodes[b].state_of(a) == MemberState.DEAD
            for a in left
            for b in right
        )

    while sim.now < 200.0 and not split():
        sim.run_until(sim.now + 5.0)
    assert split()
    sim.heal()
    # Re-probe backoff caps at reprobe_max (60 s): every tombstone is tried within that.
    healed = sim.run_until_converged(MembershipConfig().reprobe_max + 30.0)
    assert healed is not None
    assert all(sim.nodes[n].views.active for n in sim.ids)


def test_late_node_keeps_trying_and_joins_when_a_seed_appears() -> None:
    sim = Sim(n=6, seed=6)
    loner = sim.ids[5]
    sim.partition([sim.ids[:5], [loner]])
    sim.start()
    sim.run_until(60.0)
    assert not sim.nodes[loner].views.active
    sim.heal()
    assert sim.run_until_converged(MembershipConfig().join_backoff_max + 10.0) is not None
    assert sim.nodes[loner].views.active


def test_leave_is_final_and_not_redialled() -> None:
    sim = Sim(n=8, seed=7)
    sim.start()
    sim.run_until(10.0)
    leaver = sim.ids[3]
    sim.leave(leaver)
    sim.run_until(120.0)
    rest = [n for n in sim.ids if n != leaver]
    assert all(sim.nodes[n].state_of(leaver) == MemberState.LEFT for n in rest)
    assert false_deaths(sim, set(sim.ids)) == []


@settings(max_examples=8)
@given(
    seed=st.integers(0, 2**16),
    loss=st.sampled_from([0.0, 0.02, 0.1]),
    crashes=st.integers(0, 2),
)
def test_random_loss_and_crashes_converge_once_faults_stop(
    seed: int, loss: float, crashes: int
) -> None:
    sim = Sim(n=10, seed=seed, loss=loss)
    sim.start()
    incarnations = {n: 0 for n in sim.ids}
    for step in range(60):
        if step == 10:
            for victim in sim.ids[-crashes:] if crashes else []:
                sim.crash(victim)
        sim.run_until(sim.now + 1.0)
        for n, m in sim.nodes.items():
            assert m.incarnation >= incarnations[n]  # incarnations only rise
            incarnations[n] = m.incarnation
            assert len(m.views.active) <= m.config.views.max_active
            assert len(m.views.passive) <= m.config.views.max_passive
    sim.loss = 0.0
    assert sim.run_until_converged(60.0) is not None
    crashed = sim.crashed
    for n in sim.live():
        for c in crashed:
            deadline = sim.now + 120.0
            while sim.nodes[n].state_of(c) != MemberState.DEAD and sim.now < deadline:
                sim.run_until(sim.now + 5.0)
            assert sim.nodes[n].state_of(c) == MemberState.DEAD
    if loss == 0.0:
        assert false_deaths(sim, set(sim.live())) == []


class MembershipSwarm(RuleBasedStateMachine):
    """Faults in any order (STYLE.md "hypothesis"): deliver, drop, advance, partition, heal,
    crash. Invariants: incarnations only rise, views stay bounded and exclude self; once faults
    stop, every live node holds every other live node ALIVE again."""

    sim: Sim

    @initialize(seed=st.integers(0, 2**32 - 1))
    def start(self, seed: int) -> None:
        self.sim = Sim(n=6, seed=seed)
        self.sim.start()
        self.sim.run_until(10.0)  # faults start once the swarm formed (a lone dead seed is fatal)
        self.incarnations = dict.fromkeys(self.sim.ids, 0)

    @rule(dt=st.floats(0.001, 0.2))
    def deliver(self, dt: float) -> None:
        self.sim.run_until(self.sim.now + dt)

    @rule(dt=st.floats(0.5, 30.0))
    def advance_clock(self, dt: float) -> None:
        self.sim.run_until(self.sim.now + dt)

    @rule(loss=st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    def drop(self, loss: float) -> None:
        self.sim.loss = loss

    @rule(cut=st.integers(1, 5))
    def partition(self, cut: int) -> None:
        self.sim.partition([self.sim.ids[:cut], self.sim.ids[cut:]])

    @rule()
    def heal(self) -> None:
        self.sim.heal()

    @rule(i=st.integers(0, 5))
    def crash(self, i: int) -> None:
        if len(self.sim.live()) > 3:
            self.sim.crash(self.sim.ids[i])

    @invariant()
    def incarnations_rise_and_views_stay_bounded(self) -> None:
        for n, m in self.sim.nodes.items():
            assert m.incarnation >= self.incarnations[n]
            self.incarnations[n] = m.incarnation
            cfg = m.config.views
            assert len(m.views.active) <= cfg.max_active
            assert len(m.views.passive) <= cfg.max_passive
            assert n not in m.views.active
            assert n not in m.views.passive
            assert not set(m.views.active) & set(m.views.passive)

    def teardown(self) -> None:
        if not hasattr(self, "sim"):
            return
        self.sim.heal()
        self.sim.loss = 0.0
        # Bound: a full suspicion (24 s at N=6) plus the capped re-probe backoff (60 s), twice.
        assert self.sim.run_until_converged(200.0) is not None


MembershipSwarm.TestCase.settings = settings(max_examples=25, stateful_step_count=30)
test_membership_swarm_state_machine = MembershipSwarm.TestCase
