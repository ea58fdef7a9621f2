"""Batch install of small replicas (store/replicas.py through BlobService.install_small_replicas):
every blob of a batch becomes local and readable, blobs that are local already or no longer
wanted are left alone, a full disk installs nothing half-way, and a crash between the rename and
the commit is repaired by recover()."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from swarmnode.store import maintenance, replicas
from swarmnode.store.catalog import BlobRow
from swarmnode.store.errors import DiskFull
from swarmnode.store.files import StoreLayout
from swarmnode.store.metadata import hex_of_handle
from swarmnode.store.service import BlobService
from tests.helpers.fake_events import FakeEventLog
from tests.store.helpers import Clock, make_service, remote_metadata_event

DEADLINE = 10.0
SOURCE = "remote000000000"


def content(i: int) -> bytes:
    return blake3.blake3(i.to_bytes(4, "big")).digest(length=100 + i)


def handle_of(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


def one_chunk(data: bytes) -> Callable[[dict[str, Any]], None]:
    """Metadata of a one-chunk blob: its outline is its own digest."""
    digest = blake3.blake3(data).digest()

    def mutate(payload: dict[str, Any]) -> None:
        payload["chunkSize"] = 1 << 20
        payload["outlineRoot"] = blake3.blake3(digest).hexdigest()

    return mutate


BLOBS = [content(i) for i in range(5)]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[BlobService]:
    events = FakeEventLog()
    for data in BLOBS:
        await events.add_remote(
            SOURCE,
            1,
            remote_metadata_event(handle_of(data), size=len(data), mutate=one_chunk(data)),
        )
    svc = make_service(tmp_path / "blobs", events, Clock())
    await svc.start()
    async with asyncio.timeout(DEADLINE):
        await svc.wait_followed(SOURCE, len(BLOBS) - 1)
    try:
        yield svc
    finally:
        await svc.stop()


async def rows(service: BlobService) -> dict[str, BlobRow]:
    return {r.handle: r for r in await service.wanted_rows()}


async def read(service: BlobService, handle: str) -> bytes:
    blob = await service.open_blob(handle)
    try:
        return await blob.read(0, blob.size) if blob.size else b""
    finally:
        blob.close()


async def test_a_batch_becomes_local_and_readable(service: BlobService) -> None:
    wanted = await rows(service)
    items = [(wanted[handle_of(d)], d, blake3.blake3(d).digest()) for d in BLOBS]
    installed, error = await service.install_small_replicas(items)
    assert error is None
    assert sorted(installed) == sorted(handle_of(d) for d in BLOBS)
    assert await service.wanted_rows() == []
    for data in BLOBS:
        assert await read(service, handle_of(data)) == data
        assert await service.outline(handle_of(data)) == blake3.blake3(data).digest()
    assert list(service.layout.tmp.iterdir()) == []


async def test_local_or_unknown_rows_are_left_alone(service: BlobService) -> None:
    wanted = await rows(service)
    first = [(wanted[handle_of(BLOBS[0])], BLOBS[0], blake3.blake3(BLOBS[0]).digest())]
    assert (await service.install_small_replicas(first))[0] == [handle_of(BLOBS[0])]
    # Installing it again (a duplicate arrival) changes nothing and leaves no temp file.
    again, error = await service.install_small_replicas(first)
    assert (again, error) == ([], None)
    assert await read(service, handle_of(BLOBS[0])) == BLOBS[0]
    assert list(service.layout.tmp.iterdir()) == []


async def test_disk_full_installs_the_others_and_reports(
    service: BlobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted = await rows(service)
    honest = replicas.write_durable_tmp

    def full_for_one(layout: StoreLayout, data: bytes | memoryview) -> Path:
        if bytes(data) == BLOBS[2]:
            raise DiskFull(os.strerror(errno.ENOSPC))
        return honest(layout, data)

    monkeypatch.setattr(replicas, "write_durable_tmp", full_for_one)
    items = [(wanted[handle_of(d)], d, blake3.blake3(d).digest()) for d in BLOBS]
    installed, error = await service.install_small_replicas(items)
    assert isinstance(error, DiskFull)
    assert handle_of(BLOBS[2]) not in installed
    assert len(installed) == len(BLOBS) - 1
    assert [r.handle for r in await service.wanted_rows()] == [handle_of(BLOBS[2])]
    assert not service.layout.data_path(hex_of_handle(handle_of(BLOBS[2]))).exists()


async def test_crash_between_rename_and_commit_is_adopted_by_recover(
    service: BlobService,
) -> None:
    data = BLOBS[3]
    handle = handle_of(data)
    tmp = await service.io(replicas.write_durable_tmp, service.layout, data)
    # What a crash after publish_replicas' rename and before its commit leaves behind:
    os.rename(tmp, service.layout.data_path(hex_of_handle(handle)))
    report = await service._db(maintenance.recover, service.layout, service.catalog)
    assert report.orphans_removed == 0
    assert handle not in [r.handle for r in await service.wanted_rows()]
    assert await read(service, handle) == data
