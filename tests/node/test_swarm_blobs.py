"""Blob metadata across a swarm of two real node processes (issue 4, item 4).

A blob's metadata event replicates like any event: the other node's subscribers see it, its
catalog learns the blob (and blob replication then fetches the bytes), and retention runs on
the replicated announcements, so ``keepUntilNext`` deletes across the swarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import blake3

from netsim.nodeproc import NodeProcess
from tests.helpers.blob_transfer import get_metadata, wait_blob_status, wait_metadata

SWARM_KEY = hashlib.blake2s(b"node swarm blobs test").hexdigest()
METADATA_SEMANTICS = "com.actyx.os.blobs.metadata"
METADATA_NAME = "ActyxOS-BlobService-Metadata"
DEADLINE = 60.0  # cold starts and replication on a loaded 2-core machine


@contextlib.asynccontextmanager
async def pair(tmp_path: Path) -> AsyncIterator[tuple[NodeProcess, NodeProcess]]:
    """Nodes A and B in one swarm: B is seeded with A's swarm address."""
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            NodeProcess(tmp_path / "a", extra_args=["--swarm-key", SWARM_KEY])
        )
        b = await stack.enter_async_context(
            NodeProcess(
                tmp_path / "b", extra_args=["--swarm-key", SWARM_KEY, "--peers", a.info.swarm]
            )
        )
        yield a, b


async def upload(
    http: aiohttp.ClientSession, node: NodeProcess, content: bytes, metadata: dict[str, Any]
) -> str:
    """Upload ``content`` as a multipart form; asserts 201 and the handle the bytes must get."""
    form = aiohttp.FormData()
    form.add_field("blob", content, filename="x.bin", content_type="application/x-test")
    form.add_field("metadata", json.dumps(metadata), content_type="application/json")
    async with http.post(node.blobs_url, data=form) as resp:
        body = await resp.text()
        assert resp.status == 201, body
    handle: str = json.loads(body)["handle"]
    assert handle == "blake3:" + blake3.blake3(content).hexdigest()
    return handle


async def blob_status(http: aiohttp.ClientSession, node: NodeProcess, handle: str) -> int:
    async with http.get(f"{node.blobs_url}?{handle}") as resp:
        await resp.read()
        return resp.status


async def next_event(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    line = await resp.content.readline()
    assert line.endswith(b"\r\n"), line
    event: dict[str, Any] = json.loads(line)
    return event


async def test_metadata_replicates_and_the_bytes_follow(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    content = os.urandom(70_000)
    meta = {"semantics": "s.photos", "retentionPolicy": {"policy": "keepForever"}}
    async with pair(tmp_path) as (a, b):
        body = {"subscriptions": [{"semantics": METADATA_SEMANTICS}]}
        async with http.post(b.events_url + "/subscribe", json=body) as sub:
            assert sub.status == 200
            handle = await upload(http, a, content, meta)
            async with asyncio.timeout(DEADLINE):
                event = await next_event(sub)
        assert event["stream"] == {
            "semantics": METADATA_SEMANTICS,
            "name": METADATA_NAME,
            "source": a.info.node_id,
        }
        assert event["payload"]["handle"] == handle
        assert event["payload"]["source"] == a.info.node_id
        assert event["payload"]["bytes"] == len(content)

        async with asyncio.timeout(DEADLINE):
            on_b = await wait_metadata(http, b, handle)
        assert on_b["handle"] == handle
        assert on_b["deleted"] is False
        assert a.info.node_id in on_b["peers"]  # A announced it: A holds the bytes
        assert on_b["source"] == a.info.node_id
        assert on_b["semantics"] == "s.photos"
        assert on_b["retentionPolicy"] == {"policy": "keepForever"}
        status, on_a = await get_metadata(http, a, handle)
        assert status == 200
        assert on_a["local"] is True

        async with http.get(b.blobs_url) as resp:
            assert resp.status == 200
            listed = (await resp.json())["blobs"]
        assert [item["handle"] for item in listed] == [handle]

        for node in (a, b):
            async with http.get(f"{node.blobs_url}?{handle}") as resp:
                assert resp.status == 200
                assert await resp.read() == content


async def test_keep_until_next_deletes_across_the_swarm(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    policy = {"policy": "keepUntilNext", "semantics": "s.next"}
    meta = {"semantics": "s.next", "retentionPolicy": policy}
    first, second = os.urandom(50_000), os.urandom(60_000)
    async with pair(tmp_path) as (a, b):
        old = await upload(http, a, first, meta)
        assert await blob_status(http, a, old) == 200
        # B must have seen A's announcement, so its own (lamport rises past what it saw) is newer.
        async with asyncio.timeout(DEADLINE):
            await wait_metadata(http, b, old)
        new = await upload(http, b, second, meta)

        async with asyncio.timeout(DEADLINE):
            await wait_blob_status(http, a, old, 410, before=200)
        status, on_a = await get_metadata(http, a, old)
        assert status == 200
        assert on_a["deleted"] is True
        assert on_a["local"] is False

        # The newer blob stays, and A knows it.
        assert await blob_status(http, b, new) == 200
        async with asyncio.timeout(DEADLINE):
            newer_on_a = await wait_metadata(http, a, new)
        assert newer_on_a["deleted"] is False
        assert newer_on_a["source"] == b.info.node_id
        # On B (which may have fetched the old blob meanwhile) retention deletes it too.
        async with asyncio.timeout(DEADLINE):
            await wait_blob_status(http, b, old, 410, before=200)
        assert await blob_status(http, b, new) == 200


async def test_keep_until_time_policy_replicates_intact(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    until = int(time.time()) + 3600
    policy = {"policy": "keepUntilTime", "until": until}
    async with pair(tmp_path) as (a, b):
        handle = await upload(
            http, a, os.urandom(10_000), {"semantics": "s.timed", "retentionPolicy": policy}
        )
        async with asyncio.timeout(DEADLINE):
            on_b = await wait_metadata(http, b, handle)
        assert on_b["retentionPolicy"] == policy
        assert on_b["deleted"] is False
        status, on_a = await get_metadata(http, a, handle)
        assert status == 200
        assert on_a["retentionPolicy"] == policy
