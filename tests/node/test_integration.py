"""The README tour and the Event Service as users and apps meet them: a real node, real HTTP, curl.

API error paths over real HTTP live in ``test_http_errors.py``.
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest

from netsim.nodeproc import NodeProcess, http_offsets, http_publish, http_query
from tests.helpers.blobfiles import PIECE, write_random_file

METADATA_SEMANTICS = "com.actyx.os.blobs.metadata"
METADATA_NAME = "ActyxOS-BlobService-Metadata"
_WAIT_S = 20.0


async def curl(*args: str) -> tuple[int, str]:
    """Run curl; returns ``(exit code, stdout)``. Fails the test on a hang."""
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "60",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"curl {args} failed: {err.decode()}"
    return proc.returncode, out.decode()


async def next_event(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next NDJSON line of a stream; every line must be one event ending in CRLF."""
    async with asyncio.timeout(_WAIT_S):
        line = await resp.content.readline()
    assert line.endswith(b"\r\n"), line
    event: dict[str, Any] = json.loads(line)
    assert {"stream", "timestamp", "lamport", "offset", "payload"} <= event.keys(), event
    return event


async def test_readme_tour_with_curl(
    node: NodeProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.jpg"
    size = 3 * PIECE + 4321  # over 1 MiB: curl sends Expect: 100-continue
    expected = write_random_file(photo, size)
    metadata = {"semantics": "com.example.photos", "retentionPolicy": {"policy": "keepForever"}}

    # 1. Subscribe to blob announcements before the upload.
    subscribe_body = {"subscriptions": [{"semantics": METADATA_SEMANTICS}]}
    async with http.post(node.events_url + "/subscribe", json=subscribe_body) as sub:
        assert sub.status == 200
        assert sub.content_type == "application/x-ndjson"

        # 2. Upload with curl -F.
        answer = tmp_path / "answer.json"
        _, status = await curl(
            "-o",
            str(answer),
            "-w",
            "%{http_code}",
            "-F",
            f"blob=@{photo}",
            "-F",
            "metadata=" + json.dumps(metadata),
            node.blobs_url,
        )
        assert status == "201", answer.read_text()
        assert json.loads(answer.read_text()) == {"handle": expected}

        # The subscription shows the metadata event.
        event = await next_event(sub)
    assert event["stream"] == {
        "semantics": METADATA_SEMANTICS,
        "name": METADATA_NAME,
        "source": node.info.node_id,
    }
    payload = event["payload"]
    assert payload["handle"] == expected
    assert payload["bytes"] == size
    assert payload["semantics"] == "com.example.photos"
    assert payload["retentionPolicy"] == {"policy": "keepForever"}
    assert payload["source"] == node.info.node_id
    assert payload["filename"] == "photo.jpg"
    assert payload["contentType"] == "image/jpeg"

    # 3. Fetch it back (the whole query string is the handle), and its metadata.
    copy = tmp_path / "copy.jpg"
    _, status = await curl("-o", str(copy), "-w", "%{http_code}", f"{node.blobs_url}?{expected}")
    assert status == "200"
    assert filecmp.cmp(photo, copy, shallow=False), "the GET must return the uploaded bytes"
    _, text = await curl(f"{node.blobs_url}?metadata-{expected}")
    meta = json.loads(text)
    assert meta["handle"] == expected
    assert meta["local"] is True

    # 4. The handle is the file's BLAKE3 hash, as b3sum computes it.
    hasher = blake3.blake3()
    hasher.update_mmap(copy)
    assert expected == "blake3:" + hasher.hexdigest()
    if shutil.which("b3sum"):
        _, b3 = await _b3sum(photo)
        assert expected == "blake3:" + b3.split()[0]

    # 5. Events: publish, then query everything this node holds.
    pub = json.dumps(
        {"data": [{"semantics": "com.example.machines", "name": "m1", "payload": {"temp": 71.5}}]}
    )
    _, status = await curl(
        "-o",
        os.devnull,
        "-w",
        "%{http_code}",
        node.events_url + "/publish",
        "-H",
        "Content-Type: application/json",
        "-d",
        pub,
    )
    assert status == "201"
    _, offsets_text = await curl(node.events_url + "/offsets")
    offsets = json.loads(offsets_text)
    assert offsets == {node.info.node_id: 1}, "metadata event at 0, the published one at 1"
    query = json.dumps({"subscriptions": [{}], "upperBound": offsets, "order": "lamport"})
    _, lines = await curl(
        node.events_url + "/query", "-H", "Content-Type: application/json", "-d", query
    )
    events = [json.loads(line) for line in lines.splitlines() if line.strip()]
    assert [e["offset"] for e in events] == [0, 1]
    assert events[0]["payload"]["handle"] == expected
    assert events[1]["payload"] == {"temp": 71.5}
    assert events[1]["stream"]["semantics"] == "com.example.machines"


async def _b3sum(path: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "b3sum", str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return proc.returncode, out.decode()


async def test_node_id_and_offsets_over_http(
    node: NodeProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(node.events_url + "/node_id") as resp:
        assert resp.status == 200
        assert await resp.json() == {"nodeId": node.info.node_id}
    async with http.get(node.events_url + "/offsets") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.headers.get("Cache-Control") == "no-store"
        assert await resp.json() == {}, "a fresh node holds no events and never reports -1"


async def test_publish_query_orders_and_bounds(
    node: NodeProcess, http: aiohttp.ClientSession
) -> None:
    src = node.info.node_id
    batch1 = [{"semantics": "s.a", "name": "n1", "payload": {"i": i}} for i in range(3)]
    batch2 = [{"semantics": "s.b", "name": "n2", "payload": [i, "x"]} for i in range(2)]
    assert await http_publish(http, node, batch1) == 201
    # Read-your-writes: offsets show the batch as soon as publish returned.
    assert await http_offsets(http, node) == {src: 2}
    assert await http_publish(http, node, batch2) == 201
    offsets = await http_offsets(http, node)
    assert offsets == {src: 4}

    everything: dict[str, Any] = {"subscriptions": [{}], "upperBound": offsets}
    lamport = await http_query(http, node, {**everything, "order": "lamport"})
    assert [e["offset"] for e in lamport] == [0, 1, 2, 3, 4]
    assert [e["payload"] for e in lamport] == [e["payload"] for e in batch1 + batch2]
    keys = [(e["lamport"], e["stream"]["source"]) for e in lamport]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    timestamps = [e["timestamp"] for e in lamport]
    assert all(isinstance(t, int) and t > 1_600_000_000_000_000 for t in timestamps), "µs"
    reverse = await http_query(http, node, {**everything, "order": "lamport-reverse"})
    assert reverse == lamport[::-1]
    ordered = await http_query(http, node, {**everything, "order": "source-ordered"})
    assert ordered == lamport

    # Filters: semantics, name; "" and null mean any.
    only_b = await http_query(
        http, node, {**everything, "order": "lamport", "subscriptions": [{"semantics": "s.b"}]}
    )
    assert [e["offset"] for e in only_b] == [3, 4]
    any_sem = await http_query(
        http,
        node,
        {**everything, "order": "lamport", "subscriptions": [{"semantics": "", "name": None}]},
    )
    assert any_sem == lamport
    # Bounds: lower exclusive, upper inclusive; a source not in upperBound contributes nothing.
    window = await http_query(
        http,
        node,
        {**everything, "order": "lamport", "lowerBound": {src: 1}, "upperBound": {src: 3}},
    )
    assert [e["offset"] for e in window] == [2, 3]
    assert await http_query(http, node, {**everything, "order": "lamport", "upperBound": {}}) == []


async def test_query_streams_crlf_lines_and_waits_for_an_upper_bound_ahead(
    node: NodeProcess, http: aiohttp.ClientSession
) -> None:
    src = node.info.node_id
    assert await http_publish(http, node, [{"semantics": "s", "name": "n", "payload": 0}]) == 201
    body = {"subscriptions": [{}], "upperBound": {src: 2}, "order": "source-ordered"}
    async with http.post(node.events_url + "/query", json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/x-ndjson"
        first = await next_event(resp)
        assert first["offset"] == 0
        # Offsets 1 and 2 do not exist yet: the query waits for them instead of ending.
        more = [{"semantics": "s", "name": "n", "payload": i} for i in (1, 2)]
        assert await http_publish(http, node, more) == 201
        assert [(await next_event(resp))["offset"] for _ in range(2)] == [1, 2]
        async with asyncio.timeout(_WAIT_S):
            assert await resp.content.read() == b"", "the query ends once every bound is reached"


async def test_subscribe_sends_headers_at_once_then_live_events(
    node: NodeProcess, http: aiohttp.ClientSession
) -> None:
    src = node.info.node_id
    assert await http_publish(http, node, [{"semantics": "old", "name": "n", "payload": 0}]) == 201
    subs = []
    try:
        # Many concurrent streams; the response (headers) arrives before any matching event exists.
        for i in range(8):
            body: dict[str, Any] = {"subscriptions": [{"semantics": "live"}]}
            if i % 2:
                body["lowerBound"] = {src: 0}
            async with asyncio.timeout(_WAIT_S):
                resp = await http.post(node.events_url + "/subscribe", json=body)
            subs.append(resp)
            assert resp.status == 200
            assert resp.content_type == "application/x-ndjson"
        data = [{"semantics": "live", "name": "n", "payload": {"k": i}} for i in range(3)]
        assert await http_publish(http, node, data) == 201
        for resp in subs:
            got = [await next_event(resp) for _ in range(3)]
            assert [e["offset"] for e in got] == [1, 2, 3]
            assert [e["payload"] for e in got] == [d["payload"] for d in data]
    finally:
        for resp in subs:
            resp.close()
    # Closed subscribers do not disturb the node.
    assert await http_publish(http, node, data) == 201
    assert await http_offsets(http, node) == {src: 6}


async def test_events_survive_a_clean_restart(
    node: NodeProcess, http: aiohttp.ClientSession
) -> None:
    data = [{"semantics": "s", "name": "n", "payload": {"i": i}} for i in range(4)]
    assert await http_publish(http, node, data) == 201
    offsets = await http_offsets(http, node)
    body = {"subscriptions": [{}], "upperBound": offsets, "order": "lamport"}
    before = await http_query(http, node, body)
    await node.restart()
    assert await http_offsets(http, node) == offsets
    assert await http_query(http, node, body) == before
    # Numbering continues gaplessly after the restart, lamport keeps rising.
    assert await http_publish(http, node, data[:1]) == 201
    after = await http_query(
        http, node, {**body, "lowerBound": offsets, "upperBound": await http_offsets(http, node)}
    )
    assert [e["offset"] for e in after] == [4]
    assert after[0]["lamport"] > before[-1]["lamport"]


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_blob_read_headers_range_and_etag(
    node: NodeProcess, http: aiohttp.ClientSession, tmp_path: Path, method: str
) -> None:
    blob = tmp_path / "b.bin"
    handle = write_random_file(blob, 100_000)
    form = aiohttp.FormData()
    form.add_field("blob", blob.read_bytes(), filename="b.bin", content_type="application/x-test")
    form.add_field(
        "metadata", json.dumps({"semantics": "s", "retentionPolicy": {"policy": "keepForever"}})
    )
    async with http.post(node.blobs_url, data=form) as resp:
        assert resp.status == 201, await resp.text()
        assert await resp.json() == {"handle": handle}
    url = f"{node.blobs_url}?{handle}"
    async with http.request(method, url, headers={"Accept": "application/mixed"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "100000"
        assert resp.headers["ETag"] == f'"{handle}"'
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.content_type == "application/x-test"
        body = await resp.read()
        assert body == (blob.read_bytes() if method == "GET" else b"")
    async with http.request(method, url, headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == "bytes 10-19/100000"
        if method == "GET":
            assert await resp.read() == blob.read_bytes()[10:20]
    async with http.request(method, url, headers={"If-None-Match": f'"{handle}"'}) as resp:
        assert resp.status == 304
