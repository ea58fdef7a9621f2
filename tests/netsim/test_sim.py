"""The simulation kernel on toy machines: determinism, loss, latency, cuts, crashes, time order."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from netsim.program import Delivery, SimulationError, VirtualClock
from netsim.sim import Simulator
from protocol.messages import OffsetMap
from protocol.messages_base import Address

Trace = list[tuple[float, str, str, Any]]


@dataclass
class ToyEffects:
    sends: list[tuple[str, Any]] = field(default_factory=list)
    dials: list[Any] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)
    notices: list[object] = field(default_factory=list)
    deadline: float | None = None


class Toy:
    """Sends ``("ping", n)`` to peers every ``interval`` (random peer, or all), echoes pings with
    pongs, and logs every input it gets."""

    def __init__(
        self,
        node_id: str,
        now: float,
        rng: random.Random,
        *,
        peers: list[str],
        interval: float | None = None,
        broadcast: bool = False,
        disk: list[str] | None = None,
        limit: int | None = None,
    ) -> None:
        self.node_id = node_id
        self.rng = rng
        self.peers = peers
        self.interval = interval
        self.broadcast = broadcast
        self.disk = disk if disk is not None else []
        self.counter = 0
        self.limit = limit
        self.log: list[tuple[float, str, Any]] = []
        self.timer_calls: list[tuple[float, float]] = []
        self.fx = ToyEffects()
        self.next_tick = None if interval is None else now + interval

    def handle_message(self, now: float, peer: str, msg: Any) -> None:
        self.log.append((now, peer, msg))
        if isinstance(msg, tuple) and msg[0] == "ping":
            self.fx.sends.append((peer, ("pong", msg[1])))

    def handle_timer(self, now: float) -> None:
        assert self.next_tick is not None
        assert self.interval is not None
        self.timer_calls.append((now, self.next_tick))
        targets = self.peers if self.broadcast else [self.rng.choice(self.peers)]
        for peer in targets:
            self.counter += 1
            self.fx.sends.append((peer, ("ping", self.counter)))
        done = self.limit is not None and self.counter >= self.limit
        self.next_tick = None if done else now + self.interval

    def handle_connected(self, now: float, peer: str) -> None:
        self.log.append((now, peer, "connected"))

    def handle_disconnected(self, now: float, peer: str) -> None:
        self.log.append((now, peer, "disconnected"))

    def handle_dial_failed(self, now: float, target: Any) -> None:
        self.log.append((now, "?", ("dial_failed", target)))

    def drain(self) -> ToyEffects:
        fx, self.fx = self.fx, ToyEffects()
        fx.deadline = self.next_tick
        return fx

    def inputs(self, kind: str) -> list[tuple[float, str, Any]]:
        return [
            e for e in self.log if e[2] == kind or (isinstance(e[2], tuple) and e[2][0] == kind)
        ]


def rounded(log: list[tuple[float, str, Any]]) -> list[tuple[float, str, Any]]:
    """Times rounded to the nanosecond, so sums of float latencies compare exactly."""
    return [(round(t, 9), peer, what) for t, peer, what in log]


def toy(peers: list[str], **kw: Any) -> Any:
    def factory(node_id: str, now: float, rng: random.Random) -> Toy:
        return Toy(node_id, now, rng, peers=[p for p in peers if p != node_id], **kw)

    return factory


def recorder(sim: Simulator[Toy]) -> Trace:
    trace: Trace = []

    def hook(d: Delivery) -> None:
        trace.append((d.time, d.src, d.dst, d.msg))

    sim.on_deliver.append(hook)
    return trace


def gossip_run(seed: int, n: int = 10) -> Trace:
    sim: Simulator[Toy] = Simulator(seed, latency=(0.01, 0.05), loss=0.1)
    trace = recorder(sim)
    names = [f"n{i}" for i in range(n)]
    for name in names:
        sim.add_node(name, toy(names, interval=0.1))
    sim.run_until(5.0)
    return trace


def test_same_seed_gives_identical_trace() -> None:
    first, second = gossip_run(7), gossip_run(7)
    assert len(first) > 500
    assert first == second


def test_different_seeds_give_different_traces() -> None:
    assert gossip_run(7) != gossip_run(8)


def test_loss_rate_is_honoured_within_four_sigma() -> None:
    p, n = 0.2, 20_000
    sim: Simulator[Toy] = Simulator(3, latency=(0.001, 0.002), loss=p)
    sim.add_node("a", toy(["b"], interval=0.001, limit=n))
    sim.add_node("b", toy([]))
    assert sim.run_until_quiet(100.0)
    m = sim.metrics["a"]
    received = len(sim.program("b").inputs("ping"))
    assert m.sent == n
    assert received == sim.metrics["b"].received
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(m.dropped_loss / n - p) < 4 * sigma
    assert m.dropped_loss == n - received  # every ping is either delivered or counted as lost


def test_per_link_loss_overrides_the_default() -> None:
    sim: Simulator[Toy] = Simulator(4, latency=(0.001, 0.001), loss=0.0)
    sim.add_node("a", toy(["b", "c"], interval=0.01, broadcast=True, limit=200))
    sim.add_node("b", toy([]))
    sim.add_node("c", toy([]))
    sim.set_link("a", "c", loss=1.0)
    assert sim.run_until_quiet(10.0)
    assert len(sim.program("b").inputs("ping")) == 100
    assert sim.program("c").inputs("ping") == []
    assert sim.metrics["a"].dropped_loss == 100


def test_latency_stays_within_bounds_and_spreads() -> None:
    sim: Simulator[Toy] = Simulator(5, latency=(0.02, 0.08))
    deliveries: list[Delivery] = []
    sim.on_deliver.append(deliveries.append)
    names = ["a", "b", "c"]
    for name in names:
        sim.add_node(name, toy(names, interval=0.05))
    sim.set_link("a", "b", latency=(0.5, 0.6))
    sim.run_until(10.0)
    slow = [d.time - d.sent_at for d in deliveries if {d.src, d.dst} == {"a", "b"}]
    fast = [d.time - d.sent_at for d in deliveries if {d.src, d.dst} != {"a", "b"}]
    assert len(slow) > 50
    assert len(fast) > 200
    assert all(0.5 <= x <= 0.6 for x in slow)
    assert all(0.02 <= x <= 0.08 for x in fast)
    assert max(fast) - min(fast) > 0.04  # jitter is drawn, not a constant


def test_one_link_is_fifo_even_with_jitter() -> None:
    sim: Simulator[Toy] = Simulator(6, latency=(0.0, 0.5))
    sim.add_node("a", toy(["b"], interval=0.01))
    sim.add_node("b", toy([]))
    sim.run_until(5.0)
    counters = [msg[1] for _t, _p, msg in sim.program("b").inputs("ping")]
    assert len(counters) > 400
    assert counters == sorted(counters)


def _pairs(trace: Trace, since: float) -> set[tuple[str, str]]:
    return {(src, dst) for t, src, dst, msg in trace if t > since and msg[0] == "ping"}


def test_asymmetric_block_stops_one_direction_only() -> None:
    sim: Simulator[Toy] = Simulator(9, latency=(0.01, 0.01))
    trace = recorder(sim)
    names = ["a", "b", "c"]
    for name in names:
        sim.add_node(name, toy(names, interval=0.1, broadcast=True))
    sim.run_until(1.0)
    rule = sim.block(["a"], ["b"])
    sim.run_until(3.0)
    pairs = _pairs(trace, 1.011)
    assert ("a", "b") not in pairs
    assert {("b", "a"), ("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")} <= pairs
    assert sim.metrics["a"].dropped_blocked >= 19
    sim.heal(rule)
    sim.run_until(4.0)
    assert ("a", "b") in _pairs(trace, 3.0)


def test_symmetric_partition_and_bridge() -> None:
    sim: Simulator[Toy] = Simulator(10, latency=(0.01, 0.01))
    trace = recorder(sim)
    names = ["a1", "a2", "b1", "b2", "x"]
    for name in names:
        sim.add_node(name, toy(names, interval=0.1, broadcast=True))
    sim.bridge(["a1", "a2", "x"], ["b1", "b2", "x"], via=["x"])
    sim.run_until(2.0)
    pairs = _pairs(trace, 0.0)
    crossing = {(s, d) for s in names for d in names if s[0] != d[0] and "x" not in (s, d)}
    assert not pairs & crossing
    expected = {(s, d) for s in names for d in names if s != d} - crossing
    assert pairs == expected  # inside each side and through the bridge, both ways
    sim.heal()
    sim.run_until(3.0)
    assert crossing <= _pairs(trace, 2.0)


def test_message_in_flight_when_a_cut_starts_is_lost() -> None:
    sim: Simulator[Toy] = Simulator(11, latency=(1.0, 1.0))
    sim.add_node("a", toy(["b"], interval=10.0))
    sim.add_node("b", toy([]))
    sim.run_until(10.5)  # the first ping is half way
    sim.partition(["a"], ["b"])
    sim.run_until(12.0)
    assert sim.program("b").inputs("ping") == []
    assert sim.metrics["a"].dropped_blocked == 1


def test_crash_loses_memory_and_inbox_restart_keeps_disk() -> None:
    disks: dict[str, list[str]] = {"b": []}
    built: list[tuple[str, float]] = []

    def b_factory(node_id: str, now: float, rng: random.Random) -> Toy:
        built.append((node_id, now))
        machine = Toy(node_id, now, rng, peers=[], disk=disks[node_id])
        machine.disk.append(f"boot@{now}")
        return machine

    sim: Simulator[Toy] = Simulator(12, latency=(0.3, 0.3))
    sim.add_node("a", toy(["b"], interval=1.0))
    sim.add_node("b", b_factory)
    sim.run_until(5.1)
    before = sim.program("b")
    assert len(before.inputs("ping")) == 4
    sim.crash("b")  # the ping sent at 5.0 is in flight
    assert not sim.is_up("b")
    with pytest.raises(SimulationError):
        sim.program("b")
    sim.run_until(8.0)
    assert sim.metrics["a"].dropped_dead == 4  # 5.0 in flight, then 6, 7 and 8 refused
    assert len(before.inputs("ping")) == 4  # the dead machine got nothing more
    after = sim.restart("b")
    assert after is not before
    assert after.log == []
    assert after.counter == 0
    assert after.disk == ["boot@0.0", "boot@8.0"]
    assert built == [("b", 0.0), ("b", 8.0)]
    sim.run_until(9.5)
    assert len(after.inputs("ping")) == 1
    with pytest.raises(SimulationError):
        sim.restart("b")


class Dialer(Toy):
    """A toy that dials the targets given at construction and hangs up on command."""

    def __init__(self, *args: Any, dial: list[Any], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fx.dials.extend(dial)


def test_dial_connects_both_ends_and_crash_disconnects() -> None:
    sim: Simulator[Toy] = Simulator(13, latency=(0.1, 0.1))
    sim.add_node("b", toy([]))
    target = sim.address_of("b")
    sim.add_node("a", lambda n, t, r: Dialer(n, t, r, peers=[], dial=[target]))
    sim.run_until(1.0)
    assert rounded(sim.program("b").log) == [(0.1, "a", "connected")]
    assert rounded(sim.program("a").log) == [(0.2, "b", "connected")]
    assert sim.connections("a") == {"b"}
    sim.crash("b")
    sim.run_until(2.0)
    assert rounded(sim.program("a").log)[-1] == (1.1, "b", "disconnected")
    assert sim.connections("a") == set()


def test_dial_to_a_down_node_is_refused_and_across_a_cut_times_out() -> None:
    sim: Simulator[Toy] = Simulator(14, latency=(0.1, 0.1), dial_timeout=3.0)
    for name in ("b", "c"):
        sim.add_node(name, toy([]))
    sim.crash("b")
    sim.partition(["x"], ["c"])
    unknown = Address(host="nowhere.sim", port=1)
    targets = [sim.address_of("b"), "c", unknown]
    sim.add_node("x", lambda n, t, r: Dialer(n, t, r, peers=[], dial=targets))
    sim.run_until(5.0)
    failed = {msg[1]: t for t, _p, msg in sim.program("x").inputs("dial_failed")}
    assert failed == {
        targets[0]: pytest.approx(0.2),  # refused after a round trip
        targets[1]: pytest.approx(3.0),  # timed out
        unknown: pytest.approx(3.0),
    }
    assert sim.program("c").log == []
    assert sim.metrics["x"].dial_failures == 3


def test_hangup_tells_both_sides_and_a_redial_reconnects() -> None:
    sim: Simulator[Toy] = Simulator(15, latency=(0.1, 0.1))
    sim.add_node("b", toy([]))
    sim.add_node("a", lambda n, t, r: Dialer(n, t, r, peers=[], dial=["b"]))
    sim.run_until(1.0)
    sim.poke("a", lambda m, now: m.fx.hangups.append("b"))
    sim.run_until(2.0)
    assert rounded(sim.program("b").log)[-1] == (1.1, "a", "disconnected")
    assert rounded(sim.program("a").inputs("disconnected")) == [(1.0, "b", "disconnected")]
    assert sim.connections("b") == set()
    sim.poke("a", lambda m, now: m.fx.dials.extend(["b", "b"]))  # the second one is a no-op
    sim.run_until(3.0)
    assert rounded(sim.program("a").inputs("connected")) == [
        (0.2, "b", "connected"),
        (2.2, "b", "connected"),
    ]
    assert len(sim.program("b").inputs("connected")) == 2


def test_partition_closes_connections_after_the_timeout_unless_healed_first() -> None:
    sim: Simulator[Toy] = Simulator(16, latency=(0.1, 0.1), connection_timeout=5.0)
    for name in ("b", "d"):
        sim.add_node(name, toy([]))
    sim.add_node("a", lambda n, t, r: Dialer(n, t, r, peers=[], dial=["b"]))
    sim.add_node("c", lambda n, t, r: Dialer(n, t, r, peers=[], dial=["d"]))
    sim.run_until(1.0)
    rule = sim.partition(["a"], ["b"])
    short = sim.partition(["c"], ["d"])
    sim.run_until(3.0)
    sim.heal(*short)
    sim.run_until(10.0)
    assert sim.program("a").inputs("disconnected") == [(6.0, "b", "disconnected")]
    assert sim.program("b").inputs("disconnected") == [(6.0, "a", "disconnected")]
    assert sim.connections("c") == {"d"}
    assert sim.program("c").inputs("disconnected") == []
    assert rule


def test_strict_connections_drop_unconnected_sends() -> None:
    for strict in (False, True):
        sim: Simulator[Toy] = Simulator(17, latency=(0.01, 0.01), strict_connections=strict)
        sim.add_node("a", toy(["b"], interval=0.1))
        sim.add_node("b", toy([]))
        sim.run_until(1.05)
        assert sim.metrics["a"].unconnected_sends == 10
        assert len(sim.program("b").inputs("ping")) == (0 if strict else 10)


def test_timers_fire_at_their_deadline_never_early() -> None:
    sim: Simulator[Toy] = Simulator(18, latency=(0.01, 0.01))
    sim.add_node("a", toy(["b"], interval=0.37))
    sim.add_node("b", toy([]))
    sim.run_until(10.0)
    calls = sim.program("a").timer_calls
    assert len(calls) == 27
    assert all(now == deadline for now, deadline in calls)


def test_time_only_moves_forward() -> None:
    clock = VirtualClock()
    clock.advance_to(1.5)
    with pytest.raises(SimulationError):
        clock.advance_to(1.0)
    assert clock.now == 1.5
    trace = gossip_run(21, n=5)
    times = [t for t, *_ in trace]
    assert times == sorted(times)
    sim: Simulator[Toy] = Simulator(1)
    sim.run_until(2.0)
    with pytest.raises(SimulationError):
        sim.at(1.0, lambda: None)
    with pytest.raises(SimulationError):
        sim.run_until(1.0)


def test_ties_run_in_scheduling_order() -> None:
    sim: Simulator[Toy] = Simulator(19, latency=(0.25, 0.25))
    order: list[str] = []
    for tag in ("first", "second", "third"):
        sim.at(1.0, lambda tag=tag: order.append(tag))  # type: ignore[misc]
    sim.add_node("a", toy(["b", "c", "d"], interval=1.0, broadcast=True))
    for name in ("b", "c", "d"):
        sim.add_node(name, toy([]))
    deliveries: list[Delivery] = []
    sim.on_deliver.append(deliveries.append)
    sim.run_until(1.25)
    assert order == ["first", "second", "third"]
    assert [(d.time, d.dst) for d in deliveries] == [(1.25, "b"), (1.25, "c"), (1.25, "d")]


def test_run_until_quiet_and_until_true() -> None:
    sim: Simulator[Toy] = Simulator(20, latency=(0.1, 0.2))
    sim.add_node("a", toy([]))
    sim.add_node("b", toy([]))
    sim.poke("a", lambda m, now: m.fx.sends.append(("b", ("ping", 1))))
    assert sim.run_until_quiet(10.0) is True
    assert sim.program("a").inputs("pong") != []
    assert sim.now <= 0.4
    t0 = sim.now
    sim.add_node("c", toy(["a"], interval=1.0))
    assert sim.run_until_quiet(5.0) is False
    assert sim.now == 5.0
    pings = sim.program("a").inputs
    got = sim.run_until_true(lambda: len(pings("ping")) >= 10, 20.0, check_every=0.1)
    assert got is not None
    assert t0 + 10.1 <= got <= t0 + 10.3 + 1e-9
    assert sim.run_until_true(lambda: False, 25.0) is None
    assert sim.now == 25.0


def test_sizer_counts_encoded_bytes() -> None:
    from protocol.codec import encode

    sim: Simulator[Toy] = Simulator(22, sizer=lambda m: len(encode(m)))
    sim.add_node("a", toy([]))
    sim.add_node("b", toy([]))
    msg = OffsetMap.from_mapping({"a" * 15: 5, "b" * 15: 70_000})
    sim.poke("a", lambda m, now: m.fx.sends.append(("b", msg)))
    assert sim.metrics["a"].bytes_sent == len(encode(msg))
    sim.run_until(1.0)
    assert sim.metrics["b"].bytes_received == len(encode(msg)) > 30
    assert sim.program("b").log[-1][2] is msg  # passed along, never copied


def test_downed_link_blocks_until_healed_and_latency_may_be_a_function() -> None:
    sim: Simulator[Toy] = Simulator(23, latency=lambda rng, src, dst: 0.5 if src == "a" else 0.25)
    sim.add_node("a", toy(["b"], interval=1.0))
    sim.add_node("b", toy(["a"], interval=1.0))
    sim.set_link("a", "b", down=True, both=False)
    sim.run_until(3.9)
    assert sim.program("b").inputs("ping") == []
    assert [t for t, *_ in sim.program("a").inputs("ping")] == [1.25, 2.25, 3.25]
    sim.heal()
    sim.run_until(5.9)
    assert [t for t, *_ in sim.program("b").inputs("ping")] == [4.5, 5.5]


def test_bad_fault_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="latency"):
        Simulator(1, latency=(0.2, 0.1))
    with pytest.raises(ValueError, match="loss"):
        Simulator(1, loss=1.5)
    sim: Simulator[Toy] = Simulator(1)
    sim.add_node("a", toy([]))
    with pytest.raises(SimulationError):
        sim.add_node("a", toy([]))
    with pytest.raises(SimulationError):
        sim.set_link("a", "nobody", loss=0.5)
    with pytest.raises(ValueError, match="loss"):
        sim.set_link("a", "a", loss=-0.1)


@pytest.mark.parametrize("module", ["sim", "network", "program"])
def test_kernel_modules_are_pure(module: str) -> None:
    import ast
    from pathlib import Path

    import netsim

    source = Path(netsim.__file__).with_name(f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "time", "os", "threading", "swarmnode"}
