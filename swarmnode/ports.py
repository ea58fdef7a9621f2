"""The ports between node parts: what the HTTP apps and the blob service need from the event log.

``api/`` and ``store/`` depend on these protocols, not on SQLite, so tests can use fakes and the
swarm can wrap the log without the apps noticing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from protocol.eventchain import EventRecord

__all__ = ["EventLogPort", "NewEvent", "Order", "Subscription"]

Order = Literal["lamport", "lamport-reverse", "source-ordered"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    """An event to publish: ``payload`` is already compact JSON text."""

    semantics: str
    name: str
    payload: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """One subscription entry; ``None`` means "any" (API.md: missing, null and "" all mean any)."""

    semantics: str | None = None
    name: str | None = None
    source: str | None = None

    def matches(self, semantics: str, name: str, source: str) -> bool:
        return (
            (self.semantics is None or self.semantics == semantics)
            and (self.name is None or self.name == name)
            and (self.source is None or self.source == source)
        )


class EventLogPort(Protocol):
    """The event log as the rest of the node sees it."""

    @property
    def node_id(self) -> str: ...

    async def publish(self, events: Sequence[NewEvent]) -> list[EventRecord]:
        """Store a batch atomically under consecutive offsets; returns the stored records."""
        ...

    def offsets(self) -> dict[str, int]:
        """Source → highest contiguous offset held (no entry for a source without events)."""
        ...

    def query(
        self,
        subscriptions: Sequence[Subscription],
        lower_bound: Mapping[str, int] | None,
        upper_bound: Mapping[str, int],
        order: Order,
    ) -> AsyncIterator[EventRecord]:
        """Events in (lower, upper] per source in ``order``; waits for those not yet held."""
        ...

    def subscribe(
        self, subscriptions: Sequence[Subscription], lower_bound: Mapping[str, int] | None
    ) -> AsyncIterator[EventRecord]:
        """Source-ordered events after ``lower_bound``, then live ones; never ends by itself."""
        ...
