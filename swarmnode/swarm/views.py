"""HyParView active and passive views (Leitão, Pereira, Rodrigues 2007; SPEC.md §7.3) — pure.

The active view is the small symmetric set of peers a node keeps connections to (dissemination
runs over it); the passive view is a larger list of addresses to promote from when an active peer
is lost. Both are bounded, so a node's cost does not grow with the swarm (DESIGN.md invariant 6).

Inputs: ``handle(now, peer, msg)`` for view messages, ``on_connected`` / ``on_disconnected``,
``on_timer(now)``, and ``remove`` / ``add_passive`` / ``touch`` / ``reap_idle`` from membership.
Outputs: sends, dials and ``ActivePeerAdded`` / ``ActivePeerRemoved`` notices in ``take()``.
Invariants: ``len(active) <= max_active``, ``len(passive) <= max_passive``, self is in neither,
a peer is never in both. Never raises on peer input: odd messages are dropped and counted.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from protocol.messages import (
    Disconnect,
    ForwardJoin,
    Join,
    Message,
    Neighbor,
    NeighborReply,
    PeerInfo,
    PeerList,
    PeerRequest,
    SendableMessage,
    Shuffle,
    ShuffleReply,
)
from protocol.messages_base import MAX_PEER_LIST, MAX_SHUFFLE_SAMPLE, MAX_TTL
from swarmnode.swarm.effects import Effects, TimerHeap

__all__ = ["ActivePeerAdded", "ActivePeerRemoved", "ViewConfig", "Views"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewConfig:
    """View sizes and walk lengths (HyParView §4; the paper's values for 10,000 nodes, scaled)."""

    active_extra: int = 1
    """c in the active target ``ceil(log2(N)) + c``: one spare link keeps the overlay connected
    when a single neighbour fails (HyParView uses log10(N)+1 at fanout 4)."""
    max_active: int = 8
    """Hard cap: log2(1000)+1 ≈ 11 links would be more than a LAN swarm needs for Plumtree."""
    max_passive: int = 30
    """The paper's passive view is k·(log N + c) with k=6; 30 covers 1,000 nodes."""
    arwl: int = 6
    """Active random walk length (paper: 6)."""
    prwl: int = 3
    """Passive random walk length (paper: 3)."""
    shuffle_interval: float = 10.0
    """Passive-view exchange period; churn on a LAN is slow, so seconds are plenty."""
    shuffle_active: int = 3
    """ka: active members in a shuffle sample (paper: 3)."""
    shuffle_passive: int = 4
    """kp: passive members in a shuffle sample (paper: 4)."""
    maintain_interval: float = 1.0
    """How often an under-full active view promotes a passive peer (one protocol period)."""
    neighbor_timeout: float = 3.0
    """Give up on an unanswered Neighbor request and try another passive peer."""
    max_pending: int = 16
    """Outstanding Neighbor requests and shuffles; more are refused, never queued."""
    peer_request_limit: int = 64
    """How many peers a joining node asks for (≤ MAX_PEER_LIST)."""
    rewire_interval: float = 2.0
    """Mixing (see ``Views._rewire``): one link swapped for a random passive peer this often ...
    """
    rewire_rounds: int = 12
    """... this many times after start (about the time a join takes to settle): enough to
    randomise every link the join gave. Each swap briefly adds eager links to Plumtree's trees,
    so the swaps come early, before the trees settle, not spread over the node's life."""
    rewire_slow_interval: float = 600.0
    """Then this rarely, so the overlay keeps mixing as nodes come and go."""
    rewire_min_swarm: int = 128
    """Below this many members the join's overlay is shallow enough (netsim simulation: p99
    hops within 1 + ceil(log4 N) at 40 and 100 nodes unmixed), and mixing's brief extra eager
    links would only cost copies: no mixing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivePeerAdded:
    """``peer`` entered the active view (dissemination may use it)."""

    peer: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivePeerRemoved:
    """``peer`` left the active view."""

    peer: str


_SHUFFLE = ("shuffle",)
_MAINTAIN = ("maintain",)
_REWIRE = ("rewire",)


class Views:
    """One node's HyParView state. See the module docstring for inputs, outputs and invariants."""

    def __init__(self, config: ViewConfig, *, self_info: PeerInfo, rng: random.Random) -> None:
        self.config = config
        self.self_info = self_info
        self.me = self_info.node_id
        self._rng = rng
        self.active: dict[str, PeerInfo] = {}
        self.passive: dict[str, PeerInfo] = {}
        self.connected: dict[str, PeerInfo] = {}
        self._last_used: dict[str, float] = {}  # connected peer -> last send or receive
        self.n_estimate = 1
        """Swarm size estimate from the member table; sets the active target."""
        self._pending: dict[
            str, bool
        ] = {}  # peer -> Neighbor sent already (else waiting to connect)
        self._rewiring: set[str] = set()  # pending Neighbor requests that swap a link
        self._rewires = 0
        self._shuffles: dict[int, tuple[str, ...]] = {}  # shuffle id -> node ids we sent
        self._shuffle_seq = 0
        self._timers: TimerHeap[tuple[object, ...]] = TimerHeap()
        self._fx = Effects()
        self.dropped = 0
        self.started = False

    # ---- outputs -------------------------------------------------------------------------

    def take(self) -> Effects:
        fx, self._fx = self._fx, Effects()
        fx.deadline = self._timers.next_deadline()
        return fx

    def target(self) -> int:
        """Active view size to fill to: ceil(log2(N)) + c, capped (HyParView §4)."""
        n = max(self.n_estimate, 2)
        return min(self.config.max_active, math.ceil(math.log2(n)) + self.config.active_extra)

    def touch(self, peer: str, now: float) -> None:
        """A message went to or came from ``peer`` (keeps its connection from idling out)."""
        if peer in self.connected:
            self._last_used[peer] = now

    def reap_idle(self, now: float, idle_timeout: float) -> list[str]:
        """Connections outside the active view that carried nothing for ``idle_timeout``, now
        forgotten and to be hung up: probes dial members on demand, and without this a node
        would end up connected to the whole swarm (DESIGN.md invariant 6)."""
        cutoff, idle = now - idle_timeout, []
        for peer in list(self.connected):
            busy = peer in self.active or peer in self._pending
            if not busy and self._last_used.get(peer, now) <= cutoff:
                del self.connected[peer]
                self._last_used.pop(peer, None)
                idle.append(peer)
        return idle

    def is_pending(self, peer: str) -> bool:
        """A Neighbor request to ``peer`` is planned or in flight."""
        return peer in self._pending

    def _send(self, peer: str, msg: SendableMessage) -> None:
        self._fx.sends.append((peer, msg))

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self, now: float) -> None:
        if not self.started:
            self.started = True
            self._timers.schedule(_MAINTAIN, now + self.config.maintain_interval)
            self._timers.schedule(_SHUFFLE, now + self.config.shuffle_interval)
            self._timers.schedule(_REWIRE, now + self.config.rewire_interval)

    def join_through(self, peer: str) -> None:
        """We reached a contact while our active view is empty: ask to enter through it."""
        self._send(peer, Join())
        self._send(peer, PeerRequest(limit=min(self.config.peer_request_limit, MAX_PEER_LIST)))
        info = self.connected.get(peer)
        if info is not None:
            self._add_active(info)

    def on_connected(self, now: float, info: PeerInfo) -> None:
        self.connected[info.node_id] = info
        self._last_used[info.node_id] = now
        if self._pending.get(info.node_id) is False:
            self._pending[info.node_id] = True
            rewire = info.node_id in self._rewiring
            self._send(info.node_id, Neighbor(high_priority=rewire or not self.active))

    def on_disconnected(self, now: float, peer: str) -> None:
        """Connection lost (or dial failed): an active peer is replaced from the passive view."""
        self.connected.pop(peer, None)
        self._last_used.pop(peer, None)
        self._rewiring.discard(peer)
        if self._pending.pop(peer, None) is not None:
            self.passive.pop(peer, None)
        if peer in self.active:
            self._drop_active(peer, to_passive=True)
            self._promote(now)

    def remove(self, now: float, peer: str) -> None:
        """Membership declared ``peer`` DEAD or LEFT: forget it in both views."""
        self.passive.pop(peer, None)
        self._pending.pop(peer, None)
        if peer in self.active:
            self._drop_active(peer, to_passive=False)
            self._promote(now)

    def add_passive(self, info: PeerInfo) -> None:
        """Learned of a live peer (peer exchange, gossip): remember it if there is room or by
        evicting a random passive entry (HyParView §4.4)."""
        peer = info.node_id
        if peer == self.me or peer in self.active:
            return
        if peer in self.passive:
            if info.addresses:
                self.passive[peer] = info
            return
        if not info.addresses:
            return
        if len(self.passive) >= self.config.max_passive:
            victim = self._rng.choice(list(self.passive))
            del self.passive[victim]
        self.passive[peer] = info

    # ---- timers --------------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        for key in self._timers.pop_due(now):
            if key == _MAINTAIN:
                self._maintain(now)
                self._timers.schedule(_MAINTAIN, now + self.config.maintain_interval)
            elif key == _SHUFFLE:
                self._shuffle(now)
                self._timers.schedule(_SHUFFLE, now + self.config.shuffle_interval)
            elif key == _REWIRE:
                self._rewire(now)
                cfg = self.config
                slow = self._rewires >= cfg.rewire_rounds
                interval = cfg.rewire_slow_interval if slow else cfg.rewire_interval
                self._timers.schedule(_REWIRE, now + interval)
            elif key[0] == "neighbor":
                self._pending.pop(str(key[1]), None)
                self._rewiring.discard(str(key[1]))
            elif key[0] == "shuffle_id":
                sid = key[1]
                assert isinstance(sid, int)
                self._shuffles.pop(sid, None)

    def _maintain(self, now: float) -> None:
        if len(self.active) + len(self._pending) < self.target():
            self._promote(now)
        elif len(self.active) > self.target() + 1 and len(self.active) > 1:
            # The swarm looked bigger than it is (or shrank): shed a link, symmetrically.
            victim = self._rng.choice(list(self.active))
            self._send(victim, Disconnect())
            self._drop_active(victim, to_passive=True)

    def _promote(self, now: float) -> None:
        """Ask one random passive peer to become a neighbour (HyParView §4.3)."""
        if len(self._pending) >= self.config.max_pending:
            return
        choices = [p for p in self.passive if p not in self._pending]
        if not choices:
            return
        peer = self._rng.choice(choices)
        info = self.passive[peer]
        if peer in self.connected:
            self._pending[peer] = True
            self._send(peer, Neighbor(high_priority=not self.active))
        else:
            self._pending[peer] = False
            self._fx.dials.append(info)
        self._timers.schedule(("neighbor", peer), now + self.config.neighbor_timeout)

    def _rewire(self, now: float) -> None:
        """Swap one active link for a random passive peer.

        HyParView's active views keep the shape the joins gave them: a node enters next to its
        contact, a short walk away, so the overlay of a swarm that grew node by node is
        clustered and deep (1,000 nodes in netsim's simulation: p99 shortest path 8-10 hops where
        a random graph of the same degree has 5, and Plumtree's tree can be no shallower).
        Each swap asks a random passive peer with a high-priority Neighbor, which it accepts
        (dropping a random link of its own if full); we then drop a random other link if over
        the target. Dropped peers promote random passive peers in turn, so links are replaced by
        random ones and the overlay tends to a random graph: the passive view is a random sample
        of the swarm (shuffles)."""
        if (
            self.n_estimate < self.config.rewire_min_swarm
            or len(self.active) < self.target()
            or self._pending
        ):
            return
        if not self.passive:
            return
        peer = self._rng.choice(list(self.passive))
        info = self.passive[peer]
        self._rewires += 1
        self._rewiring.add(peer)
        if peer in self.connected:
            self._pending[peer] = True
            self._send(peer, Neighbor(high_priority=True))
        else:
            self._pending[peer] = False
            self._fx.dials.append(info)
        self._timers.schedule(("neighbor", peer), now + self.config.neighbor_timeout)

    def _shuffle(self, now: float) -> None:
        if not self.active or len(self._shuffles) >= self.config.max_pending:
            return
        cfg = self.config
        act = [self.active[p] for p in self._sample(list(self.active), cfg.shuffle_active)]
        pas = [self.passive[p] for p in self._sample(list(self.passive), cfg.shuffle_passive)]
        sample = tuple([*act, *pas][: MAX_SHUFFLE_SAMPLE - 1])
        self._shuffle_seq += 1
        sid = self._shuffle_seq
        self._shuffles[sid] = tuple(info.node_id for info in sample)
        self._timers.schedule(("shuffle_id", sid), now + cfg.shuffle_interval)
        peer = self._rng.choice(list(self.active))
        msg = Shuffle(shuffle_id=sid, origin=self.self_info, ttl=cfg.arwl, sample=sample)
        self._send(peer, msg)

    def _sample(self, items: list[str], k: int) -> list[str]:
        return self._rng.sample(items, min(k, len(items)))

    # ---- active view bookkeeping ---------------------------------------------------------

    def _add_active(self, info: PeerInfo) -> None:
        peer = info.node_id
        if peer == self.me or peer in self.active:
            return
        if len(self.active) >= self.config.max_active:
            victim = self._rng.choice(list(self.active))
            self._send(victim, Disconnect())
            self._drop_active(victim, to_passive=True)
        self.passive.pop(peer, None)
        self._pending.pop(peer, None)
        self.active[peer] = info
        self._fx.notices.append(ActivePeerAdded(peer=peer))

    def _drop_active(self, peer: str, *, to_passive: bool) -> None:
        info = self.active.pop(peer)
        self._fx.notices.append(ActivePeerRemoved(peer=peer))
        if to_passive:
            self.add_passive(info)

    def _info(self, peer: str) -> PeerInfo | None:
        return self.connected.get(peer) or self.active.get(peer) or self.passive.get(peer)

    # ---- messages ------------------------------------------------------------------------

    def handle(self, now: float, peer: str, msg: Message) -> None:
        """Apply one view message from authenticated ``peer`` (SPEC §7.3)."""
        match msg:
            case Join():
                self._on_join(peer)
            case ForwardJoin():
                self._on_forward_join(now, peer, msg)
            case Neighbor():
                self._on_neighbor(peer, msg)
            case NeighborReply():
                self._on_neighbor_reply(peer, msg)
            case Disconnect():
                self._pending.pop(peer, None)  # a refusal in all but name
                if peer in self.active:
                    self._drop_active(peer, to_passive=True)
                    self._promote(now)
            case Shuffle():
                self._on_shuffle(peer, msg)
            case ShuffleReply():
                self._on_shuffle_reply(msg)
            case PeerRequest():
                self._on_peer_request(peer, msg)
            case PeerList():
                for info in msg.peers:
                    self.add_passive(info)
            case _:
                self.dropped += 1

    def _on_join(self, peer: str) -> None:
        info = self.connected.get(peer)
        if info is None:  # Join arrives on a connection; without its Hello we cannot vouch.
            self.dropped += 1
            return
        others = [p for p in self.active if p != peer]
        self._add_active(info)
        for other in others:
            self._send(other, ForwardJoin(peer=info, ttl=min(self.config.arwl, MAX_TTL)))

    def _on_forward_join(self, now: float, sender: str, msg: ForwardJoin) -> None:
        new = msg.peer
        if new.node_id == self.me or new.node_id in self.active:
            return
        if msg.ttl == 0 or len(self.active) <= 1:
            self.add_passive(new)
            if new.node_id in self.passive and new.node_id not in self._pending:
                if len(self._pending) >= self.config.max_pending:
                    return
                if new.node_id in self.connected:
                    self._pending[new.node_id] = True
                    self._send(new.node_id, Neighbor(high_priority=not self.active))
                else:
                    self._pending[new.node_id] = False
                    self._fx.dials.append(new)
                self._timers.schedule(("neighbor", new.node_id), now + self.config.neighbor_timeout)
            return
        if msg.ttl == self.config.prwl:
            self.add_passive(new)
        nexts = [p for p in self.active if p not in (sender, new.node_id)]
        if nexts:
            self._send(self._rng.choice(nexts), ForwardJoin(peer=new, ttl=msg.ttl - 1))

    def _on_neighbor(self, peer: str, msg: Neighbor) -> None:
        info = self._info(peer)
        if info is None:
            self.dropped += 1
            return
        accept = peer in self.active or msg.high_priority
        # Room means below the target, not the hard cap: accepting up to the cap only to shed
        # later would churn the links Plumtree's tree is built on.
        accept = accept or len(self.active) < self.target()
        if accept:
            self._add_active(info)
        self._send(peer, NeighborReply(accepted=accept))

    def _on_neighbor_reply(self, peer: str, msg: NeighborReply) -> None:
        rewire = peer in self._rewiring
        self._rewiring.discard(peer)
        if self._pending.pop(peer, None) is None:
            self.dropped += 1
            return
        info = self._info(peer)
        if msg.accepted and info is not None:
            self._add_active(info)
            if rewire and len(self.active) > self.target():
                victim = self._rng.choice([p for p in self.active if p != peer])
                self._send(victim, Disconnect())
                self._drop_active(victim, to_passive=True)
        elif info is not None:
            self.add_passive(info)

    def _on_shuffle(self, peer: str, msg: Shuffle) -> None:
        origin = msg.origin.node_id
        if origin == self.me:
            self.dropped += 1
            return
        nexts = [p for p in self.active if p not in (peer, origin)]
        if msg.ttl > 0 and len(self.active) > 1 and nexts:
            self._send(
                self._rng.choice(nexts),
                Shuffle(
                    shuffle_id=msg.shuffle_id, origin=msg.origin, ttl=msg.ttl - 1, sample=msg.sample
                ),
            )
            return
        count = min(len(msg.sample) + 1, MAX_SHUFFLE_SAMPLE)
        reply = tuple(self.passive[p] for p in self._sample(list(self.passive), count))
        self._send(origin, ShuffleReply(shuffle_id=msg.shuffle_id, sample=reply))
        if origin not in self.connected:
            self._fx.dials.append(msg.origin)
        for info in (msg.origin, *msg.sample):
            self.add_passive(info)

    def _on_shuffle_reply(self, msg: ShuffleReply) -> None:
        sent = self._shuffles.pop(msg.shuffle_id, None)
        if sent is None:
            self.dropped += 1
            return
        for info in msg.sample:
            peer = info.node_id
            if peer == self.me or peer in self.active or peer in self.passive:
                continue
            if len(self.passive) >= self.config.max_passive:
                # Prefer evicting what we sent: the partner now holds those (HyParView §4.4).
                victims = [p for p in sent if p in self.passive] or list(self.passive)
                del self.passive[self._rng.choice(victims)]
            if info.addresses:
                self.passive[peer] = info

    def _on_peer_request(self, peer: str, msg: PeerRequest) -> None:
        known = [p for p in (*self.active, *self.passive) if p != peer]
        chosen = self._sample(known, msg.limit)
        infos = tuple(self.active.get(p) or self.passive[p] for p in chosen)
        self._send(peer, PeerList(peers=infos))
