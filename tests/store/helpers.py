"""Helpers for blob-service tests: a settable clock, a service on a fake log, uploads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmnode.config import Config
from swarmnode.ports import NewEvent
from swarmnode.store.files import WriteFn
from swarmnode.store.metadata import METADATA_NAME, METADATA_SEMANTICS, parse_client_metadata
from swarmnode.store.service import BlobService
from tests.helpers.fake_events import FakeEventLog


@dataclass
class Clock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_service(
    root: Path, events: FakeEventLog, clock: Clock, *, write: WriteFn | None = None
) -> BlobService:
    # A long timer: tests trigger retention explicitly or through new metadata events.
    config = Config(data_dir=root.parent, retention_interval_s=3600.0)
    if write is None:
        return BlobService(root, events, config, clock=clock)
    return BlobService(root, events, config, clock=clock, write=write)


async def upload(
    service: BlobService,
    data: bytes,
    *,
    semantics: str = "test",
    policy: dict[str, Any] | None = None,
    source_app: str | None = None,
    content_type: str | None = "application/octet-stream",
    filename: str | None = "f.bin",
) -> str:
    meta_obj: dict[str, Any] = {"semantics": semantics}
    if policy is not None:
        meta_obj["retentionPolicy"] = policy
    if source_app is not None:
        meta_obj["sourceApp"] = source_app
    meta = parse_client_metadata(json.dumps(meta_obj), now=service.now())
    writer = await service.begin_upload()
    try:
        await writer.write(data)
        return await service.store(writer, meta, content_type=content_type, filename=filename)
    except BaseException:
        await writer.abort()
        raise


def remote_metadata_event(
    handle: str,
    *,
    size: int,
    semantics: str = "test",
    policy: dict[str, Any] | None = None,
    source: str = "remote000000000",
    mutate: Callable[[dict[str, Any]], None] | None = None,
) -> NewEvent:
    payload: dict[str, Any] = {
        "handle": handle,
        "createdOn": 1,
        "source": source,
        "semantics": semantics,
        "bytes": size,
        "retentionPolicy": policy or {"policy": "keepForever"},
        "sourceApp": None,
        "contentType": "text/plain",
        "filename": None,
        "chunkSize": 262144,
        "outlineRoot": "ab" * 32,
    }
    if mutate is not None:
        mutate(payload)
    return NewEvent(semantics=METADATA_SEMANTICS, name=METADATA_NAME, payload=json.dumps(payload))
