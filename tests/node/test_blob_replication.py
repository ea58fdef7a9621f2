"""Blob replication between real node processes on loopback (issue 5's acceptance).

Every node fetches every announced blob from its peers: a blob uploaded on A of a chain A<-B<-C
is byte-exact on C (and held by B on the way); a GET right after C's metadata notification
streams it; a fetching node killed with ``kill -9`` resumes from its persisted bitmap; retention
deletes replicas too; an unknown handle is 404 at once; status shows transfers in flight.

Catching a transfer mid-way: each node sits behind its own rate-limited ``TcpProxy`` and
announces it (``SWARMNODE_ADVERTISE``, as in test_partition.py), so every swarm connection between
the two is throttled (8 MiB/s per direction) and a 24 MiB transfer takes seconds, while the status
is polled every 10 ms; with ``SWARMNODE_FLUSH_INTERVAL=0.2`` the bitmap is persisted 5 times a
second, so a kill at 40 % lands with a known, small unpersisted window.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from netsim.nodeproc import NodeProcess
from netsim.observe import node_status
from netsim.proxy import TcpProxy
from protocol.outline import CHUNK_SIZE
from tests.helpers.blob_transfer import (
    get_metadata,
    hash_file_slice,
    hashed_get,
    transfer_row,
    upload_file,
    wait_blob_status,
    wait_local,
    wait_metadata,
)
from tests.helpers.blobfiles import write_random_file

SWARM_KEY = hashlib.blake2s(b"blob replication test").hexdigest()
METADATA_SEMANTICS = "com.actyx.os.blobs.metadata"
MIB = 1 << 20
CHUNK = CHUNK_SIZE  # the tests read it from the metadata too
DEADLINE = 90.0  # cold starts and 64 MiB through three processes on a loaded 2-core machine
FLUSH_INTERVAL = "0.2"  # SWARMNODE_FLUSH_INTERVAL: bitmap persisted every 0.2 s
ADVERTISE_ENV = "SWARMNODE_ADVERTISE"
# Each node's proxy caps it at 8 MiB/s per direction: 24 MiB take ~3 s to replicate.
THROTTLE_BPS = 8 * MIB
SLOW_SIZE = 24 * MIB
KEEP = {"semantics": "s.repl", "retentionPolicy": {"policy": "keepForever"}}


def blob_path(node: NodeProcess, handle: str) -> Path:
    """Where a complete blob lives in a node's data dir (store/files.py layout)."""
    return node.data_dir / "blobs" / "data" / handle.removeprefix("blake3:")


@contextlib.asynccontextmanager
async def chain(tmp_path: Path, count: int) -> AsyncIterator[list[NodeProcess]]:
    """``count`` nodes, each seeded only with the previous one's swarm address."""
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[NodeProcess] = []
        for i in range(count):
            args = ["--swarm-key", SWARM_KEY]
            if nodes:
                args += ["--peers", nodes[-1].info.swarm]
            node = NodeProcess(tmp_path / f"n{i}", extra_args=args)
            nodes.append(await stack.enter_async_context(node))
        yield nodes


@dataclass(slots=True)
class SlowPair:
    """A <- B, each behind its own throttled proxy that it announces."""

    a: NodeProcess
    b: NodeProcess
    b_proxy: TcpProxy  # announced by B, again after a restart

    async def restart_b(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Start B again behind the same proxy (it binds a new port: the proxy follows)."""
        monkeypatch.setenv(ADVERTISE_ENV, self.b_proxy.address)
        await self.b.start()
        follow(self.b_proxy, self.b)


def follow(proxy: TcpProxy, node: NodeProcess) -> None:
    """Point ``proxy`` at ``node``'s bound swarm port."""
    host, _, port = node.info.swarm.rpartition(":")
    proxy.target = (host, int(port))


@contextlib.asynccontextmanager
async def slow_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlowPair]:
    """Nodes A and B (seeded with A) whose swarm traffic is slow enough to watch (module doc)."""
    monkeypatch.setenv("SWARMNODE_FLUSH_INTERVAL", FLUSH_INTERVAL)
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[NodeProcess] = []
        proxies: list[TcpProxy] = []
        for name in ("a", "b"):
            # The node binds port 0 and its proxy learns the port once the node is up (a port
            # picked in advance could be taken meanwhile); until then a dial to it just fails.
            proxy = TcpProxy(("127.0.0.1", 0), rate_bps=THROTTLE_BPS)
            proxies.append(await stack.enter_async_context(proxy))
            monkeypatch.setenv(ADVERTISE_ENV, proxy.address)
            args = ["--swarm-key", SWARM_KEY]
            if nodes:
                args += ["--peers", proxies[0].address]
            node = NodeProcess(tmp_path / name, extra_args=args)
            nodes.append(await stack.enter_async_context(node))
            follow(proxy, node)
        yield SlowPair(nodes[0], nodes[1], proxies[1])


def records(node: NodeProcess, event: str, handle: str) -> list[dict[str, Any]]:
    return [r for r in node.log_records() if r.get("event") == event and r.get("handle") == handle]


# ---- 1. chain: 64 MiB from A read byte-exact on C, held by B ----------------------------------


async def test_64_mib_replicates_along_a_chain_byte_exact_with_ranges(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    size = 64 * MIB
    source = tmp_path / "photo.bin"
    expected = write_random_file(source, size)
    async with chain(tmp_path, 3) as (a, b, c):
        handle = await upload_file(http, a, source, KEEP)
        assert handle == expected
        async with asyncio.timeout(DEADLINE):
            on_c = await wait_local(http, c, handle)
            on_b = await wait_local(http, b, handle)
        assert on_c["bytes"] == size
        assert on_c["source"] == a.info.node_id

        whole = await hashed_get(http, c, handle)
        assert whole.status == 200, whole.error
        assert whole.headers["Content-Length"] == str(size)
        assert whole.headers["ETag"] == f'"{handle}"'
        assert whole.length == size
        assert "blake3:" + whole.digest == handle

        # A slice across chunk boundaries, not aligned to any of them.
        first = 10 * MIB + 12_345
        count = 3 * CHUNK + 777
        part = await hashed_get(http, c, handle, byte_range=(first, first + count - 1))
        assert part.status == 206, part.error
        assert part.headers["Content-Range"] == f"bytes {first}-{first + count - 1}/{size}"
        assert part.length == count
        assert part.digest == hash_file_slice(source, first, count)

        # Eager replication: the middle node holds the bytes too, as a complete file.
        assert on_b["local"] is True
        assert blob_path(b, handle).stat().st_size == size
        on_b_get = await hashed_get(http, b, handle)
        assert (on_b_get.status, "blake3:" + on_b_get.digest) == (200, handle), on_b_get.error


# ---- 2. the ActyxOS guide: one GET on the notification ----------------------------------------


async def test_one_get_right_after_the_notification_returns_the_bytes(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    size = 4 * MIB + 1234
    source = tmp_path / "guide.bin"
    expected = write_random_file(source, size)
    async with chain(tmp_path, 3) as (a, _b, c):
        body = {"subscriptions": [{"semantics": METADATA_SEMANTICS}]}
        async with http.post(c.events_url + "/subscribe", json=body) as sub:
            assert sub.status == 200
            handle = await upload_file(http, a, source, KEEP)
            assert handle == expected
            async with asyncio.timeout(DEADLINE):
                line = await sub.content.readline()
                event = json.loads(line)
                assert event["payload"]["handle"] == handle
                # The app's one GET, at once: no retry, no wait for "local".
                got = await hashed_get(http, c, handle)
        assert got.status == 200, got.error
        assert got.headers["Content-Length"] == str(size)
        assert got.length == size
        assert "blake3:" + got.digest == handle


# ---- 3. kill -9 mid-transfer, restart, resume ------------------------------------------------


async def test_kill_9_mid_transfer_resumes_from_the_persisted_bitmap(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with slow_pair(tmp_path, monkeypatch) as pair:
        a, b, size = pair.a, pair.b, SLOW_SIZE
        source = tmp_path / "big.bin"
        write_random_file(source, size)
        handle = await upload_file(http, a, source, KEEP)
        _, meta = await get_metadata(http, a, handle)
        chunk = int(meta["chunkSize"])

        # Watch B's transfer until 40 % is stored; remember what its bitmap vouches for.
        last_durable = 0
        seen: dict[str, Any] | None = None
        async with asyncio.timeout(DEADLINE):
            generation: int | None = None
            while True:  # every stored chunk raises the status generation: see each step
                row, body = await transfer_row(http, b, handle, after=generation)
                generation = body["generation"]
                if row is not None:
                    assert row["durableBytes"] >= last_durable, row  # persisted never shrinks
                    last_durable = row["durableBytes"]
                    if row["storedBytes"] >= 0.4 * size:
                        seen = row
                        break
                elif blob_path(b, handle).exists():
                    break  # finished between two looks
        assert seen is not None, f"the throttled transfer finished before 40 % was seen: {size}"
        assert await b.kill() == -9
        assert not blob_path(b, handle).exists(), "killed mid-transfer, nothing complete yet"
        assert seen["durableBytes"] <= seen["storedBytes"] <= size
        assert last_durable > 0, f"no bitmap flush seen in {FLUSH_INTERVAL} s windows: {seen}"

        await pair.restart_b(monkeypatch)
        async with asyncio.timeout(DEADLINE):
            await wait_local(http, b, handle)
        got = await hashed_get(http, b, handle)
        assert (got.status, got.length, "blake3:" + got.digest) == (200, size, handle), got.error

        totals = (await node_status(http, b))["transferTotals"]
        resumed, received, dup = (
            totals["resumedBytes"],
            totals["bytesReceived"],
            totals["duplicateBytes"],
        )
        # Nothing the bitmap vouched for before the kill was fetched again ...
        assert resumed >= last_durable, (resumed, last_durable)
        assert resumed < size, resumed
        assert totals["completed"] == 1
        # ... and what this run received is the missing part, plus duplicates the fetcher
        # counted, plus at most 2 chunks (in flight or unflushed, beyond the bitmap's vouching):
        #   size - resumed <= received - dup        (it had to get the rest)
        #   received <= size - resumed + 2 * chunk + dup
        assert size - resumed <= received - dup, totals
        assert received <= size - resumed + 2 * chunk + dup, totals

        started = records(b, "blob.fetch_started", handle)
        assert [r["resumedBytes"] for r in started] == [resumed], started
        fetched = records(b, "blob.fetched", handle)
        assert len(fetched) == 1, fetched
        assert fetched[0]["duplicateBytes"] <= dup


# ---- 4. retention deletes replicas -----------------------------------------------------------


async def test_keep_until_next_deletes_the_replica_and_its_file(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    policy = {"policy": "keepUntilNext", "semantics": "s.next"}
    meta = {"semantics": "s.next", "retentionPolicy": policy}
    old_file, new_file = tmp_path / "old.bin", tmp_path / "new.bin"
    write_random_file(old_file, 3 * MIB + 5)
    write_random_file(new_file, 2 * MIB + 7)
    async with chain(tmp_path, 2) as (a, b):
        old = await upload_file(http, a, old_file, meta)
        async with asyncio.timeout(DEADLINE):
            await wait_local(http, b, old)
        assert blob_path(b, old).exists()

        new = await upload_file(http, a, new_file, meta)
        async with asyncio.timeout(DEADLINE):
            await wait_blob_status(http, b, old, 410, before=200)
            await wait_local(http, b, new)
        status, on_b = await get_metadata(http, b, old)
        assert status == 200
        assert (on_b["deleted"], on_b["local"]) == (True, False)
        assert not blob_path(b, old).exists()
        assert (await hashed_get(http, a, old)).status == 410
        got = await hashed_get(http, b, new)
        assert (got.status, "blake3:" + got.digest) == (200, new), got.error


# ---- 5. unknown: 404 at once; known but still arriving: streamed ------------------------------


async def test_unknown_handle_is_404_at_once_and_an_arriving_blob_streams(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 8 * MIB + 99  # ~1 s through the throttled link: B knows it long before it holds it
    source = tmp_path / "known.bin"
    write_random_file(source, size)
    unknown = "blake3:" + os.urandom(32).hex()
    async with slow_pair(tmp_path, monkeypatch) as pair:
        a, b = pair.a, pair.b
        handle = await upload_file(http, a, source, KEEP)
        async with asyncio.timeout(DEADLINE):
            on_b = await wait_metadata(http, b, handle)
        assert on_b["local"] is False, "replicated before the GETs: nothing on-demand to test"

        started = time.monotonic()
        async with asyncio.timeout(5.0):
            missing = await hashed_get(http, b, unknown)
        assert missing.status == 404, missing
        assert json.loads(missing.error)["errorCode"] == 404
        assert time.monotonic() - started < 2.0  # no waiting for a fetch that cannot happen

        # Known, not local: the whole blob and its tail, both streamed as chunks verify.
        tail = (size - MIB - 5, size - 1)
        async with asyncio.timeout(DEADLINE):
            got, part = await asyncio.gather(
                hashed_get(http, b, handle), hashed_get(http, b, handle, byte_range=tail)
            )
        assert (got.status, got.length, "blake3:" + got.digest) == (200, size, handle), got.error
        assert got.headers["Content-Length"] == str(size)
        assert (part.status, part.length) == (206, MIB + 5), part.error
        assert part.digest == hash_file_slice(source, tail[0], MIB + 5)


# ---- 6. status lists a transfer in flight ----------------------------------------------------


async def test_status_lists_a_running_transfer_with_rising_progress(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with slow_pair(tmp_path, monkeypatch) as pair:
        a, b, size = pair.a, pair.b, SLOW_SIZE
        source = tmp_path / "watched.bin"
        write_random_file(source, size)
        handle = await upload_file(http, a, source, KEEP)
        _, meta = await get_metadata(http, a, handle)
        rows: list[dict[str, Any]] = []
        async with asyncio.timeout(DEADLINE):
            generation = None
            while not blob_path(b, handle).exists():
                row, body = await transfer_row(http, b, handle, after=generation)
                generation = body["generation"]
                if row is not None:
                    rows.append(row)
            await wait_local(http, b, handle)
        stored = [r["storedBytes"] for r in rows]
        assert len(set(stored)) >= 2, f"the throttled transfer was seen at {stored} only"
        assert stored == sorted(stored), stored  # progress never goes back
        assert stored[-1] > stored[0]
        chunks = math.ceil(size / int(meta["chunkSize"]))
        for row in rows:
            assert row["size"] == size
            assert row["state"] in ("fetching", "paused", "waiting"), row
            assert row["priority"] is False  # nobody asked for it: eager replication
            assert row["rateBytesPerS"] >= 0
            assert row["durableBytes"] <= row["storedBytes"] <= size
            if row["state"] == "waiting":  # no provider known yet: nothing to say about chunks
                continue
            assert row["chunkCount"] == chunks
            assert 0 <= row["storedChunks"] <= chunks
            assert a.info.node_id in row["providers"], row
            assert set(row["peersUsed"]) <= set(row["providers"]), row
        assert any(r["state"] == "fetching" for r in rows), rows
        assert any(a.info.node_id in r["peersUsed"] for r in rows)
        after = await node_status(http, b)
        assert [t for t in after["transfers"] if t["handle"] == handle] == []
        assert after["transferTotals"]["completed"] >= 1
        assert after["transferTotals"]["bytesReceived"] >= size
        assert after["diskFull"] is False
        served = (await node_status(http, a))["transferTotals"]
        assert served["bytesServed"] >= size
        assert served["badChunks"] == 0
