"""Every error API.md names, for both services, over real HTTP to a real node process.

Each error must come as ``{"error": <message>, "errorCode": <status>}`` and leave the node serving
and its data intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from netsim.nodeproc import NodeProcess, http_offsets, http_publish
from tests.helpers.tmpfs import mounted_tmpfs

_WAIT_S = 20.0
_EVENT_BODY_LIMIT = 16 * 1024 * 1024  # Config.max_event_body_bytes


async def expect_error(resp: aiohttp.ClientResponse, status: int) -> str:
    """Assert the API error shape; returns the message."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    body = json.loads(text)
    assert body["errorCode"] == status, body
    assert isinstance(body["error"], str), body
    assert body["error"], body
    return str(body["error"])


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").split("/")[0].rpartition(":")
    return host, int(port)


async def raw_exchange(host_port: tuple[str, int], request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection(*host_port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(_WAIT_S):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def raw_response_head_and_body(
    host_port: tuple[str, int], request: bytes
) -> tuple[int, bytes]:
    """Send raw bytes, read one response by its Content-Length, without waiting for the close.

    After an early answer aiohttp keeps reading (and discarding) the unread request body for a
    while before it closes, so a client must not wait for EOF.
    """
    reader, writer = await asyncio.open_connection(*host_port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(_WAIT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            )
            body = await reader.readexactly(length)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(lines[0].split()[1]), body


def _blob_form(blob: bytes | None, metadata: str | None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if blob is not None:
        form.add_field("blob", blob, filename="f.bin", content_type="application/octet-stream")
    if metadata is not None:
        form.add_field("metadata", metadata)
    return form


# -- Event Service -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("publish", b"{not json"),
        ("publish", b'{"data": "not a list"}'),
        ("publish", b'{"data": [{"semantics": "", "name": "n", "payload": 1}]}'),
        ("publish", b'{"data": [{"semantics": "s", "name": "  ", "payload": 1}]}'),
        ("publish", b'{"data": [{"semantics": 5, "name": "n", "payload": 1}]}'),
        ("query", b'{"subscriptions": [{}], "upperBound": {}, "order": "sideways"}'),
        ("query", b'{"subscriptions": [{}], "order": "lamport"}'),
        ("query", b"[]"),
        ("subscribe", b'{"subscriptions": "all"}'),
        ("subscribe", b"\xff\xfe"),
    ],
)
async def test_events_invalid_body_is_400_and_stores_nothing(
    node: NodeProcess, http: aiohttp.ClientSession, path: str, body: bytes
) -> None:
    assert await http_publish(http, node, [{"semantics": "s", "name": "n", "payload": 1}]) == 201
    before = await http_offsets(http, node)
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{node.events_url}/{path}", data=body, headers=headers) as resp:
        await expect_error(resp, 400)
    assert await http_offsets(http, node) == before


async def test_events_404_405_413(node: NodeProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(node.events_url + "/no_such_endpoint") as resp:
        await expect_error(resp, 404)
    async with http.get(node.events_url.replace("/api/v1/events", "/nothing/here")) as resp:
        await expect_error(resp, 404)
    async with http.get(node.events_url + "/publish") as resp:
        await expect_error(resp, 405)
    async with http.post(node.events_url + "/offsets", json={}) as resp:
        await expect_error(resp, 405)
    # One byte past the limit; a valid JSON prefix so only the size is wrong.
    big = b'{"data": [{"semantics": "s", "name": "n", "payload": "'
    big += b"x" * (_EVENT_BODY_LIMIT + 1 - len(big) - 4) + b'"}]}'
    assert len(big) == _EVENT_BODY_LIMIT + 1
    headers = {"Content-Type": "application/json"}
    body = io.BytesIO(big)  # aiohttp warns that raw bytes this large block the loop
    async with http.post(node.events_url + "/publish", data=body, headers=headers) as resp:
        await expect_error(resp, 413)
    assert await http_offsets(http, node) == {}


# -- Blob Service --------------------------------------------------------------------------------

_GOOD_META = json.dumps({"semantics": "s", "retentionPolicy": {"policy": "keepForever"}})


@pytest.mark.parametrize(
    ("blob", "metadata"),
    [
        (None, _GOOD_META),  # no blob part
        (b"data", None),  # no metadata part
        (b"data", "{not json"),
        (b"data", json.dumps({"semantics": "s", "retentionPolicy": {"policy": "keepAlways"}})),
        (b"data", json.dumps({"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime"}})),
        (
            b"data",
            json.dumps(
                {"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime", "until": "x"}}
            ),
        ),
        (
            b"data",
            json.dumps(
                {"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime", "until": 1}}
            ),
        ),
    ],
    ids=["no-blob", "no-metadata", "bad-json", "unknown-policy", "no-until", "text-until", "past"],
)
async def test_blobs_bad_upload_is_400_and_leaves_nothing(
    node: NodeProcess, http: aiohttp.ClientSession, blob: bytes | None, metadata: str | None
) -> None:
    async with http.post(node.blobs_url, data=_blob_form(blob, metadata)) as resp:
        await expect_error(resp, 400)
    assert await _blob_list(http, node) == []
    assert await http_offsets(http, node) == {}, "a rejected upload must publish no metadata event"
    assert not _stored_files(node)


async def test_blobs_not_multipart_is_400(node: NodeProcess, http: aiohttp.ClientSession) -> None:
    async with http.post(node.blobs_url, json={"blob": "x"}) as resp:
        await expect_error(resp, 400)
    async with http.post(node.blobs_url, data=b"raw bytes") as resp:
        await expect_error(resp, 400)
    assert await _blob_list(http, node) == []


async def test_blobs_404_405(node: NodeProcess, http: aiohttp.ClientSession) -> None:
    unknown = "blake3:" + "0" * 64
    async with http.get(f"{node.blobs_url}?{unknown}") as resp:
        await expect_error(resp, 404)
    async with http.get(f"{node.blobs_url}?metadata-{unknown}") as resp:
        await expect_error(resp, 404)
    async with http.get(node.blobs_url + "/elsewhere") as resp:
        await expect_error(resp, 404)
    for method in ("PUT", "DELETE", "PATCH"):
        async with http.request(method, node.blobs_url, data=b"x") as resp:
            await expect_error(resp, 405)


async def test_blobs_413_over_the_maximum_size(node: NodeProcess) -> None:
    # The default maximum is 64 GiB: announce more and send nothing. The node must refuse from the
    # headers alone, without waiting for the body.
    head = (
        "POST /api/v1/blobs HTTP/1.1\r\n"
        f"Host: {node.info.blobs_api}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {65 * 1024**3}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    status, body = await raw_response_head_and_body(_host_port(node.blobs_url), head)
    assert status == 413, body
    assert json.loads(body)["errorCode"] == 413


async def test_blob_removed_by_retention_answers_410(
    node: NodeProcess, http: aiohttp.ClientSession
) -> None:
    policy = json.dumps(
        {
            "semantics": "s.next",
            "retentionPolicy": {"policy": "keepUntilNext", "semantics": "s.next"},
        }
    )
    async with http.post(node.blobs_url, data=_blob_form(b"first", policy)) as resp:
        assert resp.status == 201, await resp.text()
        first = (await resp.json())["handle"]
    async with http.post(node.blobs_url, data=_blob_form(b"second", policy)) as resp:
        assert resp.status == 201, await resp.text()
        second = (await resp.json())["handle"]
    # Retention runs on each new metadata event (and on a timer): wait for it, with a deadline.
    status = 0
    async with asyncio.timeout(_WAIT_S):
        while status != 410:
            async with http.get(f"{node.blobs_url}?{first}") as resp:
                status = resp.status
                if status == 410:
                    await expect_error(resp, 410)
                else:
                    assert status == 200, await resp.text()
                    await asyncio.sleep(0.05)  # retention is asynchronous; nothing to await on
    async with http.get(f"{node.blobs_url}?{second}") as resp:
        assert resp.status == 200
        assert await resp.read() == b"second"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs to run a node on (needs root, as CI has); skips where mounting is refused."""
    with mounted_tmpfs(tmp_path / "small", "16m", lazy_unmount=True) as mount_point:
        yield mount_point


async def test_disk_full_is_507_and_leaves_nothing_half_written(
    small_disk: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        for _ in range(24):
            out.write(os.urandom(1 << 20))
    async with NodeProcess(small_disk / "node") as node, aiohttp.ClientSession() as http:
        with big.open("rb") as blob:
            form = aiohttp.FormData()
            form.add_field("blob", blob, filename="big.bin")
            form.add_field("metadata", _GOOD_META)
            async with http.post(node.blobs_url, data=form) as resp:
                await expect_error(resp, 507)
        assert _stored_files(node) == []
        assert await _blob_list(http, node) == []
        assert await http_offsets(http, node) == {}
        # The space is given back: a blob that fits is stored afterwards.
        async with http.post(node.blobs_url, data=_blob_form(b"fits", _GOOD_META)) as resp:
            assert resp.status == 201, await resp.text()


# -- Both services -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["events", "blobs"])
async def test_malformed_request_line_is_400_and_the_node_keeps_serving(
    node: NodeProcess, http: aiohttp.ClientSession, service: str
) -> None:
    url = node.events_url if service == "events" else node.blobs_url
    for junk in (
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET /api/v1 HTTP/1.1 extra words\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ):
        answer = await raw_exchange(_host_port(url), junk)
        assert answer.split(b"\r\n", 1)[0].split()[1] == b"400", answer[:300]
    ok = url + "/offsets" if service == "events" else url
    async with http.get(ok) as resp:
        assert resp.status == 200


@pytest.mark.parametrize("service", ["events", "blobs"])
async def test_host_guard_rejects_foreign_hosts(
    node: NodeProcess, http: aiohttp.ClientSession, service: str
) -> None:
    url = node.events_url + "/offsets" if service == "events" else node.blobs_url
    for host in ("evil.example.com", "attacker.test:4454", "192.0.2.7"):
        async with http.get(url, headers={"Host": host}) as resp:
            await expect_error(resp, 403)
    for host in ("localhost", "127.0.0.1:4454", "[::1]:4455", "app.localhost"):
        async with http.get(url, headers={"Host": host}) as resp:
            assert resp.status == 200, (host, await resp.text())
    # A rebinding attempt cannot write either.
    if service == "events":
        data: Any = {"data": [{"semantics": "s", "name": "n", "payload": 1}]}
        async with http.post(
            node.events_url + "/publish", json=data, headers={"Host": "evil.example.com"}
        ) as resp:
            await expect_error(resp, 403)
        assert await http_offsets(http, node) == {}


@pytest.mark.parametrize("service", ["events", "blobs"])
async def test_cors_preflight_and_simple_request(
    node: NodeProcess, http: aiohttp.ClientSession, service: str
) -> None:
    url = node.events_url + "/publish" if service == "events" else node.blobs_url
    preflight = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with http.options(url, headers=preflight) as resp:
        assert resp.status in (200, 204)
        assert resp.headers["Access-Control-Allow-Origin"] in ("*", "http://app.example")
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "content-type" in resp.headers["Access-Control-Allow-Headers"].lower()
    get_url = node.events_url + "/offsets" if service == "events" else node.blobs_url
    async with http.get(get_url, headers={"Origin": "http://app.example"}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] in ("*", "http://app.example")


# -- helpers -------------------------------------------------------------------------------------


async def _blob_list(http: aiohttp.ClientSession, node: NodeProcess) -> list[Any]:
    async with http.get(node.blobs_url) as resp:
        assert resp.status == 200, await resp.text()
        listing = await resp.json()
    items = listing["blobs"] if isinstance(listing, dict) else listing
    assert isinstance(items, list), listing
    return items


def _stored_files(node: NodeProcess) -> list[str]:
    """Blob content files, complete (``blobs/data``) or in progress (``blobs/tmp``)."""
    found = []
    for sub in ("data", "tmp"):
        where = node.data_dir / "blobs" / sub
        found += [str(p) for p in where.rglob("*") if p.is_file()] if where.exists() else []
    return sorted(found)
