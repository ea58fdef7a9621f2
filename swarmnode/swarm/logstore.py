"""The real ``EventLog`` behind the dissemination machine's synchronous ``EventStorePort``.

The machine is pure and calls its store synchronously (``swarm/eventstore.py``); the log commits on
a writer thread. This adapter bridges them as that module's docstring prescribes:

- ``ingest`` verifies with the same pure ``verify_batch`` against an in-memory head per source and
  advances that head at once, so the machine sees what it stored; the durable ``EventLog.ingest``
  calls are submitted in the same order (the writer commits them in submission order), and
  ``wait_committed`` lets the driver await them.
- ``read_range`` is served from a bounded tail of recent records per source. For an older span the
  driver first awaits ``prefetch`` (a durable read), whose result the next ``read_range`` for that
  span returns: the machine never waits.
- Events published on this node reach the adapter through ``add_local`` (fed by the driver from a
  subscription on the log, so every committed local event arrives, in order, whoever published it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from protocol.eventchain import EventRecord
from swarmnode.events.log import EventLog
from swarmnode.events.verify import EMPTY_HEAD, SourceHead, verify_batch
from swarmnode.swarm.eventstore import SIGNED_RUN_LIMIT, IngestResult, Verifier, verify_runs

__all__ = ["TAIL_RECORDS", "LogStore"]

log = logging.getLogger(__name__)

# Records kept per source for serving reads without the disk: one request span (8,192,
# DisseminationConfig.request_span) plus a signed-run extension, so a neighbour catching up on
# recent events is served from memory.
TAIL_RECORDS: Final = 8192 + SIGNED_RUN_LIMIT + 1
# Records kept across all sources' tails (~1 KiB each at most typical sizes: tens of MiB); past it
# the longest tails are cut. Memory stays bounded whatever the swarm size (DESIGN.md inv. 6).
TOTAL_TAIL_RECORDS: Final = 65536
# Prefetched spans waiting for the machine's read_range: one per request in flight per peer.
MAX_PREFETCHED: Final = 256


@dataclass(slots=True)
class _Source:
    key: bytes
    head: SourceHead
    tail: deque[EventRecord] = field(default_factory=deque)


class LogStore:
    """An ``EventStorePort`` over ``EventLog``; ``await load()`` before handing it to a machine."""

    def __init__(
        self, event_log: EventLog, *, own_key: bytes, verifier: Verifier = verify_batch
    ) -> None:
        self._log = event_log
        self._me = event_log.node_id
        self._own_key = own_key
        self._verify = verifier
        self._sources: dict[str, _Source] = {}
        self._tail_total = 0
        self._prefetched: dict[tuple[str, int], list[EventRecord]] = {}
        self._commits: deque[asyncio.Task[int]] = deque()
        self.committed = 0
        """Records the durable log accepted from ``ingest`` so far."""
        self.commit_failures = 0

    async def load(self) -> None:
        """Learn every held source's head (offset, lamport, chain) from the log."""
        for source, offset in self._log.offsets().items():
            key = self._log.public_key(source)
            last = await self._log.read_range(source, offset - 1, 1)
            if key is None or not last or last[-1].offset != offset:
                log.error("swarm.store_head_missing", extra={"source": source, "offset": offset})
                continue
            held = self._sources[source] = _Source(key, _head_of(last[-1]))
            self._push_tail(held, last[-1:])

    # ---- EventStorePort ----------------------------------------------------------------------

    def offsets(self) -> dict[str, int]:
        return {source: s.head.offset for source, s in self._sources.items()}

    def head(self, source: str) -> int:
        held = self._sources.get(source)
        return -1 if held is None else held.head.offset

    def public_key(self, source: str) -> bytes | None:
        held = self._sources.get(source)
        return None if held is None else held.key

    def read_range(self, source: str, after: int, limit: int) -> list[EventRecord]:
        fetched = self._prefetched.pop((source, after), None)
        if fetched is not None:
            return fetched
        held = self._sources.get(source)
        if held is None or limit <= 0 or after >= held.head.offset:
            return []
        tail = held.tail
        if not tail or tail[0].offset > after + 1:
            return []  # not in memory and not prefetched: the requester asks again later
        start = after + 1 - tail[0].offset
        end = min(start + limit, len(tail))
        # Extend to a signed head (the tail always ends on one: accepted runs and publish
        # batches end signed), within SIGNED_RUN_LIMIT, as EventLog.read_range does.
        stop = end
        while stop < len(tail) and tail[stop - 1].signature is None:
            if stop - end >= SIGNED_RUN_LIMIT:
                break
            stop += 1
        return [tail[i] for i in range(start, stop)]

    def ingest(self, runs: Sequence[tuple[bytes, Sequence[EventRecord]]]) -> IngestResult:
        # Our own events come back only as duplicates; anything newer would fork the log the
        # writer numbers from. Not the peer's fault: dropped, not forged (verify_runs).
        accepted, duplicates, problem, forged = verify_runs(
            runs, self._head_of, self._verify, refuse_source=self._me
        )
        if forged:
            return IngestResult([], duplicates, problem, forged=True)
        stored: list[EventRecord] = []
        for key, source, records in accepted:
            self._append(key, source, records)
            self._commit(key, records)
            stored.extend(records)
        return IngestResult(stored, duplicates, problem)

    def _head_of(self, source: str) -> SourceHead:
        held = self._sources.get(source)
        return EMPTY_HEAD if held is None else held.head

    # ---- driver side -------------------------------------------------------------------------

    def add_local(self, records: Sequence[EventRecord]) -> None:
        """Events this node published (already committed), in offset order."""
        if not records:
            return
        held = self._sources.get(self._me)
        head = -1 if held is None else held.head.offset
        fresh = [r for r in records if r.offset > head]
        if fresh and fresh[0].offset == head + 1:
            self._append(self._own_key, self._me, fresh)

    def needs_read(self, source: str, after: int) -> bool:
        """Whether ``read_range(source, after, …)`` must be prefetched from disk first."""
        held = self._sources.get(source)
        if held is None or after >= held.head.offset or (source, after) in self._prefetched:
            return False
        return not held.tail or held.tail[0].offset > after + 1

    async def prefetch(self, source: str, after: int, limit: int) -> None:
        """Read a span from the durable log for the next ``read_range(source, after, …)``."""
        records = await self._log.read_range(source, after, limit)
        if len(self._prefetched) >= MAX_PREFETCHED:
            self._prefetched.pop(next(iter(self._prefetched)))
        self._prefetched[(source, after)] = records

    async def wait_committed(self) -> None:
        """Wait until every ingest submitted so far is durable."""
        while self._commits:
            await asyncio.wait(list(self._commits))

    @property
    def pending_commits(self) -> int:
        return len(self._commits)

    async def close(self) -> None:
        """Let submitted commits finish (the log's stop commits what is queued)."""
        await self.wait_committed()

    # ---- helpers -----------------------------------------------------------------------------

    def _append(self, key: bytes, source: str, records: list[EventRecord]) -> None:
        held = self._sources.get(source)
        if held is None:
            held = self._sources[source] = _Source(key, EMPTY_HEAD)
        held.head = _head_of(records[-1])
        self._push_tail(held, records)

    def _push_tail(self, held: _Source, records: Sequence[EventRecord]) -> None:
        held.tail.extend(records)
        self._tail_total += len(records)
        while len(held.tail) > TAIL_RECORDS:
            held.tail.popleft()
            self._tail_total -= 1
        if self._tail_total > TOTAL_TAIL_RECORDS:
            self._trim()

    def _trim(self) -> None:
        """Cut the longest tails to half until the total fits (keeps each source's newest)."""
        for held in sorted(self._sources.values(), key=lambda s: len(s.tail), reverse=True):
            if self._tail_total <= TOTAL_TAIL_RECORDS // 2:
                return
            keep = len(held.tail) // 2
            while len(held.tail) > keep:
                held.tail.popleft()
                self._tail_total -= 1

    def _commit(self, key: bytes, records: list[EventRecord]) -> None:
        # Tasks start in creation order, so the writer receives the ingests in order.
        task = asyncio.get_running_loop().create_task(self._log.ingest(key, records))
        self._commits.append(task)
        task.add_done_callback(self._committed)

    def _committed(self, task: asyncio.Task[int]) -> None:
        while self._commits and self._commits[0].done():
            self._commits.popleft()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.commit_failures += 1
            log.error("swarm.commit_failed", extra={"error": repr(exc)})
        else:
            self.committed += task.result()


def _head_of(record: EventRecord) -> SourceHead:
    return SourceHead(offset=record.offset, lamport=record.lamport, chain=record.chain)
