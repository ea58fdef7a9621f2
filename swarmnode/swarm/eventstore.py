"""What the dissemination machine needs from the event store, and an in-memory store for tests and
simulation.

The port is synchronous on purpose: the Plumtree/anti-entropy machine is pure (STYLE.md §2) and a
simulator drives thousands of them on virtual time, so a store call must return at once. The
asyncio driver adapts the real ``EventLog`` to it: ``offsets``, ``head`` and ``public_key`` are
synchronous there already; ``ingest`` verifies with the same pure ``events.verify.verify_batch``
and advances an in-memory head at once while the durable write joins the log's group commit (the
driver awaits the commit, never the machine); ``read_range`` is served from the log's recent-event
cache, and for older spans the driver awaits ``EventLog.read_range`` before it hands the request to
``handle_message``. The machine keeps calls few and batched: one ``ingest`` per received batch, one
``read_range`` per served request.

``MemoryEventStore`` is faithful to the log where replication can tell: per source it holds only a
gapless prefix, it verifies chains and signed heads before storing, it stores a batch all or
nothing, and it applies the Lamport receive rule of API.md.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from protocol.eventchain import EventRecord
from swarmnode.events.verify import EMPTY_HEAD, SourceHead, Verdict, verify_batch

__all__ = [
    "SIGNED_RUN_LIMIT",
    "EventStorePort",
    "IngestResult",
    "MemoryEventStore",
    "Verifier",
    "verify_runs",
]

# read_range extends a span to the next signed head by at most this many events: the origin signs
# at least every 1024th event (events/writer.py SIGN_EVERY), as EventLog.read_range does.
SIGNED_RUN_LIMIT = 1023

# The one verdict problem an honest relay can cause: a batch cut before a signed head. Its signed
# prefix is stored; every other problem is a forgery or a protocol break.
_BENIGN_PROBLEM = "unsigned tail"

Verifier = Callable[[bytes, SourceHead, Sequence[EventRecord]], Verdict]
"""``verify_batch``'s shape; a simulator may pass a cheaper one for trusted synthetic events."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    """``stored``: the records appended, in order. ``duplicates``: records already held.
    ``problem``: why a run was cut or refused. ``forged``: a run failed verification, and then
    nothing of the call was stored."""

    stored: list[EventRecord]
    duplicates: int = 0
    problem: str | None = None
    forged: bool = False


def verify_runs(
    runs: Sequence[tuple[bytes, Sequence[EventRecord]]],
    head_of: Callable[[str], SourceHead],
    verify: Verifier,
    *,
    refuse_source: str | None = None,
) -> tuple[list[tuple[bytes, str, list[EventRecord]]], int, str | None, bool]:
    """Verify every run of an ``ingest`` call before anything is stored (all or nothing).

    Returns ``(accepted runs as (key, source, records), duplicates, problem, forged)``; when
    ``forged``, nothing may be stored. A run of ``refuse_source`` (our own source coming back) is
    dropped as a benign problem: anything newer than we hold would fork our own log.
    """
    accepted: list[tuple[bytes, str, list[EventRecord]]] = []
    duplicates = 0
    problem: str | None = None
    for key, records in runs:
        if not records:
            continue
        source = records[0].source
        if source == refuse_source:
            problem = f"{source}: own source"
            continue
        verdict = verify(key, head_of(source), records)
        duplicates += verdict.duplicates
        if verdict.problem is not None:
            problem = f"{source}: {verdict.problem}"
            if verdict.problem != _BENIGN_PROBLEM:
                return [], duplicates, problem, True
        if verdict.accepted:
            accepted.append((key, source, verdict.accepted))
    return accepted, duplicates, problem, False


class EventStorePort(Protocol):
    """The store as the dissemination machine sees it (all calls return at once)."""

    def offsets(self) -> Mapping[str, int]:
        """Source → highest contiguous offset held; sources without events are absent."""
        ...

    def head(self, source: str) -> int:
        """Highest contiguous offset held of ``source``; -1 when none."""
        ...

    def public_key(self, source: str) -> bytes | None:
        """The Ed25519 key of ``source`` once any of its events is held."""
        ...

    def read_range(self, source: str, after: int, limit: int) -> Sequence[EventRecord]:
        """About ``limit`` events of ``source`` after ``after``, ascending, extended by at most
        ``SIGNED_RUN_LIMIT`` to end on a signed head; empty when none is held."""
        ...

    def ingest(self, runs: Sequence[tuple[bytes, Sequence[EventRecord]]]) -> IngestResult:
        """Verify and append ``(public key, records of that key's source)`` runs, all or nothing:
        a forged run stores nothing of the call."""
        ...


@dataclass(slots=True)
class _Source:
    key: bytes
    records: list[EventRecord]
    signed: list[int]  # offsets of signed heads, ascending


class MemoryEventStore:
    """An ``EventStorePort`` in memory: per-source gapless lists, verified on ingest."""

    def __init__(self, *, verifier: Verifier = verify_batch) -> None:
        self._verify = verifier
        self._sources: dict[str, _Source] = {}
        self.lamport = 0
        """The node's Lamport clock: max(own, seen) + 1 on every ingest (API.md)."""

    def offsets(self) -> dict[str, int]:
        return {source: len(s.records) - 1 for source, s in self._sources.items()}

    def head(self, source: str) -> int:
        held = self._sources.get(source)
        return -1 if held is None else len(held.records) - 1

    def public_key(self, source: str) -> bytes | None:
        held = self._sources.get(source)
        return None if held is None else held.key

    def records(self, source: str) -> list[EventRecord]:
        """Every held event of ``source`` (tests compare nodes with it)."""
        held = self._sources.get(source)
        return [] if held is None else list(held.records)

    def read_range(self, source: str, after: int, limit: int) -> list[EventRecord]:
        held = self._sources.get(source)
        if held is None or limit <= 0 or after + 1 >= len(held.records):
            return []
        start = max(after + 1, 0)
        end = min(start + limit, len(held.records))  # exclusive
        # Extend to the first signed head at or after end-1, within SIGNED_RUN_LIMIT.
        i = bisect.bisect_left(held.signed, end - 1)
        if i < len(held.signed) and held.signed[i] - (end - 1) <= SIGNED_RUN_LIMIT:
            end = held.signed[i] + 1
        return held.records[start:end]

    def ingest(self, runs: Sequence[tuple[bytes, Sequence[EventRecord]]]) -> IngestResult:
        accepted, duplicates, problem, forged = verify_runs(runs, self._head_of, self._verify)
        if forged:
            return IngestResult([], duplicates, problem, forged=True)
        stored: list[EventRecord] = []
        for key, source, records in accepted:
            self._append(key, source, records)
            stored.extend(records)
        return IngestResult(stored, duplicates, problem)

    def _head_of(self, source: str) -> SourceHead:
        held = self._sources.get(source)
        if held is None:
            return EMPTY_HEAD
        last = held.records[-1]
        return SourceHead(offset=last.offset, lamport=last.lamport, chain=last.chain)

    def _append(self, key: bytes, source: str, records: list[EventRecord]) -> None:
        held = self._sources.get(source)
        if held is None:
            held = self._sources[source] = _Source(key, [], [])
        held.records.extend(records)
        held.signed.extend(r.offset for r in records if r.signature is not None)
        self.lamport = max(self.lamport, records[-1].lamport) + 1
