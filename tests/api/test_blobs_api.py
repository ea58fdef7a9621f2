"""The Blob Service HTTP API in-process (aiohttp TestServer) on the real event log."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from protocol.outline import CHUNK_SIZE
from swarmnode.api.blobs_app import RangeNotSatisfiable, make_blobs_app, parse_byte_range
from swarmnode.config import Config
from swarmnode.events.log import EventLog
from swarmnode.identity import load_or_create_identity
from swarmnode.ports import NewEvent, Subscription
from swarmnode.store.files import WriteFn
from swarmnode.store.metadata import METADATA_NAME, METADATA_SEMANTICS
from swarmnode.store.service import BlobService
from tests.store.helpers import Clock, remote_metadata_event

URL = "/api/v1/blobs"
MAX_BLOB = 4 * 1024 * 1024
DEADLINE = 10.0


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    service: BlobService
    events: EventLog
    clock: Clock
    root: Path


async def open_env(tmp_path: Path, *, write: WriteFn = os.write) -> AsyncIterator[Env]:
    events = EventLog(tmp_path / "events.sqlite", load_or_create_identity(tmp_path))
    await events.start()
    clock = Clock()
    config = Config(data_dir=tmp_path, max_blob_bytes=MAX_BLOB, retention_interval_s=3600.0)
    service = BlobService(tmp_path / "blobs", events, config, clock=clock, write=write)
    await service.start()
    try:
        async with TestClient(TestServer(make_blobs_app(service, config))) as client:
            yield Env(client, service, events, clock, tmp_path / "blobs")
    finally:
        await service.stop()
        await events.stop()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in open_env(tmp_path):
        yield e


def form(
    data: bytes | None,
    metadata: Any = None,
    *,
    metadata_first: bool = False,
    filename: str = "photo.jpg",
    content_type: str = "image/jpeg",
) -> FormData:
    out = FormData()
    meta_text = metadata if isinstance(metadata, str) else json.dumps(metadata)

    def add_meta() -> None:
        if metadata is not None:
            out.add_field("metadata", meta_text, content_type="application/json")

    if metadata_first:
        add_meta()
    if data is not None:
        out.add_field("blob", io.BytesIO(data), filename=filename, content_type=content_type)
    if not metadata_first:
        add_meta()
    return out


META = {"semantics": "photos", "retentionPolicy": {"policy": "keepForever"}}


async def post(env: Env, body: FormData, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with env.client.post(URL, data=body, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def store(env: Env, data: bytes, meta: Any = META, **kw: Any) -> str:
    status, body = await post(env, form(data, meta, **kw))
    assert status == 201, body
    handle = body["handle"]
    assert isinstance(handle, str)
    return handle


async def assert_error(resp_status: int, body: dict[str, Any], status: int) -> None:
    assert resp_status == status, body
    assert body["errorCode"] == status
    assert isinstance(body["error"], str)
    assert body["error"]


def stored_files(env: Env) -> list[str]:
    return sorted(p.name for p in (env.root / "data").iterdir())


# -- upload and download ------------------------------------------------------------------------


@pytest.mark.parametrize("metadata_first", [False, True])
async def test_upload_then_get_byte_exact(env: Env, metadata_first: bool) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 123)
    status, body = await post(env, form(data, META, metadata_first=metadata_first))
    assert status == 201
    assert body == {"handle": "blake3:" + blake3.blake3(data).hexdigest()}
    async with env.client.get(
        f"{URL}?{body['handle']}", headers={"Accept": "application/mixed"}
    ) as r:
        assert r.status == 200
        assert await r.read() == data
        assert r.headers["Content-Type"] == "image/jpeg"
        assert r.headers["Content-Length"] == str(len(data))
        assert r.headers["ETag"] == f'"{body["handle"]}"'
        assert r.headers["Accept-Ranges"] == "bytes"


async def test_expect_100_continue(env: Env) -> None:
    data = b"curl sends Expect: 100-continue"
    status, body = await post(env, form(data, META), expect100=True)
    assert status == 201
    async with env.client.get(f"{URL}?{body['handle']}") as r:
        assert await r.read() == data


async def test_ranges_etag_and_head(env: Env) -> None:
    data = bytes(range(256)) * 4
    handle = await store(env, data)
    get = f"{URL}?{handle}"
    async with env.client.get(get, headers={"Range": "bytes=10-19"}) as r:
        assert r.status == 206
        assert await r.read() == data[10:20]
        assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    async with env.client.get(get, headers={"Range": "bytes=-5"}) as r:
        assert r.status == 206
        assert await r.read() == data[-5:]
    async with env.client.get(get, headers={"Range": "bytes=1000-"}) as r:
        assert r.status == 206
        assert await r.read() == data[1000:]
    async with env.client.get(get, headers={"Range": f"bytes={len(data)}-"}) as r:
        await assert_error(r.status, await r.json(), 416)
        assert r.headers["Content-Range"] == f"bytes */{len(data)}"
    async with env.client.get(get, headers={"Range": "bytes=5-9", "If-Range": '"other"'}) as r:
        assert r.status == 200  # If-Range does not match: the whole blob
        assert await r.read() == data
    async with env.client.get(get, headers={"If-None-Match": f'"{handle}"'}) as r:
        assert r.status == 304
        assert await r.read() == b""
        assert r.headers["ETag"] == f'"{handle}"'
    async with env.client.get(get, headers={"If-None-Match": '"something-else"'}) as r:
        assert r.status == 200
        assert await r.read() == data
    async with env.client.head(get) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(len(data))
        assert r.headers["ETag"] == f'"{handle}"'
        assert await r.read() == b""


def test_parse_byte_range() -> None:
    assert parse_byte_range("bytes=0-0", 10) == (0, 1)
    assert parse_byte_range("bytes=5-100", 10) == (5, 5)
    assert parse_byte_range("bytes=-100", 10) == (0, 10)
    assert parse_byte_range("bytes=1-2,4-5", 10) is None  # multi-range: ignored, 200
    assert parse_byte_range("items=1-2", 10) is None
    assert parse_byte_range("bytes=3-1", 10) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_byte_range("bytes=10-", 10)
    with pytest.raises(RangeNotSatisfiable):
        parse_byte_range("bytes=-0", 10)


async def test_metadata_and_event(env: Env) -> None:
    data = b"metadata test"
    meta = {"semantics": "docs", "sourceApp": "com.example.app"}
    handle = await store(env, data, meta, filename="notes.txt", content_type="text/plain")
    async with env.client.get(f"{URL}?metadata-{handle}") as r:
        assert r.status == 200
        got = await r.json()
    assert got["handle"] == handle
    assert got["bytes"] == len(data)
    assert got["semantics"] == "docs"
    assert got["sourceApp"] == "com.example.app"
    assert got["contentType"] == "text/plain"
    assert got["filename"] == "notes.txt"
    assert got["source"] == env.events.node_id
    assert got["retentionPolicy"] == {"policy": "keepForever"}
    assert got["local"] is True
    assert got["peers"] == []
    assert got["chunkSize"] == CHUNK_SIZE

    subscription = [Subscription(semantics=METADATA_SEMANTICS, name=METADATA_NAME)]
    records = [
        r async for r in env.events.query(subscription, None, env.events.offsets(), "lamport")
    ]
    assert [json.loads(r.payload) for r in records] == [
        {k: v for k, v in got.items() if k not in ("local", "peers", "deleted")}
    ]


async def test_list_newest_first_and_paged(env: Env) -> None:
    handles = [await store(env, f"blob number {i}".encode()) for i in range(5)]
    async with env.client.get(URL) as r:
        assert r.status == 200
        body = await r.json()
    assert [b["handle"] for b in body["blobs"]] == handles[::-1]
    assert body["next"] is None
    seen: list[str] = []
    query = "limit=2"
    while True:
        async with env.client.get(f"{URL}?{query}") as r:
            page = await r.json()
        seen += [b["handle"] for b in page["blobs"]]
        if page["next"] is None:
            break
        query = f"limit=2&before={page['next']}"
    assert seen == handles[::-1]


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body_form", "why"),
    [
        (form(None, META), "no blob part"),
        (form(b"x", None), "no metadata part"),
        (form(b"x", "{not json"), "bad metadata"),
        (form(b"x", {"retentionPolicy": {"policy": "keepForever"}}), "no semantics"),
        (form(b"x", {"semantics": "s", "retentionPolicy": {"policy": "keepLonger"}}), "policy"),
        (form(b"x", {"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime"}}), "until"),
        (
            form(
                b"x",
                {"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime", "until": "x"}},
            ),
            "until type",
        ),
        (
            form(
                b"x", {"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime", "until": 5}}
            ),
            "until past",
        ),
    ],
)
async def test_bad_uploads_are_400_and_store_nothing(
    env: Env, body_form: FormData, why: str
) -> None:
    status, body = await post(env, body_form)
    await assert_error(status, body, 400)
    assert stored_files(env) == [], why
    assert list((env.root / "tmp").iterdir()) == []
    assert env.events.offsets() == {}


async def test_not_multipart_is_400(env: Env) -> None:
    async with env.client.post(
        URL, data=b"raw", headers={"Content-Type": "application/octet-stream"}
    ) as r:
        await assert_error(r.status, await r.json(), 400)


async def test_truncated_body_is_400_and_stores_nothing(env: Env) -> None:
    boundary = "XyZ"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="blob"; filename="a"\r\n\r\n'
    ).encode() + b"a" * 100_000
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with env.client.post(URL, data=body, headers=headers) as r:
        await assert_error(r.status, await r.json(), 400)
    assert stored_files(env) == []
    assert list((env.root / "tmp").iterdir()) == []


async def test_too_large_declared_and_streamed(env: Env) -> None:
    big = b"b" * (MAX_BLOB + 1)
    status, body = await post(env, form(big, META))
    await assert_error(status, body, 413)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        boundary = "qq"
        disposition = 'Content-Disposition: form-data; name="blob"; filename="b"'
        yield f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
        for _ in range(MAX_BLOB // 65536 + 2):
            yield b"c" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": "multipart/form-data; boundary=qq"}
    async with env.client.post(URL, data=chunked(), headers=headers) as r:
        await assert_error(r.status, await r.json(), 413)
    assert stored_files(env) == []
    assert list((env.root / "tmp").iterdir()) == []


async def test_disk_full_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    def full(fd: int, view: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    async for env in open_env(tmp_path, write=full):
        status, body = await post(env, form(os.urandom(3 * 1024 * 1024), META))
        await assert_error(status, body, 507)
        assert stored_files(env) == []
        assert list((env.root / "tmp").iterdir()) == []
        assert env.events.offsets() == {}


async def test_unknown_paths_methods_and_queries(env: Env) -> None:
    missing = "blake3:" + "0" * 64
    for path, status in [
        (f"{URL}?{missing}", 404),
        (f"{URL}?metadata-{missing}", 404),
        ("/api/v1/nothing", 404),
        (f"{URL}?not-a-handle", 400),
        (f"{URL}?limit=0", 400),
        (f"{URL}?before=junk", 400),
        (f"{URL}?color=red", 400),
    ]:
        async with env.client.get(path) as r:
            await assert_error(r.status, await r.json(), status)
    async with env.client.put(URL, data=b"x") as r:
        await assert_error(r.status, await r.json(), 405)


async def test_announced_but_not_local_is_404_not_yet(env: Env) -> None:
    handle = "blake3:" + "9" * 64
    [record] = await env.events.publish([remote_metadata_event(handle, size=4)])
    async with asyncio.timeout(DEADLINE):
        await env.service.wait_followed(record.source, record.offset)
    async with env.client.get(f"{URL}?{handle}") as r:
        body = await r.json()
        await assert_error(r.status, body, 404)
        assert body["error"] == "blob not available on this node yet"
    async with env.client.get(f"{URL}?metadata-{handle}") as r:
        got = await r.json()
        assert got["local"] is False


# -- retention ----------------------------------------------------------------------------------


async def test_keep_until_time_then_410(env: Env) -> None:
    meta = {
        "semantics": "s",
        "retentionPolicy": {"policy": "keepUntilTime", "until": env.clock.now + 30},
    }
    handle = await store(env, b"expires", meta)
    env.clock.now += 31
    await env.service.run_retention()
    async with env.client.get(f"{URL}?{handle}") as r:
        await assert_error(r.status, await r.json(), 410)
    assert stored_files(env) == []
    async with env.client.get(f"{URL}?metadata-{handle}") as r:
        got = await r.json()
        assert (got["local"], got["deleted"]) == (False, True)


async def test_keep_until_next_newer_upload_makes_older_410(env: Env) -> None:
    policy = {"policy": "keepUntilNext", "semantics": "camera", "sourceApp": "cam"}
    meta = {"semantics": "camera", "sourceApp": "cam", "retentionPolicy": policy}
    older = await store(env, b"image 1", meta)
    other_app = await store(env, b"image x", {"semantics": "camera", "sourceApp": "other"})
    async with asyncio.timeout(DEADLINE):
        await env.service.retention_settled()
    async with env.client.get(f"{URL}?{older}") as r:
        assert r.status == 200  # a newer blob from another app does not match
    newer = await store(env, b"image 2", meta)
    async with asyncio.timeout(DEADLINE):
        await env.service.retention_settled()
    async with env.client.get(f"{URL}?{older}") as r:
        await assert_error(r.status, await r.json(), 410)
    for kept in (newer, other_app):
        async with env.client.get(f"{URL}?{kept}") as r:
            assert r.status == 200


async def test_cors_headers_on_blob_responses(env: Env) -> None:
    handle = await store(env, b"cors")
    async with env.client.get(f"{URL}?{handle}", headers={"Origin": "http://app.local"}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_publish_helper_event_is_not_metadata_noise(env: Env) -> None:
    """Non-metadata events in the log are ignored by the catalog."""
    [record] = await env.events.publish([NewEvent(semantics="other", name="x", payload="{}")])
    handle = await store(env, b"after other event")
    async with env.client.get(URL) as r:
        body = await r.json()
    assert [b["handle"] for b in body["blobs"]] == [handle]
    assert record.offset == 0
