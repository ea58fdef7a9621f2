"""Installing many small replicas at once: the path that makes 1,000 small blobs a second possible.

A blob of one chunk (up to 1 MiB) arrives in one message and is verified against its handle as a
whole, so it needs no partial file, bitmap or outline file. What it does need is durability
before the catalog says ``local``, and durability costs a disk flush: one flush and two renames
per blob would cap a node at a few hundred blobs a second. So small replicas are installed in
batches:

1. each blob is written to its own temp file and fdatasync'ed (``write_durable_tmp``, run on
   several I/O threads at once, so the journal commits them together);
2. ``publish_replicas`` (on the catalog thread) renames the batch into ``data/``, fsyncs the
   directory once, and commits every row ``local`` in one transaction.

A crash before 2 leaves temp files (deleted at start); during 2, files in ``data/`` whose rows are
still ``remote``, which ``maintenance.recover`` adopts after re-hashing them. A blob that became
local meanwhile (an upload of the same bytes) keeps its file; the temp file is dropped.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from swarmnode.store.catalog import Catalog
from swarmnode.store.errors import DiskFull
from swarmnode.store.files import StoreLayout, fsync_dir, raise_if_disk_full
from swarmnode.store.metadata import hex_of_handle

__all__ = ["publish_replicas", "write_durable_tmp"]

_SQLITE_FULL = 13  # "database or disk is full"


def write_durable_tmp(layout: StoreLayout, data: bytes | memoryview) -> Path:
    """Write ``data`` to a new temp file and fdatasync it; ``DiskFull`` leaves no file."""
    path = layout.new_tmp_path()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view) :]
        os.fdatasync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise_if_disk_full(exc)
        raise
    os.close(fd)
    return path


def publish_replicas(
    layout: StoreLayout, catalog: Catalog, items: Sequence[tuple[str, Path, bytes]]
) -> list[str]:
    """Make each ``(handle, durable temp file, outline)`` a local blob; returns the handles
    installed (the others were local already, or no longer announced). Raises ``DiskFull`` when
    the catalog cannot commit (the files are removed again)."""
    moved: list[tuple[str, Path, bytes]] = []
    for handle, tmp, outline in items:
        row = catalog.get(handle)
        if row is None or row.state != "remote":
            tmp.unlink(missing_ok=True)
            continue
        final = layout.data_path(hex_of_handle(handle))
        os.rename(tmp, final)
        moved.append((handle, final, outline))
    if not moved:
        return []
    fsync_dir(layout.data)
    try:
        installed = catalog.store_replicas([(handle, outline) for handle, _, outline in moved])
    except sqlite3.Error as exc:
        for _, final, _ in moved:
            with contextlib.suppress(OSError):
                final.unlink()
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            raise DiskFull(str(exc)) from exc
        raise
    return installed
