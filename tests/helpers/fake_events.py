"""An in-memory ``EventLogPort`` for unit tests of parts that publish or follow events.

It keeps the port's promises that those parts rely on (consecutive offsets per source, a lamport
clock, source-ordered subscriptions that wake on new events) and nothing else: no signatures, no
durability. ``add_remote`` plays an event replicated from another node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from protocol.eventchain import GENESIS_CHAIN, EventRecord
from swarmnode.ports import NewEvent, Order, Subscription

__all__ = ["FakeEventLog"]


class FakeEventLog:
    def __init__(self, node_id: str = "local0000000000") -> None:
        self._node_id = node_id
        self.records: list[EventRecord] = []
        self._lamport = 0
        self._changed = asyncio.Condition()
        self.publish_error: Exception | None = None  # set to make the next publishes fail

    @property
    def node_id(self) -> str:
        return self._node_id

    def _append(self, source: str, lamport: int, ev: NewEvent) -> EventRecord:
        record = EventRecord(
            source=source,
            offset=self.offsets().get(source, -1) + 1,
            lamport=lamport,
            timestamp=time.time_ns() // 1000,
            semantics=ev.semantics,
            name=ev.name,
            payload=ev.payload,
            chain=GENESIS_CHAIN,
        )
        self.records.append(record)
        return record

    async def publish(self, events: Sequence[NewEvent]) -> list[EventRecord]:
        if self.publish_error is not None:
            raise self.publish_error
        out = []
        for ev in events:
            self._lamport += 1
            out.append(self._append(self._node_id, self._lamport, ev))
        async with self._changed:
            self._changed.notify_all()
        return out

    async def add_remote(self, source: str, lamport: int, event: NewEvent) -> EventRecord:
        """An event of another node arriving by replication, with the lamport it was created at."""
        self._lamport = max(self._lamport, lamport) + 1
        record = self._append(source, lamport, event)
        async with self._changed:
            self._changed.notify_all()
        return record

    def offsets(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r.source] = r.offset
        return out

    @staticmethod
    def _selected(
        record: EventRecord, subscriptions: Sequence[Subscription], lower: Mapping[str, int] | None
    ) -> bool:
        if lower is not None and record.offset <= lower.get(record.source, -1):
            return False
        return any(s.matches(record.semantics, record.name, record.source) for s in subscriptions)

    async def query(
        self,
        subscriptions: Sequence[Subscription],
        lower_bound: Mapping[str, int] | None,
        upper_bound: Mapping[str, int],
        order: Order,
    ) -> AsyncIterator[EventRecord]:
        selected = [
            r
            for r in list(self.records)
            if r.offset <= upper_bound.get(r.source, -1)
            and self._selected(r, subscriptions, lower_bound)
        ]
        if order != "source-ordered":
            selected.sort(key=lambda r: (r.lamport, r.source), reverse=order == "lamport-reverse")
        for record in selected:
            yield record

    async def subscribe(
        self, subscriptions: Sequence[Subscription], lower_bound: Mapping[str, int] | None
    ) -> AsyncIterator[EventRecord]:
        position = 0

        def grown() -> bool:
            return len(self.records) > position

        while True:
            async with self._changed:
                await self._changed.wait_for(grown)
                batch = self.records[position:]
            position += len(batch)
            for record in batch:
                if self._selected(record, subscriptions, lower_bound):
                    yield record
