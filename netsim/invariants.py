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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Check",
    "History",
    "acknowledged_events_everywhere",
    "gapless_subscriptions",
    "identical_events",
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


@dataclass(slots=True)
class History:
    """What the scenario did through the API and what it was told."""

    # source (node id) → payload ``id`` of every event acknowledged with 201, in publish order
    acknowledged: dict[str, list[str]] = field(default_factory=dict)
    # subscriber label → (source, offset) of every delivery, in delivery order
    deliveries: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def acked(self, source: str, ids: Iterable[str]) -> None:
        self.acknowledged.setdefault(source, []).extend(ids)

    def delivered(self, subscriber: str, source: str, offset: int) -> None:
        self.deliveries.setdefault(subscriber, []).append((source, offset))

    def upper_bounds(self) -> dict[str, int]:
        """The offsets every node must reach: the last acknowledged offset per source."""
        return {source: len(ids) - 1 for source, ids in self.acknowledged.items() if ids}


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
