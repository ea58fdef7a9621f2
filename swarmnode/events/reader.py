"""Reads off the event loop: a small thread pool, each thread with its own read-only SQLite
connection.

WAL lets these readers run beside the writer. Every read is one bounded page, so a thread is never
held long and a big query cannot starve the others. The page functions here are plain functions of a
connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from protocol.eventchain import EventRecord
from swarmnode.events.filters import SourceFilter
from swarmnode.events.hub import LogClosedError
from swarmnode.events.schema import EVENT_COLUMNS, connect, record_from_row

__all__ = ["ReaderPool", "fetch_page", "fetch_range"]

T = TypeVar("T")

# Two cores on the target machine: two readers keep one core for the loop and the writer.
DEFAULT_READERS = 2
# The origin signs at least every 1024th event of a batch (protocol/eventchain.py), so a range
# extended by this many records always reaches a signed head.
SIGNED_HEAD_SPACING = 1024


class ReaderPool:
    """Runs page reads on reader threads; ``close`` waits for running reads and closes the
    connections."""

    def __init__(self, path: Path, workers: int = DEFAULT_READERS) -> None:
        self._path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="events-reader", initializer=self._open
        )
        self._closed = False

    def _open(self) -> None:
        conn = connect(self._path, writer=False)
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection = self._local.conn
        return fn(conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on a reader thread."""
        if self._closed:
            raise LogClosedError("event log stopped")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


def fetch_page(
    conn: sqlite3.Connection,
    *,
    source: str,
    after: int,
    upto: int,
    selected: SourceFilter,
    limit: int,
    descending: bool = False,
) -> tuple[list[EventRecord], int]:
    """Selected events of ``source`` with ``after < offset <= upto``, at most ``limit``, and the
    offset scanned to: ascending, the highest offset looked at; descending (from ``upto`` down), the
    lowest one. Scanning stops at ``limit`` selected rows, so a page stays small whatever the
    range."""
    condition, params = selected.sql()
    where = "source = ? AND off > ? AND off <= ?" + (" AND " + condition if condition else "")
    direction = "DESC" if descending else "ASC"
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY off {direction} LIMIT ?",
        [source, after, upto, *params, limit],
    ).fetchall()
    records = [record_from_row(row) for row in rows]
    if len(records) < limit:
        return records, (after + 1 if descending else upto)
    return records, records[-1].offset


def fetch_range(conn: sqlite3.Connection, source: str, after: int, limit: int) -> list[EventRecord]:
    """About ``limit`` events of ``source`` after ``after``, extended to end on a signed head (see
    ``EventLog.read_range``)."""
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE source = ? AND off > ? ORDER BY off LIMIT ?",
        (source, after, max(1, limit)),
    ).fetchall()
    records = [record_from_row(row) for row in rows]
    if not records or records[-1].signature is not None:
        return records
    more = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE source = ? AND off > ? ORDER BY off LIMIT ?",
        (source, records[-1].offset, SIGNED_HEAD_SPACING),
    ).fetchall()
    for row in more:
        record = record_from_row(row)
        records.append(record)
        if record.signature is not None:
            break
    return records
