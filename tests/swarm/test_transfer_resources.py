"""Blob replication's resource rules between in-process nodes (issue 5, Deliver 1, 5, 6, 7).

A full disk pauses fetching and it resumes when space returns, with nothing corrupted; retention
stops a fetch in flight; a node serves chunks while still fetching (swarming); downloads and
requesters share a capped uplink fairly; a Range GET for the tail of an arriving blob is fetched
first.

Slow links: each node sits behind its own ``TcpProxy`` and announces the proxy's address
(``SWARMNODE_ADVERTISE``), so every swarm connection to it (whoever dialled) crosses that proxy;
a capped proxy makes a few MiB take seconds, long enough to watch a transfer mid-way without
racing it. Waits re-check a condition whenever a node's driver acted, under ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest

from netsim.proxy import TcpProxy
from protocol.outline import CHUNK_SIZE
from swarmnode.config import HostPort
from swarmnode.node import Node
from swarmnode.swarm.driver_config import ADVERTISE_ENV
from tests.helpers.tmpfs import mounted_tmpfs
from tests.swarm.test_transfer_nodes import blobs_url, make_config

MIB = 1 << 20
CHUNK = CHUNK_SIZE
DEADLINE = 20.0
TRANSFER_LOGGER = "swarmnode.swarm.transfer"


def content_of(seed: str, size: int) -> bytes:
    return blake3.blake3(seed.encode()).digest(length=size)


def hex_of(handle: str) -> str:
    return handle.removeprefix("blake3:")


@dataclasses.dataclass(slots=True)
class Swarm:
    """In-process nodes, each behind its own proxy that it announces (module docstring)."""

    root: Path
    stack: contextlib.AsyncExitStack
    http: aiohttp.ClientSession
    monkeypatch: pytest.MonkeyPatch
    proxies: dict[str, TcpProxy] = dataclasses.field(default_factory=dict)
    stopped: set[int] = dataclasses.field(default_factory=set)

    async def node(
        self,
        name: str,
        *,
        peers: tuple[str, ...] = (),
        rate_bps: float | None = None,
        data_root: Path | None = None,
        disk_retry_s: float | None = None,
        unreachable: bool = False,
    ) -> Node:
        """Start node ``name`` seeded with the named nodes; ``rate_bps`` caps its proxy (both
        ways). ``unreachable``: the address it announces refuses every dial (it can still dial
        out), and the capped proxy becomes a back door only the nodes seeded with it know."""
        # The proxies exist before the node (it announces one of them), the node's port only
        # once it is bound (port 0: no free-port guess another socket can take meanwhile), so
        # the proxies get their target right after start, before the loop can accept anything.
        proxy = TcpProxy(("127.0.0.1", 0), rate_bps=rate_bps)
        await self.stack.enter_async_context(proxy)
        announced = proxy
        if unreachable:
            announced = TcpProxy(("127.0.0.1", 0))
            await self.stack.enter_async_context(announced)
            announced.cut("reset")
        self.proxies[name] = proxy
        self.monkeypatch.setenv(ADVERTISE_ENV, announced.address)
        seeds = tuple(HostPort("127.0.0.1", self.proxies[p].port) for p in peers)
        node = Node(make_config(data_root or self.root, name, seeds))
        if disk_retry_s is not None:
            transfers = node.transfers
            transfers.config = dataclasses.replace(transfers.config, disk_retry_s=disk_retry_s)
        addresses = await node.start()
        self.stack.push_async_callback(self.stop, node)
        for each in {proxy, announced}:
            each.target = (addresses.swarm.host, addresses.swarm.port)
        return node

    async def stop(self, node: Node) -> None:
        """Stop ``node`` once (early, e.g. before its tmpfs goes, or at the end)."""
        if id(node) not in self.stopped:
            self.stopped.add(id(node))
            await node.stop()

    async def upload(self, node: Node, content: bytes, meta: dict[str, Any] | None = None) -> str:
        form = aiohttp.FormData()
        form.add_field("blob", io.BytesIO(content), filename="x.bin")
        form.add_field(
            "metadata",
            json.dumps(meta or {"semantics": "test"}),
            content_type="application/json",
        )
        async with self.http.post(blobs_url(node), data=form) as resp:
            body = await resp.text()
            assert resp.status == 201, body
        handle: str = json.loads(body)["handle"]
        return handle

    async def get(self, node: Node, handle: str, headers: dict[str, str] | None = None) -> bytes:
        async with self.http.get(f"{blobs_url(node)}?{handle}", headers=headers) as resp:
            body = await resp.read()
            assert resp.status in (200, 206), (resp.status, body[:200])
            return body

    async def status_code(self, node: Node, handle: str) -> int:
        async with self.http.get(f"{blobs_url(node)}?{handle}") as resp:
            await resp.read()
            return resp.status


@pytest.fixture
async def swarm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Swarm]:
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield Swarm(tmp_path, stack, http, monkeypatch)


async def wait_until(node: Node, predicate: Callable[[], bool]) -> None:
    """Re-check ``predicate`` whenever ``node``'s driver acted (the caller holds the deadline)."""
    await node.driver.wait_for(predicate)


def row_of(node: Node, handle: str) -> dict[str, Any] | None:
    """``node``'s status row for a download of ``handle`` in flight, if any."""
    rows = node.driver.status()["transfers"]
    return next((r for r in rows if r["handle"] == handle), None)


def stored(node: Node, handle: str) -> int:
    row = row_of(node, handle)
    return 0 if row is None else int(row["storedBytes"])


def is_local(node: Node, handle: str) -> bool:
    return (node.data_dir / "blobs" / "data" / hex_of(handle)).exists()


def partial_files(node: Node, handle: str) -> list[Path]:
    return sorted((node.data_dir / "blobs" / "partial").glob(hex_of(handle) + "*"))


def events_named(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


# ---- Deliver 5: full disk pauses fetching, space returning resumes it -------------------------


async def test_full_disk_pauses_fetching_and_space_returning_resumes_it(
    swarm: Swarm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=TRANSFER_LOGGER)
    small, big = content_of("small", 300_000), content_of("big", 6 * MIB + 17)
    a = await swarm.node("a")
    first = await swarm.upload(a, small)
    with mounted_tmpfs(tmp_path / "mnt", "16m", lazy_unmount=True) as mnt:
        data_root = mnt / "nodes"
        # The fetcher's whole blob store (catalog, partial/, data/) lives on the small tmpfs.
        (data_root / "b").mkdir(parents=True)
        (mnt / "blobs-of-b").mkdir()
        (data_root / "b" / "blobs").symlink_to(mnt / "blobs-of-b")
        b = await swarm.node("b", peers=("a",), data_root=data_root, disk_retry_s=0.1)
        async with asyncio.timeout(DEADLINE):
            await wait_until(b, lambda: b.transfers.counters["completed"] >= 1)
        assert await swarm.get(b, first) == small
        offsets_before = b.events.offsets()
        # Leave ~2 MiB free: the 6 MiB blob cannot be reserved.
        filler = mnt / "filler"
        free = _free_bytes(mnt)
        filler.write_bytes(b"\0" * (free - 2 * MIB))
        second = await swarm.upload(a, big)
        async with asyncio.timeout(DEADLINE):
            await wait_until(b, lambda: b.driver.status()["diskFull"] is True)
            assert events_named(caplog, "blob.fetch_paused")
            assert not events_named(caplog, "blob.fetch_resumed")
            # Paused: nothing of the new blob stored as complete, the first blob and the
            # events untouched, and the pause is still on (free space is polled, not assumed).
            assert not is_local(b, second)
            assert await swarm.get(b, first) == small
            assert b.events.offsets()[a.node_id] >= offsets_before[a.node_id]
            assert b.driver.status()["diskFull"] is True
            filler.unlink()
            await wait_until(b, lambda: b.transfers.counters["completed"] >= 2)
        assert events_named(caplog, "blob.fetch_resumed")
        assert b.driver.status()["diskFull"] is False
        assert (b.data_dir / "blobs" / "data" / hex_of(second)).read_bytes() == big
        assert await swarm.get(b, first) == small
        assert partial_files(b, second) == []
        await swarm.stop(b)  # before the tmpfs goes


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


# ---- Deliver 6: retention on replicas stops a fetch in flight ---------------------------------


async def test_a_superseded_blob_in_flight_stops_downloading_and_the_newer_one_arrives(
    swarm: Swarm,
) -> None:
    meta = {"semantics": "s.next", "retentionPolicy": {"policy": "keepUntilNext"}}
    old_content, new_content = content_of("old", 24 * MIB + 3), content_of("new", MIB + 9)
    a = await swarm.node("a", rate_bps=4 * MIB)  # 24 MiB take ~6 s: caught mid-way
    old = await swarm.upload(a, old_content, meta)
    b = await swarm.node("b", peers=("a",))
    async with asyncio.timeout(DEADLINE):
        await wait_until(b, lambda: stored(b, old) >= 2 * CHUNK)
        assert partial_files(b, old), "a download in flight keeps its partial file"
        new = await swarm.upload(a, new_content, meta)
        await wait_until(b, lambda: row_of(b, old) is None)
        assert stored(b, new) < len(new_content) or is_local(b, new)
        assert not is_local(b, old)
        await wait_until(b, lambda: is_local(b, new))
        # Dropping the download spawned the task that deletes its partial files: await it.
        discarding = list(b.transfers._discarding.values())
        if discarding:
            await asyncio.wait(discarding)
    assert partial_files(b, old) == []
    assert await swarm.status_code(b, old) == 410
    assert await swarm.get(b, new) == new_content
    assert b.transfers.counters["completed"] == 1  # only the newer blob was ever completed


# ---- Deliver 1: a node serves the chunks it holds while still fetching ------------------------


async def test_a_node_serves_chunks_while_its_own_download_runs(swarm: Swarm) -> None:
    content = content_of("swarming", 16 * MIB + 5)
    # A <- B <- C, and nothing else: A's uplink is slow and only B knows its back door; C
    # announces an address nobody can dial, so A cannot reach it either. C's one provider is B.
    a = await swarm.node("a", rate_bps=4 * MIB, unreachable=True)
    handle = await swarm.upload(a, content)
    b = await swarm.node("b", peers=("a",))
    c = await swarm.node("c", peers=("b",), unreachable=True)
    served_while_fetching: list[int] = []

    def b_served_while_fetching() -> bool:
        totals = b.driver.status()["transferTotals"]
        if totals["chunksServed"] > 0 and not is_local(b, handle):
            served_while_fetching.append(totals["chunksServed"])
        return bool(served_while_fetching) or is_local(b, handle)

    async with asyncio.timeout(DEADLINE):
        await wait_until(b, b_served_while_fetching)
        assert served_while_fetching, "B completed before serving a single chunk to C"
        await wait_until(c, lambda: is_local(c, handle))
        await wait_until(b, lambda: is_local(b, handle))
    assert c.transfers.counters["bytesReceived"] >= len(content)
    assert (c.data_dir / "blobs" / "data" / hex_of(handle)).read_bytes() == content
    assert await swarm.get(b, handle) == content


# ---- Deliver 5: fair shares of a capped uplink ------------------------------------------------


async def test_two_downloads_from_one_capped_provider_progress_together(swarm: Swarm) -> None:
    first, second = content_of("one", 10 * MIB + 1), content_of("two", 10 * MIB + 2)
    a = await swarm.node("a", rate_bps=4 * MIB)
    handles = [await swarm.upload(a, first), await swarm.upload(a, second)]
    sizes = {handles[0]: len(first), handles[1]: len(second)}
    b = await swarm.node("b", peers=("a",))
    done: list[str] = []
    others: list[int] = []

    def one_done() -> bool:
        for h in handles:
            if is_local(b, h) and not done:
                done.append(h)
                other = handles[1 - handles.index(h)]
                others.append(sizes[other] if is_local(b, other) else stored(b, other))
        return bool(done)

    async with asyncio.timeout(DEADLINE):
        await wait_until(b, one_done)
        await wait_until(b, lambda: all(is_local(b, h) for h in handles))
    other = handles[1 - handles.index(done[0])]
    assert others[0] >= sizes[other] // 3, (others, sizes[other])
    assert await swarm.get(b, handles[0]) == first
    assert await swarm.get(b, handles[1]) == second


async def test_a_capped_provider_serves_two_requesters_fairly(swarm: Swarm) -> None:
    content = content_of("shared", 10 * MIB + 7)
    a = await swarm.node("a", rate_bps=4 * MIB)
    handle = await swarm.upload(a, content)
    # B and C cannot dial each other (their proxies refuse): both must be served by A alone.
    b = await swarm.node("b", peers=("a",), unreachable=True)
    c = await swarm.node("c", peers=("a",), unreachable=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    finished: dict[str, float] = {}
    behind: list[int] = []

    async def fetch(node: Node, other: Node) -> None:
        await wait_until(node, lambda: is_local(node, handle))
        finished[node.node_id] = loop.time() - started
        if len(finished) == 1:
            behind.append(len(content) if is_local(other, handle) else stored(other, handle))

    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(fetch(b, c), fetch(c, b))
    assert b.driver.status()["transferTotals"]["chunksServed"] == 0
    assert c.driver.status()["transferTotals"]["chunksServed"] == 0
    assert behind[0] >= len(content) // 3, behind
    times = sorted(finished.values())
    assert times[1] < 2 * times[0], finished
    for node in (b, c):
        assert (node.data_dir / "blobs" / "data" / hex_of(handle)).read_bytes() == content


# ---- Deliver 4: a Range GET for the tail of an arriving blob is fetched first -----------------


async def test_a_range_for_the_tail_of_an_arriving_blob_is_fetched_first(swarm: Swarm) -> None:
    size = 16 * MIB + 11
    content = content_of("tail", size)
    a = await swarm.node("a", rate_bps=4 * MIB)  # in order, the tail would come after ~4 s
    handle = await swarm.upload(a, content)
    b = await swarm.node("b", peers=("a",))
    start = size - CHUNK - 5  # spans the last two chunks
    async with asyncio.timeout(DEADLINE):
        await b.blobs.wait_followed(a.node_id, 0)
        assert not is_local(b, handle)
        body = await swarm.get(b, handle, {"Range": f"bytes={start}-"})
        stored_then = stored(b, handle)
        assert body == content[start:]
        assert not is_local(b, handle)
        assert stored_then < size // 2, "the tail came after most of the blob: not prioritised"
        await wait_until(b, lambda: is_local(b, handle))
    assert await swarm.get(b, handle) == content
