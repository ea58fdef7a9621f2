"""The event log: SQLite in WAL mode behind ``EventLogPort`` (swarmnode/ports.py, API.md "Event
Service").

Writes go through one writer thread with group commit (``writer.py``); reads run on reader threads a
page at a time (``reader.py``), served from a bounded cache of recent events when possible
(``recent.py``); readers wait on the hub for new events (``hub.py``). This class wires those parts
and keeps the loop-side view (heads, keys) that ``offsets``, ``query`` and ``subscribe`` read.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.eventchain import EventRecord
from swarmnode.events.hub import LogClosedError
from swarmnode.events.query import query_events, subscribe_events
from swarmnode.events.reader import ReaderPool, fetch_range
from swarmnode.events.state import Head, LogState
from swarmnode.events.writer import Commit, Writer
from swarmnode.identity import Identity
from swarmnode.ports import NewEvent, Order, Subscription

__all__ = ["EventLog", "LogClosedError", "LogStatistics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogStatistics:
    """A snapshot for tests and ``/metrics``: live readers, what they buffer, the recent-events
    cache."""

    subscriptions: int
    queries: int
    buffered_records: int
    cached_records: int
    cached_bytes: int
    commits: int


class EventLog:
    """This node's event log: its own events and those replicated from other sources.

    ``await start()`` before use, ``await stop()`` at the end; ``stop`` commits what is queued and
    ends every live subscription (a query that is not complete raises ``LogClosedError``).
    """

    def __init__(self, path: Path, identity: Identity) -> None:
        self._path = path
        self._identity = identity
        self._writer = Writer(path, identity, self._on_commit)
        self._state: LogState | None = None
        self._keys: dict[str, bytes] = {}
        self._subscriptions = 0
        self._queries = 0
        self._commits = 0

    @property
    def node_id(self) -> str:
        return self._identity.node_id

    async def start(self) -> None:
        """Open or create the database and recover heads, keys and the lamport clock."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        recovered = await self._writer.start()
        self._state = LogState(readers=ReaderPool(self._path))
        self._state.heads.update(
            (source, Head(h.offset, h.lamport)) for source, h in recovered.heads.items()
        )
        self._keys = dict(recovered.keys)
        log.info(
            "events.log_opened",
            extra={
                "path": str(self._path),
                "sources": len(recovered.heads),
                "lamport": recovered.lamport,
            },
        )

    async def stop(self) -> None:
        """Commit queued writes, end live readers, close the database."""
        state = self._state
        await self._writer.stop()
        if state is None:
            return
        state.hub.close()
        await state.readers.close()
        self._state = None

    def _running(self) -> LogState:
        if self._state is None:
            raise LogClosedError("event log is not running")
        return self._state

    def _on_commit(self, commit: Commit) -> None:
        """On the loop, in commit order: make the commit visible, then answer its callers."""
        self._commits += 1
        state = self._state
        if state is not None and commit.stored:
            heads = state.heads
            for record in commit.stored:
                heads[record.source] = Head(record.offset, record.lamport)
            state.recent.add(commit.stored)
            self._keys.update(commit.new_keys)
            state.hub.notify()
        for future, outcome in commit.outcomes:
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def publish(self, events: Sequence[NewEvent]) -> list[EventRecord]:
        """Store a batch atomically under consecutive offsets; returns the stored records.

        Returns once the batch is committed (durable) and visible to ``offsets``, ``query`` and
        ``subscribe``. A cancelled caller does not undo the write.
        """
        self._running()
        if not events:
            return []
        return await self._writer.publish(list(events))

    async def ingest(self, public_key: bytes, records: Sequence[EventRecord]) -> int:
        """Append replicated events of the source owning ``public_key``; returns how many were
        stored.

        Records must continue the source's gapless offsets and hash chain from what is held; they
        are taken up to the last one whose head signature verifies, the rest is dropped (verify.py).
        Records already held are skipped. The lamport clock becomes max(own, seen) + 1; readers are
        woken.
        """
        self._running()
        if not records:
            return 0
        return len(await self._writer.ingest(public_key, list(records)))

    def offsets(self) -> dict[str, int]:
        """Source → highest contiguous offset held (no entry for a source without events)."""
        state = self._running()
        return {source: head.offset for source, head in state.heads.items()}

    def public_key(self, source: str) -> bytes | None:
        """The Ed25519 public key of ``source`` when its events are held (for peers that verify
        them)."""
        return self._keys.get(source)

    async def read_range(self, source: str, after: int, limit: int) -> list[EventRecord]:
        """Events of ``source`` after offset ``after`` for anti-entropy: about ``limit`` of them,
        ascending, with their chains and signatures, extended (by at most 1023) to end on a signed
        head so a receiver can verify and store all of them. Empty when nothing is held after
        ``after``."""
        state = self._running()
        if after >= state.held(source):
            return []
        return await state.readers.run(lambda conn: fetch_range(conn, source, after, limit))

    async def query(
        self,
        subscriptions: Sequence[Subscription],
        lower_bound: Mapping[str, int] | None,
        upper_bound: Mapping[str, int],
        order: Order,
    ) -> AsyncGenerator[EventRecord, None]:
        """Events in (lower, upper] per source in ``order``; waits for events below
        ``upper_bound``."""
        state = self._running()
        self._queries += 1
        try:
            records = query_events(state, subscriptions, lower_bound, upper_bound, order)
            async with contextlib.aclosing(records):
                async for record in records:
                    yield record
        finally:
            self._queries -= 1

    async def subscribe(
        self, subscriptions: Sequence[Subscription], lower_bound: Mapping[str, int] | None
    ) -> AsyncGenerator[EventRecord, None]:
        """Source-ordered events after ``lower_bound``, then live ones; ends only when the log
        stops."""
        state = self._running()
        self._subscriptions += 1
        try:
            records = subscribe_events(state, subscriptions, lower_bound)
            async with contextlib.aclosing(records):
                async for record in records:
                    yield record
        finally:
            self._subscriptions -= 1

    def statistics(self) -> LogStatistics:
        state = self._state
        return LogStatistics(
            subscriptions=self._subscriptions,
            queries=self._queries,
            buffered_records=0 if state is None else state.buffered,
            cached_records=0 if state is None else state.recent.records,
            cached_bytes=0 if state is None else state.recent.bytes,
            commits=self._commits,
        )
