"""install_replica: a finished download becomes a local blob; recover() after a crash at each
step leaves a consistent store."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from swarmnode.store import maintenance
from swarmnode.store.partial import PartialBlob, partial_handles
from swarmnode.store.service import BlobService
from tests.helpers.fake_events import FakeEventLog
from tests.store.helpers import Clock, make_service, remote_metadata_event
from tests.store.test_partial import Blob

DEADLINE = 10.0
CHUNK = 16 * 1024


@pytest.fixture
def blob() -> Blob:
    return Blob(6 * CHUNK + 1000, seed=11, chunk_size=CHUNK)


@pytest.fixture
async def events(blob: Blob) -> FakeEventLog:
    log = FakeEventLog()

    def real(payload: dict[str, object]) -> None:
        payload["chunkSize"] = blob.chunk_size
        payload["outlineRoot"] = blob.root.hex()

    await log.add_remote(
        "remote000000000", 1, remote_metadata_event(blob.handle, size=blob.size, mutate=real)
    )
    return log


async def started(root: Path, events: FakeEventLog, *, first: bool = True) -> BlobService:
    """A started service that knows the blob's announcement (a restart catches up in start())."""
    service = make_service(root, events, Clock())
    await service.start()
    if first:
        async with asyncio.timeout(DEADLINE):
            await service.wait_followed("remote000000000", 0)
    return service


@pytest.fixture
async def service(tmp_path: Path, events: FakeEventLog) -> AsyncIterator[BlobService]:
    svc = await started(tmp_path / "blobs", events)
    try:
        yield svc
    finally:
        await svc.stop()


def download(service: BlobService, blob: Blob) -> PartialBlob:
    """A complete, finished download of ``blob`` (not yet installed)."""
    partial = blob.open(service.layout.partial)
    partial.set_outline(blob.outline)
    blob.write(partial, range(blob.count))
    assert partial.finish()
    return partial


async def install(service: BlobService, partial: PartialBlob) -> None:
    await service._db(maintenance.install_replica, service.layout, service.catalog, partial)


async def read_all(service: BlobService, handle: str) -> bytes:
    local = await service.open_blob(handle)
    try:
        return await local.read(0, local.size + 1)
    finally:
        local.close()


async def assert_local(service: BlobService, blob: Blob) -> None:
    row = await service.catalog_row(blob.handle)
    assert row is not None
    assert row.state == "local"
    assert not row.pending
    assert await service.outline(blob.handle) == blob.outline
    assert await service.wanted() == []
    assert await read_all(service, blob.handle) == blob.data
    assert partial_handles(service.layout.partial) == []


async def test_install_makes_the_blob_readable(service: BlobService, blob: Blob) -> None:
    row = await service.catalog_row(blob.handle)
    assert row is not None
    assert row.state == "remote"
    await install(service, download(service, blob))
    await assert_local(service, blob)
    assert [p.name for p in service.layout.data.iterdir()] == [blob.hex]


async def test_install_needs_the_outline(service: BlobService, blob: Blob) -> None:
    partial = blob.open(service.layout.partial)
    blob.write(partial, range(blob.count))
    try:
        with pytest.raises(ValueError, match="outline"):
            await install(service, partial)
        row = await service.catalog_row(blob.handle)
        assert row is not None
        assert row.state == "remote"
    finally:
        partial.discard()


def damage(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(b"\xee")


async def restart(service: BlobService, root: Path, events: FakeEventLog) -> BlobService:
    await service.stop()
    return await started(root, events, first=False)


async def test_crash_before_rename_resumes_complete(
    tmp_path: Path, service: BlobService, events: FakeEventLog, blob: Blob
) -> None:
    partial = download(service, blob)
    partial.close()  # what install does first: the bitmap now vouches for every chunk
    again = await restart(service, tmp_path / "blobs", events)
    try:
        row = await again.catalog_row(blob.handle)
        assert row is not None
        assert row.state == "remote"
        resumed = blob.open(again.layout.partial)
        assert resumed.verified_chunks == blob.count
        assert resumed.outline == blob.outline
        assert resumed.finish()
        await install(again, resumed)
        await assert_local(again, blob)
    finally:
        await again.stop()


@pytest.mark.parametrize("intact", [True, False])
async def test_crash_between_rename_and_commit(
    tmp_path: Path, service: BlobService, events: FakeEventLog, blob: Blob, intact: bool
) -> None:
    partial = download(service, blob)
    partial.close()
    os.rename(partial.content_path, service.layout.data_path(blob.hex))
    if not intact:
        damage(service.layout.data_path(blob.hex), CHUNK + 5)
    again = await restart(service, tmp_path / "blobs", events)
    try:
        if intact:
            await assert_local(again, blob)
        else:
            row = await again.catalog_row(blob.handle)
            assert row is not None
            assert row.state == "remote"
            assert list(again.layout.data.iterdir()) == []
            assert await again.wanted() == [blob.handle]
    finally:
        await again.stop()


async def test_crash_after_commit_before_cleanup(
    tmp_path: Path,
    service: BlobService,
    events: FakeEventLog,
    blob: Blob,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash(partial_dir: Path, handle: str) -> None:
        raise SystemExit("crash")

    partial = download(service, blob)
    with monkeypatch.context() as patch:
        patch.setattr(maintenance, "discard_partial", crash)
        with pytest.raises(SystemExit):
            await install(service, partial)
    assert partial_handles(service.layout.partial) == [blob.handle]
    again = await restart(service, tmp_path / "blobs", events)
    try:
        await assert_local(again, blob)
    finally:
        await again.stop()


async def test_already_local_blob_discards_the_download(service: BlobService, blob: Blob) -> None:
    await install(service, download(service, blob))
    await install(service, download(service, blob))
    await assert_local(service, blob)
