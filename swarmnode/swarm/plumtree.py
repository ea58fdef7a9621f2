"""Event dissemination as a pure state machine: Plumtree eager/lazy push plus offset-map
anti-entropy (DESIGN.md "swarm/replication", SPEC.md §7.4).

Inputs (STYLE.md §2): ``handle_message(now, peer, msg)`` for ``EventBatch``, ``EventIds``,
``Graft``, ``Prune``, ``OffsetMap`` and ``RequestRange``; ``handle_neighbor_up/down(now, peer)``
from membership's active view; ``handle_local_events(now, records)`` for events just published
here (already in the store); ``handle_timer(now)``. Output: ``drain() -> Effects`` with sends,
notices (``EventsStored``, ``PeerMisbehaved``) and the next deadline. ``statistics()`` snapshots
counters for status and netsim.

Rules (Leitão, Pereira, Rodrigues, "Epidemic Broadcast Trees", SRDS 2007; message ids are
``(source, offset)``, and a node holds a gapless prefix per source, so "received" means
``offset <= head(source)``):

- Edges are per source (SPEC §7.4.6): every source's events travel on their own tree, so each
  tree can be a shortest-path tree from its origin; one tree shared by all sources cannot be
  shallow for all of them (a degree-8 tree of 1,000 nodes has pairs 7+ hops apart). A new
  source rides the default tree, which the duplicates of new sources' first push round prune to
  a spanning tree (so a new source's first events flood nothing); its first graft or a prune
  after its first round gives it its own tree, a copy of the default that no other source's
  moves change (``_set_edge``). Memory: one edge per (source, active peer), as the offset map.
- A new neighbour's edge is EAGER. New events go as ``EventBatch`` (hops + 1) to every neighbour
  eager for their source but the one they came from, and as ``EventIds`` (batched for
  ``lazy_delay``) to every lazy one: store and forward, so C gets A's events through B.
- The sources of an eager batch (``hops`` set) that bring nothing new are duplicates: answer
  ``Prune(sources)`` and make the edge LAZY for them. A ``Prune`` received makes the edge LAZY for
  its sources (all when empty). Batches with ``hops = None`` answer requests and never prune
  (SPEC §7.4.3).
- ``EventIds`` for events not held start a ``graft_timeout`` timer per source; when it fires and
  the events are still missing and not being fetched, send ``Graft`` to one announcer (edge
  EAGER for that source) for the first span, pull the rest, and try the next announcer after
  ``graft_retry``. A ``Graft`` received makes the edge EAGER for its ranges' sources (all when
  empty) and is answered like a ``RequestRange``.
- Hop-count optimisation: an ``EventIds`` for events we got eagerly ``hop_threshold`` or more
  hops later than the announcer's count (checked when the eager copy lands if the ids came
  first) swaps that source's edges: ``Graft`` (for the next
  offset, which neither side holds yet) to the announcer, ``Prune(source)`` to the eager sender,
  so each tree converges to shortest paths and stays so as the view changes.
- Events repaired by a ``hops = None`` batch are announced (``EventIds``) to all other neighbours,
  never pushed, so bulk catch-up does not flood the tree with duplicates.
- Anti-entropy: on neighbour up and every ``ae_interval`` (to one random neighbour) send our
  ``OffsetMap``. A complete map received: pull what we lack from its sender (exact ranges,
  ``antientropy.PullScheduler``), and answer with our own map when the sender lacks something:
  always to a peer's first map, later at most once per ``map_reply_gap`` (no ping-pong).
- A batch is verified (chain + signed head) before anything is stored or forwarded; a forged
  batch stores nothing, is not forwarded, and yields ``PeerMisbehaved`` for the driver to score
  the peer down. A batch that starts past our head is not stored; its range is pulled from the
  sender. Peer input never raises: what cannot be used is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol.eventchain import EventRecord
from protocol.messages import SendableMessage
from protocol.messages_base import EVENT_BATCH_BUDGET, MAX_HOPS, MAX_ID_RANGES
from protocol.messages_replication import (
    EventBatch,
    EventIds,
    Graft,
    OffsetMap,
    OffsetRange,
    Prune,
    RequestRange,
)
from swarmnode.swarm.antientropy import PullScheduler, lacking, offset_map_pages, pack_batches
from swarmnode.swarm.effects import Effects, TimerHeap
from swarmnode.swarm.eventstore import EventStorePort
from swarmnode.swarm.plumtree_edges import Edge, EdgeTable, next_edge

if TYPE_CHECKING:  # the machine only calls the Random it is given (pure: STYLE.md §9)
    import random

__all__ = [
    "Dissemination",
    "DisseminationConfig",
    "DisseminationStatistics",
    "Edge",
    "EventsStored",
    "PeerMisbehaved",
    "next_edge",
]

# A peer's offset map may span pages (SPEC §7.4.2); past this many we drop the partial map rather
# than buffer without bound (64 pages = 1M sources, beyond any swarm of DESIGN.md's 1,000 nodes).
MAX_MAP_PAGES = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class DisseminationConfig:
    """Tunables, frozen so netsim can vary them per run."""

    lazy_delay: float = 0.05
    """IHAVEs to a lazy peer are batched this long (paper: lazy push is deferred and batched)."""
    graft_timeout: float = 0.25
    """Wait this long after an IHAVE for the eager copy before grafting (a few LAN RTTs)."""
    graft_retry: float = 0.15
    """Then try the next announcer this often (paper's shorter second timer)."""
    ae_interval: float = 5.0
    """One offset-map exchange per this period, with a random neighbour."""
    map_reply_gap: float = 1.0
    """At most one answering offset map per peer in this time (no map ping-pong)."""
    request_span: int = 8192
    """Events per RequestRange: a few 512 KiB batches, large enough for bulk speed."""
    request_window: int = 4
    """RequestRanges in flight per peer: bounds what one peer can make us buffer."""
    request_timeout: float = 2.0
    """A peer that delivers nothing this long loses its requests in flight (progress resets it)."""
    request_retries: int = 3
    hop_threshold: int = 1
    """Plumtree's optimisation: when a lazy peer announces events we got eagerly this many hops
    later, graft it and prune the eager sender (0 disables). Trees are per source, so a swap
    reshapes one source's tree only and any shorter path may win: at N=100 the steady-state p99
    depth is 4 hops with 1, 5 with 2, 5-6 with 3 (tests/swarm/test_tree_quality.py)."""
    max_serve_events: int = 16384
    """Most events sent for one RequestRange/Graft range: a peer cannot ask for the whole log."""
    batch_budget: int = EVENT_BATCH_BUDGET


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsStored:
    """``count`` events from ``peer`` were verified and stored (wake subscribers)."""

    peer: str
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerMisbehaved:
    """``peer`` sent forged or unusable events; the driver scores it down."""

    peer: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DisseminationStatistics:
    copies_received: int
    """Events received in any EventBatch (payload copies), duplicates included."""
    events_stored: int
    duplicates: int
    eager_pushes_received: int
    max_hops: int
    grafts_sent: int
    grafts_received: int
    prunes_sent: int
    prunes_received: int
    requests_sent: int
    rejected_batches: int
    gaps: int
    optimizations: int
    """Edges swapped by the hop-count optimisation."""
    eager_peers: int
    lazy_peers: int
    requests_in_flight: int
    lag: dict[str, int]
    """Peer → events we hold that its last offset map lacked."""


class Dissemination:
    """Plumtree + anti-entropy for one node; see the module docstring for the rules."""

    def __init__(
        self,
        config: DisseminationConfig,
        *,
        node_id: str,
        store: EventStorePort,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self._store = store
        self._rng = rng
        self._edges = EdgeTable()
        self._timers: TimerHeap[tuple[str, str]] = TimerHeap()
        self._pull = PullScheduler(
            span=config.request_span,
            window=config.request_window,
            timeout=config.request_timeout,
            max_retries=config.request_retries,
        )
        # peer → source → [first, last, hops] of IHAVEs not yet sent
        self._lazy_queue: dict[str, dict[str, list[int]]] = {}
        # source → announcer → last announced offset (insertion order = who to graft first)
        self._announced: dict[str, dict[str, int]] = {}
        # source → (peer, hops, last offset) of the latest eager batch that brought new events
        self._eager_hops: dict[str, tuple[str, int, int]] = {}
        # source -> (peer, hops, last) of the shortest IHAVE that overtook the eager copy: deep in
        # a young tree the ids arrive first, and the shortcut they show must not be lost
        self._early_ids: dict[str, tuple[str, int, int]] = {}
        self._map_pages: dict[str, list[tuple[str, int]]] = {}
        self._page_count: dict[str, int] = {}
        self._peer_maps: dict[str, dict[str, int]] = {}
        self._map_sent_at: dict[str, float] = {}
        self._sends: list[tuple[str, SendableMessage]] = []
        self._notices: list[object] = []
        self._c: dict[str, int] = dict.fromkeys(
            (
                "copies_received",
                "events_stored",
                "duplicates",
                "eager_pushes_received",
                "max_hops",
                "grafts_sent",
                "grafts_received",
                "prunes_sent",
                "prunes_received",
                "requests_sent",
                "rejected_batches",
                "gaps",
                "optimizations",
            ),
            0,
        )

    # ---- inputs -------------------------------------------------------------------------------

    def handle_neighbor_up(self, now: float, peer: str) -> None:
        if peer == self.node_id or not self._edges.up(peer):
            return
        self._send_map(now, peer)
        if ("ae", "") not in self._timers:
            self._timers.schedule(("ae", ""), now + self._jitter(self.config.ae_interval))

    def handle_neighbor_down(self, now: float, peer: str) -> None:
        self._edges.down(peer)
        self._pull.forget_peer(peer)
        self._lazy_queue.pop(peer, None)
        self._map_pages.pop(peer, None)
        self._page_count.pop(peer, None)
        self._peer_maps.pop(peer, None)
        self._map_sent_at.pop(peer, None)
        for source in [s for s, got in self._eager_hops.items() if got[0] == peer]:
            del self._eager_hops[source]
        for announcers in self._announced.values():
            announcers.pop(peer, None)
        self._issue_requests(now)

    def handle_local_events(self, now: float, records: Sequence[EventRecord]) -> None:
        """Push events published here (already stored) to the tree, with hops 0."""
        if records:
            self._disseminate(now, list(records), hops=0, came_from=None)

    def handle_message(self, now: float, peer: str, msg: object) -> None:
        """React to one message from a connected peer; messages of other kinds are ignored.

        A peer outside the active view (a message that overtook ``handle_neighbor_up``, or one
        still in flight after ``handle_neighbor_down``) gets its requests served and its events
        verified and stored, but gains no edge and is never asked for anything: membership
        decides who we depend on."""
        neighbour = peer in self._edges
        match msg:
            case EventBatch():
                self._on_batch(now, peer, msg)
            case EventIds() if neighbour:
                self._on_ids(now, peer, msg)
            case Graft():
                self._c["grafts_received"] += 1
                self._set_edge(peer, "graft_received", [r.source for r in msg.ranges])
                for r in msg.ranges:
                    self._serve(peer, r.source, r.first, r.last)
            case Prune():
                self._c["prunes_received"] += 1
                self._set_edge(peer, "prune_received", msg.sources)
            case OffsetMap() if neighbour:
                self._on_map(now, peer, msg)
            case RequestRange():
                self._serve(peer, msg.source, msg.first, msg.last)
            case _:
                pass

    def handle_timer(self, now: float) -> None:
        for kind, key in self._timers.pop_due(now):
            if kind == "ae":
                self._anti_entropy_round(now)
            elif kind == "lazy":
                self._flush_lazy()
            elif kind == "miss":
                self._on_missing(now, key)
        if (deadline := self._pull.next_deadline()) is not None and deadline <= now:
            self._pull.expire(now, self._store.head)
            self._issue_requests(now)

    def drain(self) -> Effects:
        deadlines = [
            d for d in (self._timers.next_deadline(), self._pull.next_deadline()) if d is not None
        ]
        fx = Effects(
            sends=self._sends, notices=self._notices, deadline=min(deadlines, default=None)
        )
        self._sends, self._notices = [], []
        return fx

    def edge(self, peer: str, source: str | None = None) -> Edge | None:
        """``peer``'s edge for ``source``'s tree, or its default edge when ``source`` is None."""
        return self._edges.get(peer, source)

    def statistics(self) -> DisseminationStatistics:
        ours = self._store.offsets()
        lag = {
            peer: sum(max(0, last - theirs.get(s, -1)) for s, last in ours.items())
            for peer, theirs in self._peer_maps.items()
        }
        eager = self._edges.eager_count()
        return DisseminationStatistics(
            **self._c,
            eager_peers=eager,
            lazy_peers=len(self._edges) - eager,
            requests_in_flight=self._pull.total_in_flight(),
            lag=lag,
        )

    # ---- eager and lazy push ------------------------------------------------------------------

    def _disseminate(
        self, now: float, records: list[EventRecord], *, hops: int | None, came_from: str | None
    ) -> None:
        """Eager-push ``records`` to eager peers and queue IHAVEs for the others. ``hops=None``
        (repaired events): announce to every other neighbour, push to none."""
        repaired = hops is None
        hops = MAX_HOPS if hops is None else 0 if came_from is None else min(MAX_HOPS, hops + 1)
        spans: dict[str, tuple[int, int]] = {}
        for r in records:
            first, last = spans.get(r.source, (r.offset, r.offset))
            spans[r.source] = (min(first, r.offset), max(last, r.offset))
        peers = [p for p in self._edges if p != came_from]
        eager_for: dict[str, tuple[str, ...]] = {}
        lazy_for: dict[str, list[str]] = {}
        for source in spans:
            # repaired events: distance unknown, so announce only (never look like a shortcut)
            eager_for[source] = (
                () if repaired else tuple(p for p in peers if self.edge(p, source) is Edge.EAGER)
            )
            lazy_for[source] = [p for p in peers if p not in eager_for[source]]
        if not repaired:
            for source in spans:
                self._edges.pushed(source)
        groups: dict[tuple[str, ...], list[EventRecord]] = {}  # sources whose trees agree
        for r in records:
            if eager_for[r.source]:
                groups.setdefault(eager_for[r.source], []).append(r)
        for eager, recs in groups.items():
            if recs:
                for batch in pack_batches(
                    recs, self._store.public_key, hops=hops, budget=self.config.batch_budget
                ):
                    self._sends.extend((p, batch) for p in eager)
        queued = False
        for source, lazy in lazy_for.items():
            first, last = spans[source]
            for p in lazy:
                queued = True
                entry = self._lazy_queue.setdefault(p, {}).get(source)
                if entry is None:
                    self._lazy_queue[p][source] = [first, last, hops]
                else:
                    entry[0], entry[1] = min(entry[0], first), max(entry[1], last)
        if queued and ("lazy", "") not in self._timers:
            self._timers.schedule(("lazy", ""), now + self.config.lazy_delay)

    def _flush_lazy(self) -> None:
        for peer, queue in self._lazy_queue.items():
            ranges = [
                (OffsetRange(source=s, first=f, last=la), h)
                for s, (f, la, h) in sorted(queue.items())
            ]
            for i in range(0, len(ranges), MAX_ID_RANGES):
                part = ranges[i : i + MAX_ID_RANGES]
                hops = min(h for _, h in part)
                self._sends.append((peer, EventIds(ranges=tuple(r for r, _ in part), hops=hops)))
        self._lazy_queue.clear()

    def _on_batch(self, now: float, peer: str, batch: EventBatch) -> None:
        self._c["copies_received"] += len(batch.events)
        if batch.hops is not None:
            self._c["eager_pushes_received"] += 1
        keys = dict(batch.keys)
        runs: dict[str, list[EventRecord]] = {}
        for r in batch.events:
            runs.setdefault(r.source, []).append(r)
        to_ingest: list[tuple[bytes, Sequence[EventRecord]]] = []
        duplicates = 0
        dup_sources: list[str] = []  # sources that brought nothing new: prune their trees
        for source, recs in runs.items():
            head = self._store.head(source)
            if recs[-1].offset <= head:
                duplicates += len(recs)
                dup_sources.append(source)
                continue
            if recs[0].offset > head + 1:
                # lost or overtaken: fetch the hole from the sender, who holds it
                self._c["gaps"] += 1
                if peer in self._edges:
                    self._pull.want(peer, source, recs[-1].offset)
                continue
            key = keys.get(source) or self._store.public_key(source)
            if key is None:
                self._reject(peer, f"no public key for source {source}")
                return
            skip = head + 1 - recs[0].offset
            duplicates += skip
            to_ingest.append((key, recs[skip:]))
        stored: list[EventRecord] = []
        if to_ingest:
            result = self._store.ingest(to_ingest)
            if result.forged:
                self._reject(peer, result.problem or "forged events")
                return
            stored = result.stored
            duplicates += result.duplicates
            if stored:
                self._pull.touch(now, peer)
        self._c["duplicates"] += duplicates
        if batch.hops is not None and dup_sources:
            self._c["prunes_sent"] += 1
            self._sends.append((peer, Prune(sources=tuple(sorted(dup_sources)))))
            self._set_edge(peer, "duplicate_received", dup_sources)
        if stored:
            self._c["events_stored"] += len(stored)
            if batch.hops is not None:
                self._c["max_hops"] = max(self._c["max_hops"], batch.hops)
                for r in stored:
                    self._eager_hops[r.source] = (peer, batch.hops, r.offset)
            self._notices.append(EventsStored(peer=peer, count=len(stored)))
            self._pull.progress(self._store.head)
            self._clear_announced({r.source for r in stored})
            self._disseminate(now, stored, hops=batch.hops, came_from=peer)
            for source in {r.source for r in stored}:
                early = self._early_ids.pop(source, None)
                if early is not None and batch.hops is not None:
                    self._maybe_shorten(early[0], source, early[2], early[1])
        self._issue_requests(now)

    def _reject(self, peer: str, reason: str) -> None:
        self._c["rejected_batches"] += 1
        self._notices.append(PeerMisbehaved(peer=peer, reason=reason))

    # ---- IHAVE / GRAFT ------------------------------------------------------------------------

    def _on_ids(self, now: float, peer: str, msg: EventIds) -> None:
        for r in msg.ranges:
            if r.last <= self._store.head(r.source):
                self._maybe_shorten(peer, r.source, r.last, msg.hops)
                continue
            early = self._early_ids.get(r.source)
            if early is None or msg.hops < early[1]:
                self._early_ids[r.source] = (peer, msg.hops, r.last)
            announcers = self._announced.setdefault(r.source, {})
            announcers[peer] = max(r.last, announcers.get(peer, -1))
            if ("miss", r.source) not in self._timers:
                self._timers.schedule(("miss", r.source), now + self.config.graft_timeout)

    def _on_missing(self, now: float, source: str) -> None:
        head = self._store.head(source)
        announcers = self._announced.get(source, {})
        for p in [p for p, last in announcers.items() if last <= head or p not in self._edges]:
            del announcers[p]
        if not announcers:
            self._announced.pop(source, None)
            return
        target = max(announcers.values())
        if self._pull.covered_to(source, head) < target:
            peer = next(iter(announcers))
            last = announcers.pop(peer)
            first = self._pull.covered_to(source, head) + 1
            span_last = min(last, first + self.config.request_span - 1)
            if first <= span_last:
                self._c["grafts_sent"] += 1
                self._set_edge(peer, "graft_sent", [source])
                self._sends.append(
                    (peer, Graft(ranges=(OffsetRange(source=source, first=first, last=span_last),)))
                )
                self._pull.track(now, peer, source, first, span_last)
            if last > span_last:
                self._pull.want(peer, source, last)
                self._issue_requests(now)
        self._timers.schedule(("miss", source), now + self.config.graft_retry)

    def _maybe_shorten(self, peer: str, source: str, last: int, hops: int) -> None:
        """The paper's optimisation: a lazy peer ``hop_threshold`` hops closer to the origin
        replaces the eager sender in the tree (GRAFT without ids to it, PRUNE to the old one)."""
        got = self._eager_hops.get(source)
        threshold = self.config.hop_threshold
        if got is None or threshold <= 0 or self._edges.get(peer, source) is not Edge.LAZY:
            return
        sender, got_hops, got_last = got
        if sender == peer or last > got_last or got_hops - hops < threshold:
            return
        if not self._edges.settled(source):
            # Not in the first round: the sender counts rounds too, and a prune in its first
            # round would reshape the default tree that new sources' first events ride.
            return
        # The announcer is our parent from now on: a later, still shorter announcement of the
        # same round may replace it again, so a node reaches its best parent in one round.
        self._eager_hops[source] = (peer, hops, got_last)
        self._c["optimizations"] += 1
        self._set_edge(peer, "graft_sent", [source])
        # Asks for the next offset, which neither side holds yet: the edge turns eager for this
        # source and nothing is sent now (a Graft always names its sources, SPEC §7.4.5).
        nxt = OffsetRange(source=source, first=got_last + 1, last=got_last + 1)
        self._sends.append((peer, Graft(ranges=(nxt,))))
        if sender in self._edges:
            self._set_edge(sender, "duplicate_received", [source], fork=True)
            self._sends.append((sender, Prune(sources=(source,))))

    def _clear_announced(self, sources: set[str]) -> None:
        for source in sources:
            announcers = self._announced.get(source)
            if announcers is None:
                continue
            head = self._store.head(source)
            if all(last <= head for last in announcers.values()):
                del self._announced[source]
                self._timers.cancel(("miss", source))

    # ---- anti-entropy -------------------------------------------------------------------------

    def _anti_entropy_round(self, now: float) -> None:
        if self._edges:
            self._send_map(now, self._rng.choice(sorted(self._edges)))
            self._timers.schedule(("ae", ""), now + self._jitter(self.config.ae_interval))

    def _send_map(self, now: float, peer: str) -> None:
        self._map_sent_at[peer] = now
        self._sends.extend((peer, page) for page in offset_map_pages(self._store.offsets()))

    def _on_map(self, now: float, peer: str, msg: OffsetMap) -> None:
        pages = self._map_pages.setdefault(peer, [])
        pages.extend(msg.entries)
        self._page_count[peer] = self._page_count.get(peer, 0) + 1
        if msg.more:
            if self._page_count[peer] >= MAX_MAP_PAGES:
                del self._map_pages[peer], self._page_count[peer]
            return
        theirs = dict(self._map_pages.pop(peer))
        del self._page_count[peer]
        first_map = peer not in self._peer_maps
        self._peer_maps[peer] = theirs
        ours = self._store.offsets()
        for source, (_, last) in lacking(ours, theirs).items():
            self._pull.want(peer, source, last)
        if lacking(theirs, ours):
            sent = self._map_sent_at.get(peer)
            # The first map of a connection is always answered: ours may have arrived before
            # the peer saw us as a neighbour. Later ones at most once per gap: no ping-pong.
            if first_map or sent is None or now - sent >= self.config.map_reply_gap:
                self._send_map(now, peer)
        self._issue_requests(now)

    def _issue_requests(self, now: float) -> None:
        for peer, request in self._pull.issue(now, self._store.head):
            self._c["requests_sent"] += 1
            self._sends.append((peer, request))

    def _serve(self, peer: str, source: str, first: int, last: int) -> None:
        """Answer a RequestRange or Graft range: what we hold from ``first`` on, hops None."""
        limit = min(last - first + 1, self.config.max_serve_events)
        records = self._store.read_range(source, first - 1, limit)
        for batch in pack_batches(
            list(records), self._store.public_key, hops=None, budget=self.config.batch_budget
        ):
            self._sends.append((peer, batch))

    # ---- helpers ------------------------------------------------------------------------------

    def _set_edge(
        self, peer: str, event: str, sources: Sequence[str] = (), *, fork: bool = False
    ) -> None:
        self._edges.apply(peer, event, sources, fork=fork)

    def _jitter(self, period: float) -> float:
        """Spread periodic rounds over [0.5, 1.5) × period so nodes do not synchronise."""
        return period * (0.5 + self._rng.random())
