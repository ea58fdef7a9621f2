"""Operations that change files and catalog together; all run on the service's catalog thread.

Running them on one thread serialises them: an upload's install, a retention pass and the recovery
at start never interleave, so a retention pass cannot delete a blob an upload has just installed.

Crash safety (``kill -9`` at any instant), by ordering:

- install: the sealed temp file is renamed into ``data/`` (then the directory fsynced) *before* the
  catalog row commits; a crash in between leaves a file no row accounts for, which ``recover``
  deletes. The row stays ``pending`` until the blob's metadata event is recorded; ``recover``
  forgets a blob whose upload crashed before publishing.
- retention: the row leaves ``local`` *before* the file is unlinked; a crash in between again
  leaves only an unaccounted file.
- install_replica (a finished download): (1) fdatasync and close the partial (its bitmap is not
  rewritten: the install deletes it), (2) rename ``partial/<hex>`` to ``data/<hex>`` and fsync
  both directories, (3) commit the row ``local`` with its outline, (4) delete
  ``<hex>.bitmap``/``.outline``. A crash before (2) leaves a complete partial whose bitmap may
  lag: it resumes, re-fetches the chunks the bitmap does not vouch for, is re-hashed by
  ``finish`` and installed again.
  Between (2) and (3) ``data/<hex>`` exists for a ``remote`` row: ``recover`` adopts it only
  after re-hashing it against the handle and the row's outline root, else deletes it. After (3)
  only stale side files remain: ``recover`` deletes the partial files of every ``local`` blob.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass

from protocol.outline import OutlineBuilder, outline_root
from swarmnode.store.catalog import Catalog
from swarmnode.store.errors import DiskFull
from swarmnode.store.files import IngestedFile, StoreLayout, fsync_dir
from swarmnode.store.metadata import HANDLE_PREFIX, handle_from_digest, hex_of_handle, is_handle
from swarmnode.store.partial import PartialBlob, discard_partial, partial_handles
from swarmnode.store.retention import retained_handles

__all__ = [
    "RecoveryReport",
    "apply_retention",
    "install_blob",
    "install_replica",
    "recover",
]

log = logging.getLogger(__name__)

_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"


def _raise_if_db_full(exc: sqlite3.Error) -> None:
    if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
        raise DiskFull(str(exc)) from exc


def install_blob(layout: StoreLayout, catalog: Catalog, ingested: IngestedFile) -> str:
    """Make a sealed temp file a local blob; returns its handle.

    Identical bytes are stored once: when the handle is already local the temp file is dropped.
    Raises ``DiskFull`` when the catalog cannot commit (the published file is removed again).
    """
    handle = handle_from_digest(ingested.digest)
    row = catalog.get(handle)
    if row is not None and row.state == "local":
        ingested.path.unlink(missing_ok=True)
        return handle
    final = layout.data_path(hex_of_handle(handle))
    os.rename(ingested.path, final)
    fsync_dir(layout.data)
    try:
        catalog.store_local(
            handle=handle,
            size=ingested.size,
            chunk_size=ingested.chunk_size,
            outline_root=outline_root(ingested.outline),
            outline=ingested.outline,
        )
    except sqlite3.Error as exc:
        final.unlink(missing_ok=True)
        _raise_if_db_full(exc)
        raise
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return handle


def install_replica(layout: StoreLayout, catalog: Catalog, partial: PartialBlob) -> None:
    """Make a finished download local (after ``partial.finish()`` returned True).

    Crash-safe ordering in the module docstring. A blob that became local meanwhile (the same
    bytes uploaded here) keeps its file; the download is discarded. Raises ``DiskFull`` when the
    catalog cannot commit (the file goes back to ``partial/``, so the download can retry).
    """
    handle = partial.handle
    outline = partial.outline
    if outline is None:
        raise ValueError("a download is installed with its outline")
    row = catalog.get(handle)
    if row is None or row.state == "local":
        partial.discard()
        if row is None:
            raise ValueError(f"no catalog row for {handle}")
        return
    partial.seal()
    source = partial.content_path
    final = layout.data_path(hex_of_handle(handle))
    os.rename(source, final)
    fsync_dir(layout.data)
    fsync_dir(layout.partial)
    try:
        catalog.store_replica(handle, outline)
    except sqlite3.Error as exc:
        os.rename(final, source)
        _raise_if_db_full(exc)
        raise
    discard_partial(layout.partial, handle)


def _adopt_replica(layout: StoreLayout, catalog: Catalog, hex_digest: str) -> bool:
    """Adopt ``data/<hex>`` of a ``remote`` row if its bytes match handle and outline root.

    Only reached after a crash between an install's rename and its commit (rare), so the one
    full read it costs is acceptable.
    """
    handle = handle_from_digest(bytes.fromhex(hex_digest))
    row = catalog.get(handle)
    if row is None or row.state != "remote":
        return False
    path = layout.data_path(hex_digest)
    builder = OutlineBuilder(row.chunk_size)
    buf = bytearray(4 * 1024 * 1024)
    with path.open("rb", buffering=0) as file:
        while got := file.readinto(buf):
            builder.update(memoryview(buf)[:got])
    digest, outline = builder.finish()
    if builder.size != row.size or digest.hex() != hex_digest:
        return False
    if outline_root(outline) != row.outline_root:
        return False
    return catalog.store_replica(handle, outline)


def _unlink_data(layout: StoreLayout, handles: list[str]) -> None:
    for handle in handles:
        try:
            layout.data_path(hex_of_handle(handle)).unlink(missing_ok=True)
        except OSError as exc:  # the row no longer claims it: recover() retries at next start
            log.error("blob.unlink_failed", extra={"handle": handle, "error": str(exc)})
    if handles:
        fsync_dir(layout.data)


def apply_retention(layout: StoreLayout, catalog: Catalog, now: float) -> list[str]:
    """One retention pass (retention.py decides); returns the handles whose bytes were deleted.

    Also keeps ``remote``/``deleted`` consistent with the decision: a blob no announcement keeps is
    never fetched, and a deleted one that a new announcement keeps becomes fetchable again.
    """
    announcements = catalog.announcements()
    kept = retained_handles(announcements, now)
    pending = set(catalog.pending_handles())
    drop = [h for h in catalog.handles_in_state("local") if h not in kept and h not in pending]
    forgo = [h for h in catalog.handles_in_state("remote") if h not in kept]
    revive = [h for h in catalog.handles_in_state("deleted") if h in kept]
    if drop or forgo:
        catalog.set_state(drop + forgo, "deleted")
    if revive:
        catalog.set_state(revive, "remote")
    _unlink_data(layout, drop)
    return drop


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    tmp_removed: int
    orphans_removed: int
    uploads_forgotten: int
    missing_files: int


def recover(layout: StoreLayout, catalog: Catalog) -> RecoveryReport:
    """Undo what a crash left half-done; call after the catalog caught up with the event log.

    Deletes every temp file; forgets uploads that stored bytes but never published their metadata
    event (their rows are still ``pending``); adopts a download whose install crashed after its
    rename (see ``install_replica``); deletes the partial files of local blobs and the files in
    ``data/`` no local row accounts for;
    a local row whose file vanished becomes ``remote`` (to be fetched again).
    """
    tmp_removed = 0
    for entry in os.scandir(layout.tmp):
        os.unlink(entry.path)
        tmp_removed += 1
    pending = catalog.pending_handles()
    announced = [h for h in pending if catalog.announcement_count(h) > 0]
    catalog.forget([h for h in pending if h not in announced])
    catalog.set_state(announced, "remote")
    local = {hex_of_handle(h) for h in catalog.handles_in_state("local")}
    for entry in os.scandir(layout.data):
        name = entry.name
        if (
            name not in local
            and is_handle(HANDLE_PREFIX + name)
            and _adopt_replica(layout, catalog, name)
        ):
            local.add(name)
            log.info("blob.replica_adopted", extra={"handle": HANDLE_PREFIX + name})
    for handle in partial_handles(layout.partial):
        if hex_of_handle(handle) in local:
            discard_partial(layout.partial, handle)
    orphans = [e.path for e in os.scandir(layout.data) if e.name not in local]
    for path in orphans:
        os.unlink(path)
    present = {e.name for e in os.scandir(layout.data)}
    missing = [h for h in catalog.handles_in_state("local") if hex_of_handle(h) not in present]
    if missing:
        log.error("blob.files_missing", extra={"count": len(missing), "handles": missing[:10]})
        catalog.set_state(missing, "remote")
    if tmp_removed:
        fsync_dir(layout.tmp)
    if orphans:
        fsync_dir(layout.data)
    return RecoveryReport(tmp_removed, len(orphans), len(pending), len(missing))
