"""Blobs in scenarios: content made from a name, streamed uploads and hashed streamed reads.

A scenario's blob is the BLAKE3 extendable output of its name, so any byte range of it can be
made again at any time: uploads stream it without a file, and the invariant checker can tell
whether the bytes a read returned (even a read cut short) are the blob's bytes, by hashing the
same prefix of the content, without anyone keeping a copy. Nothing here holds a whole blob.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import blake3

from netsim.nodeproc import NodeProcess

__all__ = [
    "LOCAL_POLL_S",
    "PIECE",
    "BlobRead",
    "BlobSpec",
    "blob_is_known",
    "blob_is_local",
    "read_blob",
    "upload_blob",
    "wait_local",
]

PIECE = 1 << 20
# How often ``wait_local`` asks a node whether it holds a blob: the node has no notification for
# "the bytes are complete here", and every wait is bounded by the caller's deadline.
LOCAL_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class BlobSpec:
    """A blob the scenario uploads: ``size`` bytes of the XOF of ``name``; ``handle`` is what the
    node must answer (``blake3:`` + the hash of the whole content)."""

    name: str
    size: int
    handle: str

    @classmethod
    def make(cls, name: str, size: int) -> BlobSpec:
        if size < 0:
            raise ValueError(f"a blob cannot have {size} bytes")
        return cls(name, size, "blake3:" + _prefix_digest(name, size))

    def pieces(self) -> Iterator[bytes]:
        """The content, in pieces of at most PIECE bytes."""
        yield from _pieces(self.name, self.size)

    def prefix_digest(self, length: int) -> str:
        """BLAKE3 hex of the first ``length`` bytes: what a read that stopped there hashes to."""
        return _prefix_digest(self.name, min(length, self.size))


def _pieces(name: str, length: int) -> Iterator[bytes]:
    xof = blake3.blake3(name.encode())
    offset = 0
    while offset < length:
        count = min(PIECE, length - offset)
        yield xof.digest(length=count, seek=offset)
        offset += count


def _prefix_digest(name: str, length: int) -> str:
    hasher = blake3.blake3()
    for piece in _pieces(name, length):
        hasher.update(piece)
    return hasher.hexdigest()


async def _stream(spec: BlobSpec) -> AsyncIterator[bytes]:
    for piece in spec.pieces():
        yield piece


async def upload_blob(
    session: aiohttp.ClientSession, node: NodeProcess, spec: BlobSpec, *, semantics: str
) -> tuple[int, str | None]:
    """POST the blob (streamed, chunked); returns the status and the handle the node answered."""
    form = aiohttp.FormData()
    form.add_field(
        "blob", _stream(spec), filename=spec.name, content_type="application/octet-stream"
    )
    form.add_field(
        "metadata", json.dumps({"semantics": semantics}), content_type="application/json"
    )
    async with session.post(node.blobs_url, data=form) as resp:
        body = await resp.text()
        if resp.status != 201:
            return resp.status, None
    handle: str = json.loads(body)["handle"]
    return resp.status, handle


@dataclass(frozen=True, slots=True)
class BlobRead:
    """What one GET of a blob returned: the status, how many body bytes arrived and their BLAKE3
    hex, and whether the body ended normally (``complete``) or was cut off (``error``)."""

    node: str
    handle: str
    status: int
    length: int
    digest: str
    complete: bool
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "handle": self.handle,
            "status": self.status,
            "length": self.length,
            "complete": self.complete,
            "error": self.error,
        }


async def read_blob(
    session: aiohttp.ClientSession, node: NodeProcess, name: str, handle: str
) -> BlobRead:
    """GET the blob from ``node`` (named ``name`` in the report), hashing the body as it streams.
    A body cut off by the node or the connection is returned as read so far, not raised."""
    hasher = blake3.blake3()
    length = 0
    status = 0
    try:
        async with session.get(
            f"{node.blobs_url}?{handle}", timeout=aiohttp.ClientTimeout(total=None)
        ) as resp:
            status = resp.status
            if status >= 300:
                text = await resp.text()
                return BlobRead(name, handle, status, 0, "", True, text[:200])
            async for piece in resp.content.iter_chunked(PIECE):
                hasher.update(piece)
                length += len(piece)
    except (aiohttp.ClientError, ConnectionError) as exc:
        return BlobRead(name, handle, status, length, hasher.hexdigest(), False, repr(exc))
    return BlobRead(name, handle, status, length, hasher.hexdigest(), True)


async def blob_is_known(session: aiohttp.ClientSession, node: NodeProcess, handle: str) -> bool:
    """Whether ``node`` knows the blob (its metadata event arrived), held or not."""
    async with session.get(f"{node.blobs_url}?metadata-{handle}") as resp:
        await resp.read()
        return resp.status == 200


async def blob_is_local(session: aiohttp.ClientSession, node: NodeProcess, handle: str) -> bool:
    """Whether ``node``'s catalog says it holds every byte of the blob."""
    async with session.get(f"{node.blobs_url}?metadata-{handle}") as resp:
        if resp.status != 200:
            await resp.read()
            return False
        body: dict[str, Any] = await resp.json()
    return body.get("local") is True


async def wait_local(session: aiohttp.ClientSession, node: NodeProcess, handle: str) -> None:
    """Return once ``node`` holds the whole blob (callers bound this with a deadline)."""
    while not await blob_is_local(session, node, handle):  # noqa: ASYNC110 (no event to wait on)
        await asyncio.sleep(LOCAL_POLL_S)
