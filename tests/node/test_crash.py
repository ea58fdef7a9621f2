"""``kill -9`` in the middle of writes, then restart (DESIGN.md invariant 2: no acked write lost).

The kill always happens at a point the test controls: after a given number of body bytes went
through a connection whose kernel buffers are far smaller (so the node has consumed them), or after
a given number of acknowledged publishes while more are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import blake3

from netsim.nodeproc import NodeProcess, http_offsets, http_publish, http_query

_PIECE = 1 << 20
_BIG = 96 * _PIECE
_KILL_AFTER = (
    40 * _PIECE
)  # far beyond loopback socket buffers (a few MiB): the node has read most of it
_WAIT_S = 60.0


def _piece(seed: bytes, offset: int, length: int) -> bytes:
    """Deterministic pseudo-random content: BLAKE3's extendable output at ``offset``."""
    return blake3.blake3(seed).digest(length=length, seek=offset)


def _handle_of_generated(seed: bytes, size: int) -> str:
    hasher = blake3.blake3()
    for offset in range(0, size, _PIECE):
        hasher.update(_piece(seed, offset, min(_PIECE, size - offset)))
    return "blake3:" + hasher.hexdigest()


def _multipart_parts(boundary: str, metadata: dict[str, Any]) -> tuple[bytes, bytes]:
    """The bytes before and after the blob's content, blob part first (as curl -F sends it)."""
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="blob"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = (
        f"\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="metadata"\r\n\r\n'
        f"{json.dumps(metadata)}\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    return head, tail


async def stream_upload(
    node: NodeProcess,
    seed: bytes,
    size: int,
    *,
    stop_after: int | None = None,
    at_stop: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, dict[str, Any]] | None:
    """POST a generated blob as multipart over a raw socket, 1 MiB at a time with back-pressure.

    With ``stop_after``, once that many content bytes were accepted by the connection, awaits
    ``at_stop()`` with the connection still open (the caller kills the node there) and returns
    ``None``; otherwise returns ``(status, JSON body)``.
    """
    boundary = "crashtest" + seed.hex()
    head, tail = _multipart_parts(
        boundary, {"semantics": "com.example.big", "retentionPolicy": {"policy": "keepForever"}}
    )
    host, _, port = node.info.blobs_api.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            (
                "POST /api/v1/blobs HTTP/1.1\r\n"
                f"Host: {node.info.blobs_api}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(head) + size + len(tail)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + head
        )
        for offset in range(0, size, _PIECE):
            if stop_after is not None and offset >= stop_after:
                if at_stop is not None:
                    await at_stop()
                return None
            writer.write(_piece(seed, offset, min(_PIECE, size - offset)))
            async with asyncio.timeout(_WAIT_S):
                await writer.drain()
        writer.write(tail)
        async with asyncio.timeout(_WAIT_S):
            await writer.drain()
            answer = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()  # after a kill the peer has reset the connection
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


async def _upload_small(http: aiohttp.ClientSession, node: NodeProcess, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("blob", data, filename="small.bin", content_type="application/octet-stream")
    form.add_field("metadata", json.dumps({"semantics": "com.example.small"}))
    async with http.post(node.blobs_url, data=form) as resp:
        assert resp.status == 201, await resp.text()
        handle: str = (await resp.json())["handle"]
    assert handle == "blake3:" + blake3.blake3(data).hexdigest()
    return handle


async def _listed_handles(http: aiohttp.ClientSession, node: NodeProcess) -> set[str]:
    async with http.get(node.blobs_url) as resp:
        assert resp.status == 200, await resp.text()
        listing = await resp.json()
    items = listing["blobs"] if isinstance(listing, dict) else listing
    return {item["handle"] for item in items}


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


async def test_kill_9_during_a_large_upload_leaves_no_trace(
    node: NodeProcess, http: aiohttp.ClientSession
) -> None:
    blobs_dir = node.data_dir / "blobs"
    # Acknowledged before the crash: these must survive byte for byte.
    earlier = {await _upload_small(http, node, bytes([i]) * (i * 100_003 + 1)): i for i in (1, 7)}
    assert await http_offsets(http, node) == {node.info.node_id: 1}

    seed = b"crash-upload"
    big_handle = _handle_of_generated(seed, _BIG)
    in_progress: list[Path] = []

    async def kill_mid_upload() -> None:
        # The upload is really in progress: its bytes are on disk in a temp file, not a blob.
        in_progress.extend(p for p in _files_under(blobs_dir / "tmp") if p.stat().st_size > 0)
        assert await node.kill() == -9

    result = await stream_upload(node, seed, _BIG, stop_after=_KILL_AFTER, at_stop=kill_mid_upload)
    assert result is None
    assert in_progress, f"expected a partial upload under blobs/tmp: {_files_under(blobs_dir)}"

    await node.start()
    async with http.get(f"{node.blobs_url}?{big_handle}") as resp:
        assert resp.status == 404, await resp.text()
    async with http.get(f"{node.blobs_url}?metadata-{big_handle}") as resp:
        assert resp.status == 404
    assert await _listed_handles(http, node) == set(earlier)
    leftovers = sorted({*_files_under(blobs_dir / "tmp"), *blobs_dir.rglob("*.part")})
    assert not leftovers, f"crash leftovers after restart: {leftovers}"
    stored = {p.name for p in _files_under(blobs_dir / "data")}
    assert stored == {h.removeprefix("blake3:") for h in earlier}
    assert await http_offsets(http, node) == {node.info.node_id: 1}, "no metadata event for it"
    for handle, i in earlier.items():
        async with http.get(f"{node.blobs_url}?{handle}") as resp:
            assert resp.status == 200
            assert await resp.read() == bytes([i]) * (i * 100_003 + 1)

    # The same content uploads cleanly afterwards (the aborted attempt does not get in the way).
    answer = await stream_upload(node, seed, 64 * _PIECE)
    assert answer is not None
    assert answer[0] == 201, answer
    async with http.get(f"{node.blobs_url}?{answer[1]['handle']}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(64 * _PIECE)
        hasher = blake3.blake3()
        async for piece in resp.content.iter_chunked(_PIECE):
            hasher.update(piece)
    assert answer[1]["handle"] == "blake3:" + hasher.hexdigest()
    assert answer[1]["handle"] == _handle_of_generated(seed, 64 * _PIECE)


_PUBLISHERS = 6
_ACKS_BEFORE_KILL = 60


class _Storm:
    """Concurrent publishers of batches of 1–12 events; records which batches were acknowledged."""

    def __init__(self, node: NodeProcess, http: aiohttp.ClientSession) -> None:
        self.node = node
        self.http = http
        self.acked: list[tuple[int, int, int]] = []  # (worker, batch, size)
        self.enough = asyncio.Event()
        self.stop = False
        self.in_flight = 0

    async def publisher(self, worker: int) -> None:
        for batch in range(10_000):
            if self.stop:
                return
            size = 1 + (worker * 7 + batch * 5) % 12
            data = [
                {
                    "semantics": "com.example.storm",
                    "name": f"w{worker}",
                    "payload": {"w": worker, "b": batch, "i": i, "n": size, "pad": "x" * (i * 37)},
                }
                for i in range(size)
            ]
            self.in_flight += 1
            try:
                status = await http_publish(self.http, self.node, data)
            except (aiohttp.ClientError, ConnectionError):
                return  # the node was killed under this request: not acknowledged
            finally:
                self.in_flight -= 1
            assert status == 201
            self.acked.append((worker, batch, size))
            if len(self.acked) >= _ACKS_BEFORE_KILL:
                self.enough.set()


async def test_kill_9_during_a_publish_storm_loses_no_acknowledged_batch(
    node: NodeProcess,
) -> None:
    seen: dict[int, dict[str, Any]] = {}
    connector = aiohttp.TCPConnector(limit=_PUBLISHERS + 2)
    async with aiohttp.ClientSession(connector=connector) as http:
        storm = _Storm(node, http)

        async def watch() -> None:
            body = {"subscriptions": [{"semantics": "com.example.storm"}]}
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                async with http.post(node.events_url + "/subscribe", json=body) as resp:
                    assert resp.status == 200
                    async for line in resp.content:
                        event = json.loads(line)
                        seen[event["offset"]] = event

        watcher = asyncio.create_task(watch())
        workers = [asyncio.create_task(storm.publisher(w)) for w in range(_PUBLISHERS)]
        try:
            async with asyncio.timeout(_WAIT_S):
                await storm.enough.wait()
            storm.stop = True
            acked_at_kill = len(storm.acked)
            in_flight_at_kill = storm.in_flight
            await node.kill()
            async with asyncio.timeout(_WAIT_S):
                await asyncio.gather(*workers)
                await watcher
        finally:
            for task in (*workers, watcher):
                task.cancel()
        # Requests may have been answered between the trigger and the kill; they count too.
        assert len(storm.acked) >= acked_at_kill >= _ACKS_BEFORE_KILL
        assert in_flight_at_kill >= 1, "the kill must hit publishes in flight"

        await node.start()
        offsets = await http_offsets(http, node)
        source = node.info.node_id
        events = await http_query(
            http, node, {"subscriptions": [{}], "upperBound": offsets, "order": "source-ordered"}
        )

    # Gapless from 0, one source.
    assert [e["offset"] for e in events] == list(range(offsets[source] + 1))
    # Everything a subscriber saw before the kill is there, identical.
    by_offset = {e["offset"]: e for e in events}
    for offset, event in seen.items():
        assert by_offset.get(offset) == event, f"event at {offset} changed or vanished"
    # Every batch is all or nothing, and its events sit at consecutive offsets in order.
    batches: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        batches[(e["payload"]["w"], e["payload"]["b"])].append(e)
    for (w, b), members in batches.items():
        size = members[0]["payload"]["n"]
        assert [m["payload"]["i"] for m in members] == list(range(size)), (w, b)
        first = members[0]["offset"]
        assert [m["offset"] for m in members] == list(range(first, first + size)), (w, b)
    # Every acknowledged batch survived.
    for w, b, size in storm.acked:
        assert len(batches.get((w, b), [])) == size, f"acknowledged batch {(w, b)} lost"
    # And numbering goes on from there.
    async with aiohttp.ClientSession() as http:
        data = [{"semantics": "s", "name": "after", "payload": 1}]
        assert await http_publish(http, node, data) == 201
        assert await http_offsets(http, node) == {source: offsets[source] + 1}
