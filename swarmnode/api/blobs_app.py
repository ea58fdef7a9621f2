"""The Blob Service HTTP API on :4455 (API.md, "Blob Service"): thin handlers over ``BlobService``.

- ``POST /api/v1/blobs`` multipart (``blob`` + ``metadata``, either order) → 201 ``{"handle"}``.
  The blob part streams into the store while it arrives; metadata is validated when it arrives
  (first: before any blob byte is stored); the decision is made at the end of the body.
- ``GET|HEAD /api/v1/blobs?<handle>``: the bytes, with ETag, Range, If-None-Match, If-Range.
- ``GET /api/v1/blobs?metadata-<handle>``: the newest metadata payload + ``local``, ``peers``,
  ``deleted``.
- ``GET /api/v1/blobs`` (no query) or ``?limit=N&before=TOKEN``: known blobs' metadata, newest
  first: ``{"blobs": [...], "next": TOKEN | null}``; pass ``next`` as ``before`` for the next page.
  ``limit`` is 1..1000 (default 100). A paging query always contains ``=``, which neither a handle
  nor ``metadata-<handle>`` can, so the ActyxOS forms stay unambiguous.

Complete local blobs are sent by 1 MiB reads on a worker thread, one ahead of the socket: as
fast as aiohttp's ``FileResponse`` or faster (bench/http_blobs.py), while the ETag is the handle
and every error has the ``{"error", "errorCode"}`` shape.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from swarmnode.api.common import ApiError, error_response, new_app
from swarmnode.api.multipart import MultipartError, MultipartReader, boundary_from_content_type
from swarmnode.config import Config
from swarmnode.store.errors import (
    BlobDeleted,
    BlobNotAvailable,
    BlobTooLarge,
    DiskFull,
    UnknownBlob,
)
from swarmnode.store.files import IngestWriter
from swarmnode.store.metadata import (
    MAX_METADATA_BYTES,
    ClientMetadata,
    MetadataError,
    is_handle,
    parse_client_metadata,
)
from swarmnode.store.service import BlobReader, BlobService

__all__ = ["BLOB_SERVICE", "make_blobs_app", "parse_byte_range"]

BLOB_SERVICE: Final = web.AppKey("blob_service", BlobService)
_MAX_BLOB: Final = web.AppKey("max_blob_bytes", int)

PATH = "/api/v1/blobs"
METADATA_PREFIX = "metadata-"
# Body bytes besides the blob part: the metadata part, part headers, boundaries. A declared
# Content-Length beyond max_blob_bytes + this is refused before the body is read.
_FRAMING_ALLOWANCE = MAX_METADATA_BYTES + 64 * 1024
DEFAULT_PAGE = 100
MAX_PAGE = 1000
# Pieces read on a worker thread when the loop cannot sendfile: large, so the per-piece executor
# hop is small against the bytes moved.
_READ_PIECE = 1024 * 1024
_TOKEN_RE = re.compile(r"(\d{1,19})-([a-z0-9]{1,64})")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(ValueError):
    """A syntactically valid Range that selects no byte of the blob (HTTP 416)."""


def parse_byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, count)`` for a single ``bytes=`` range, ``None`` to ignore the header.

    Malformed or multi-range headers are ignored (RFC 9110 §14.2 allows serving the whole blob);
    a range starting at or past the end, or an empty suffix, raises ``RangeNotSatisfiable``.
    """
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        start = max(0, size - suffix)
        return start, size - start
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(header)
    end = min(int(last), size - 1) if last else size - 1
    return start, end - start + 1


def _etag_listed(header: str, etag: str) -> bool:
    """If-None-Match / If-Range: ``*`` or a list containing ``etag`` (weak comparison)."""
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def _declared_too_large(request: web.Request) -> bool:
    length = request.content_length
    return length is not None and length > request.app[_MAX_BLOB] + _FRAMING_ALLOWANCE


def _too_large_message(request: web.Request) -> str:
    return f"blob exceeds the maximum of {request.app[_MAX_BLOB]} bytes"


async def _expect_handler(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` (curl), refusing a body declared too large up front."""
    if _declared_too_large(request):
        return error_response(413, _too_large_message(request))
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


# -- upload -------------------------------------------------------------------------------------


async def _upload(request: web.Request) -> web.StreamResponse:
    service = request.app[BLOB_SERVICE]
    if _declared_too_large(request):
        raise ApiError(413, _too_large_message(request))
    try:
        boundary = boundary_from_content_type(request.headers.get(hdrs.CONTENT_TYPE, ""))
    except MultipartError as exc:
        raise ApiError(400, f"expected a multipart/form-data body: {exc}") from None
    reader = MultipartReader(request.content, boundary)
    writer: IngestWriter | None = None
    meta: ClientMetadata | None = None
    content_type: str | None = None
    filename: str | None = None
    stored = False
    try:
        while (part := await reader.next_part()) is not None:
            if part.name == "blob":
                if writer is not None:
                    raise ApiError(400, "more than one blob part")
                writer = await service.begin_upload()
                content_type, filename = part.content_type, part.filename
                # coalesce=0: the writer copies every piece into its own large buffer anyway,
                # so letting the reader gather small pieces first would copy each byte twice.
                async for piece in part.chunks(coalesce=0):
                    await writer.write(piece)
            elif part.name == "metadata":
                if meta is not None:
                    raise ApiError(400, "more than one metadata part")
                text = await part.read(MAX_METADATA_BYTES)
                meta = parse_client_metadata(text, now=service.now())
            else:
                await part.drain()
        if writer is None:
            raise ApiError(400, "no blob part")
        if meta is None:
            raise ApiError(400, "no metadata part")
        handle = await service.store(writer, meta, content_type=content_type, filename=filename)
        stored = True
    except MetadataError as exc:
        raise ApiError(400, f"bad metadata: {exc}") from None
    except MultipartError as exc:
        raise ApiError(400, f"bad multipart body: {exc}") from None
    except BlobTooLarge:
        raise ApiError(413, _too_large_message(request)) from None
    except DiskFull:
        raise ApiError(507, "insufficient storage: the disk is full") from None
    finally:
        if writer is not None and not stored:
            await writer.abort()
    return web.json_response({"handle": handle}, status=201)


# -- reads --------------------------------------------------------------------------------------


async def _get(request: web.Request) -> web.StreamResponse:
    query = request.query_string
    service = request.app[BLOB_SERVICE]
    if is_handle(query):
        return await _serve_blob(request, service, query)
    if query.startswith(METADATA_PREFIX) and is_handle(query[len(METADATA_PREFIX) :]):
        found = await service.metadata(query[len(METADATA_PREFIX) :])
        if found is None:
            raise ApiError(404, "unknown blob")
        return web.json_response(found)
    if query == "" or "=" in query:
        return await _list(request, service)
    raise ApiError(
        400, "the query must be a blob handle (blake3:<64 hex>), metadata-<handle>, or paging"
    )


def _page_params(request: web.Request) -> tuple[int, tuple[int, str] | None]:
    params = request.query
    unknown = set(params) - {"limit", "before"}
    if unknown:
        raise ApiError(400, f"unknown list parameters: {', '.join(sorted(unknown))}")
    limit = DEFAULT_PAGE
    if "limit" in params:
        text = params["limit"]
        if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
            raise ApiError(400, f"limit must be an integer from 1 to {MAX_PAGE}")
        limit = int(text)
    before = None
    if "before" in params:
        match = _TOKEN_RE.fullmatch(params["before"])
        if match is None:
            raise ApiError(400, "before must be a 'next' token from a previous page")
        before = (int(match.group(1)), match.group(2))
    return limit, before


async def _list(request: web.Request, service: BlobService) -> web.StreamResponse:
    limit, before = _page_params(request)
    items, after = await service.list_blobs(limit=limit, before=before)
    body: dict[str, Any] = {
        "blobs": items,
        "next": None if after is None else f"{after[0]}-{after[1]}",
    }
    return web.json_response(body)


async def _serve_blob(
    request: web.Request, service: BlobService, handle: str
) -> web.StreamResponse:
    try:
        blob = await service.open_blob(handle)
    except UnknownBlob:
        raise ApiError(404, "unknown blob") from None
    except BlobDeleted:
        raise ApiError(410, "blob deleted by its retention policy") from None
    except BlobNotAvailable:
        raise ApiError(404, "blob not available on this node yet") from None
    try:
        return await _send(request, blob)
    finally:
        blob.close()


async def _send(request: web.Request, blob: BlobReader) -> web.StreamResponse:
    etag = f'"{blob.handle}"'
    headers = {hdrs.ETAG: etag, hdrs.ACCEPT_RANGES: "bytes"}
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match is not None and _etag_listed(if_none_match, etag):
        return web.Response(status=304, headers=headers)
    status, start, count = 200, 0, blob.size
    range_header = request.headers.get(hdrs.RANGE)
    if_range = request.headers.get(hdrs.IF_RANGE)
    if range_header is not None and (if_range is None or _etag_listed(if_range, etag)):
        try:
            selected = parse_byte_range(range_header, blob.size)
        except RangeNotSatisfiable:
            refused = error_response(416, f"range not satisfiable for {blob.size} bytes")
            refused.headers[hdrs.CONTENT_RANGE] = f"bytes */{blob.size}"
            return refused
        if selected is not None:
            status, (start, count) = 206, selected
            headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{start + count - 1}/{blob.size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = blob.content_type
    response.content_length = count
    await response.prepare(request)
    if request.method != hdrs.METH_HEAD and count:
        await _send_bytes(response, blob, start, count)
    await response.write_eof()
    return response


async def _send_bytes(
    response: web.StreamResponse, blob: BlobReader, start: int, count: int
) -> None:
    """Read one piece ahead of the socket (the reader works on a thread or waits for a download).

    Measured here against ``loop.sendfile`` (what FileResponse uses on asyncio; uvloop has none):
    1 MiB preads overlapped with sending are about twice as fast on both loops. Each piece is a
    fresh bytes object because the transport may keep a reference until it is sent.
    """
    loop = asyncio.get_running_loop()
    end = start + count
    position = start
    ahead = loop.create_task(blob.read(position, min(_READ_PIECE, end - position)))
    try:
        while position < end:
            piece = await ahead
            position += len(piece)
            if position < end:
                ahead = loop.create_task(blob.read(position, min(_READ_PIECE, end - position)))
            await response.write(piece)
    finally:
        # The caller closes the blob: never while a read on it may still run.
        if not ahead.done():
            ahead.cancel()  # reads are cancel-safe (BlobReader): no work is left on the file
            await asyncio.wait([ahead])


def make_blobs_app(service: BlobService, config: Config) -> web.Application:
    """The :4455 application (API.md, "Blob Service")."""
    # Uploads stream through MultipartReader, never request.read(): the real limit is counted
    # against config.max_blob_bytes as the blob part arrives. This only caps buffered bodies.
    app = new_app(
        cors_origins=config.cors_origins,
        allowed_hosts=config.allowed_hosts,
        client_max_size=1024 * 1024,
    )
    app[BLOB_SERVICE] = service
    app[_MAX_BLOB] = config.max_blob_bytes
    app.router.add_get(PATH, _get, allow_head=True)
    app.router.add_post(PATH, _upload, expect_handler=_expect_handler)
    return app
