"""Anti-entropy parts of event dissemination: packing batches, comparing offset maps, and pulling
exact missing ranges at bulk speed with bounded memory (SPEC.md §7.4.2, §7.4.3, §7.4.7).

Pure: no clock, no I/O, no randomness. ``plumtree.Dissemination`` owns one ``PullScheduler`` and
uses the functions here; they are separate so each rule can be tested alone.

Catch-up is receiver-paced: the node that lacks events asks for them in ``RequestRange`` spans of
at most ``span`` events, keeps at most ``window`` spans in flight per peer, and asks for the next
span as soon as stored events complete one. A sender only ever answers a request, so neither side
buffers more than ``window × span`` events per peer, however far behind a node is; spans are large
(thousands of events in ~512 KiB batches), so a node back from a long partition catches up at bulk
speed. A peer that delivers nothing for ``timeout`` while it has requests in flight loses them;
they are asked for again (``max_retries`` times) from whichever peer still offers them.

SPEC §7.4.2 lets the receiver of a map push what its sender lacks; ``Dissemination`` answers with
its own map instead, so that every bulk transfer is paced by the node that stores it. A peer that
does push is still served well: ``hops = None`` batches are verified and stored like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from protocol.codec import event_record_size
from protocol.eventchain import EventRecord
from protocol.messages_base import (
    EVENT_BATCH_BUDGET,
    MAX_BATCH_EVENTS,
    MAX_BATCH_KEYS,
    MAX_OFFSET_MAP_ENTRIES,
)
from protocol.messages_replication import EventBatch, OffsetMap, RequestRange

__all__ = [
    "HARD_BATCH_BYTES",
    "PullScheduler",
    "lacking",
    "offset_map_pages",
    "pack_batches",
]

# A batch may run past EVENT_BATCH_BUDGET to reach a signed head (SPEC §7.4.3 "SHOULD end each
# source's run at a signed head"), but never past this: MAX_FRAME_SIZE is 1 MiB + 64 KiB, and
# keys plus the message envelope need < 60 KiB (SPEC §5 table).
HARD_BATCH_BYTES = 1024 * 1024 - 4 * 1024

HeadOf = Callable[[str], int]
KeyOf = Callable[[str], bytes | None]


def pack_batches(
    records: Sequence[EventRecord],
    key_of: KeyOf,
    *,
    hops: int | None,
    budget: int = EVENT_BATCH_BUDGET,
) -> list[EventBatch]:
    """``records`` (per source contiguous and ascending) as EventBatches under ``budget`` bytes of
    encoded events (SPEC §7.4.3). A batch over budget is cut after its last signed head, so the
    receiver can verify and store all of it; with no signed head yet, it grows towards the next one
    up to ``HARD_BATCH_BYTES``. Keys cover each batch's sources whose key is known."""
    batches: list[EventBatch] = []
    current: list[EventRecord] = []
    sizes: list[int] = []
    signed_cut = 0  # len(current) just after its last signed record
    sources: set[str] = set()
    for record in records:
        rsize = event_record_size(record)
        key_overflow = record.source not in sources and len(sources) >= MAX_BATCH_KEYS
        if current and _full(sum(sizes) + rsize, len(current), key_overflow, budget):
            if signed_cut:
                batches.append(_batch(current[:signed_cut], key_of, hops))
                current, sizes = current[signed_cut:], sizes[signed_cut:]
                sources = {r.source for r in current}
                signed_cut = 0
            elif _full(sum(sizes) + rsize, len(current), key_overflow, HARD_BATCH_BYTES):
                batches.append(_batch(current, key_of, hops))
                current, sizes, sources = [], [], set()
        current.append(record)
        sizes.append(rsize)
        sources.add(record.source)
        if record.signature is not None:
            signed_cut = len(current)
    if current:
        batches.append(_batch(current, key_of, hops))
    return batches


def _full(size: int, count: int, key_overflow: bool, limit: int) -> bool:
    return size > limit or count >= MAX_BATCH_EVENTS or key_overflow


def _batch(records: list[EventRecord], key_of: KeyOf, hops: int | None) -> EventBatch:
    keys: dict[str, bytes] = {}
    for source in {r.source for r in records}:
        key = key_of(source)
        if key is not None:
            keys[source] = key
    return EventBatch(events=tuple(records), keys=tuple(sorted(keys.items())), hops=hops)


def offset_map_pages(offsets: Mapping[str, int]) -> list[OffsetMap]:
    """Our offset map as one or more pages of at most MAX_OFFSET_MAP_ENTRIES (SPEC §7.4.2)."""
    entries = sorted((s, o) for s, o in offsets.items() if o >= 0)
    pages = [
        entries[i : i + MAX_OFFSET_MAP_ENTRIES]
        for i in range(0, len(entries), MAX_OFFSET_MAP_ENTRIES)
    ] or [[]]
    return [OffsetMap(entries=tuple(page), more=i < len(pages) - 1) for i, page in enumerate(pages)]


def lacking(have: Mapping[str, int], other: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Source → the exact offsets ``first..last`` that ``other`` holds and ``have`` lacks."""
    return {
        source: (have.get(source, -1) + 1, last)
        for source, last in other.items()
        if last > have.get(source, -1)
    }


@dataclass(slots=True)
class _Request:
    source: str
    first: int
    last: int
    deadline: float


class PullScheduler:
    """Which ranges to ask which peer for, with at most ``window`` requests in flight per peer.

    ``want(peer, source, last)`` records that ``peer`` holds ``source`` up to ``last``;
    ``issue(now, head)`` returns the ``RequestRange``s to send now. Requests for one source never
    overlap across peers: a new span starts at the first offset above the head that no request in
    flight covers, so a span lost with its peer or its timeout is asked for again, none twice.
    """

    def __init__(self, *, span: int, window: int, timeout: float, max_retries: int) -> None:
        if span < 1 or window < 1:
            raise ValueError("span and window must be positive")
        self._span = span
        self._window = window
        self._timeout = timeout
        self._max_retries = max_retries
        self._wants: dict[str, dict[str, list[int]]] = {}  # peer → source → [last, failures]
        self._in_flight: dict[str, list[_Request]] = {}

    def want(self, peer: str, source: str, last: int) -> None:
        wants = self._wants.setdefault(peer, {})
        entry = wants.get(source)
        if entry is None:
            wants[source] = [last, 0]
        elif last > entry[0]:
            entry[0] = last

    def track(self, now: float, peer: str, source: str, first: int, last: int) -> None:
        """Count a request sent outside ``issue`` (a ``Graft``) as in flight."""
        self._in_flight.setdefault(peer, []).append(
            _Request(source, first, last, now + self._timeout)
        )

    def touch(self, now: float, peer: str) -> None:
        """``peer`` just delivered events: its requests are progressing, so their deadlines move
        on. A timeout then means "no progress for ``timeout``", not "a span took longer than
        ``timeout``", which keeps it short on fast links and safe on slow ones."""
        for r in self._in_flight.get(peer, ()):
            r.deadline = now + self._timeout

    def in_flight(self, peer: str) -> int:
        return len(self._in_flight.get(peer, ()))

    def total_in_flight(self) -> int:
        return sum(len(v) for v in self._in_flight.values())

    def covered_to(self, source: str, head: int) -> int:
        """The highest offset reached from ``head`` by held events plus requests in flight."""
        spans = sorted(
            (r.first, r.last)
            for reqs in self._in_flight.values()
            for r in reqs
            if r.source == source and r.last > head
        )
        reach = head
        for first, last in spans:
            if first <= reach + 1:
                reach = max(reach, last)
        return reach

    def forget_peer(self, peer: str) -> None:
        self._wants.pop(peer, None)
        self._in_flight.pop(peer, None)

    def progress(self, head: HeadOf) -> None:
        """Drop requests and wants that stored events have satisfied."""
        for peer, reqs in list(self._in_flight.items()):
            reqs[:] = [r for r in reqs if head(r.source) < r.last]
            if not reqs:
                del self._in_flight[peer]
        for peer, wants in list(self._wants.items()):
            for source in [s for s, (last, _) in wants.items() if head(s) >= last]:
                del wants[source]
            if not wants:
                del self._wants[peer]

    def expire(self, now: float, head: HeadOf) -> None:
        """Requests past their deadline leave the window; their want counts one failure and is
        given up after ``max_retries`` (the next offset-map exchange finds it again)."""
        for peer, reqs in list(self._in_flight.items()):
            expired = [r for r in reqs if r.deadline <= now]
            if not expired:
                continue
            reqs[:] = [r for r in reqs if r.deadline > now]
            wants = self._wants.setdefault(peer, {})
            lost: dict[str, int] = {}
            for r in expired:
                lost[r.source] = max(r.last, lost.get(r.source, -1))
            for source, last in lost.items():  # one failure per source, however many spans
                entry = wants.setdefault(source, [last, 0])  # a Graft has no want yet
                entry[0] = max(entry[0], last)
                entry[1] += 1
                if entry[1] > self._max_retries:
                    del wants[source]
            if not wants:
                del self._wants[peer]
            if not reqs:
                del self._in_flight[peer]
        self.progress(head)

    def issue(self, now: float, head: HeadOf) -> list[tuple[str, RequestRange]]:
        """Fill every peer's window with spans of wanted ranges nobody is fetching yet."""
        out: list[tuple[str, RequestRange]] = []
        for peer, wants in list(self._wants.items()):
            reqs = self._in_flight.setdefault(peer, [])
            for source in list(wants):
                target = wants[source][0]
                while len(reqs) < self._window:
                    first = self.covered_to(source, head(source)) + 1
                    if first > target:
                        break
                    last = min(target, first + self._span - 1)
                    reqs.append(_Request(source, first, last, now + self._timeout))
                    out.append((peer, RequestRange(source=source, first=first, last=last)))
                if len(reqs) >= self._window:
                    break
            if not reqs:
                del self._in_flight[peer]
        return out

    def next_deadline(self) -> float | None:
        deadlines = [r.deadline for reqs in self._in_flight.values() for r in reqs]
        return min(deadlines) if deadlines else None

    def peers_wanting(self) -> Iterable[str]:
        return list(self._wants)
