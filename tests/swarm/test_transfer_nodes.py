"""Blob replication between in-process nodes, where a test can make a peer lie.

A provider that serves corrupt chunks must never get a corrupt byte served by the fetcher: the
fetcher verifies every chunk against the outline before storing it, strikes and then drops the
peer, fetches the chunk elsewhere, and its HTTP reader streams only verified bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest

from protocol.outline import CHUNK_SIZE
from swarmnode.config import Config, HostPort
from swarmnode.node import Node

KEY = hashlib.blake2s(b"transfer nodes test").digest()
DEADLINE = 30.0
CHUNK = CHUNK_SIZE


def make_config(root: Path, name: str, peers: tuple[HostPort, ...] = ()) -> Config:
    return Config(
        data_dir=root / name,
        listen=HostPort("127.0.0.1", 0),
        events_api=HostPort("127.0.0.1", 0),
        blobs_api=HostPort("127.0.0.1", 0),
        peers=peers,
        swarm_key=KEY,
        log_level="WARNING",
    )


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Node]:
    node = Node(config)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def blobs_url(node: Node) -> str:
    assert node.addresses is not None
    return f"http://{node.addresses.blobs_api}/api/v1/blobs"


async def upload(http: aiohttp.ClientSession, node: Node, content: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("blob", io.BytesIO(content), filename="x.bin", content_type="application/x-test")
    form.add_field("metadata", json.dumps({"semantics": "test"}), content_type="application/json")
    async with http.post(blobs_url(node), data=form) as resp:
        body = await resp.text()
        assert resp.status == 201, body
    handle: str = json.loads(body)["handle"]
    return handle


async def wait_until(node: Node, predicate: Callable[[], bool]) -> None:
    """Wait for ``predicate`` re-checked whenever the node's driver acted (caller's deadline)."""
    await node.driver.wait_for(predicate)


def corrupt_chunks(node: Node, bad: set[int]) -> list[int]:
    """Make ``node`` serve the chunks ``bad`` of every blob with one byte flipped; returns the
    list the indices it corrupted are appended to."""
    source: Any = node.transfers._source
    honest = source.read_chunk
    corrupted: list[int] = []

    async def lying(handle: bytes, index: int) -> bytes | None:
        data: bytes | None = await honest(handle, index)
        if data is None or index not in bad:
            return data
        corrupted.append(index)
        return bytes([data[0] ^ 0xFF]) + data[1:]

    source.read_chunk = lying
    return corrupted


async def test_corrupt_provider_never_gets_a_corrupt_byte_served(tmp_path: Path) -> None:
    content = blake3.blake3(b"seed").digest(length=8 * CHUNK + 1234)
    handle_hex = blake3.blake3(content).hexdigest()
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        liar = await stack.enter_async_context(running(make_config(tmp_path, "liar")))
        corrupted = corrupt_chunks(liar, {3, 5})
        handle = await upload(http, liar, content)
        assert handle == "blake3:" + handle_hex
        assert liar.addresses is not None
        fetcher = await stack.enter_async_context(
            running(make_config(tmp_path, "fetcher", (liar.addresses.swarm,)))
        )
        transfers = fetcher.transfers
        async with asyncio.timeout(DEADLINE):
            # The upload is the liar's first event (offset 0): wait until the fetcher knows it.
            await fetcher.blobs.wait_followed(liar.node_id, 0)
            # The GET starts while only the liar holds the blob: it may stream the verified
            # prefix (chunks 0-2) and must then wait, never passing on the corrupt chunk 3.
            response = await http.get(f"{blobs_url(fetcher)}?{handle}")
            assert response.status == 200
            # Two bad chunks: the liar is struck twice, so the fetcher drops and refuses it.
            await wait_until(fetcher, lambda: transfers.counters["badChunks"] >= 2)
            await wait_until(fetcher, lambda: liar.node_id in fetcher.driver.penalised_peers())
            assert sorted(corrupted) == [3, 5]
            prefix = await response.content.readexactly(3 * CHUNK)
            assert prefix == content[: 3 * CHUNK]
            # An honest node with the same bytes joins; the fetcher completes from it.
            honest = await stack.enter_async_context(
                running(make_config(tmp_path, "honest", (fetcher.addresses.swarm,)))  # type: ignore[union-attr]
            )
            assert await upload(http, honest, content) == handle
            rest = await response.content.read()
            response.release()
            assert prefix + rest == content
            await wait_until(fetcher, lambda: transfers.counters["completed"] >= 1)
        stored = (tmp_path / "fetcher" / "blobs" / "data" / handle_hex).read_bytes()
        assert stored == content
        status = fetcher.driver.status()
        assert status["transferTotals"]["badChunks"] == 2


@pytest.mark.parametrize("size", [0, 1, CHUNK, 3 * CHUNK + 7])
async def test_blob_replicates_between_two_nodes(tmp_path: Path, size: int) -> None:
    content = blake3.blake3(str(size).encode()).digest(length=size)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        a = await stack.enter_async_context(running(make_config(tmp_path, "a")))
        assert a.addresses is not None
        b = await stack.enter_async_context(
            running(make_config(tmp_path, "b", (a.addresses.swarm,)))
        )
        handle = await upload(http, a, content)
        async with asyncio.timeout(DEADLINE):
            await b.blobs.wait_followed(a.node_id, 0)
            await wait_until(b, lambda: b.transfers.counters["completed"] >= 1)
            async with http.get(f"{blobs_url(b)}?{handle}") as resp:
                assert resp.status == 200
                assert await resp.read() == content
            async with http.get(f"{blobs_url(b)}?metadata-{handle}") as resp:
                assert (await resp.json())["local"] is True
