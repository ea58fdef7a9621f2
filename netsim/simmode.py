"""Simulation mode (issue 6): the real membership and dissemination machines of N nodes (1,000 by
default) on virtual time in one process, through the phases a swarm lives through.

1. join: every node dials one earlier node (``SwarmSim``'s chain of seeds); the virtual time until
   every node holds every other ALIVE.
2. dissemination: a seeded set of publishers publishes warm-up rounds, then measured rounds, one
   event at a time ``spacing_s`` apart; then a few sources that never published (their first
   event rides the shared default tree); then rounds in which many nodes publish at once.
   Reported per group: payload copies per node per event and the depth of first receipts; and
   the shortest paths over the active views from the publishers, the depth no tree on this
   overlay can beat (a deep tree on a shallow overlay has not settled; a deep overlay is the
   membership's doing).
3. failure detection: ``crash_share`` of the nodes (at least one, seeded) crash at once; the
   virtual time until the first node suspects / marks each dead, and until every live node has.
4. partition-heal: the live nodes split into two seeded random halves, each side publishes, the
   sides mark each other dead (or ``partition_max_s`` passes), the cut heals; the virtual time
   until every live node holds every event and the membership is whole again.

Definitions (shared with ``bench.swarm_sim``): a node's depth for an event is ``hops + 1`` of the
first ``EventBatch`` that brought it (the origin pushes with hops 0); a first receipt by repair
(``hops = None``) has no depth and is counted as ``pulled_first``. Payload copies count every
watched event in every ``EventBatch`` delivered, repairs and copies back to the origin included,
divided by (events x (live nodes - 1)): 1.0 is a perfect tree. The hop bound is
1 + ⌈log₄ N⌉ (a tree of fan-out about 4 plus the first hop); the p99 check also fails when more
than 1 % of the first receipts were pulled (they have no depth and would hide the tail).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from netsim.invariants import Check
from netsim.program import Delivery
from netsim.swarm import SwarmSim
from protocol.messages import EventBatch, MemberState
from swarmnode.swarm.membership import PeerDead, PeerSuspect

__all__ = [
    "COPIES_GOAL",
    "DetectionStats",
    "EventWatch",
    "HealStats",
    "HopStats",
    "OverlayStats",
    "SimReport",
    "SimSettings",
    "depth_percentile",
    "evaluate",
    "run_simulation",
    "theoretical_hops",
]

COPIES_GOAL = 1.3
"""Issue 6: payload copies per node per event, steady state."""

DELIVERY_CHECK_S = 0.1
"""Resolution of delivery times (a check costs O(nodes x sources))."""

Progress = Callable[[str], None]


def theoretical_hops(n: int) -> int:
    """1 + ⌈log₄ n⌉, in integers (no float rounding at powers of 4)."""
    k = 0
    while 4**k < n:
        k += 1
    return k + 1


def depth_percentile(histogram: dict[int, int], q: float) -> int | None:
    """The smallest depth at or below which a ``q`` share of the receipts lie (nearest rank)."""
    total, seen = sum(histogram.values()), 0
    for depth in sorted(histogram):
        seen += histogram[depth]
        if seen >= q * total:
            return depth
    return None


class EventWatch:
    """An ``on_deliver`` hook: payload copies and first receipts of the events it is told to
    watch (events published before it was told are not counted)."""

    def __init__(self) -> None:
        self.copies = 0
        self.first: dict[tuple[str, str, int], int | None] = {}
        """(receiver, source, offset) -> depth of the first receipt, ``None`` when pulled."""
        self.watched: set[tuple[str, int]] = set()

    def publish(self, swarm: SwarmSim, node_id: str) -> None:
        """Publish one event on ``node_id`` now and watch it."""
        self.watched.add((node_id, swarm.disks[node_id].store.head(node_id) + 1))
        swarm.publish(node_id, 1)

    def __call__(self, d: Delivery) -> None:
        msg = d.msg
        if not isinstance(msg, EventBatch):
            return
        depth = None if msg.hops is None else msg.hops + 1
        for record in msg.events:
            if (record.source, record.offset) not in self.watched:
                continue
            self.copies += 1
            if record.source != d.dst:  # the origin's own event coming back is a copy only
                self.first.setdefault((d.dst, record.source, record.offset), depth)

    def depths(self) -> list[int]:
        """Depths of the first receipts that came down the tree."""
        return [h for h in self.first.values() if h is not None]


# -- settings and results ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    """What the run does; the defaults are the issue-6 run at 1,000 nodes."""

    publishers: int = 10
    """Nodes that publish the warm-up and measured events (each keeps its own tree)."""
    warmup_rounds: int = 5
    measured_rounds: int = 3
    cold_sources: int = 5
    """Nodes publishing their first event after the measured rounds, one event each."""
    concurrent_rounds: int = 2
    concurrent_publishers: int = 100
    """Nodes (seeded) publishing at the same instant in each concurrent round. Every node
    verifies every batch it stores (an Ed25519 signature, the real machine's cost): all 1,000
    at once cost about 10⁶ verifications a round, a quarter of an hour of wall time here."""
    spacing_s: float = 2.0
    """Virtual seconds between publishes: each event finishes before the next starts."""
    crash_share: float = 0.01
    partition_events_per_side: int = 5
    partition_max_s: float = 120.0
    """Heal when the sides have marked each other dead, or after this long."""
    seeds_per_node: int = 1
    phase_deadline_s: float = 900.0
    """Virtual seconds a phase may take to converge before it is reported as not converged."""
    check_every_s: float = 1.0
    """Resolution of the convergence times (a check of full membership costs O(N²))."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HopStats:
    """Copies and depths of one group of events."""

    events: int
    receivers: int
    """Live nodes other than the origin, per event."""
    converged: bool
    """Every live node held every event of the group before the phase deadline."""
    converge_s: float | None
    """Virtual seconds from the group's last publish until every live node held all of it."""
    copies_per_node_event: float
    pulled_first: int
    histogram: dict[int, int]
    p50: int | None
    p99: int | None
    max: int | None

    @classmethod
    def of(cls, watch: EventWatch, receivers: int, converge_s: float | None) -> HopStats:
        histogram = dict(sorted(Counter(watch.depths()).items()))
        events = len(watch.watched)
        return cls(
            events=events,
            receivers=receivers,
            converged=converge_s is not None,
            converge_s=_round(converge_s),
            copies_per_node_event=round(watch.copies / max(1, events * receivers), 4),
            pulled_first=sum(h is None for h in watch.first.values()),
            histogram=histogram,
            p50=depth_percentile(histogram, 0.5),
            p99=depth_percentile(histogram, 0.99),
            max=max(histogram, default=None),
        )

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["histogram"] = {str(k): v for k, v in self.histogram.items()}
        return out

    def line(self, name: str) -> str:
        return (
            f"{name:11s} {self.events:5d} events  copies/node/event "
            f"{self.copies_per_node_event:.3f}  hops p50 {self.p50} p99 {self.p99} max {self.max}"
            f"  pulled {self.pulled_first}  delivered {_fmt(self.converge_s)} after the last"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OverlayStats:
    """Shortest paths over the active views from the measured publishers, taken right after the
    measured events: the depth a tree on this overlay could reach (the eager tree's best case)."""

    active_min: int
    active_mean: float
    active_max: int
    histogram: dict[int, int]
    p50: int | None
    p99: int | None
    max: int | None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["histogram"] = {str(k): v for k, v in self.histogram.items()}
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionStats:
    """Virtual seconds from the crash, per crashed node, aggregated over the crashed nodes."""

    crashed: list[str]
    observers: int
    detected: bool
    """Every live node marked every crashed node DEAD before the phase deadline."""
    first_suspect_s: dict[str, float | None]
    """Earliest: first node to suspect it (p50, max)."""
    first_dead_s: dict[str, float | None]
    all_dead_s: dict[str, float | None]
    """Until every live node holds it DEAD (p50, max); ``None`` when some never did."""
    pair_dead_s: dict[str, float | None]
    """Over every (live node, crashed node) pair that marked it dead (p50, p99, max)."""
    false_suspicions: int
    """Suspicions of live nodes raised during the phase."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealStats:
    left: int
    right: int
    events_published: int
    apart: bool
    """Each side marked the whole other side DEAD before ``partition_max_s``."""
    apart_s: float | None
    apart_share: float
    """At the heal: the share of cross-side pairs in which one no longer holds the other ALIVE
    or SUSPECT (1.0 when apart)."""
    partitioned_s: float
    """Virtual seconds from the cut to the heal."""
    events_s: float | None
    """From the heal until every live node holds every event."""
    membership_s: float | None
    """From the heal until every live node holds every live node ALIVE."""

    @property
    def converged(self) -> bool:
        return self.events_s is not None and self.membership_s is not None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "converged": self.converged}


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    virtual_s: float
    wall_s: float


@dataclass(slots=True, kw_only=True)
class SimReport:
    nodes: int
    seed: int
    settings: SimSettings
    hop_bound: int
    join_s: float | None = None
    warmup: HopStats | None = None
    measured: HopStats | None = None
    cold: HopStats | None = None
    concurrent: HopStats | None = None
    overlay: OverlayStats | None = None
    detection: DetectionStats | None = None
    heal: HealStats | None = None
    phases: list[Phase] = field(default_factory=list)
    wall_s: float = 0.0
    virtual_s: float = 0.0
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        def opt(
            part: HopStats | OverlayStats | DetectionStats | HealStats | None,
        ) -> dict[str, Any] | None:
            return None if part is None else part.as_json()

        return {
            "nodes": self.nodes,
            "seed": self.seed,
            "ok": self.ok,
            "settings": asdict(self.settings),
            "hop_bound": self.hop_bound,
            "copies_goal": COPIES_GOAL,
            "join_s": self.join_s,
            "dissemination": {
                "warmup": opt(self.warmup),
                "measured": opt(self.measured),
                "cold_sources": opt(self.cold),
                "concurrent": opt(self.concurrent),
                "overlay_shortest_paths": opt(self.overlay),
            },
            "detection": opt(self.detection),
            "heal": opt(self.heal),
            "phases": [asdict(p) for p in self.phases],
            "wall_s": self.wall_s,
            "virtual_s": self.virtual_s,
            "checks": [c.as_json() for c in self.checks],
        }

    def summary(self) -> str:
        lines = [
            f"simulation  nodes {self.nodes}  seed {self.seed}  wall {self.wall_s:.1f} s  "
            f"virtual {self.virtual_s:.1f} s",
            f"join: membership converged in {_fmt(self.join_s)} (virtual)",
            f"dissemination (hop bound 1+ceil(log4 N) = {self.hop_bound}, "
            f"copies goal {COPIES_GOAL}):",
        ]
        groups = (
            ("warm-up", self.warmup),
            ("measured", self.measured),
            ("cold", self.cold),
            ("concurrent", self.concurrent),
        )
        lines += ["  " + stats.line(name) for name, stats in groups if stats is not None]
        if self.measured is not None:
            lines.append(f"  measured hop histogram {self.measured.histogram}")
        if (o := self.overlay) is not None:
            lines.append(
                f"  overlay shortest paths from the publishers: p50 {o.p50} p99 {o.p99} "
                f"max {o.max} {o.histogram}; active view {o.active_min}..{o.active_max} "
                f"(mean {o.active_mean:.1f})"
            )
        if (d := self.detection) is not None:
            lines.append(
                f"failure detection of {len(d.crashed)} crashed by {d.observers} live nodes: "
                f"first suspect {_stat(d.first_suspect_s)}, first dead {_stat(d.first_dead_s)}, "
                f"all dead {_stat(d.all_dead_s)}, per pair {_stat(d.pair_dead_s)}, "
                f"false suspicions {d.false_suspicions}"
            )
        if (h := self.heal) is not None:
            apart = (
                f"in {_fmt(h.apart_s)}"
                if h.apart
                else f"NOT within {h.partitioned_s:.0f} s ({h.apart_share:.1%} of pairs by then)"
            )
            lines.append(
                f"partition {h.left}/{h.right}: sides marked each other dead {apart}; "
                f"after heal: events everywhere in {_fmt(h.events_s)}, "
                f"membership whole in {_fmt(h.membership_s)}"
            )
        lines += [
            f"  phase {p.name}: virtual {p.virtual_s:.1f} s, wall {p.wall_s:.1f} s"
            for p in self.phases
        ]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f} s"


def _stat(values: dict[str, float | None]) -> str:
    return " ".join(f"{k} {_fmt(v)}" for k, v in values.items())


def _spread(values: Sequence[float], *, p99: bool = False) -> dict[str, float | None]:
    if not values:
        return {"p50": None, **({"p99": None} if p99 else {}), "max": None}
    ordered = sorted(values)
    out = {"p50": _round(statistics.median(ordered))}
    if p99:
        out["p99"] = _round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))])
    out["max"] = _round(ordered[-1])
    return out


# -- phases -----------------------------------------------------------------------------------


def _union_offsets(swarm: SwarmSim) -> dict[str, int]:
    """Per source, the highest offset any live node holds: what every live node must reach."""
    want: dict[str, int] = {}
    for node in swarm.live():
        for source, head in swarm.disks[node].store.offsets().items():
            want[source] = max(want.get(source, -1), head)
    return want


def _disseminate(
    swarm: SwarmSim, batches: Sequence[Sequence[str]], settings: SimSettings
) -> HopStats:
    """Each batch publishes one event per node at the same instant, ``spacing_s`` before the
    next; after the last, run until every live node holds all of them (timed from that last
    publish, to ``DELIVERY_CHECK_S``), and let the spacing pass before the next phase."""
    sim, watch = swarm.sim, EventWatch()
    sim.on_deliver.append(watch)
    try:
        for i, batch in enumerate(batches):
            if i:
                sim.run_for(settings.spacing_s)
            for node in batch:
                watch.publish(swarm, node)
        last = sim.now
        want = _union_offsets(swarm)
        done = sim.run_until_true(
            lambda: swarm.offsets_converged(want),
            last + settings.phase_deadline_s,
            check_every=DELIVERY_CHECK_S,
        )
        sim.run_until(max(sim.now, last + settings.spacing_s))
    finally:
        sim.on_deliver.remove(watch)
    return HopStats.of(watch, len(swarm.live()) - 1, None if done is None else done - last)


def _overlay(swarm: SwarmSim, sources: Sequence[str]) -> OverlayStats:
    """Breadth-first distances over the live nodes' active views from each of ``sources``."""
    live = swarm.live()
    active = {n: list(swarm.node(n).membership.views.active) for n in live}
    depths: Counter[int] = Counter()
    for source in dict.fromkeys(sources):
        seen, frontier, depth = {source}, [source], 0
        while frontier:
            depth += 1
            nxt = [b for a in frontier for b in active.get(a, ()) if b not in seen]
            frontier = list(dict.fromkeys(nxt))
            seen.update(frontier)
            depths[depth] += len(frontier)
    histogram = {d: c for d, c in sorted(depths.items()) if c}
    sizes = [len(v) for v in active.values()]
    return OverlayStats(
        active_min=min(sizes),
        active_mean=round(statistics.fmean(sizes), 2),
        active_max=max(sizes),
        histogram=histogram,
        p50=depth_percentile(histogram, 0.5),
        p99=depth_percentile(histogram, 0.99),
        max=max(histogram, default=None),
    )


def _detect_failures(swarm: SwarmSim, rng: random.Random, settings: SimSettings) -> DetectionStats:
    """Crash a seeded share of the nodes at once and time their suspicion and death everywhere."""
    sim = swarm.sim
    count = max(1, round(settings.crash_share * len(swarm.live())))
    crashed = rng.sample(sorted(swarm.live()), count)
    targets = set(crashed)
    suspect_at: dict[str, dict[str, float]] = {c: {} for c in crashed}
    dead_at: dict[str, dict[str, float]] = {c: {} for c in crashed}
    false_suspicions = 0

    def on_notice(now: float, observer: str, notice: object) -> None:
        nonlocal false_suspicions
        if isinstance(notice, PeerSuspect):
            if notice.node_id in targets:
                suspect_at[notice.node_id].setdefault(observer, now)
            else:
                false_suspicions += 1
        elif isinstance(notice, PeerDead) and notice.node_id in targets:
            dead_at[notice.node_id].setdefault(observer, now)

    start = sim.now
    sim.on_notice.append(on_notice)
    for node in crashed:
        sim.crash(node)
    observers = set(swarm.live())
    try:
        detected = sim.run_until_true(
            lambda: all(observers <= dead_at[c].keys() for c in crashed),
            start + settings.phase_deadline_s,
            check_every=min(0.5, settings.check_every_s),
        )
    finally:
        sim.on_notice.remove(on_notice)

    def since(at: dict[str, float]) -> list[float]:
        return [t - start for observer, t in at.items() if observer in observers]

    def per_crashed(pick: Callable[[list[float]], float]) -> list[float]:
        return [pick(since(dead_at[c])) for c in crashed if since(dead_at[c])]

    everywhere = [max(since(dead_at[c])) for c in crashed if observers <= dead_at[c].keys()]
    return DetectionStats(
        crashed=crashed,
        observers=len(observers),
        detected=detected is not None,
        first_suspect_s=_spread([min(since(suspect_at[c])) for c in crashed if suspect_at[c]]),
        first_dead_s=_spread(per_crashed(min)),
        all_dead_s=_spread(everywhere) if len(everywhere) == len(crashed) else _spread([]),
        pair_dead_s=_spread([t for c in crashed for t in since(dead_at[c])], p99=True),
        false_suspicions=false_suspicions,
    )


def _apart(swarm: SwarmSim, left: Sequence[str], right: Sequence[str]) -> bool:
    """No node of one side holds a node of the other ALIVE or SUSPECT."""
    for mine, theirs in ((left, right), (right, left)):
        for a in mine:
            machine = swarm.node(a).membership
            for b in theirs:
                state = machine.state_of(b)
                if state is not None and state <= MemberState.SUSPECT:
                    return False
    return True


def _apart_share(swarm: SwarmSim, left: Sequence[str], right: Sequence[str]) -> float:
    """The share of (node, node of the other side) pairs in which the first no longer holds the
    second ALIVE or SUSPECT."""
    pairs = apart = 0
    for mine, theirs in ((left, right), (right, left)):
        for a in mine:
            machine = swarm.node(a).membership
            states = [machine.state_of(b) for b in theirs]
            pairs += len(states)
            apart += sum(s is None or s > MemberState.SUSPECT for s in states)
    return apart / max(1, pairs)


def _partition_heal(
    swarm: SwarmSim, rng: random.Random, settings: SimSettings, say: Progress
) -> HealStats:
    """Cut the live nodes into two seeded halves, publish on both, heal, time the repair."""
    sim = swarm.sim
    live = sorted(swarm.live())
    rng.shuffle(live)
    left, right = sorted(live[: len(live) // 2]), sorted(live[len(live) // 2 :])
    cut = sim.now
    rules = sim.partition(left, right)
    published = 0
    for side in (left, right):
        for node in rng.sample(side, min(len(side), settings.partition_events_per_side)):
            swarm.publish(node, 1, tag="partition")
            published += 1
    apart_at = sim.run_until_true(
        lambda: _apart(swarm, left, right),
        cut + settings.partition_max_s,
        check_every=max(settings.check_every_s, 5.0),
    )
    heal = sim.now
    apart_share = _apart_share(swarm, left, right)
    say("healing the partition" + ("" if apart_at is None else ": the sides are apart"))
    sim.heal(*rules)
    want = _union_offsets(swarm)
    events_at: float | None = None
    members_at: float | None = None
    while sim.now < heal + settings.phase_deadline_s:
        if events_at is None and swarm.offsets_converged(want):
            events_at = sim.now
            say("every live node holds every event")
        if members_at is None and swarm.membership_converged():
            members_at = sim.now
        if events_at is not None and members_at is not None:
            break
        sim.run_for(settings.check_every_s)
    return HealStats(
        left=len(left),
        right=len(right),
        events_published=published,
        apart=apart_at is not None,
        apart_s=_round(None if apart_at is None else apart_at - cut),
        apart_share=round(apart_share, 4),
        partitioned_s=round(heal - cut, 3),
        events_s=_round(None if events_at is None else events_at - heal),
        membership_s=_round(None if members_at is None else members_at - heal),
    )


# -- the run ----------------------------------------------------------------------------------


class _Clock:
    """Records each phase's virtual and wall duration and reports progress."""

    def __init__(self, swarm: SwarmSim, report: SimReport, progress: Progress | None) -> None:
        self.swarm, self.report, self.progress = swarm, report, progress
        self.wall0 = time.perf_counter()

    def run(self, name: str, phase: Callable[[], Any]) -> Any:
        self.say(f"{name} ...")
        virtual, wall = self.swarm.sim.now, time.perf_counter()
        result = phase()
        self.report.phases.append(
            Phase(
                name,
                round(self.swarm.sim.now - virtual, 3),
                round(time.perf_counter() - wall, 3),
            )
        )
        self.say(f"{name} done")
        return result

    def say(self, text: str) -> None:
        if self.progress is not None:
            wall = time.perf_counter() - self.wall0
            self.progress(f"[virtual {self.swarm.sim.now:8.1f} s | wall {wall:7.1f} s] {text}")


def run_simulation(
    nodes: int,
    seed: int,
    *,
    settings: SimSettings | None = None,
    progress: Progress | None = None,
) -> SimReport:
    """Run every phase (module docstring) on one ``SwarmSim`` of ``nodes`` nodes; deterministic
    for a given ``nodes``, ``seed`` and ``settings`` (wall times aside)."""
    if nodes < 2:
        raise ValueError("a simulation needs at least 2 nodes")
    cfg = settings or SimSettings()
    rng = random.Random(f"simmode/{seed}")
    swarm = SwarmSim(nodes, seed, seeds_per_node=cfg.seeds_per_node)
    report = SimReport(nodes=nodes, seed=seed, settings=cfg, hop_bound=theoretical_hops(nodes))
    clock = _Clock(swarm, report, progress)
    report.join_s = _round(
        clock.run(
            "join",
            lambda: swarm.sim.run_until_true(
                swarm.membership_converged, cfg.phase_deadline_s, check_every=cfg.check_every_s
            ),
        )
    )
    publishers = rng.sample(swarm.ids, min(nodes, cfg.publishers))
    spaced = [[p] for p in publishers]
    report.warmup = clock.run(
        "warm-up", lambda: _disseminate(swarm, spaced * cfg.warmup_rounds, cfg)
    )
    report.measured = clock.run(
        "measured", lambda: _disseminate(swarm, spaced * cfg.measured_rounds, cfg)
    )
    report.overlay = _overlay(swarm, publishers)
    fresh = sorted(set(swarm.ids) - set(publishers))
    cold = [[n] for n in rng.sample(fresh, min(len(fresh), cfg.cold_sources))]
    report.cold = clock.run("cold sources", lambda: _disseminate(swarm, cold, cfg))
    live = swarm.live()
    together = [
        rng.sample(live, min(len(live), cfg.concurrent_publishers))
        for _ in range(cfg.concurrent_rounds)
    ]
    report.concurrent = clock.run("concurrent", lambda: _disseminate(swarm, together, cfg))
    report.detection = clock.run("failure detection", lambda: _detect_failures(swarm, rng, cfg))
    report.heal = clock.run("partition-heal", lambda: _partition_heal(swarm, rng, cfg, clock.say))
    report.wall_s = round(time.perf_counter() - clock.wall0, 2)
    report.virtual_s = round(swarm.sim.now, 3)
    report.checks = evaluate(report)
    return report


def evaluate(r: SimReport) -> list[Check]:
    """The issue-6 acceptance checks of a finished report (its ``checks``)."""
    m, d, h = r.measured, r.detection, r.heal
    assert m is not None
    assert d is not None
    assert h is not None
    receipts = m.events * m.receivers
    groups = {"warm-up": r.warmup, "measured": m, "cold": r.cold, "concurrent": r.concurrent}
    undelivered = [name for name, g in groups.items() if g is None or not g.converged]
    return [
        Check("membership converged after join", r.join_s is not None, f"in {_fmt(r.join_s)}"),
        Check(
            "every event reached every live node",
            not undelivered,
            "all groups delivered" if not undelivered else f"not delivered: {undelivered}",
        ),
        Check(  # receipts by repair have no depth: more than 1 % of them would hide the tail
            "p99 hops <= 1+ceil(log4 N)",
            m.p99 is not None and m.p99 <= r.hop_bound and m.pulled_first <= 0.01 * receipts,
            f"measured p99 {m.p99} vs bound {r.hop_bound} (max {m.max}; "
            f"{m.pulled_first} of {receipts} first receipts pulled, at most 1 % allowed)",
        ),
        Check(
            f"payload copies per node per event <= {COPIES_GOAL}",
            m.copies_per_node_event <= COPIES_GOAL,
            f"measured {m.copies_per_node_event:.3f} over {m.events} events",
        ),
        Check(
            "every crashed node detected by every live node",
            d.detected,
            f"{len(d.crashed)} crashed, all dead everywhere max {_fmt(d.all_dead_s['max'])}",
        ),
        Check(
            "converged after heal",
            h.converged,
            f"events {_fmt(h.events_s)}, membership {_fmt(h.membership_s)} after the heal",
        ),
    ]
