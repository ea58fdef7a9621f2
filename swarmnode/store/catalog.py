"""The blob catalog (SQLite): every blob known anywhere in the swarm, and every metadata event seen.

Tables:

- ``blobs``: one row per handle, with what replication needs to fetch and verify it (``bytes``,
  ``chunk_size``, ``outline_root``), its ``state`` here (``remote``: announced, bytes not here;
  ``local``: complete and verified in ``data/``; ``deleted``: removed by retention), the outline of
  a local blob (served to peers), and the newest announcement's payload (answers metadata GETs and
  the list, newest first). ``pending`` marks a blob stored by an upload whose metadata event is not
  yet recorded: retention leaves it alone, and a restart that finds it still pending (the upload
  crashed before publishing) forgets it.
- ``announcements``: the retention facts of every metadata event, keyed by ``(source, offset)``.
- ``cursor``: per source, the highest offset of that source the follower has processed, so
  following the event log resumes where it stopped (a lower bound for ``subscribe``).

Used from one thread only (the service's catalog thread); every method is synchronous and commits
before it returns. ``synchronous=FULL``: a committed row survives power loss, not only ``kill -9``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from swarmnode.store.metadata import MetadataError, MetadataEvent, policy_from_json, policy_to_json
from swarmnode.store.retention import Announcement

__all__ = ["BlobRow", "BlobState", "Catalog", "ListCursor"]

BlobState = Literal["remote", "local", "deleted"]
ListCursor = tuple[int, str]  # (lamport, source) of the last listed blob's newest announcement

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    handle TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    outline_root BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('remote', 'local', 'deleted')),
    pending INTEGER NOT NULL DEFAULT 0,
    outline BLOB,
    content_type TEXT,
    latest_lamport INTEGER,
    latest_source TEXT,
    latest_payload TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_newest ON blobs (latest_lamport, latest_source);
CREATE TABLE IF NOT EXISTS announcements (
    source TEXT NOT NULL,
    offset INTEGER NOT NULL,
    lamport INTEGER NOT NULL,
    handle TEXT NOT NULL,
    semantics TEXT NOT NULL,
    source_app TEXT,
    policy TEXT NOT NULL,
    PRIMARY KEY (source, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS announcements_handle ON announcements (handle);
CREATE TABLE IF NOT EXISTS cursor (
    source TEXT PRIMARY KEY,
    offset INTEGER NOT NULL
) WITHOUT ROWID;
"""

_ROW_COLUMNS = (
    "handle, bytes, chunk_size, outline_root, state, pending, content_type, "
    "latest_lamport, latest_source, latest_payload"
)


@dataclass(frozen=True, slots=True)
class BlobRow:
    """One blob as the catalog knows it (the outline is fetched separately: it can be 128 KiB)."""

    handle: str
    size: int
    chunk_size: int
    outline_root: bytes
    state: BlobState
    pending: bool
    content_type: str | None
    latest_lamport: int | None
    latest_source: str | None
    latest_payload: str | None

    @property
    def announced(self) -> bool:
        return self.latest_payload is not None


def _row(values: Sequence[object]) -> BlobRow:
    (handle, size, chunk, root, state, pending, ctype, lamport, source, payload) = values
    assert isinstance(handle, str)
    assert isinstance(size, int)
    assert isinstance(chunk, int)
    assert isinstance(root, bytes)
    assert state == "remote" or state == "local" or state == "deleted"
    return BlobRow(
        handle,
        size,
        chunk,
        root,
        state,
        bool(pending),
        ctype if isinstance(ctype, str) else None,
        lamport if isinstance(lamport, int) else None,
        source if isinstance(source, str) else None,
        payload if isinstance(payload, str) else None,
    )


class Catalog:
    """The SQLite catalog (see the module docstring): ``Catalog(path)``, then ``close()``."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- reads ---------------------------------------------------------------------------------

    def get(self, handle: str) -> BlobRow | None:
        cur = self._db.execute(f"SELECT {_ROW_COLUMNS} FROM blobs WHERE handle = ?", (handle,))
        found = cur.fetchone()
        return None if found is None else _row(found)

    def outline(self, handle: str) -> bytes | None:
        """The outline of a local blob (``None`` unless the bytes are here)."""
        found = self._db.execute(
            "SELECT outline FROM blobs WHERE handle = ? AND state = 'local'", (handle,)
        ).fetchone()
        return None if found is None or found[0] is None else bytes(found[0])

    def newest(self, limit: int, before: ListCursor | None) -> list[BlobRow]:
        """Announced blobs, newest announcement first, strictly older than ``before`` if given."""
        if before is None:
            cur = self._db.execute(
                f"SELECT {_ROW_COLUMNS} FROM blobs WHERE latest_lamport IS NOT NULL "
                "ORDER BY latest_lamport DESC, latest_source DESC LIMIT ?",
                (limit,),
            )
        else:
            cur = self._db.execute(
                f"SELECT {_ROW_COLUMNS} FROM blobs WHERE latest_lamport IS NOT NULL "
                "AND (latest_lamport, latest_source) < (?, ?) "
                "ORDER BY latest_lamport DESC, latest_source DESC LIMIT ?",
                (*before, limit),
            )
        return [_row(r) for r in cur.fetchall()]

    def handles_in_state(self, state: BlobState) -> list[str]:
        cur = self._db.execute("SELECT handle FROM blobs WHERE state = ?", (state,))
        return [h for (h,) in cur.fetchall()]

    def rows_in_state(self, state: BlobState) -> list[BlobRow]:
        """Rows in ``state``, oldest announcement first (replication fetches in that order)."""
        cur = self._db.execute(
            f"SELECT {_ROW_COLUMNS} FROM blobs WHERE state = ? "
            "ORDER BY latest_lamport, latest_source",
            (state,),
        )
        return [_row(r) for r in cur.fetchall()]

    def pending_handles(self) -> list[str]:
        return [h for (h,) in self._db.execute("SELECT handle FROM blobs WHERE pending = 1")]

    def cursor(self) -> dict[str, int]:
        """Per source, the highest offset already followed (a lower bound for ``subscribe``)."""
        return dict(self._db.execute("SELECT source, offset FROM cursor").fetchall())

    def announcements(self) -> list[Announcement]:
        """Every recorded announcement, as retention sees it."""
        out = []
        for handle, lamport, source, semantics, app, policy in self._db.execute(
            "SELECT handle, lamport, source, semantics, source_app, policy FROM announcements"
        ):
            try:
                parsed = policy_from_json(json.loads(policy), now=None)
            except (ValueError, MetadataError):  # stored by us, so parseable; stay total anyway
                continue
            out.append(
                Announcement(
                    handle=handle,
                    lamport=lamport,
                    source=source,
                    semantics=semantics,
                    source_app=app,
                    policy=parsed,
                )
            )
        return out

    def announcers(self, handles: Sequence[str]) -> dict[str, set[str]]:
        """The nodes that announced each of ``handles`` (they stored the bytes)."""
        out: dict[str, set[str]] = {}
        for start in range(0, len(handles), 500):  # under SQLite's bound-parameter limit
            part = handles[start : start + 500]
            marks = ",".join("?" * len(part))
            for handle, source in self._db.execute(
                f"SELECT handle, source FROM announcements WHERE handle IN ({marks})", part
            ):
                out.setdefault(handle, set()).add(source)
        return out

    def announcement_count(self, handle: str) -> int:
        found = self._db.execute(
            "SELECT COUNT(*) FROM announcements WHERE handle = ?", (handle,)
        ).fetchone()
        return int(found[0])

    # -- writes --------------------------------------------------------------------------------

    def store_local(
        self, *, handle: str, size: int, chunk_size: int, outline_root: bytes, outline: bytes
    ) -> bool:
        """Record verified bytes of ``handle`` as local; False if they were local already.

        A blob that was not local becomes ``pending`` until its metadata event is recorded.
        Verified facts replace whatever an announcement claimed (the handle fixes the content).
        """
        with self._transaction():
            row = self.get(handle)
            if row is not None and row.state == "local":
                return False
            if row is None:
                self._db.execute(
                    "INSERT INTO blobs (handle, bytes, chunk_size, outline_root, state, pending, "
                    "outline) VALUES (?, ?, ?, ?, 'local', 1, ?)",
                    (handle, size, chunk_size, outline_root, outline),
                )
            else:
                self._db.execute(
                    "UPDATE blobs SET bytes = ?, chunk_size = ?, outline_root = ?, "
                    "state = 'local', pending = 1, outline = ? WHERE handle = ?",
                    (size, chunk_size, outline_root, outline, handle),
                )
        return True

    def store_replica(self, handle: str, outline: bytes) -> bool:
        """Make an announced, not yet local row ``local`` with its outline (a verified download).

        Not ``pending``: the blob's metadata event is what made us fetch it. False if the row is
        missing or already local.
        """
        with self._transaction():
            changed = self._db.execute(
                "UPDATE blobs SET state = 'local', pending = 0, outline = ? "
                "WHERE handle = ? AND state != 'local'",
                (outline, handle),
            ).rowcount
        return bool(changed)

    def store_replicas(self, items: Iterable[tuple[str, bytes]]) -> list[str]:
        """``store_replica`` for many ``(handle, outline)`` in one transaction; returns the
        handles that became local."""
        done = []
        with self._transaction():
            for handle, outline in items:
                changed = self._db.execute(
                    "UPDATE blobs SET state = 'local', pending = 0, outline = ? "
                    "WHERE handle = ? AND state = 'remote'",
                    (outline, handle),
                ).rowcount
                if changed:
                    done.append(handle)
        return done

    def record(self, events: Iterable[MetadataEvent], cursor: dict[str, int]) -> list[str]:
        """Record metadata events (idempotent) and advance the follow cursor, in one transaction.

        ``cursor`` may name offsets of events that were not metadata or were malformed: they are
        followed too. Returns the handles this node had never heard of (now ``remote``).
        """
        new_handles: list[str] = []
        with self._transaction():
            for ev in events:
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO announcements "
                    "(source, offset, lamport, handle, semantics, source_app, policy) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        ev.source,
                        ev.offset,
                        ev.lamport,
                        ev.handle,
                        ev.semantics,
                        ev.source_app,
                        json.dumps(policy_to_json(ev.policy)),
                    ),
                ).rowcount
                if inserted and self._record_blob(ev):
                    new_handles.append(ev.handle)
            self._db.executemany(
                "INSERT INTO cursor (source, offset) VALUES (?, ?) ON CONFLICT (source) "
                "DO UPDATE SET offset = max(offset, excluded.offset)",
                cursor.items(),
            )
        return new_handles

    def _record_blob(self, ev: MetadataEvent) -> bool:
        """Make the blob row reflect one new announcement; True if the handle was unknown."""
        row = self.get(ev.handle)
        if row is None:
            self._db.execute(
                "INSERT INTO blobs (handle, bytes, chunk_size, outline_root, state, content_type, "
                "latest_lamport, latest_source, latest_payload) "
                "VALUES (?, ?, ?, ?, 'remote', ?, ?, ?, ?)",
                (
                    ev.handle,
                    ev.size,
                    ev.chunk_size,
                    ev.outline_root,
                    ev.content_type,
                    ev.lamport,
                    ev.source,
                    ev.payload,
                ),
            )
            return True
        self._db.execute("UPDATE blobs SET pending = 0 WHERE handle = ?", (ev.handle,))
        newer = row.latest_lamport is None or (ev.lamport, ev.source) > (
            row.latest_lamport,
            row.latest_source or "",
        )
        if newer:
            self._db.execute(
                "UPDATE blobs SET content_type = ?, latest_lamport = ?, latest_source = ?, "
                "latest_payload = ? WHERE handle = ?",
                (ev.content_type, ev.lamport, ev.source, ev.payload, ev.handle),
            )
        return False

    def set_state(self, handles: Iterable[str], state: BlobState) -> None:
        """Set the state of existing rows; leaving ``local`` also drops the outline."""
        with self._transaction():
            if state == "local":
                self._db.executemany(
                    "UPDATE blobs SET state = 'local' WHERE handle = ?", ((h,) for h in handles)
                )
            else:
                self._db.executemany(
                    "UPDATE blobs SET state = ?, outline = NULL, pending = 0 WHERE handle = ?",
                    ((state, h) for h in handles),
                )

    def forget(self, handles: Iterable[str]) -> None:
        """Remove rows (a crashed upload's blob that was never announced)."""
        with self._transaction():
            self._db.executemany("DELETE FROM blobs WHERE handle = ?", ((h,) for h in handles))
