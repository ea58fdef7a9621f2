"""Retention decisions, as a pure function of the metadata events a node holds and the time.

Every node runs the same function over the same replicated announcements, so the swarm agrees on
what to delete without talking about it (API.md, "Retention policies"):

- ``keepForever``: the announcement always keeps its blob.
- ``keepUntilTime``: kept while ``now <= until`` (Unix seconds); once the time has passed it keeps
  nothing.
- ``keepUntilNext``: kept until a *newer* announcement matches every property the policy names
  (``semantics``, ``source``, ``sourceApp``; none named: any newer announcement). "Newer" is the
  total order of the announcing events by ``(lamport, source)`` — the same on every node, whatever
  the arrival order.

One handle can be announced several times (identical bytes uploaded again, on this node or
another). The bytes are kept while **any** of the handle's announcements keeps them: a re-upload
never shortens the life of an earlier announcement, and an expired one never deletes bytes a later
one still wants.

Nothing here does I/O or reads a clock; the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby

__all__ = [
    "Announcement",
    "KeepForever",
    "KeepUntilNext",
    "KeepUntilTime",
    "RetentionPolicy",
    "is_kept",
    "retained_handles",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepForever:
    """Keep the bytes for as long as the swarm exists."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepUntilTime:
    """Keep the bytes while ``now <= until`` (Unix seconds)."""

    until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepUntilNext:
    """Keep the bytes until a newer announcement matches every property given (``None``: any)."""

    semantics: str | None = None
    source: str | None = None
    source_app: str | None = None

    def matches(self, other: Announcement) -> bool:
        return (
            (self.semantics is None or self.semantics == other.semantics)
            and (self.source is None or self.source == other.source)
            and (self.source_app is None or self.source_app == other.source_app)
        )


RetentionPolicy = KeepForever | KeepUntilTime | KeepUntilNext


@dataclass(frozen=True, slots=True, kw_only=True)
class Announcement:
    """What retention needs of one metadata event: who announced which handle, when, how long.

    ``source`` and ``lamport`` are the *event's* (authenticated, totally ordered), not the
    payload's.
    """

    handle: str
    lamport: int
    source: str
    semantics: str
    source_app: str | None
    policy: RetentionPolicy

    @property
    def order(self) -> tuple[int, str]:
        return (self.lamport, self.source)


# The eight subsets of the properties a keepUntilNext policy can name, as (semantics?, source?,
# sourceApp?).
_MASKS = tuple((s, o, a) for s in (False, True) for o in (False, True) for a in (False, True))
_Key = tuple[str | None, ...]


def _project(mask: tuple[bool, bool, bool], semantics: str, source: str, app: str | None) -> _Key:
    values = (semantics, source, app)
    return tuple(v for v, used in zip(values, mask, strict=True) if used)


def _policy_key(policy: KeepUntilNext) -> tuple[tuple[bool, bool, bool], _Key]:
    mask = (policy.semantics is not None, policy.source is not None, policy.source_app is not None)
    values = (policy.semantics, policy.source, policy.source_app)
    return mask, tuple(v for v, used in zip(values, mask, strict=True) if used)


def is_kept(announcement: Announcement, *, now: float, superseded: bool) -> bool:
    """Whether one announcement still keeps its bytes (``superseded``: a newer one matches it)."""
    match announcement.policy:
        case KeepForever():
            return True
        case KeepUntilTime(until=until):
            return now <= until
        case KeepUntilNext():
            return not superseded


def retained_handles(announcements: Iterable[Announcement], now: float) -> set[str]:
    """The handles some announcement still keeps; any other announced handle may be deleted.

    O(n log n): announcements are visited newest first while, for each subset of properties, the
    projections of everything newer are collected in a set, so "is there a newer match" is one
    lookup.
    """
    newest_first = sorted(announcements, key=lambda a: a.order, reverse=True)
    seen: dict[tuple[bool, bool, bool], set[_Key]] = {mask: set() for mask in _MASKS}
    kept: set[str] = set()
    # Announcements with an equal (lamport, source) are not newer than each other: check a whole
    # group before adding it (distinct events never tie, but the function stays total).
    for _, group_iter in groupby(newest_first, key=lambda a: a.order):
        group = list(group_iter)
        for ann in group:
            if ann.handle in kept:
                continue
            superseded = False
            if isinstance(ann.policy, KeepUntilNext):
                mask, key = _policy_key(ann.policy)
                superseded = key in seen[mask]
            if is_kept(ann, now=now, superseded=superseded):
                kept.add(ann.handle)
        for ann in group:
            for mask in _MASKS:
                seen[mask].add(_project(mask, ann.semantics, ann.source, ann.source_app))
    return kept
