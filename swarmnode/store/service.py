"""The blob service: stores uploads, knows every blob announced in the swarm, applies retention.

It owns ``<data-dir>/blobs`` (layout in files.py), the SQLite catalog (catalog.py, used on one
thread), the retention timer, and a follower that reads the event log's metadata events from a
persisted cursor, so the catalog learns of every blob announced anywhere (local or not yet here).

An upload: ``begin_upload()`` → ``write`` the bytes (any size of pieces) → ``store(...)``, which
seals the temp file, renames it into ``data/``, commits the catalog row, publishes the metadata
event, records it, and only then returns the handle (the HTTP app answers 201 after that).

Blob replication (``swarmnode/swarm/transfer.py``) plugs in here:

- ``add_listener(fn)``: ``fn()`` runs after every batch of metadata events is recorded and after
  every retention pass, so replication reconciles what it fetches with ``wanted_rows()`` (state
  ``remote``: size, chunk size, outline root and the announcing node in each row).
- ``fetcher``: what ``fetch(row)`` calls for a ``GET`` of a blob known but not local; replication
  sets it to start (or join) the download with priority and return a reader that streams the
  verified prefix as it grows. Unset, ``fetch`` raises ``BlobNotAvailable``.
- ``outline(handle)`` serves the outline of a local blob to peers; downloads are assembled in
  ``partial/`` (partial.py), which ``recover`` leaves alone, and ``install_replica`` makes a
  complete, verified download local (maintenance.py has the crash-safe ordering).

Readers (``BlobReader``): ``read(offset, length)`` returns the next bytes at ``offset`` (at most
``length``, at least one), waiting for them if the blob is still arriving; ``close()`` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

from protocol.eventchain import EventRecord
from swarmnode.config import Config
from swarmnode.ports import EventLogPort, NewEvent, Subscription
from swarmnode.store import maintenance, replicas
from swarmnode.store.catalog import BlobRow, Catalog, ListCursor
from swarmnode.store.errors import BlobDeleted, BlobNotAvailable, UnknownBlob
from swarmnode.store.files import (
    BufferPool,
    IngestedFile,
    IngestWriter,
    StoreLayout,
    WriteFn,
    tune_allocator,
)
from swarmnode.store.metadata import (
    METADATA_NAME,
    METADATA_SEMANTICS,
    ClientMetadata,
    MetadataError,
    MetadataEvent,
    build_payload,
    encode_payload,
    hex_of_handle,
    parse_metadata_event,
)

if TYPE_CHECKING:
    from swarmnode.store.partial import PartialBlob

__all__ = ["BlobReader", "BlobService", "LocalBlob"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_METADATA_SUBSCRIPTION = (Subscription(semantics=METADATA_SEMANTICS, name=METADATA_NAME),)
# Metadata events buffered between the event log and the catalog; beyond this the subscription
# waits (the log never lets one slow subscriber block others), and a batch is one transaction.
_FOLLOW_QUEUE = 4096
_INGEST_THREADS = 4
# Threads that write and fdatasync small replicas side by side: the filesystem journal commits
# concurrent syncs together, so more syncs in flight cost about the same as one.
_SYNC_THREADS = 16


class BlobReader(Protocol):
    """An open blob for one response: complete (``LocalBlob``) or still arriving."""

    handle: str
    size: int
    content_type: str

    async def read(self, offset: int, length: int) -> bytes:
        """Bytes from ``offset``: at least one, at most ``length`` (waits if they are not here).

        Cancel-safe: once a cancelled read returns, it does no more work on the blob.
        """
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class LocalBlob:
    """An open, complete local blob; ``close()`` it (``file`` is opened unbuffered)."""

    handle: str
    size: int
    content_type: str
    file: BinaryIO

    async def read(self, offset: int, length: int) -> bytes:
        """``pread`` on a worker thread; raises ``ConnectionResetError`` if the file is short.

        Cancel-safe: a cancelled read still waits for its thread, so ``close()`` never races it.
        """
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, os.pread, self.file.fileno(), length, offset)
        try:
            piece = await asyncio.shield(job)
        except asyncio.CancelledError:
            await asyncio.wait([job])
            raise
        if not piece:
            raise ConnectionResetError("blob file shorter than its catalog size")
        return piece

    def close(self) -> None:
        self.file.close()


class BlobService:
    """See the module docstring. ``await start()`` before use, ``await stop()`` at the end.

    ``clock`` (Unix seconds) drives createdOn and retention, so tests need not sleep; ``write`` is
    the write call of the ingest path, so tests can inject ENOSPC.
    """

    def __init__(
        self,
        root: Path,
        events: EventLogPort,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        write: WriteFn = os.write,
    ) -> None:
        self.layout = StoreLayout(root)
        self._events = events
        self._config = config
        self._clock = clock
        self._write = write
        self._catalog: Catalog | None = None
        self._db_thread: ThreadPoolExecutor | None = None
        self._io_threads: ThreadPoolExecutor | None = None
        self._sync_threads: ThreadPoolExecutor | None = None
        self._pool: BufferPool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._retention_wake = asyncio.Event()
        self._retention_lock = asyncio.Lock()
        self._retention_changed = asyncio.Condition()
        self._retention_wanted = 0
        self._retention_done = 0
        self.retention_deleted = 0
        self._followed: dict[str, int] = {}
        self._followed_changed = asyncio.Condition()
        self._listeners: list[Callable[[], None]] = []
        self._local_listeners: list[Callable[[str, int, int, bool], None]] = []
        self.fetcher: Callable[[BlobRow], Awaitable[BlobReader]] | None = None
        """Set by blob replication: how ``fetch`` gets a blob that is not local."""
        self.holders: Callable[[str], Iterable[str]] | None = None
        """Set by blob replication: peers a download here sees holding chunks of a blob."""

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the catalog, catch up with the event log, clean crash leftovers, start tasks."""
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="blob-catalog")
        self._io_threads = ThreadPoolExecutor(_INGEST_THREADS, thread_name_prefix="blob-io")
        self._sync_threads = ThreadPoolExecutor(_SYNC_THREADS, thread_name_prefix="blob-sync")
        self._pool = BufferPool()
        tuned = tune_allocator()
        await self._db(self.layout.ensure)
        self._catalog = await self._db(Catalog, self.layout.catalog)
        await self._catch_up()
        report = await self._db(maintenance.recover, self.layout, self._catalog)
        log.info(
            "blob.store_opened",
            extra={
                "root": str(self.layout.root),
                "tmp_removed": report.tmp_removed,
                "orphans_removed": report.orphans_removed,
                "uploads_forgotten": report.uploads_forgotten,
                "missing_files": report.missing_files,
                "allocator_tuned": tuned,
            },
        )
        queue: asyncio.Queue[MetadataEvent | tuple[str, int]] = asyncio.Queue(_FOLLOW_QUEUE)
        self._tasks = [
            asyncio.create_task(self._follow(queue), name="blobs-follow"),
            asyncio.create_task(self._record_followed(queue), name="blobs-record"),
            asyncio.create_task(self._retention_loop(), name="blobs-retention"),
        ]
        self._request_retention()

    async def stop(self) -> None:
        """Cancel and await the background tasks, close the catalog and the threads."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("blob.task_failed", extra={"task": task.get_name()})
        self._tasks.clear()
        if self._catalog is not None:
            await self._db(self._catalog.close)
            self._catalog = None
        for executor in (self._sync_threads, self._io_threads, self._db_thread):
            if executor is not None:
                await asyncio.to_thread(executor.shutdown)
        self._io_threads = self._db_thread = self._sync_threads = None

    async def _db(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` on the catalog thread (the only thread that touches the catalog)."""
        assert self._db_thread is not None, "BlobService is not started"
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    @property
    def catalog(self) -> Catalog:
        assert self._catalog is not None, "BlobService is not started"
        return self._catalog

    @property
    def node_id(self) -> str:
        return self._events.node_id

    # -- following the event log ---------------------------------------------------------------

    @staticmethod
    def _parse(record: EventRecord) -> MetadataEvent | tuple[str, int]:
        """A metadata event, or ``(source, offset)`` of an unusable one (followed all the same)."""
        try:
            return parse_metadata_event(record)
        except MetadataError as exc:
            log.warning(
                "blob.metadata_rejected",
                extra={"source": record.source, "offset": record.offset, "error": str(exc)},
            )
            return (record.source, record.offset)

    async def _record(
        self, items: list[MetadataEvent | tuple[str, int]], *, follow: bool = True
    ) -> None:
        """Record events in the catalog; ``follow``: they come in log order, advance the cursor.

        An upload records its own event out of band (read-your-writes) without touching the
        cursor: only the follower, which sees every event in order, may move it past an event.
        """
        cursor: dict[str, int] = {}
        events = []
        for item in items:
            source, offset = item if isinstance(item, tuple) else (item.source, item.offset)
            cursor[source] = max(cursor.get(source, -1), offset)
            if not isinstance(item, tuple):
                events.append(item)
        if not follow:
            cursor = {}
        new = await self._db(self.catalog.record, events, cursor)
        if new:
            log.info("blob.announced", extra={"handles": new[:10], "count": len(new)})
        if events:
            self._request_retention()
            self._notify()
        async with self._followed_changed:
            for source, offset in cursor.items():
                self._followed[source] = max(self._followed.get(source, -1), offset)
            self._followed_changed.notify_all()

    async def wait_followed(self, source: str, offset: int) -> None:
        """Wait until the metadata events of ``source`` up to ``offset`` are in the catalog.

        For callers that saw an event in the log (a test, or replication's notification) and
        need the catalog to know it; counts only events recorded since this service started.
        """
        async with self._followed_changed:
            await self._followed_changed.wait_for(lambda: self._followed.get(source, -1) >= offset)

    async def _catch_up(self) -> None:
        """Record every metadata event the log already holds, before recovery looks at the rows."""
        cursor = await self._db(self.catalog.cursor)
        upper = self._events.offsets()
        batch: list[MetadataEvent | tuple[str, int]] = []
        records = self._events.query(_METADATA_SUBSCRIPTION, cursor, upper, "source-ordered")
        async with _closing(records):
            async for record in records:
                batch.append(self._parse(record))
                if len(batch) >= _FOLLOW_QUEUE:
                    await self._record(batch)
                    batch = []
        if batch:
            await self._record(batch)

    async def _follow(self, queue: asyncio.Queue[MetadataEvent | tuple[str, int]]) -> None:
        cursor = await self._db(self.catalog.cursor)
        records = self._events.subscribe(_METADATA_SUBSCRIPTION, cursor)
        async with _closing(records):
            async for record in records:
                await queue.put(self._parse(record))
        log.info("blob.follow_ended")

    async def _record_followed(self, queue: asyncio.Queue[MetadataEvent | tuple[str, int]]) -> None:
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < _FOLLOW_QUEUE:
                batch.append(queue.get_nowait())
            try:
                await self._record(batch)
            except Exception:
                log.exception("blob.record_failed", extra={"count": len(batch)})

    # -- uploads -------------------------------------------------------------------------------

    async def begin_upload(self) -> IngestWriter:
        """A writer for one upload's bytes; ``store`` it, or ``abort()`` it on any failure."""
        assert self._pool is not None, "not started"
        assert self._io_threads is not None, "not started"
        writer = IngestWriter(
            self.layout,
            self._pool,
            self._io_threads,
            max_bytes=self._config.max_blob_bytes,
            write=self._write,
        )
        await writer.open()
        return writer

    def now(self) -> float:
        """The service's clock (Unix seconds): what uploads validate ``keepUntilTime`` against."""
        return self._clock()

    async def store(
        self,
        writer: IngestWriter,
        meta: ClientMetadata,
        *,
        content_type: str | None,
        filename: str | None,
    ) -> str:
        """Seal, install and announce an upload; returns its handle once the event is published.

        Raises ``DiskFull`` (nothing of this upload stays) and whatever publishing raises; on any
        exception the caller still calls ``writer.abort()`` (harmless after a successful seal).
        """
        ingested: IngestedFile = await writer.finish()
        handle = await self._db(maintenance.install_blob, self.layout, self.catalog, ingested)
        row = await self._db(self.catalog.get, handle)
        assert row is not None
        self._local_changed(handle, row.size, row.chunk_size, True)
        payload = build_payload(
            handle=handle,
            created_on_us=int(self._clock() * 1_000_000),
            source=self._events.node_id,
            meta=meta,
            size=row.size,
            content_type=content_type or "application/octet-stream",
            filename=filename,
            chunk_size=row.chunk_size,
            outline_root=row.outline_root,
        )
        event = NewEvent(
            semantics=METADATA_SEMANTICS, name=METADATA_NAME, payload=encode_payload(payload)
        )
        records = await self._events.publish([event])
        # Recorded here, not only by the follower: the 201 promises read-your-writes.
        await self._record([self._parse(r) for r in records], follow=False)
        log.info(
            "blob.stored",
            extra={"handle": handle, "bytes": row.size, "semantics": meta.semantics},
        )
        return handle

    # -- reads ---------------------------------------------------------------------------------

    async def lookup(self, handle: str) -> BlobRow | None:
        """The catalog row of an announced blob (``None`` if no announcement reached this node)."""
        row = await self._db(self.catalog.get, handle)
        return row if row is not None and row.announced else None

    async def catalog_row(self, handle: str) -> BlobRow | None:
        """The raw catalog row, announced or not (diagnostics and replication)."""
        return await self._db(self.catalog.get, handle)

    async def open_blob(self, handle: str) -> BlobReader:
        """Open a blob's bytes for reading.

        Raises ``UnknownBlob`` (no announcement here), ``BlobDeleted`` (retention removed the
        bytes), or whatever ``fetch`` raises for a blob that is not local.
        """
        row = await self.lookup(handle)
        if row is None:
            raise UnknownBlob(handle)
        if row.state == "deleted":
            raise BlobDeleted(handle)
        if row.state == "remote":
            return await self.fetch(row)
        path = self.layout.data_path(hex_of_handle(handle))
        try:
            file = await asyncio.get_running_loop().run_in_executor(
                self._io_threads, _open_unbuffered, path
            )
        except FileNotFoundError:
            raise BlobDeleted(handle) from None  # retention removed it since the lookup
        return LocalBlob(handle, row.size, row.content_type or "application/octet-stream", file)

    async def fetch(self, row: BlobRow) -> BlobReader:
        """A reader for a blob that is not local: ``fetcher``'s (module docstring), else
        ``BlobNotAvailable``."""
        if self.fetcher is None:
            raise BlobNotAvailable(row.handle)
        return await self.fetcher(row)

    async def open_local(self, handle: str) -> LocalBlob | None:
        """The complete local bytes of ``handle``, or ``None`` if they are not (any more) here."""
        row = await self.lookup(handle)
        if row is None or row.state != "local":
            return None
        path = self.layout.data_path(hex_of_handle(handle))
        try:
            file = await asyncio.get_running_loop().run_in_executor(
                self._io_threads, _open_unbuffered, path
            )
        except FileNotFoundError:
            return None
        return LocalBlob(handle, row.size, row.content_type or "application/octet-stream", file)

    async def metadata(self, handle: str) -> dict[str, Any] | None:
        """The newest metadata event payload of ``handle`` plus where its bytes are, or ``None``.

        Adds ``local`` (bytes complete here), ``peers`` (other nodes known to hold them: those
        that announced the blob, and those a download here sees holding chunks of it) and
        ``deleted`` (retention removed them, on every node).
        """
        row = await self.lookup(handle)
        if row is None:
            return None
        return (await self._describe([row]))[0]

    async def list_blobs(
        self, *, limit: int, before: ListCursor | None
    ) -> tuple[list[dict[str, Any]], ListCursor | None]:
        """Announced blobs' metadata, newest first; the cursor continues after the last one."""
        rows = await self._db(self.catalog.newest, limit, before)
        items = await self._describe(rows)
        last = rows[-1] if len(rows) == limit else None
        after = None
        if last is not None and last.latest_lamport is not None and last.latest_source:
            after = (last.latest_lamport, last.latest_source)
        return items, after

    async def _describe(self, rows: Sequence[BlobRow]) -> list[dict[str, Any]]:
        """Metadata of ``rows`` for the API, with the peers known to hold each (see metadata)."""
        live = [r.handle for r in rows if r.state != "deleted"]
        announcers = await self._db(self.catalog.announcers, live) if live else {}
        me = self.node_id
        out = []
        for row in rows:
            peers = set(announcers.get(row.handle, ()))
            if self.holders is not None and row.state != "deleted":
                peers.update(self.holders(row.handle))
            peers.discard(me)
            out.append(_describe_row(row, sorted(peers)))
        return out

    # -- replication hooks ---------------------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each recorded batch of metadata events and retention pass."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("blob.listener_failed")

    async def wanted(self) -> list[str]:
        """Handles announced and retained but not local: what replication should fetch."""
        return await self._db(self.catalog.handles_in_state, "remote")

    async def wanted_rows(self) -> list[BlobRow]:
        """The rows of ``wanted()``, oldest announcement first."""
        return await self._db(self.catalog.rows_in_state, "remote")

    async def install_replica(self, partial: PartialBlob) -> None:
        """Make a finished, verified download local (maintenance.install_replica)."""
        await self._db(maintenance.install_replica, self.layout, self.catalog, partial)
        log.debug("blob.replica_installed", extra={"handle": partial.handle})
        self._local_changed(partial.handle, partial.size, partial.chunk_size, True)
        self._notify()

    async def install_small_replicas(
        self, items: Sequence[tuple[BlobRow, bytes | memoryview, bytes]]
    ) -> tuple[list[str], BaseException | None]:
        """Install verified one-chunk downloads ``(row, content, outline)`` in one batch
        (replicas.py); returns the handles installed and the first error that kept others out
        (``DiskFull``, say); the rest were no longer wanted."""
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._sync_threads, replicas.write_durable_tmp, self.layout, data
                )
                for _, data, _ in items
            ),
            return_exceptions=True,
        )
        error = next((r for r in results if isinstance(r, BaseException)), None)
        ready = [
            (row.handle, path, outline)
            for (row, _, outline), path in zip(items, results, strict=True)
            if isinstance(path, Path)
        ]
        installed: list[str] = []
        if ready:
            try:
                installed = await self._db(
                    replicas.publish_replicas, self.layout, self.catalog, ready
                )
            except Exception as exc:
                for _, path, _ in ready:
                    path.unlink(missing_ok=True)
                return [], exc
        sizes = {row.handle: (row.size, row.chunk_size) for row, _, _ in items}
        for handle in installed:
            self._local_changed(handle, *sizes[handle], True)
        if installed:
            self._notify()
        return installed, error

    def add_local_listener(self, listener: Callable[[str, int, int, bool], None]) -> None:
        """Call ``listener(handle, size, chunk_size, present)`` when a blob's complete bytes
        arrive here (an upload, before its metadata event is published; an installed replica) and
        when retention deletes them (``present`` False, sizes 0): serving peers needs to know
        what is local without a catalog round trip per request."""
        self._local_listeners.append(listener)

    def _local_changed(self, handle: str, size: int, chunk_size: int, present: bool) -> None:
        for listener in self._local_listeners:
            try:
                listener(handle, size, chunk_size, present)
            except Exception:
                log.exception("blob.listener_failed")

    async def local_rows(self) -> list[BlobRow]:
        """Every blob whose complete bytes are here."""
        return await self._db(self.catalog.rows_in_state, "local")

    async def io(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run blocking file work on the store's I/O threads."""
        assert self._io_threads is not None, "BlobService is not started"
        return await asyncio.get_running_loop().run_in_executor(self._io_threads, fn, *args)

    async def outline(self, handle: str) -> bytes | None:
        """The outline of a local blob, to serve to peers (``None`` if the bytes are not here)."""
        return await self._db(self.catalog.outline, handle)

    def partial_path(self, handle: str) -> Path:
        """Where replication assembles a download of ``handle``."""
        return self.layout.partial_path(hex_of_handle(handle))

    # -- retention -----------------------------------------------------------------------------

    def _request_retention(self) -> None:
        self._retention_wanted += 1
        self._retention_wake.set()

    async def _retention_loop(self) -> None:
        interval = self._config.retention_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._retention_wake.wait()
            self._retention_wake.clear()
            try:
                await self.run_retention()
            except Exception:
                log.exception("blob.retention_failed")

    async def run_retention(self) -> list[str]:
        """Run one retention pass now; returns the handles whose bytes it deleted."""
        async with self._retention_lock:
            target = self._retention_wanted
            now = self._clock()
            try:
                deleted = await self._db(
                    maintenance.apply_retention, self.layout, self.catalog, now
                )
            finally:
                async with self._retention_changed:
                    self._retention_done = max(self._retention_done, target)
                    self._retention_changed.notify_all()
        for handle in deleted:
            self._local_changed(handle, 0, 0, False)
        self._notify()
        if deleted:
            self.retention_deleted += len(deleted)
            log.info(
                "blob.retention_deleted", extra={"handles": deleted[:10], "count": len(deleted)}
            )
        return deleted

    async def retention_settled(self) -> None:
        """Wait until a retention pass has run after everything recorded so far."""
        target = self._retention_wanted
        async with self._retention_changed:
            await self._retention_changed.wait_for(lambda: self._retention_done >= target)


def _open_unbuffered(path: Path) -> BinaryIO:
    return open(path, "rb", buffering=0)  # the caller owns and closes it


def _describe_row(row: BlobRow, peers: list[str]) -> dict[str, Any]:
    assert row.latest_payload is not None
    out: dict[str, Any] = json.loads(row.latest_payload)
    out["local"] = row.state == "local"
    out["peers"] = peers
    out["deleted"] = row.state == "deleted"
    return out


@contextlib.asynccontextmanager
async def _closing(iterator: AsyncIterator[Any]) -> AsyncIterator[None]:
    """Close an async generator when done (ports return plain async iterators)."""
    try:
        yield
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
