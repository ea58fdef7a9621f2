"""Streaming multipart/form-data reader for aiohttp request bodies (blob uploads, API.md).

A thin asyncio driver around the sans-IO ``MultipartParser``: it pulls the body from aiohttp's
``StreamReader`` with ``readchunk()``, which hands over each received buffer without joining or
copying (``readany``/``read(n)`` join buffered pieces), and passes the parser's memoryviews on.

Usage::

    reader = MultipartReader(request.content, boundary_from_content_type(request.content_type))
    while (part := await reader.next_part()) is not None:
        if part.name == "blob":
            async for chunk in part.chunks():   # chunk valid until the next iteration
                hasher.update(chunk); file.write(chunk)
        else:
            meta = await part.read(limit=65536)

Errors: malformed input raises ``MultipartError`` (a ValueError; its message suits a 400 body).
Transport errors from the stream (client gone, payload errors) propagate unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Final

from aiohttp import StreamReader

from swarmnode.api.multipart_core import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_PARTS,
    Event,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
)
from swarmnode.api.multipart_headers import MultipartError, PartInfo, boundary_from_content_type

__all__ = [
    "COALESCE_BYTES",
    "MultipartError",
    "MultipartReader",
    "Part",
    "boundary_from_content_type",
]

# Pieces smaller than this are gathered into one reused buffer before ``chunks()`` yields them, so
# a consumer pays its per-call cost (hash update, write syscall, executor hop) on few large pieces.
# Pieces at least this large are yielded as they are, uncopied. Loopback reads arrive at 64-128 KiB.
COALESCE_BYTES: Final = 256 * 1024


class Part:
    """One part of the body. Consume it (``chunks``, ``read`` or ``drain``) before the next part."""

    __slots__ = ("_info", "_reader", "done")

    def __init__(self, reader: MultipartReader, info: PartInfo) -> None:
        self._reader = reader
        self._info = info
        self.done = False
        """True once the part's end delimiter was read."""

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def filename(self) -> str | None:
        return self._info.filename

    @property
    def content_type(self) -> str | None:
        return self._info.content_type

    @property
    def headers(self) -> Mapping[str, str]:
        """All headers of the part, case-insensitive lookup."""
        return self._info.headers

    def chunks(self, *, coalesce: int = COALESCE_BYTES) -> AsyncIterator[memoryview]:
        """The part's data in order. Each memoryview is valid only until the next iteration.

        Pieces shorter than ``coalesce`` bytes are copied together into a reused buffer of that
        size; ``coalesce=0`` yields every received piece uncopied.
        """
        return _Chunks(self, coalesce)

    async def read(self, limit: int) -> bytes:
        """The whole (small) body; MultipartError if it is longer than ``limit`` bytes."""
        out = bytearray()
        while (piece := await self._reader._data(self)) is not None:
            if len(out) + len(piece) > limit:
                raise MultipartError(f"part {self.name!r} is longer than {limit} bytes")
            out += piece
        return bytes(out)

    async def drain(self) -> None:
        """Skip the rest of the part."""
        while await self._reader._data(self) is not None:
            pass

    def __repr__(self) -> str:
        return f"<Part name={self.name!r} filename={self.filename!r} done={self.done}>"


class _Chunks:
    """Async iterator behind ``Part.chunks`` (a class, not an async generator, so abandoning it
    midway leaves nothing to finalise; ``next_part`` drains the rest)."""

    __slots__ = ("_coalesce", "_part")

    def __init__(self, part: Part, coalesce: int) -> None:
        self._part = part
        self._coalesce = coalesce

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> memoryview:
        part = self._part
        reader = part._reader
        first = await reader._data(part)
        if first is None:
            raise StopAsyncIteration
        size = self._coalesce
        if len(first) >= size:
            return first
        buf = reader._buffer(size)
        fill = len(first)
        buf[:fill] = first
        while fill < size:
            piece = await reader._data(part)
            if piece is None:
                break
            room = size - fill
            if len(piece) > room:
                buf[fill:size] = piece[:room]
                reader._leftover = piece[room:]
                fill = size
                break
            buf[fill : fill + len(piece)] = piece
            fill += len(piece)
        return buf[:fill]


class MultipartReader:
    """Reads a multipart/form-data body part by part from an aiohttp ``StreamReader``.

    Memory: the stream's current buffer, the parser's header cap, and (for small pieces) one
    ``COALESCE_BYTES`` buffer, whatever the body size.
    """

    __slots__ = (
        "_buf",
        "_eof",
        "_events",
        "_index",
        "_leftover",
        "_parser",
        "_part",
        "_stream",
    )

    def __init__(
        self,
        stream: StreamReader,
        boundary: bytes,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_parts: int = DEFAULT_MAX_PARTS,
    ) -> None:
        self._stream = stream
        self._parser = MultipartParser(
            boundary, max_header_bytes=max_header_bytes, max_parts=max_parts
        )
        self._events: list[Event] = []
        self._index = 0
        self._part: Part | None = None
        self._leftover: memoryview | None = None
        self._buf: memoryview | None = None
        self._eof = False

    async def next_part(self) -> Part | None:
        """The next part, or None after the closing boundary (the epilogue is read and dropped).

        Drains the previous part if the caller did not. Raises MultipartError on malformed input,
        too many parts, oversized headers, or a body that ends before the closing boundary.
        """
        part = self._part
        if part is not None and not part.done:
            await part.drain()
        self._part = None
        while True:
            event = await self._event()
            if event is None:
                return None
            if isinstance(event, PartStart):
                self._part = Part(self, event.info)
                return self._part
            # Epilogue: read the rest so the request body is fully consumed.
            while await self._event() is not None:
                pass
            return None

    async def _event(self) -> Event | None:
        """The next parser event, reading more of the stream as needed; None at a clean end."""
        while self._index >= len(self._events):
            if self._eof:
                return None
            data, end_of_http_chunk = await self._stream.readchunk()
            if data:
                self._events = self._parser.feed(data)
            elif not end_of_http_chunk:  # (b"", False) is readchunk's end of stream
                self._eof = True
                self._events = self._parser.feed_eof()
            else:
                continue
            self._index = 0
        event = self._events[self._index]
        self._index += 1
        return event

    async def _data(self, part: Part) -> memoryview | None:
        """The part's next data piece, or None once it has ended."""
        if part.done:
            return None
        leftover = self._leftover
        if leftover is not None:
            self._leftover = None
            return leftover
        while True:
            event = await self._event()
            if isinstance(event, PartData):
                if event.data:
                    return event.data
            elif isinstance(event, PartEnd):
                part.done = True
                return None
            else:  # the parser emits PartEnd before anything else once a part started
                raise AssertionError(f"unexpected multipart event {event!r} inside a part")

    def _buffer(self, size: int) -> memoryview:
        """A reused buffer of at least ``size`` bytes (allocated on first use)."""
        buf = self._buf
        if buf is None or len(buf) < size:
            buf = self._buf = memoryview(bytearray(size))
        return buf
