"""The checks a scenario's end state and recorded history must pass (DESIGN.md, invariants).

Pure functions over plain data, so a user's own scenario can call them and tests can feed them
hand-made histories that break each rule. Every check returns a ``Check``: its name, whether it
held, and a short detail naming what broke (or what was checked).

- ``acknowledged_events_everywhere``: every event whose publish got a 201 is on every live node,
  under the publishing node's source, exactly once.
- ``identical_events``: every live node holds exactly the same events, byte for byte per
  (source, offset).
- ``gapless_subscriptions``: every subscription (none has a lower bound) delivered each source's
  offsets in order from 0, without gaps or repeats.
- ``acknowledged_blobs_everywhere``: every blob whose upload got a 201 (with the handle its bytes
  hash to) reads back whole and byte-exact from every live node.
- ``served_bytes_match``: every byte any node ever served in a blob read the scenario made (reads
  during faults and reads cut short included) is the blob's byte at that offset.
- ``never_marked_dead``: no observer ever saw the given nodes as dead (a slow node is not a
  dead one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netsim.blobs import BlobRead, BlobSpec

__all__ = [
    "Check",
    "History",
    "StateSeen",
    "acknowledged_blobs_everywhere",
    "acknowledged_events_everywhere",
    "gapless_subscriptions",
    "identical_events",
    "never_marked_dead",
    "served_bytes_match",
]

Event = Mapping[str, Any]
"""One event as the events API returns it (``stream.source``, ``offset``, ``payload``, ...)."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class StateSeen:
    """One observation of a peer's membership state: ``observer`` (a node name) saw ``peer``
    (a node id) in ``state`` at ``at`` (seconds on the run's monotonic clock)."""

    observer: str
    peer: str
    state: str
    at: float


@dataclass(slots=True)
class History:
    """What the scenario did through the API and what it was told."""

    # source (node id) → payload ``id`` of every event acknowledged with 201, in publish order
    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    # subscriber label → (source, offset) of every delivery, in delivery order
    deliveries: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    # handle → the blob, for every upload acknowledged with 201 and the right handle
    blobs: dict[str, BlobSpec] = field(default_factory=dict)
    # uploads whose 201 named another handle than the bytes hash to: (node, expected, answered)
    wrong_handles: list[tuple[str, str, str]] = field(default_factory=list)
    # every blob read the scenario made, in the order they finished
    reads: list[BlobRead] = field(default_factory=list)
    # source → the highest offset it held right after one of its acknowledged writes
    bounds: dict[str, int] = field(default_factory=dict)
    # membership states seen by observers that watch (a scenario opts in)
    states: list[StateSeen] = field(default_factory=list)

    def acked(self, source: str, ids: Iterable[str]) -> None:
        self.acknowledged.setdefault(source, []).extend(ids)

    def reached(self, source: str, offset: int) -> None:
        """``source`` itself held ``offset`` right after an acknowledged write: every node must
        reach it (blob uploads publish metadata events, so offsets outrun acknowledged ids)."""
        self.bounds[source] = max(offset, self.bounds.get(source, -1))

    def blob_acked(self, node: str, spec: BlobSpec, handle: str) -> None:
        if handle == spec.handle:
            self.blobs[handle] = spec
        else:
            self.wrong_handles.append((node, spec.handle, handle))

    def read(self, result: BlobRead) -> None:
        self.reads.append(result)

    def delivered(self, subscriber: str, source: str, offset: int) -> None:
        self.deliveries.setdefault(subscriber, []).append((source, offset))

    def upper_bounds(self) -> dict[str, int]:
        """The offsets every node must reach: per source, the highest one it held right after
        an acknowledged write, or else the count of its acknowledged events less one."""
        bounds = {source: len(ids) - 1 for source, ids in self.acknowledged.items() if ids}
        for source, offset in self.bounds.items():
            bounds[source] = max(offset, bounds.get(source, -1))
        return bounds


def _source(event: Event) -> str:
    return str(event["stream"]["source"])


def _id(event: Event) -> str | None:
    payload = event.get("payload")
    return payload.get("id") if isinstance(payload, dict) else None


def acknowledged_events_everywhere(history: History, held: Mapping[str, Sequence[Event]]) -> Check:
    """``held``: node name → every event it holds."""
    problems: list[str] = []
    for node, events in held.items():
        seen: dict[tuple[str, str], int] = {}
        for event in events:
            key = (_source(event), str(_id(event)))
            seen[key] = seen.get(key, 0) + 1
        for source, ids in history.acknowledged.items():
            missing = [i for i in ids if seen.get((source, i), 0) == 0]
            doubled = [i for i in ids if seen.get((source, i), 0) > 1]
            if missing:
                problems.append(
                    f"{node} lacks {len(missing)} of {source[:8]}'s (first {missing[0]})"
                )
            if doubled:
                problems.append(f"{node} holds {len(doubled)} of {source[:8]}'s twice")
    total = sum(len(ids) for ids in history.acknowledged.values())
    detail = "; ".join(problems[:5]) or f"{total} acknowledged events on all {len(held)} nodes"
    return Check("acknowledged events on every live node", not problems, detail)


def identical_events(held: Mapping[str, Sequence[Event]]) -> Check:
    """Every node's events, keyed by (source, offset), compare equal as JSON."""
    reference: dict[tuple[str, int], str] | None = None
    reference_node = ""
    problems: list[str] = []
    for node, events in held.items():
        keyed: dict[tuple[str, int], str] = {}
        for event in events:
            key = (_source(event), int(event["offset"]))
            if key in keyed:
                problems.append(f"{node} holds {key[0][:8]}/{key[1]} twice")
            keyed[key] = json.dumps(event, sort_keys=True)
        if reference is None:
            reference, reference_node = keyed, node
            continue
        if keyed.keys() != reference.keys():
            only_here = len(keyed.keys() - reference.keys())
            only_there = len(reference.keys() - keyed.keys())
            problems.append(
                f"{node} and {reference_node} differ: {only_here} events only on {node}, "
                f"{only_there} only on {reference_node}"
            )
            continue
        changed = [k for k in keyed if keyed[k] != reference[k]]
        if changed:
            problems.append(f"{node} and {reference_node} differ at {len(changed)} events")
    count = 0 if reference is None else len(reference)
    detail = "; ".join(problems[:5]) or f"{count} events, identical on {len(held)} nodes"
    return Check("identical events per (source, offset)", not problems, detail)


def gapless_subscriptions(history: History) -> Check:
    """Per subscriber and source: offsets 0, 1, 2, ... in delivery order."""
    problems: list[str] = []
    delivered = 0
    for subscriber, deliveries in history.deliveries.items():
        last: dict[str, int] = {}
        for source, offset in deliveries:
            delivered += 1
            before = last.get(source, -1)
            if offset != before + 1:
                problems.append(f"{subscriber}: {source[:8]} went from {before} to {offset}")
            last[source] = offset
    detail = "; ".join(problems[:5]) or (
        f"{delivered} deliveries to {len(history.deliveries)} subscriptions, all in order"
    )
    return Check("per-source gapless order in every subscription", not problems, detail)


def acknowledged_blobs_everywhere(
    history: History, final_reads: Mapping[str, Sequence[BlobRead]]
) -> Check:
    """``final_reads``: node name → its full reads of the acknowledged blobs at the end."""
    problems = [
        f"{node} answered {got} for {want[:20]}" for node, want, got in history.wrong_handles
    ]
    for node, reads in final_reads.items():
        by_handle = {r.handle: r for r in reads}
        for handle, spec in history.blobs.items():
            got = by_handle.get(handle)
            if got is None:
                problems.append(f"{node}: {spec.name} was not read")
            elif got.status != 200 or not got.complete:
                problems.append(f"{node}: {spec.name} answered {got.status} {got.error[:80]}")
            elif got.length != spec.size or got.digest != handle.removeprefix("blake3:"):
                problems.append(
                    f"{node}: {spec.name} read {got.length} of {spec.size} bytes, wrong"
                )
    total = sum(s.size for s in history.blobs.values())
    detail = "; ".join(problems[:5]) or (
        f"{len(history.blobs)} blobs ({total:,} bytes) byte-exact on all {len(final_reads)} nodes"
    )
    return Check("acknowledged blobs byte-exact on every live node", not problems, detail)


def served_bytes_match(history: History) -> Check:
    """Each read's body (however far it got) hashes like the same prefix of its blob."""
    problems: list[str] = []
    digests: dict[tuple[str, int], str] = {}
    checked = 0
    for read in history.reads:
        spec = history.blobs.get(read.handle)
        if spec is None or read.length == 0:
            continue
        checked += read.length
        if read.length > spec.size:
            problems.append(f"{read.node} served {read.length} bytes of {spec.name} ({spec.size})")
            continue
        key = (read.handle, read.length)
        if key not in digests:
            digests[key] = spec.prefix_digest(read.length)
        if digests[key] != read.digest:
            problems.append(f"{read.node} served {spec.name}'s first {read.length} bytes wrong")
    detail = "; ".join(problems[:5]) or (
        f"{len(history.reads)} reads, {checked:,} bytes served, all the blobs' own"
    )
    return Check("no node served bytes that are not the blob's", not problems, detail)


def never_marked_dead(history: History, peers: Mapping[str, str]) -> Check:
    """``peers``: node id → name of the nodes that must never be seen dead."""
    seen = [s for s in history.states if s.peer in peers]
    dead = [s for s in seen if s.state == "dead"]
    problems = [f"{s.observer} marked {peers[s.peer]} dead at +{s.at:.1f} s" for s in dead]
    suspected = sum(1 for s in seen if s.state == "suspect")
    names = ", ".join(sorted(peers.values()))
    detail = "; ".join(problems[:5]) or (
        f"{names} never marked dead in {len(seen)} observations ({suspected} suspicions)"
    )
    return Check(f"{names} never marked dead", not problems, detail)
