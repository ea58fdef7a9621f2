"""The event log's SQLite schema and connection setup (DESIGN.md, "events/").

One row per event. ``(source, off)`` is unique and is how every read walks a source; ``(lamport,
source)`` is the total order of API.md and is indexed for it. The column is ``off``, not ``offset``,
because ``OFFSET`` is an SQL keyword. ``sources`` keeps each source's Ed25519 public key so
replicated events can be verified and re-served; ``meta`` keeps the lamport clock, which may run
ahead of every stored event after an ingest.

WAL mode lets readers on their own connections run beside the single writer. ``synchronous=FULL``
makes a commit durable against power loss, not only against ``kill -9`` (which WAL with NORMAL
already survives); group commit pays that fsync once per group of publish calls.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from protocol.eventchain import EventRecord, record_fields

__all__ = [
    "EVENT_COLUMNS",
    "INSERT_EVENT",
    "connect",
    "record_from_row",
    "row_from_record",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    source    TEXT    NOT NULL,
    off       INTEGER NOT NULL,
    lamport   INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    semantics TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    payload   TEXT    NOT NULL,
    chain     BLOB    NOT NULL,
    signature BLOB,
    UNIQUE (source, off)
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_lamport ON events (lamport, source);
CREATE TABLE IF NOT EXISTS sources (
    source     TEXT PRIMARY KEY,
    public_key BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

EVENT_COLUMNS = "source, off, lamport, timestamp, semantics, name, payload, chain, signature"
INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"

# A reader waits this long for a checkpoint's brief lock instead of failing at once.
_BUSY_TIMEOUT_MS = 5000


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    """Open the log database; the writer also creates the schema and switches the file to WAL.

    ``isolation_level=None`` leaves transactions to explicit ``BEGIN``/``COMMIT``, so group commit
    decides where they end. ``check_same_thread=False`` because a connection is created on one
    thread and closed on another at shutdown; each connection is still used by one thread at a time.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if writer:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(SCHEMA)
        else:
            conn.execute("PRAGMA query_only = 1")
    except BaseException:
        conn.close()
        raise
    return conn


def record_from_row(row: tuple[Any, ...]) -> EventRecord:
    """An ``EventRecord`` from a row selected as ``EVENT_COLUMNS``."""
    source, off, lamport, timestamp, semantics, name, payload, chain, signature = row
    return EventRecord(
        source=source,
        offset=off,
        lamport=lamport,
        timestamp=timestamp,
        semantics=semantics,
        name=name,
        payload=payload,
        chain=bytes(chain),
        signature=None if signature is None else bytes(signature),
    )


def row_from_record(r: EventRecord) -> tuple[Any, ...]:
    """The parameters of ``INSERT_EVENT`` for one record (its columns are in field order)."""
    return record_fields(r)
