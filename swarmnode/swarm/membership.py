"""SWIM membership with Lifeguard failure detection over HyParView views (SPEC.md §7.2–7.3) — pure.

Inputs (STYLE.md §2): ``handle_message(now, peer, msg)``, ``handle_connected(now, peer, info)``,
``handle_disconnected(now, peer)``, ``handle_timer(now)``, ``join(now, seeds)``, ``leave(now)``.
Output: ``drain() -> Effects`` (sends, dials, hangups, notices, the next deadline). Snapshots:
``members()`` and ``statistics()``. No clock, no I/O, no module-level randomness; the injected
``rng`` makes a run replayable.

Rules, with their sources:
- Probing (SWIM §4.3): one member per protocol period, round-robin over a shuffled list; no ack
  within the ack timeout -> ``PingReq`` through k helpers; no ack by the end of the indirect
  window -> SUSPECT, gossiped with this node as origin.
- Gossip (SWIM §4.1): updates ride on Ping/Ack, least-sent first, each sent at most
  ``retransmit_mult * ceil(log10(N + 1))`` times; while any are pending they also go out on their
  own every ``gossip_interval`` to ``gossip_fanout`` connected peers (memberlist's gossip), so
  news spreads at gossip speed, not one hop per probe period.
- Precedence (SPEC §7.2.1): one function, ``supersedes``. A node suspected or declared dead at an
  incarnation >= its own raises it past that and gossips ALIVE (refutation).
- Lifeguard local health: a failed probe, a missed nack or a refutation raises the multiplier; a
  good probe lowers it; probe interval and ack timeouts are stretched by ``1 + multiplier``.
- Lifeguard dynamic suspicion: the timeout starts at ``beta * min`` and falls towards
  ``min = alpha * max(1, log10 N) * period`` as independent suspicions (by origin) arrive. A
  node whose own probe of a suspect fails counts as one, and every new confirmation is gossiped
  on, so the other nodes' timeouts shrink too.
- Full-list push (SPEC §7.2.7): a joiner gets every live record from its contact, and every
  ``sync_interval`` each node pushes its table, tombstones included, to one active peer, so
  knowledge converges even when piggyback capacity lags behind mass joins.
- Connections: probes dial members on demand; links outside the active view idle for
  ``idle_timeout`` are hung up, so a node's connections do not grow with the swarm.
- Tombstones (DESIGN.md): DEAD members are kept, capped (oldest evicted), and re-probed with
  capped exponential backoff carrying their DEAD record, so a healed node refutes and returns.
Invariants: own incarnation only rises; every table and queue is bounded by the config; peer
input never raises (odd input is dropped and counted in ``statistics()["dropped"]``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from protocol.messages import (
    Ack,
    Address,
    Disconnect,
    ForwardJoin,
    Goodbye,
    Join,
    MemberState,
    MemberUpdate,
    MemberUpdates,
    Message,
    Neighbor,
    NeighborReply,
    PeerInfo,
    PeerList,
    PeerRequest,
    Ping,
    PingReq,
    PingReqAck,
    PingReqNack,
    SendableMessage,
    Shuffle,
    ShuffleReply,
)
from protocol.messages_base import MAX_MEMBER_UPDATES
from swarmnode.swarm.effects import Effects, TimerHeap
from swarmnode.swarm.membership_types import (
    GossipQueue,
    MemberInfo,
    MemberRecord,
    MembershipConfig,
    PeerAlive,
    PeerDead,
    PeerLeft,
    PeerSuspect,
    ProbeState,
    retransmit_limit,
    suspicion_timeout,
)
from swarmnode.swarm.views import Views

__all__ = [
    "MemberInfo",
    "Membership",
    "MembershipConfig",
    "PeerAlive",
    "PeerDead",
    "PeerLeft",
    "PeerSuspect",
    "supersedes",
]


_VIEW_MESSAGES = (
    *(ForwardJoin, Neighbor, NeighborReply, Disconnect),
    *(Shuffle, ShuffleReply, PeerRequest, PeerList),
)


def supersedes(new: tuple[int, MemberState], old: tuple[int, MemberState]) -> bool:
    """SPEC §7.2.1: ``(incarnation, state)`` ``new`` replaces ``old`` when its incarnation is
    higher, or equal with a state ranking higher in ALIVE < SUSPECT < DEAD < LEFT."""
    return new[0] > old[0] or (new[0] == old[0] and new[1] > old[1])


_NOTICE = {
    MemberState.ALIVE: PeerAlive,
    MemberState.SUSPECT: PeerSuspect,
    MemberState.DEAD: PeerDead,
    MemberState.LEFT: PeerLeft,
}


class Membership:
    """One node's member table, failure detector and views (see the module docstring)."""

    def __init__(
        self, config: MembershipConfig, *, self_info: PeerInfo, rng: random.Random
    ) -> None:
        self.config = config
        self.self_info = self_info
        self.me = self_info.node_id
        self.incarnation = 0
        self.local_health = 0
        self.views = Views(config.views, self_info=self_info, rng=rng)
        self._rng = rng
        self._members: dict[str, MemberRecord] = {}
        self._gossip = GossipQueue()
        self._probes: dict[int, ProbeState] = {}
        self._relays: dict[int, tuple[str, int, str]] = {}  # our seq -> (requester, seq, target)
        self._order: list[str] = []
        self._seq = 0
        self._timers: TimerHeap[tuple[str, object]] = TimerHeap()
        self._fx = Effects()
        self._seeds: tuple[Address, ...] = ()
        self._join_backoff = config.join_backoff_initial
        self._left = False
        self._live = 1  # ALIVE and SUSPECT members, us included: the swarm-size estimate
        self._now = 0.0  # time of the input being handled, for bookkeeping only
        self._stats: dict[str, int] = dict.fromkeys(
            ("probes", "acks", "indirect", "suspicions", "deaths", "refutations", "dropped"), 0
        )
        self._enqueue(self._self_update(MemberState.ALIVE))

    # ---- driver inputs -------------------------------------------------------------------

    def join(self, now: float, seeds: Sequence[Address]) -> None:
        """Start from ``--peers``: dial every seed, and retry with backoff while no peer is
        active (a node that starts alone joins when a seed appears)."""
        self._now = now
        self._seeds = tuple(seeds)
        self._fx.dials.extend(self._seeds)
        self._start(now)
        self._timers.schedule(("join", ""), now + self._join_backoff)

    def leave(self, now: float) -> None:
        """Leave for good: gossip LEFT to every connected peer, say Goodbye and hang up."""
        self._left = True
        update = self._self_update(MemberState.LEFT)
        for peer in list(self.views.connected):
            self._send(peer, MemberUpdates(updates=(update,)))
            self._send(peer, Goodbye(leaving=True, reason="leaving"))
            self._fx.hangups.append(peer)

    def handle_connected(self, now: float, peer: str, info: PeerInfo) -> None:
        """A connection to ``peer`` is up (after handshake and Hello); ``info`` from its Hello."""
        self._now = now
        if peer == self.me or info.node_id != peer or self._left:
            self._stats["dropped"] += 1
            return
        self._start(now)
        self.views.on_connected(now, info)
        m = self._members.get(peer)
        if m is None:
            update = MemberUpdate(
                node_id=peer,
                state=MemberState.ALIVE,
                incarnation=0,
                addresses=info.addresses,
                origin=peer,
            )
            self._apply(now, update)
            m = self._members.get(peer)
        if m is not None:
            m.last_seen = now
            if info.addresses and m.state <= MemberState.SUSPECT:
                m.addresses = info.addresses
                m.update = None
        # Tell the peer who we are, and what we believe of it, so it can refute at once.
        updates = [self._self_update(MemberState.ALIVE)]
        if m is not None and m.state != MemberState.ALIVE:
            updates.append(self._record(m))
        self._send(peer, MemberUpdates(updates=tuple(updates)))
        if self._seeds and not self.views.active and not self.views.is_pending(peer):
            self.views.join_through(peer)

    def handle_disconnected(self, now: float, peer: str) -> None:
        """The connection to ``peer`` closed or a dial to it failed."""
        self.views.on_disconnected(now, peer)

    def handle_message(self, now: float, peer: str, msg: Message) -> None:
        """Apply one message from authenticated ``peer``. Never raises on its content."""
        self._now = now
        if self._left or peer == self.me:
            self._stats["dropped"] += 1
            return
        self.views.touch(peer, now)
        m = self._members.get(peer)
        if m is not None:
            m.last_seen = now
        match msg:
            case Ping():
                self._apply_all(now, msg.updates)
                self._send(peer, Ack(seq=msg.seq, updates=self._piggyback(peer)))
            case Ack():
                self._apply_all(now, msg.updates)
                self._on_ack(now, peer, msg.seq)
            case PingReq():
                self._on_ping_req(now, peer, msg)
            case PingReqAck():
                probe = self._probes.get(msg.seq)
                if probe is not None and probe.target == msg.target:
                    self._probe_ok(probe)
                else:
                    self._stats["dropped"] += 1
            case PingReqNack():
                probe = self._probes.get(msg.seq)
                if probe is not None and probe.target == msg.target:
                    probe.nacks += 1
                else:
                    self._stats["dropped"] += 1
            case MemberUpdates():
                self._apply_all(now, msg.updates)
            case Join():
                self.views.handle(now, peer, msg)
                if peer in self.views.active:
                    self._push_list(peer, tombstones=False)
            case Goodbye():
                if msg.leaving and m is not None:
                    self._apply(now, self._record(m, MemberState.LEFT, origin=peer))
            case _ if isinstance(msg, _VIEW_MESSAGES):
                self.views.handle(now, peer, msg)
            case _:
                self._stats["dropped"] += 1

    def handle_timer(self, now: float) -> None:
        """Run every timer due at or before ``now``."""
        self._now = now
        self.views.n_estimate = self._live_count()
        self.views.on_timer(now)
        for kind, arg in self._timers.pop_due(now):
            if self._left:
                return
            if kind == "probe":
                self._probe(now)
            elif kind == "ack" and isinstance(arg, int):
                self._on_ack_timeout(now, arg)
            elif kind == "probe_end" and isinstance(arg, int):
                self._on_probe_end(now, arg)
            elif kind == "relay" and isinstance(arg, int):
                relay = self._relays.pop(arg, None)
                if relay is not None:
                    self._send(relay[0], PingReqNack(seq=relay[1], target=relay[2]))
            elif kind == "suspect" and isinstance(arg, str):
                self._on_suspicion_timeout(now, arg)
            elif kind == "reprobe" and isinstance(arg, str):
                self._reprobe(now, arg)
            elif kind == "join":
                self._on_join_timer(now)
            elif kind == "sync":
                self._sync(now)
            elif kind == "gossip":
                self._gossip_round(now)

    def drain(self) -> Effects:
        """Everything to do since the last drain, and the next deadline."""
        fx, self._fx = self._fx, Effects()
        fx.deadline = self._timers.next_deadline()
        fx.merge(self.views.take())
        return fx

    # ---- snapshots -----------------------------------------------------------------------

    def members(self) -> list[MemberInfo]:
        rows = []
        for m in self._members.values():
            view = "active" if m.node_id in self.views.active else ""
            view = view or ("passive" if m.node_id in self.views.passive else "")
            rows.append(
                MemberInfo(
                    node_id=m.node_id,
                    state=m.state,
                    incarnation=m.incarnation,
                    view=view,
                    addresses=m.addresses,
                    last_seen=m.last_seen,
                )
            )
        return rows

    def state_of(self, node_id: str) -> MemberState | None:
        m = self._members.get(node_id)
        return None if m is None else m.state

    def statistics(self) -> dict[str, int]:
        stats = dict(self._stats)
        for state in MemberState:
            stats[state.name.lower()] = sum(m.state == state for m in self._members.values())
        stats.update(
            incarnation=self.incarnation,
            local_health=self.local_health,
            active=len(self.views.active),
            passive=len(self.views.passive),
            gossip_queue=len(self._gossip),
            pending_probes=len(self._probes) + len(self._relays),
            view_dropped=self.views.dropped,
        )
        return stats

    # ---- helpers -------------------------------------------------------------------------

    def _start(self, now: float) -> None:
        if not self.views.started:
            self.views.start(now)
            self._timers.schedule(("probe", ""), now + self.config.protocol_period)
            self._timers.schedule(("sync", ""), now + self.config.sync_interval)
            self._timers.schedule(("gossip", ""), now + self.config.gossip_interval)

    def _send(self, peer: str, msg: SendableMessage) -> None:
        self._fx.sends.append((peer, msg))
        self.views.touch(peer, self._now)

    def _live_count(self) -> int:
        return self._live

    def _scale(self) -> int:
        return 1 + self.local_health

    def _self_update(self, state: MemberState) -> MemberUpdate:
        return MemberUpdate(
            node_id=self.me,
            state=state,
            incarnation=self.incarnation,
            addresses=self.self_info.addresses,
            origin=self.me,
        )

    def _record(
        self, m: MemberRecord, state: MemberState | None = None, origin: str | None = None
    ) -> MemberUpdate:
        return MemberUpdate(
            node_id=m.node_id,
            state=m.state if state is None else state,
            incarnation=m.incarnation,
            addresses=m.addresses,
            origin=origin or self.me,
        )

    def _push_list(self, peer: str, *, tombstones: bool) -> None:
        """Send every record we hold (SPEC §7.2.7), paged by MAX_MEMBER_UPDATES."""
        rows = [self._self_update(MemberState.ALIVE)]
        rows += [
            self._as_held(m)
            for m in self._members.values()
            if m.node_id != peer and (tombstones or m.state <= MemberState.SUSPECT)
        ]
        for i in range(0, len(rows), MAX_MEMBER_UPDATES):
            self._send(peer, MemberUpdates(updates=tuple(rows[i : i + MAX_MEMBER_UPDATES])))

    def _as_held(self, m: MemberRecord) -> MemberUpdate:
        """The record as last applied, asserter kept, so a relay never counts as an independent
        suspicion (Lifeguard); cached, as full-list pushes would rebuild every row."""
        if m.update is None:
            m.update = self._record(m, origin=m.origin)
        return m.update

    # ---- gossip (SWIM §4.1) --------------------------------------------------------------

    def _enqueue(self, update: MemberUpdate) -> None:
        self._gossip.put(update)

    def _piggyback(self, peer: str) -> tuple[MemberUpdate, ...]:
        """Least-sent updates first; what the peer should refute about itself goes first."""
        limit = retransmit_limit(self.config, self._live_count())
        out: list[MemberUpdate] = []
        m = self._members.get(peer)
        if m is not None and m.state in (MemberState.SUSPECT, MemberState.DEAD):
            out.append(self._record(m))
        # The peer knows itself best; its refutation prompt (above) went first.
        out += self._gossip.take(self.config.max_piggyback, limit, skip=peer)
        return tuple(out[:MAX_MEMBER_UPDATES])

    def _gossip_round(self, now: float) -> None:
        """Pending updates to a few random connected peers; nothing at all when none are
        pending, so a quiet swarm sends no gossip beyond its probes."""
        self._timers.schedule(("gossip", ""), now + self.config.gossip_interval)
        if not self._gossip:
            return
        peers = sorted(p for p in self.views.connected if self._reachable(p))
        limit = retransmit_limit(self.config, self._live_count())
        for peer in self._rng.sample(peers, min(self.config.gossip_fanout, len(peers))):
            updates = self._gossip.take(self.config.max_piggyback, limit, skip=peer)
            if not updates:
                return
            self._send(peer, MemberUpdates(updates=tuple(updates)))

    def _reachable(self, peer: str) -> bool:
        """Not a member we hold DEAD or LEFT (its connection is being hung up)."""
        m = self._members.get(peer)
        return m is None or m.state <= MemberState.SUSPECT

    def _apply_all(self, now: float, updates: Sequence[MemberUpdate]) -> None:
        for update in updates:
            self._apply(now, update)

    def _apply(self, now: float, u: MemberUpdate) -> None:
        """Apply one assertion by SPEC §7.2.1; transitions and their side effects live here."""
        if u.node_id == self.me:
            self._about_me(u)
            return
        m = self._members.get(u.node_id)
        if m is None:
            if u.state > MemberState.SUSPECT or not self._make_room():
                return
            m = MemberRecord(
                node_id=u.node_id,
                state=u.state,
                incarnation=u.incarnation,
                addresses=u.addresses,
                since=now,
            )
            self._members[u.node_id] = m
            # SWIM §4.3: a new member goes to a random place in the round-robin list; appending
            # would line up every node that learned the same full list into one probe storm.
            self._order.insert(self._rng.randrange(len(self._order) + 1), u.node_id)
            self._enter(now, m, u.origin)
            self._enqueue(u)
            return
        if not supersedes((u.incarnation, u.state), (m.incarnation, m.state)):
            if (
                u.state == MemberState.SUSPECT
                and (u.incarnation, u.state) == (m.incarnation, m.state)
                and u.origin not in m.confirmations
                and self._confirm(m, u.origin)
            ):
                self._enqueue(u)  # an independent suspicion: pass it on (Lifeguard)
            return
        old = m.state
        m.incarnation = u.incarnation
        m.origin = u.origin
        m.update = u if u.addresses or not m.addresses else None
        if u.addresses:
            m.addresses = u.addresses
        if u.state != old:
            m.state = u.state
            m.since = now
            self._leave_state(m, old)
            self._enter(now, m, u.origin)
        self._enqueue(u)

    def _about_me(self, u: MemberUpdate) -> None:
        if self._left or u.state == MemberState.ALIVE or u.incarnation < self.incarnation:
            return
        # Refutation (SPEC §7.2.1); being suspected is a hint of our own poor health (Lifeguard).
        self.incarnation = u.incarnation + 1
        self._stats["refutations"] += 1
        if u.state == MemberState.SUSPECT:
            self._health(+1)
        self._enqueue(self._self_update(MemberState.ALIVE))

    def _leave_state(self, m: MemberRecord, old: MemberState) -> None:
        if old <= MemberState.SUSPECT:
            self._live -= 1
        if old == MemberState.SUSPECT:
            self._timers.cancel(("suspect", m.node_id))
            m.confirmations.clear()
        elif old == MemberState.DEAD:
            self._timers.cancel(("reprobe", m.node_id))

    def _enter(self, now: float, m: MemberRecord, origin: str) -> None:
        self._fx.notices.append(_NOTICE[m.state](node_id=m.node_id, incarnation=m.incarnation))
        m.origin = origin
        if m.state <= MemberState.SUSPECT:
            self._live += 1
        if m.state == MemberState.ALIVE:
            if m.addresses:
                self.views.add_passive(PeerInfo(node_id=m.node_id, addresses=m.addresses))
        elif m.state == MemberState.SUSPECT:
            self._stats["suspicions"] += 1
            m.suspect_start = now
            m.confirmations = {origin}
            self._timers.schedule(("suspect", m.node_id), now + self._suspicion_timeout(1))
        else:
            if m.state == MemberState.DEAD:
                self._stats["deaths"] += 1
                m.reprobe_delay = self.config.reprobe_initial
                self._timers.schedule(("reprobe", m.node_id), now + m.reprobe_delay)
            self.views.remove(now, m.node_id)
            if m.node_id in self.views.connected:
                self._fx.hangups.append(m.node_id)
            self._cap_tombstones()

    def _make_room(self) -> bool:
        if len(self._members) < self.config.max_members:
            return True
        return self._evict_oldest_tombstone()

    def _cap_tombstones(self) -> None:
        dead = sum(m.state >= MemberState.DEAD for m in self._members.values())
        while dead > self.config.max_tombstones and self._evict_oldest_tombstone():
            dead -= 1

    def _evict_oldest_tombstone(self) -> bool:
        graves = [m for m in self._members.values() if m.state >= MemberState.DEAD]
        if not graves:
            self._stats["dropped"] += 1
            return False
        oldest = min(graves, key=lambda m: m.since)
        del self._members[oldest.node_id]
        self._gossip.discard(oldest.node_id)
        self._timers.cancel(("reprobe", oldest.node_id))
        return True

    # ---- suspicion (Lifeguard §IV.B) -----------------------------------------------------

    def _suspicion_timeout(self, confirmations: int) -> float:
        return suspicion_timeout(self.config, self._live_count(), confirmations)

    def _confirm(self, m: MemberRecord, origin: str) -> bool:
        """Count ``origin``'s suspicion; False once enough are counted (more change nothing)."""
        if len(m.confirmations) > self.config.suspicion_k:
            return False
        m.confirmations.add(origin)
        deadline = m.suspect_start + self._suspicion_timeout(len(m.confirmations))
        self._timers.schedule(("suspect", m.node_id), deadline)
        return True

    def _on_suspicion_timeout(self, now: float, node_id: str) -> None:
        m = self._members.get(node_id)
        if m is not None and m.state == MemberState.SUSPECT:
            self._apply(now, self._record(m, MemberState.DEAD))

    # ---- probing (SWIM §4.3, Lifeguard local health) -------------------------------------

    def _health(self, delta: int) -> None:
        self.local_health = min(self.config.max_local_health, max(0, self.local_health + delta))

    def _next_target(self) -> str | None:
        for _ in range(2):
            while self._order:
                node_id = self._order.pop()
                m = self._members.get(node_id)
                if m is not None and m.state <= MemberState.SUSPECT:
                    return node_id
            self._order = [n for n, m in self._members.items() if m.state <= MemberState.SUSPECT]
            self._rng.shuffle(self._order)
        return None

    def _ping(self, now: float, m: MemberRecord) -> int:
        self._seq += 1
        if m.node_id not in self.views.connected and m.addresses:
            self._fx.dials.append(PeerInfo(node_id=m.node_id, addresses=m.addresses))
        self._send(m.node_id, Ping(seq=self._seq, updates=self._piggyback(m.node_id)))
        self._stats["probes"] += 1
        return self._seq

    def _probe(self, now: float) -> None:
        cfg = self.config
        self._fx.hangups += self.views.reap_idle(now, cfg.idle_timeout)
        self._timers.schedule(("probe", ""), now + cfg.protocol_period * self._scale())
        target = self._next_target()
        if target is None or len(self._probes) >= cfg.max_pending_probes:
            return
        seq = self._ping(now, self._members[target])
        self._probes[seq] = ProbeState(target=target, start=now)
        self._timers.schedule(("ack", seq), now + cfg.ack_timeout * self._scale())
        end = now + (cfg.ack_timeout + cfg.indirect_timeout) * self._scale()
        self._timers.schedule(("probe_end", seq), end)

    def _on_ack(self, now: float, peer: str, seq: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay[2] == peer:
            self._timers.cancel(("relay", seq))
            self._send(relay[0], PingReqAck(seq=relay[1], target=peer))
            return
        probe = self._probes.get(seq)
        if probe is not None and probe.target == peer:
            self._probe_ok(probe)
        # Acks to re-probes and late acks need no bookkeeping: their gossip was applied.

    def _probe_ok(self, probe: ProbeState) -> None:
        if not probe.done:
            probe.done = True
            self._stats["acks"] += 1

    def _on_ack_timeout(self, now: float, seq: int) -> None:
        probe = self._probes.get(seq)
        if probe is None or probe.done:
            return
        m = self._members.get(probe.target)
        if m is None:
            return
        k, connected = self.config.indirect_probes, self.views.connected
        alive = [
            n for n, h in self._members.items() if h.state == MemberState.ALIVE and n != m.node_id
        ]
        # Prefer helpers we hold a connection to: no handshake stands between us and their answer.
        near = [n for n in alive if n in connected]
        chosen = self._rng.sample(near, min(k, len(near)))
        if len(chosen) < k:
            far = [n for n in alive if n not in connected]
            chosen += self._rng.sample(far, min(k - len(chosen), len(far)))
        target = PeerInfo(node_id=m.node_id, addresses=m.addresses)
        for helper in chosen:
            h = self._members[helper]
            if helper not in connected and h.addresses:
                self._fx.dials.append(PeerInfo(node_id=helper, addresses=h.addresses))
            self._send(helper, PingReq(seq=seq, target=target))
        probe.helpers = len(chosen)
        self._stats["indirect"] += len(chosen)

    def _on_probe_end(self, now: float, seq: int) -> None:
        self._timers.cancel(("ack", seq))
        probe = self._probes.pop(seq, None)
        if probe is None:
            return
        if probe.done:
            self._health(-1)
            return
        # Lifeguard: every missing nack is evidence that we, not the target, are slow.
        self._health(max(1, probe.helpers - probe.nacks))
        m = self._members.get(probe.target)
        if m is not None and m.state == MemberState.ALIVE:
            self._apply(now, self._record(m, MemberState.SUSPECT))
        elif (
            m is not None
            and m.state == MemberState.SUSPECT
            and self.me not in m.confirmations
            and self._confirm(m, self.me)
        ):
            # Already suspected by others: our own failed probe is an independent suspicion.
            self._enqueue(self._record(m, MemberState.SUSPECT))

    def _on_ping_req(self, now: float, peer: str, msg: PingReq) -> None:
        target = msg.target.node_id
        m = self._members.get(target)
        busy = len(self._probes) + len(self._relays) >= self.config.max_pending_probes
        if busy or target == self.me or target == peer or m is None:
            self._send(peer, PingReqNack(seq=msg.seq, target=target))
            return
        seq = self._ping(now, m)
        self._relays[seq] = (peer, msg.seq, target)
        self._timers.schedule(("relay", seq), now + self.config.ack_timeout * self._scale())

    def _reprobe(self, now: float, node_id: str) -> None:
        """Tombstone re-probe: the Ping carries the DEAD record so a live target refutes."""
        m = self._members.get(node_id)
        if m is None or m.state != MemberState.DEAD:
            return
        self._ping(now, m)
        m.reprobe_delay = min(m.reprobe_delay * 2, self.config.reprobe_max)
        self._timers.schedule(("reprobe", node_id), now + m.reprobe_delay)

    def _sync(self, now: float) -> None:
        """Push every record we hold (tombstones too) to one active peer, in pages."""
        self._timers.schedule(("sync", ""), now + self.config.sync_interval)
        if not self.views.active:
            return
        self._push_list(self._rng.choice(list(self.views.active)), tombstones=True)

    def _on_join_timer(self, now: float) -> None:
        if self.views.active:
            self._join_backoff = self.config.join_backoff_initial
        else:
            self._fx.dials.extend(self._seeds)
            self._join_backoff = min(self._join_backoff * 2, self.config.join_backoff_max)
        self._timers.schedule(("join", ""), now + self._join_backoff)
