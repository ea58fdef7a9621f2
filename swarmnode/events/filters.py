"""Subscription lists reduced to what they select within one source (API.md, "Subscriptions").

An event is selected when any entry matches. Seen from one source, an entry naming another source
drops out and one naming this source loses its source condition; an entry with no condition left
selects the whole source. The result is used both as SQL (for reads from SQLite) and in Python (for
recent events held in memory), so both paths select exactly the same events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from swarmnode.ports import Subscription

__all__ = ["SourceFilter", "source_filter"]


@dataclass(frozen=True, slots=True)
class SourceFilter:
    """``everything``: the whole source. Otherwise events whose ``(semantics, name)`` match one of
    ``pairs`` (``None`` = any); no pairs means nothing of this source is selected."""

    everything: bool
    pairs: tuple[tuple[str | None, str | None], ...] = ()

    @property
    def nothing(self) -> bool:
        return not self.everything and not self.pairs

    def matches(self, semantics: str, name: str) -> bool:
        if self.everything:
            return True
        return any(
            (s is None or s == semantics) and (n is None or n == name) for s, n in self.pairs
        )

    def sql(self) -> tuple[str, list[str]]:
        """A condition on columns ``semantics`` and ``name`` plus its parameters ("" = no
        condition)."""
        if self.everything:
            return "", []
        if not self.pairs:
            return "0", []
        terms: list[str] = []
        params: list[str] = []
        for semantics, name in self.pairs:
            parts: list[str] = []
            if semantics is not None:
                parts.append("semantics = ?")
                params.append(semantics)
            if name is not None:
                parts.append("name = ?")
                params.append(name)
            terms.append("(" + " AND ".join(parts) + ")")
        return "(" + " OR ".join(terms) + ")", params


def source_filter(subscriptions: Sequence[Subscription], source: str) -> SourceFilter:
    """What ``subscriptions`` select of ``source``."""
    pairs: list[tuple[str | None, str | None]] = []
    for sub in subscriptions:
        if sub.source is not None and sub.source != source:
            continue
        if sub.semantics is None and sub.name is None:
            return SourceFilter(everything=True)
        pair = (sub.semantics, sub.name)
        if pair not in pairs:
            pairs.append(pair)
    return SourceFilter(everything=False, pairs=tuple(pairs))
