"""Blob replication seen from outside a real node: streamed uploads, hashed streamed downloads,
the metadata poll for "complete here", and the ``transfers`` rows of the node status.

Blobs in these tests are tens of MiB: nothing here holds one in memory. Uploads stream from the
file, downloads are hashed (BLAKE3) and counted as they arrive, and the expected side of a Range
request is hashed from the file in pieces.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import blake3
from multidict import CIMultiDict

from netsim.nodeproc import NodeProcess
from netsim.observe import node_status
from tests.helpers.blobfiles import PIECE

__all__ = [
    "Download",
    "get_metadata",
    "hash_file_slice",
    "hashed_get",
    "settle",
    "transfer_row",
    "upload_file",
    "wait_blob_status",
    "wait_local",
    "wait_metadata",
]

# Pause between polls of a condition the node has no notification for (always under a deadline).
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Download:
    """What a streamed GET returned: status, headers, and the BLAKE3 hex and length of the body
    (for an error status also the body's text, for failure messages)."""

    status: int
    headers: CIMultiDict[str]  # case-insensitive, as HTTP header names are
    digest: str
    length: int
    error: str = ""


async def upload_file(
    http: aiohttp.ClientSession,
    node: NodeProcess,
    path: Path,
    metadata: dict[str, Any],
    *,
    content_type: str = "application/x-test",
) -> str:
    """Upload ``path`` as multipart, streamed from the file; asserts 201, returns the handle."""
    with path.open("rb") as blob:
        form = aiohttp.FormData()
        form.add_field("blob", blob, filename=path.name, content_type=content_type)
        form.add_field("metadata", json.dumps(metadata), content_type="application/json")
        async with http.post(node.blobs_url, data=form) as resp:
            body = await resp.text()
            assert resp.status == 201, body
    handle: str = json.loads(body)["handle"]
    return handle


async def hashed_get(
    http: aiohttp.ClientSession,
    node: NodeProcess,
    handle: str,
    *,
    byte_range: tuple[int, int] | None = None,
) -> Download:
    """``GET ?<handle>`` (``Range: bytes=first-last`` if given), hashing the body as it streams."""
    headers = {} if byte_range is None else {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"}
    hasher = blake3.blake3()
    length = 0
    async with http.get(f"{node.blobs_url}?{handle}", headers=headers) as resp:
        if resp.status >= 400:
            text = await resp.text()
            return Download(resp.status, CIMultiDict(resp.headers), "", len(text), text)
        async for piece in resp.content.iter_chunked(PIECE):
            hasher.update(piece)
            length += len(piece)
        return Download(resp.status, CIMultiDict(resp.headers), hasher.hexdigest(), length)


def hash_file_slice(path: Path, start: int, count: int) -> str:
    """BLAKE3 hex of ``count`` bytes of ``path`` from ``start``, read in pieces."""
    hasher = blake3.blake3()
    with path.open("rb") as src:
        src.seek(start)
        left = count
        while left:
            piece = src.read(min(PIECE, left))
            assert piece, f"{path} ends before {start + count}"
            hasher.update(piece)
            left -= len(piece)
    return hasher.hexdigest()


async def get_metadata(
    http: aiohttp.ClientSession, node: NodeProcess, handle: str
) -> tuple[int, dict[str, Any]]:
    """``GET ?metadata-<handle>``: status and JSON body."""
    async with http.get(f"{node.blobs_url}?metadata-{handle}") as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def settle(
    http: aiohttp.ClientSession, node: NodeProcess, check: Callable[[], Awaitable[T | None]]
) -> T:
    """``await check()`` until it gives a value, re-checked whenever the node's state changed:
    the status long-poll answers when its generation passes the one seen before the check (every
    message, timer and transfer step raises it), so nothing is missed and nothing polls."""
    while True:
        generation = (await node_status(http, node))["generation"]
        found = await check()
        if found is not None:
            return found
        await node_status(http, node, after=generation)


async def wait_metadata(
    http: aiohttp.ClientSession, node: NodeProcess, handle: str
) -> dict[str, Any]:
    """The node's metadata of ``handle`` once it knows the blob (the caller's deadline)."""

    async def known() -> dict[str, Any] | None:
        status, body = await get_metadata(http, node, handle)
        assert status in (200, 404), body
        return body if status == 200 else None

    return await settle(http, node, known)


async def wait_local(http: aiohttp.ClientSession, node: NodeProcess, handle: str) -> dict[str, Any]:
    """The node's metadata of ``handle`` once the bytes are complete there (``local: true``)."""

    async def local() -> dict[str, Any] | None:
        status, body = await get_metadata(http, node, handle)
        assert status in (200, 404), body
        assert status == 404 or body.get("deleted") is not True, body
        return body if status == 200 and body["local"] is True else None

    return await settle(http, node, local)


async def wait_blob_status(
    http: aiohttp.ClientSession, node: NodeProcess, handle: str, want: int, before: int
) -> None:
    """Until ``GET ?<handle>`` answers ``want`` (``before`` meanwhile; the caller's deadline)."""

    async def answered() -> bool | None:
        status = (await hashed_get(http, node, handle)).status
        assert status in (want, before), status
        return True if status == want else None

    await settle(http, node, answered)


async def transfer_row(
    http: aiohttp.ClientSession, node: NodeProcess, handle: str, *, after: int | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The node's in-flight transfer of ``handle`` (``None`` if none) and the whole status; with
    ``after``, once the status generation passed it (a long poll)."""
    status = await node_status(http, node, after=after)
    assert "transfers" in status, f"no transfers in the status: {sorted(status)}"
    rows = [t for t in status["transfers"] if t["handle"] == handle]
    assert len(rows) <= 1, rows
    return (rows[0] if rows else None), status
