"""Blob replication on a node: every announced blob is fetched from peers, verified, installed.

This is the asyncio side of the transfer protocol (SPEC §7.5); the decisions live in two places
it drives: the ``Fetcher`` machine (what to request from whom: striping, rarest first, endgame,
timeouts) and the ``ChunkServer`` (answering peers fairly). What stays here is I/O and lifecycle:

- **What to fetch**: the blob store's ``remote`` rows (announced, retained, not local). The store
  calls back after each batch of metadata events and each retention pass; we reconcile: new rows
  are queued in announcement order, at most ``max_active`` have an open partial file at once;
  rows that left ``remote`` because retention dropped them are cancelled and their partial files
  deleted. Downloads found on disk at start resume from their persisted bitmap.
- **Writes**: the fetcher hands over each arriving chunk with the digest the outline promises;
  ``ChunkWriter`` verifies and writes it (``PartialBlob.write_chunk``: on the loop while the disk
  keeps up, else on a worker thread) and the outcome goes back to the fetcher (stored / rejected:
  the peer is struck / failed: the disk is full). Stored chunks are announced to interested peers
  (HaveUpdate), so a node serves a blob while still fetching it.
- **Durability**: each download's bitmap is persisted every ``flush_interval_s`` (content
  fdatasync first), so a crash loses at most that much work. A complete download is checked
  against its handle and installed like an upload.
- **Disk full**: fetching pauses (reported in status), free space is checked every
  ``disk_retry_s``, fetching resumes when it returns; nothing stored is touched.
- **HTTP**: ``open_reader`` is the blob store's ``fetcher`` hook: a GET for a blob still arriving
  starts (or joins) its download with priority and streams the verified prefix.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import time
from concurrent.futures import Future
from typing import Any

import blake3

from protocol.errors import ErrorCode
from protocol.messages import Message, SendableMessage
from protocol.messages_transfer import Cancel, RequestChunks, RequestOutline
from swarmnode.store.catalog import BlobRow
from swarmnode.store.errors import DiskFull
from swarmnode.store.metadata import hex_of_handle
from swarmnode.store.partial import PartialBlob, discard_partial, partial_handles
from swarmnode.store.service import BlobReader, BlobService
from swarmnode.swarm.chunk_writer import ChunkWriter
from swarmnode.swarm.chunkserver import ChunkServer
from swarmnode.swarm.deadline import DeadlineTimer
from swarmnode.swarm.driver import SwarmDriver
from swarmnode.swarm.fetcher import (
    BlobSpec,
    FetchComplete,
    Fetcher,
    OutlineVerified,
    WriteChunk,
)
from swarmnode.swarm.plumtree import PeerMisbehaved
from swarmnode.swarm.transfer_config import TransferConfig
from swarmnode.swarm.transfer_download import Download, GrowingBlob, digest_of
from swarmnode.swarm.transfer_source import LocalChunks

__all__ = ["BlobTransfers"]

log = logging.getLogger(__name__)

_SERVER_MESSAGES = (RequestOutline, RequestChunks, Cancel)
# One-chunk downloads installed together (one directory fsync and catalog commit each batch).
_SMALL_BATCH = 256
# A long download logs its progress this often (operators watch big transfers in the log).
_PROGRESS_LOG_S = 2.0


class BlobTransfers:
    """See the module docstring. Create it before the driver starts, ``await start()`` after the
    blob store started and before the driver does; ``await stop()`` after the driver stopped."""

    def __init__(
        self, *, blobs: BlobService, driver: SwarmDriver, config: TransferConfig | None = None
    ) -> None:
        self.config = config or TransferConfig()
        self._blobs = blobs
        self._driver = driver
        self._fetcher = Fetcher(self.config.fetcher, salt=driver.node_id.encode())
        self.counters: collections.Counter[str] = collections.Counter()
        self._source = LocalChunks(blobs, self._download_of)
        self._server = ChunkServer(
            self._source,
            send=driver.send_messages,
            outbox_of=driver.outbox_of,
            counters=self.counters,
        )
        self._active: dict[bytes, Download] = {}
        self._queue: dict[bytes, Download] = {}
        self._lines: dict[bool, collections.deque[Download]] = {
            True: collections.deque(),
            False: collections.deque(),
        }
        self._failed: set[bytes] = set()
        self._discarding: dict[bytes, asyncio.Task[Any]] = {}
        self._small_active = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._small_bytes = 0
        self._small_ready: list[Download] = []
        self._small_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writer: ChunkWriter | None = None
        self._wake = asyncio.Event()
        self._timer = DeadlineTimer(self._on_timer)
        self._running = False
        self._first_reconcile = True
        self.disk_full = False
        self.disk_error: str | None = None
        driver.transfers = self

    def _download_of(self, digest: bytes) -> Download | None:
        return self._active.get(digest)

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def start(self) -> None:
        self._writer = ChunkWriter(self.config.writes, self.loop)
        self._running = True
        self._blobs.add_local_listener(self._on_local)
        await self._source.load()
        self._blobs.add_listener(self._wake.set)
        self._blobs.fetcher = self.open_reader
        self._blobs.holders = self.providers_of
        self._spawn(self._server.run())
        self._spawn(self._reconcile_loop())
        self._spawn(self._flush_loop())
        self._spawn(self._install_small_loop())
        self._wake.set()

    async def stop(self) -> None:
        """Stop fetching and serving, persist every download's bitmap, close partial files."""
        self._running = False
        self._blobs.fetcher = None
        self._blobs.holders = None
        self._timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for download in list(self._active.values()):
            await download.idle.wait()
            partial = download.partial
            if partial is not None and not download.done and not download.gone:
                try:
                    await self._blobs.io(_flush_and_close, partial)
                except OSError as exc:
                    log.warning(
                        "blob.flush_failed", extra={"handle": download.handle, "error": str(exc)}
                    )
        self._active.clear()
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "blob.transfer_task_failed",
                exc_info=task.exception(),
                extra={"task": task.get_name()},
            )

    def _on_local(self, handle: str, size: int, chunk_size: int, present: bool) -> None:
        """The store gained (upload, installed replica) or lost (retention) a complete blob."""
        self._source.note_local(handle, size, chunk_size, present)
        if present and self._running:
            self._server.blob_completed(digest_of(handle))  # peers waiting on it learn now

    # ---- the driver's hooks (TransferHooks) --------------------------------------------------

    def peer_up(self, peer: str) -> None:
        if self._running:
            self._fetcher.peer_up(self.loop.time(), peer)
            self._pump()

    def peer_down(self, peer: str) -> None:
        self._server.peer_down(peer)
        if self._running:
            self._fetcher.peer_down(self.loop.time(), peer)
            self._pump()

    def handle_message(self, peer: str, msg: Message) -> None:
        if not self._running:
            return
        if isinstance(msg, _SERVER_MESSAGES):
            self._server.handle_message(peer, msg)
            return
        self._fetcher.handle_message(self.loop.time(), peer, msg)  # type: ignore[arg-type]
        self._pump()

    # ---- the fetcher machine -----------------------------------------------------------------

    def _pump(self) -> None:
        if not self._running:
            return
        fx = self._fetcher.drain()
        by_peer: dict[str, list[SendableMessage]] = {}
        for peer, msg in fx.sends:
            by_peer.setdefault(peer, []).append(msg)
        for peer, msgs in by_peer.items():
            self._driver.send_messages(peer, msgs)
        for notice in fx.notices:
            match notice:
                case WriteChunk():
                    self._write(notice)
                case OutlineVerified(handle=digest, outline=outline):
                    self._save_outline(digest, outline)
                case FetchComplete(handle=digest):
                    download = self._active.get(digest)
                    if download is not None and not download.finishing:
                        download.finishing = True
                        if download.small:
                            self._small_ready.append(download)
                            self._small_wake.set()
                        else:
                            self._spawn(self._complete(download))
                case PeerMisbehaved(peer=peer, reason=reason):
                    self.counters["peersPenalised"] += 1
                    self._driver.penalise(peer, ErrorCode.BAD_DATA, reason)
        self._timer.arm(self.loop, fx.deadline)
        self._driver_touch()

    def _on_timer(self, now: float) -> None:
        if self._running:
            self._fetcher.handle_timer(now)
            self._pump()

    def _prioritize(self, download: Download, offset: int) -> None:
        if not download.priority:
            download.priority = True
            self._driver_touch()
        if download.partial is not None and not download.done:
            chunk = download.row.chunk_size
            self._fetcher.prioritize(self.loop.time(), download.digest, offset // chunk)
            self._pump()

    def _driver_touch(self) -> None:
        self._driver._touch()

    # ---- writes ------------------------------------------------------------------------------

    def _write(self, notice: WriteChunk) -> None:
        download = self._active.get(notice.handle)
        now = self.loop.time()
        if download is not None and download.small and not download.gone:
            self._keep_small(download, notice)
            return
        if download is None or download.partial is None or download.gone:
            self._fetcher.chunk_failed(now, notice.handle, notice.index)
            return
        assert self._writer is not None
        download.write_started()
        self.counters["bytesReceived"] += len(notice.data)
        # The outcome needs no bytes: holding them until its callback ran kept up to a loop
        # iteration's worth of chunk buffers (uvloop reads many times per iteration) from the
        # transport's pool, which then allocated a fresh 1 MiB for one chunk in four.
        reported = dataclasses.replace(notice, data=b"")
        self._writer.write(
            download.partial,
            notice.index,
            notice.data,
            notice.digest,
            lambda outcome: self._written(download, reported, outcome),
        )

    def _keep_small(self, download: Download, notice: WriteChunk) -> None:
        """A one-chunk blob: verified here (at most 1 MiB of BLAKE3, ~0.1 ms) and kept in memory
        until the batch installer writes it (replicas.py)."""
        now = self.loop.time()
        self.counters["bytesReceived"] += len(notice.data)
        if blake3.blake3(notice.data).digest() != notice.digest:
            self._bad_chunk(download, notice)
        else:
            download.data = bytes(notice.data)
            self._fetcher.chunk_stored(now, notice.handle, notice.index)
        self._pump()

    def _bad_chunk(self, download: Download, notice: WriteChunk) -> None:
        self.counters["badChunks"] += 1
        log.warning(
            "blob.bad_chunk",
            extra={"handle": download.handle, "index": notice.index, "node_id": notice.peer},
        )
        self._fetcher.chunk_rejected(self.loop.time(), notice.handle, notice.index, notice.peer)

    def _written(self, download: Download, notice: WriteChunk, job: Future[bool]) -> None:
        download.write_ended()
        if not self._running or download.gone:
            return
        now = self.loop.time()
        exc = job.exception()
        if isinstance(exc, DiskFull):
            self._fetcher.chunk_failed(now, notice.handle, notice.index)
            self._disk_is_full(str(exc))
        elif exc is not None:
            log.error(
                "blob.write_failed",
                exc_info=exc,
                extra={"handle": download.handle, "index": notice.index},
            )
            self._fetcher.chunk_failed(now, notice.handle, notice.index)
        elif job.result():
            self._fetcher.chunk_stored(now, notice.handle, notice.index)
            self._server.chunks_verified(notice.handle, (notice.index,))
            partial = download.partial
            if partial is not None:
                download.sample(partial.verified_bytes)
                self._log_progress(download, partial.verified_bytes)
            download.pulse()
        else:
            self._bad_chunk(download, notice)
        self._pump()

    def _log_progress(self, download: Download, stored: int) -> None:
        now = time.monotonic()
        if now - download.logged_at < _PROGRESS_LOG_S:
            return
        download.logged_at = now
        log.info(
            "blob.fetch_progress",
            extra={
                "handle": download.handle,
                "storedBytes": stored,
                "size": download.row.size,
                "rateBytesPerS": round(download.rate()),
            },
        )

    def _save_outline(self, digest: bytes, outline: bytes) -> None:
        download = self._active.get(digest)
        if download is None or download.partial is None:
            return
        download.outline = outline
        self._spawn(self._persist_outline(download, download.partial, outline))

    async def _persist_outline(
        self, download: Download, partial: PartialBlob, outline: bytes
    ) -> None:
        async with download.lock:  # never beside a flush, a finish or another outline write
            if partial.outline is None and not download.gone:
                await self._blobs.io(partial.set_outline, outline)

    # ---- completion --------------------------------------------------------------------------

    def _give_up(self, download: Download, exc: BaseException) -> None:
        """An unexpected error (not a full disk, not bad data): stop this download, tell its
        readers, and leave the blob for the next start of the node."""
        log.error("blob.fetch_failed", exc_info=exc, extra={"handle": download.handle})
        download.failed = str(exc) or type(exc).__name__
        self._failed.add(download.digest)
        self._finish(download)

    async def _complete(self, download: Download) -> None:
        try:
            await self._install(download)
        except Exception as exc:
            self._give_up(download, exc)

    async def _install(self, download: Download) -> None:
        partial = download.partial
        assert partial is not None
        async with download.lock:
            await download.idle.wait()
            if download.gone:
                return
            if partial.outline is None:  # its persisting task may not have run yet
                outline = download.outline if download.row.size else b""
                assert outline is not None, "a complete download has a verified outline"
                await self._blobs.io(partial.set_outline, outline)
            assert self._writer is not None
            # On the writer thread: behind any chunk writes that went there while the disk was slow.
            ok = await self._writer.run(partial.finish)
            if not ok:
                log.error("blob.content_mismatch", extra={"handle": download.handle})
                download.failed = "content does not match its handle"
                self._failed.add(download.digest)
                await self._blobs.io(partial.discard)
                self._finish(download)
                return
            try:
                await self._blobs.install_replica(partial)
            except DiskFull as exc:
                # install_replica put the file back into partial/ and closed it: start over
                # from the persisted bitmap once space returns (the chunks flushed before the
                # install; the rest are fetched again).
                self._fetcher.remove(self.loop.time(), download.digest)
                self._active.pop(download.digest, None)
                download.partial, download.finishing = None, False
                self._enqueue(download, front=True)
                self._disk_is_full(str(exc))
                return
        self._fetched(download)

    def _fetched(self, download: Download) -> None:
        """A download is installed: count it, log it, forget it."""
        download.done = True
        progress = self._fetcher.progress(download.digest)
        self.counters["completed"] += 1
        log.info(
            "blob.fetched",
            extra={
                "handle": download.handle,
                "bytes": download.row.size,
                "seconds": round(time.monotonic() - download.started, 3),
                "peers": list(progress.peers_used) if progress else [],
                "duplicateBytes": progress.duplicate_bytes if progress else 0,
            },
        )
        self._finish(download)

    def _finish(self, download: Download) -> None:
        """Forget a download that completed, failed or was dropped; start the next one."""
        progress = self._fetcher.progress(download.digest)
        if progress is not None:
            self.counters["duplicateBytes"] += progress.duplicate_bytes
        self._fetcher.remove(self.loop.time(), download.digest)
        if self._active.get(download.digest) is download:
            del self._active[download.digest]
            if download.small:
                self._small_active -= 1
                self._small_bytes -= download.row.size
        download.data = None
        download.pulse()
        self._start_next()
        self._pump()

    async def _install_small_loop(self) -> None:
        """Install finished one-chunk downloads in batches (replicas.py: one directory fsync and
        one catalog commit per batch instead of per blob), two batches at a time so one writes
        its files while the other commits."""
        slots = asyncio.Semaphore(2)
        while True:
            await self._small_wake.wait()
            self._small_wake.clear()
            while self._small_ready:
                await slots.acquire()
                batch = self._small_ready[:_SMALL_BATCH]
                del self._small_ready[:_SMALL_BATCH]
                task = self._spawn(self._install_small(batch))
                task.add_done_callback(lambda _: slots.release())

    async def _install_small(self, batch: list[Download]) -> None:
        # An empty blob has no chunk (and an empty outline): nothing arrived, nothing to check.
        items = [
            (d.row, d.data or b"", d.digest if d.row.size else b"")
            for d in batch
            if not d.gone and (d.data is not None or d.row.size == 0)
        ]
        installed, error = await self._blobs.install_small_replicas(items)
        done = set(installed)
        if isinstance(error, DiskFull):
            self._disk_is_full(str(error))
        elif error is not None:
            log.error("blob.install_failed", exc_info=error, extra={"count": len(batch)})
        for download in batch:
            if download.handle in done:
                self._fetched(download)
            elif error is not None and not download.gone:
                # Not written: fetch it again once the disk has room.
                self._finish(download)
                download.finishing, download.data = False, None
                self._enqueue(download, front=True)
            else:
                self._finish(download)  # no longer wanted, or local by an upload meanwhile
        self._start_next()
        self._pump()

    # ---- what to fetch -----------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._reconcile()
            except Exception:
                log.exception("blob.reconcile_failed")

    async def _reconcile(self) -> None:
        rows = await self._blobs.wanted_rows()
        wanted = {digest_of(r.handle): r for r in rows}
        if self._first_reconcile:
            self._first_reconcile = False
            await self._drop_stray_partials(wanted)
        unwanted = [
            d
            for d in [*self._queue.values(), *self._active.values()]
            if d.digest not in wanted and not d.finishing and not d.done
        ]
        for download in unwanted:
            # The query may predate the announcement (an HTTP GET can start a download that
            # early): only the row's state now decides.
            row = await self._blobs.catalog_row(download.handle)
            state = None if row is None else row.state
            if state == "remote":
                continue
            if self._queue.get(download.digest) is download:
                del self._queue[download.digest]
                download.gone = True
                download.pulse()
            elif self._active.get(download.digest) is download:
                self._drop(download, deleted=state != "local")
        for digest, row in wanted.items():
            known = digest in self._active or digest in self._queue or digest in self._failed
            if not known:
                self._enqueue(Download(row, digest))
        self._start_next()

    async def _drop_stray_partials(self, wanted: dict[bytes, BlobRow]) -> None:
        """Delete partial downloads of blobs no longer wanted (deleted or installed meanwhile)."""
        partial_dir = self._blobs.layout.partial
        for handle in await self._blobs.io(partial_handles, partial_dir):
            if digest_of(handle) not in wanted:
                await self._blobs.io(discard_partial, partial_dir, handle)
                log.info("blob.partial_discarded", extra={"handle": handle})

    def _drop(self, download: Download, *, deleted: bool) -> None:
        """Stop fetching a blob that is no longer wanted and delete its partial file: retention
        removed it (``deleted``: queued requests for it are answered DontHave), or an upload of
        the same bytes made it local meanwhile (readers switch to the local file)."""
        if deleted:
            download.gone = True
            self._server.blob_removed(download.digest)
            self._source.forget(download.digest)
        else:
            download.done = download.replaced = True
        log.info(
            "blob.fetch_dropped",
            extra={"handle": download.handle, "reason": "deleted" if deleted else "local"},
        )
        self._finish(download)
        task = self._spawn(self._discard(download))
        self._discarding[download.digest] = task
        task.add_done_callback(lambda _: self._discarding.pop(download.digest, None))

    async def _discard(self, download: Download) -> None:
        partial = download.partial
        async with download.lock:
            await download.idle.wait()
            if partial is not None:
                await self._blobs.io(partial.discard)

    def _enqueue(self, download: Download, *, front: bool = False) -> None:
        """Queue a download: ``front`` for one that was already running (a full disk stopped it).

        ``_queue`` says what is queued; the two lines (small, big) keep the order to start them
        in, so picking the next one is O(1) however long the backlog. Entries whose download left
        the queue meanwhile (an HTTP read started it, retention dropped it) are skipped.
        """
        if front:
            self._queue = {download.digest: download, **self._queue}
            self._lines[download.small].appendleft(download)
        else:
            self._queue[download.digest] = download
            self._lines[download.small].append(download)

    def _start_next(self) -> None:
        if not self._running or self.disk_full:
            return
        config = self.config
        for small, line in self._lines.items():
            while line:
                if small:
                    free = (
                        self._small_active < config.max_active_small
                        and self._small_bytes < config.max_small_bytes
                    )
                else:
                    free = len(self._active) - self._small_active < config.max_active
                head = line[0]
                if self._queue.get(head.digest) is not head:
                    line.popleft()  # left the queue meanwhile
                    continue
                if not free and not head.priority:
                    break
                line.popleft()
                self._begin(self._queue.pop(head.digest))

    def _begin(self, download: Download) -> None:
        assert download.digest not in self._active, "one download per blob"
        self._active[download.digest] = download
        if download.small:
            self._small_active += 1
            self._small_bytes += download.row.size
            self._fetch(download, outline=None, have=None)
            self._pump()
        else:
            self._spawn(self._open(download))

    def _fetch(self, download: Download, *, outline: bytes | None, have: bytes | None) -> None:
        """Hand a download to the fetcher machine."""
        row = download.row
        spec = BlobSpec(
            handle=download.digest,
            size=row.size,
            chunk_size=row.chunk_size,
            outline_root=row.outline_root,
            origin=row.latest_source,
        )
        self._fetcher.add(
            self.loop.time(), spec, outline=outline, have=have, priority=download.priority
        )
        log.log(
            logging.DEBUG if download.small else logging.INFO,
            "blob.fetch_started",
            extra={"handle": row.handle, "size": row.size, "resumedBytes": download.resumed_bytes},
        )
        download.pulse()

    async def _open(self, download: Download) -> None:
        row = download.row
        discarding = self._discarding.get(download.digest)
        if discarding is not None:  # an earlier download's files are still being deleted
            await asyncio.wait([discarding])
        try:
            partial = await self._blobs.io(
                _open_partial, self._blobs.layout.partial, row, self.config.flush_interval_s
            )
        except DiskFull as exc:
            self._active.pop(download.digest, None)
            self._enqueue(download, front=True)
            self._disk_is_full(str(exc))
            return
        except Exception as exc:
            self._give_up(download, exc)
            return
        if download.gone or not self._running:
            await self._blobs.io(partial.close)
            return
        download.partial = partial
        download.outline = partial.outline
        download.resumed_bytes = partial.verified_bytes
        self.counters["resumedBytes"] += partial.verified_bytes
        have = partial.have_bitmap() if partial.verified_chunks else None
        self._fetch(download, outline=partial.outline, have=have)
        self._pump()

    # ---- durability and disk space -----------------------------------------------------------

    async def _flush_loop(self) -> None:
        interval = self.config.flush_interval_s
        while True:
            await asyncio.sleep(min(interval / 4, 0.25))
            now = time.monotonic()
            for download in list(self._active.values()):
                partial = download.partial
                if partial is None or download.gone or download.finishing or download.lock.locked():
                    continue
                if partial.flush_due(now):
                    async with download.lock:
                        try:
                            await self._blobs.io(partial.flush)
                        except DiskFull as exc:
                            self._disk_is_full(str(exc))
                        except OSError as exc:
                            log.error(
                                "blob.flush_failed",
                                extra={"handle": download.handle, "error": str(exc)},
                            )

    def _disk_is_full(self, reason: str) -> None:
        if self.disk_full:
            return
        self.disk_full = True
        self.disk_error = reason
        self.counters["diskFullPauses"] += 1
        self._fetcher.pause(self.loop.time())
        log.warning("blob.fetch_paused", extra={"reason": "disk full", "error": reason})
        self._driver_touch()
        self._spawn(self._await_space())

    async def _await_space(self) -> None:
        path = self._blobs.layout.partial
        needed = self.config.disk_headroom_bytes
        while True:
            await asyncio.sleep(self.config.disk_retry_s)
            stat = await self._blobs.io(os.statvfs, path)
            if stat.f_bavail * stat.f_frsize >= needed:
                break
        self.disk_full, self.disk_error = False, None
        self._fetcher.resume(self.loop.time())
        log.info("blob.fetch_resumed")
        self._start_next()
        self._pump()

    # ---- HTTP --------------------------------------------------------------------------------

    async def open_reader(self, row: BlobRow) -> BlobReader:
        """The blob store's ``fetcher`` hook (module docstring)."""
        digest = digest_of(row.handle)
        download = self._active.get(digest) or self._queue.pop(digest, None)
        if download is None:
            local = await self._blobs.open_local(row.handle)
            if local is not None:
                return local
            # Reconciling may have queued or started it while we looked.
            download = self._active.get(digest) or self._queue.pop(digest, None)
            if download is None:
                download = Download(row, digest)
        download.priority = True
        if digest not in self._active:
            self._begin(download)
        elif download.partial is not None:
            self._fetcher.prioritize(self.loop.time(), digest, 0)
            self._pump()
        hex_handle = hex_of_handle(row.handle)
        layout = self._blobs.layout
        return GrowingBlob(
            download,
            content_type=row.content_type or "application/octet-stream",
            paths=(layout.partial_path(hex_handle), layout.data_path(hex_handle)),
            prioritize=self._prioritize,
        )

    def providers_of(self, handle: str) -> tuple[str, ...]:
        """Peers a download in flight here sees holding chunks of ``handle``."""
        progress = self._fetcher.progress(digest_of(handle))
        return () if progress is None else progress.providers

    # ---- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Downloads in flight, totals and the disk-full flag (``GET /api/v1/node/status``)."""
        transfers = []
        in_flight_duplicates = 0
        for download in self._active.values():
            progress = self._fetcher.progress(download.digest)
            partial = download.partial
            state = "paused" if self.disk_full else "fetching"
            if progress is None or not progress.providers:
                state = "paused" if self.disk_full else "waiting"
            in_flight_duplicates += progress.duplicate_bytes if progress else 0
            transfers.append(
                {
                    "handle": download.handle,
                    "size": download.row.size,
                    "chunkCount": progress.chunk_count if progress else None,
                    "storedChunks": progress.stored_chunks if progress else 0,
                    "storedBytes": progress.stored_bytes if progress else 0,
                    "durableBytes": partial.durable_bytes if partial else 0,
                    "bytesReceived": progress.bytes_received if progress else 0,
                    "duplicateBytes": progress.duplicate_bytes if progress else 0,
                    "peersUsed": list(progress.peers_used) if progress else [],
                    "providers": list(progress.providers) if progress else [],
                    "rateBytesPerS": round(download.rate(), 1),
                    "priority": download.priority,
                    "state": state,
                }
            )
        served = self._server.status()
        totals = {
            "completed": self.counters["completed"],
            "bytesReceived": self.counters["bytesReceived"],
            "duplicateBytes": self.counters["duplicateBytes"] + in_flight_duplicates,
            "bytesServed": served.get("bytesServed", 0),
            "chunksServed": served.get("chunksServed", 0),
            "badChunks": self.counters["badChunks"],
            "resumedBytes": self.counters["resumedBytes"],
            "queued": len(self._queue),
            # Where chunk writes ran (chunk_writer.py): slow ones move writes off the loop.
            **(self._writer.counters if self._writer is not None else {}),
        }
        return {
            "transfers": transfers,
            "transferTotals": totals,
            "diskFull": self.disk_full,
            "diskError": self.disk_error,
        }


def _open_partial(partial_dir: Any, row: BlobRow, flush_interval_s: float) -> PartialBlob:
    return PartialBlob.open(
        partial_dir,
        row.handle,
        size=row.size,
        chunk_size=row.chunk_size,
        outline_root=row.outline_root,
        flush_interval_s=flush_interval_s,
    )


def _flush_and_close(partial: PartialBlob) -> None:
    try:
        partial.flush()
    finally:
        partial.close()
