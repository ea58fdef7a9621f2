"""The event log's only writer: one thread, one SQLite connection, group commit.

Publish and ingest calls queue a job and await a future. The thread takes every job waiting, applies
them in one transaction (each inside its own savepoint, so one bad job fails alone), commits once,
and then hands the outcome back to the event loop, which updates its view of the log before it
answers any caller: a caller is answered only after its events are durable and visible to readers
(read-your-writes).

The thread owns the log's write-side state (each source's head, the lamport clock, known public
keys), so offsets, chains and lamports are assigned in exactly the order rows are written. Chain
hashing, signing and signature checks run here too, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protocol.eventchain import EventRecord, chain_hash, head_signing_bytes
from protocol.ids import node_id_from_public_key
from swarmnode.events.hub import LogClosedError
from swarmnode.events.schema import INSERT_EVENT, connect, row_from_record
from swarmnode.events.verify import EMPTY_HEAD, SourceHead, verify_batch
from swarmnode.identity import Identity
from swarmnode.ports import NewEvent

__all__ = ["Commit", "Recovered", "Writer"]

log = logging.getLogger(__name__)

# The origin signs the last event of every batch and at least every SIGN_EVERY-th event of a long
# one, so a receiver never holds more than this many unverifiable events of one source.
SIGN_EVERY = 1024
# A group stops taking jobs once it holds this many events: bounds one transaction's time and
# memory.
MAX_GROUP_EVENTS = 16384


@dataclass(frozen=True, slots=True)
class Recovered:
    """The write-side state read back at start."""

    heads: dict[str, SourceHead]
    keys: dict[str, bytes]
    lamport: int


@dataclass(slots=True)
class _Job:
    future: asyncio.Future[list[EventRecord]]
    publish: Sequence[NewEvent] = ()
    public_key: bytes = b""
    records: Sequence[EventRecord] = ()

    @property
    def size(self) -> int:
        return len(self.publish) + len(self.records)


@dataclass(slots=True)
class Commit:
    """What one group commit changed, handed to the event loop in commit order."""

    stored: list[EventRecord] = field(default_factory=list)
    new_keys: dict[str, bytes] = field(default_factory=dict)
    outcomes: list[tuple[asyncio.Future[list[EventRecord]], list[EventRecord] | BaseException]] = (
        field(default_factory=list)
    )


_STOP = object()


def recover(conn: sqlite3.Connection, identity: Identity) -> Recovered:
    """Read heads, keys and the lamport clock; register the node's own key on first start."""
    keys = {
        source: bytes(key)
        for source, key in conn.execute("SELECT source, public_key FROM sources").fetchall()
    }
    own = keys.get(identity.node_id)
    if own is None:
        conn.execute(
            "INSERT INTO sources (source, public_key) VALUES (?, ?)",
            (identity.node_id, identity.public_key),
        )
        keys[identity.node_id] = identity.public_key
    elif own != identity.public_key:
        raise ValueError("the event log belongs to another identity with the same node id")
    heads: dict[str, SourceHead] = {}
    for source in keys:
        row = conn.execute(
            "SELECT off, lamport, chain FROM events WHERE source = ? ORDER BY off DESC LIMIT 1",
            (source,),
        ).fetchone()
        if row is not None:
            heads[source] = SourceHead(offset=row[0], lamport=row[1], chain=bytes(row[2]))
    stored_clock = conn.execute("SELECT value FROM meta WHERE key = 'lamport'").fetchone()
    max_lamport = conn.execute("SELECT max(lamport) FROM events").fetchone()[0]
    lamport = max(
        0 if stored_clock is None else stored_clock[0], 0 if max_lamport is None else max_lamport
    )
    return Recovered(heads=heads, keys=keys, lamport=lamport)


class Writer:
    """Owns the write connection on its own thread; ``start``, submit jobs, ``stop``."""

    def __init__(self, path: Path, identity: Identity, on_commit: Callable[[Commit], None]) -> None:
        self._path = path
        self._identity = identity
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        # Write-side state: touched only by the writer thread once it runs.
        self._heads: dict[str, SourceHead] = {}
        self._keys: dict[str, bytes] = {}
        self._lamport = 0

    async def start(self) -> Recovered:
        """Open the database on the writer thread, recover, and start taking jobs."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        ready: asyncio.Future[Recovered] = loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="events-writer", daemon=True
        )
        self._thread.start()
        try:
            recovered = await ready
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise
        self._accepting = True
        return recovered

    async def stop(self) -> None:
        """Commit every job already queued, then close the connection and end the thread."""
        self._accepting = False
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def publish(self, events: Sequence[NewEvent]) -> asyncio.Future[list[EventRecord]]:
        return self._submit(_Job(future=self._new_future(), publish=events))

    def ingest(
        self, public_key: bytes, records: Sequence[EventRecord]
    ) -> asyncio.Future[list[EventRecord]]:
        return self._submit(_Job(future=self._new_future(), public_key=public_key, records=records))

    def _new_future(self) -> asyncio.Future[list[EventRecord]]:
        if not self._accepting or self._loop is None:
            raise LogClosedError("event log is not running")
        return self._loop.create_future()

    def _submit(self, job: _Job) -> asyncio.Future[list[EventRecord]]:
        self._queue.put(job)
        return job.future

    # ---- writer thread ----

    def _post(self, callback: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            log.warning("events.writer_loop_closed")

    def _run(self, ready: asyncio.Future[Recovered]) -> None:
        try:
            conn = connect(self._path, writer=True)
        except BaseException as exc:
            self._post(_set_exception, ready, exc)
            return
        try:
            try:
                recovered = recover(conn, self._identity)
            except BaseException as exc:
                self._post(_set_exception, ready, exc)
                return
            self._heads = dict(recovered.heads)
            self._keys = dict(recovered.keys)
            self._lamport = recovered.lamport
            self._post(_set_result, ready, recovered)
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Job)
            group = [first]
            size = first.size
            while size < MAX_GROUP_EVENTS:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                assert isinstance(job, _Job)
                group.append(job)
                size += job.size
            self._post(self._on_commit, self._commit_group(conn, group))

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Job]) -> Commit:
        saved = (dict(self._heads), dict(self._keys), self._lamport)
        commit = Commit()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in group:
                conn.execute("SAVEPOINT job")
                try:
                    stored = self._apply(conn, job, commit)
                except Exception as exc:  # one bad job fails alone; the group goes on
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    log.warning("events.job_failed", extra={"error": repr(exc)})
                    commit.outcomes.append((job.future, exc))
                    continue
                conn.execute("RELEASE job")
                commit.stored.extend(stored)
                commit.outcomes.append((job.future, stored))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('lamport', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (self._lamport,),
            )
            conn.execute("COMMIT")
        except Exception as exc:
            log.error("events.commit_failed", extra={"error": repr(exc), "jobs": len(group)})
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._heads, self._keys, self._lamport = saved
            return Commit(outcomes=[(job.future, exc) for job in group])
        return commit

    def _apply(self, conn: sqlite3.Connection, job: _Job, commit: Commit) -> list[EventRecord]:
        """Write one job inside its savepoint; state changes only after its rows are in."""
        if job.publish:
            return self._apply_publish(conn, job.publish)
        if job.records:
            return self._apply_ingest(conn, job.public_key, job.records, commit)
        return []

    def _apply_publish(
        self, conn: sqlite3.Connection, events: Sequence[NewEvent]
    ) -> list[EventRecord]:
        source = self._identity.node_id
        head = self._heads.get(source, EMPTY_HEAD)
        offset, lamport, chain = head.offset, self._lamport, head.chain
        timestamp = time.time_ns() // 1000
        last = len(events) - 1
        records: list[EventRecord] = []
        for i, event in enumerate(events):
            offset += 1
            lamport += 1
            chain = chain_hash(
                chain,
                source=source,
                offset=offset,
                lamport=lamport,
                timestamp=timestamp,
                semantics=event.semantics,
                name=event.name,
                payload=event.payload,
            )
            signature = None
            if i == last or (i + 1) % SIGN_EVERY == 0:
                signature = self._identity.sign(head_signing_bytes(source, offset, chain))
            records.append(
                EventRecord(
                    source=source,
                    offset=offset,
                    lamport=lamport,
                    timestamp=timestamp,
                    semantics=event.semantics,
                    name=event.name,
                    payload=event.payload,
                    chain=chain,
                    signature=signature,
                )
            )
        conn.executemany(INSERT_EVENT, [row_from_record(r) for r in records])
        self._heads[source] = SourceHead(offset=offset, lamport=lamport, chain=chain)
        self._lamport = lamport
        return records

    def _apply_ingest(
        self,
        conn: sqlite3.Connection,
        public_key: bytes,
        records: Sequence[EventRecord],
        commit: Commit,
    ) -> list[EventRecord]:
        if len(public_key) != 32:
            raise ValueError("a public key has 32 bytes")
        source = node_id_from_public_key(public_key)
        if source == self._identity.node_id:
            log.warning("events.ingest_own_source", extra={"records": len(records)})
            return []
        known = self._keys.get(source)
        if known is not None and known != public_key:
            log.warning("events.ingest_key_mismatch", extra={"source": source})
            return []
        verdict = verify_batch(public_key, self._heads.get(source, EMPTY_HEAD), records)
        if verdict.problem is not None:
            log.warning(
                "events.ingest_rejected",
                extra={
                    "source": source,
                    "problem": verdict.problem,
                    "accepted": len(verdict.accepted),
                    "offered": len(records),
                },
            )
        accepted = verdict.accepted
        if not accepted:
            return []
        conn.executemany(INSERT_EVENT, [row_from_record(r) for r in accepted])
        if known is None:
            conn.execute(
                "INSERT INTO sources (source, public_key) VALUES (?, ?)", (source, public_key)
            )
            self._keys[source] = public_key
            commit.new_keys[source] = public_key
        last = accepted[-1]
        self._heads[source] = SourceHead(offset=last.offset, lamport=last.lamport, chain=last.chain)
        self._lamport = max(self._lamport, last.lamport) + 1
        return accepted


def _set_result(future: asyncio.Future[Recovered], value: Recovered) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Recovered], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
