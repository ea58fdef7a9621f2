"""Length-prefixed frames over the decrypted byte stream (SPEC.md §5).

A frame is a 4-byte big-endian unsigned body length, then the body (one encoded message, §6).
Frames cut across record boundaries freely; the channel feeds each record's plaintext to a
``FrameDecoder``.

The decoder's work is linear in the bytes fed and its memory is one partial frame: it checks a
declared length before allocating, copies a frame that arrives whole in one slice, and fills a body
preallocated to the declared length when the frame is spread over several feeds (no re-buffering).
"""

from __future__ import annotations

import struct

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.messages_base import MAX_CHUNK_SIZE

__all__ = [
    "FRAME_HEADER",
    "MAX_FRAME_SIZE",
    "MIN_FRAME_SIZE",
    "FrameDecoder",
    "encode_frame_header",
]

FRAME_HEADER = struct.Struct(">I")

# The largest message is a ChunkData at the largest chunk size a protocol version may pick (1 MiB,
# DESIGN.md) plus < 100 bytes of header; 64 KiB of headroom covers it without pinning the frame
# limit to version 1's chunk size. Every other message is capped far below (SPEC §5, §11): outlines
# are paged, event batches packed under EVENT_BATCH_BUDGET. It also bounds a peer's claim on our
# memory per connection before it has sent the bytes.
MAX_FRAME_SIZE = MAX_CHUNK_SIZE + 64 * 1024
# The shortest message, ``[tag]``, is 2 bytes; a 0-length frame carries nothing and is refused.
MIN_FRAME_SIZE = 1

_HEADER_SIZE = FRAME_HEADER.size


def _check_length(length: int) -> None:
    if length > MAX_FRAME_SIZE:
        raise RemoteProtocolError(
            f"frame of {length} bytes is over MAX_FRAME_SIZE ({MAX_FRAME_SIZE})",
            ErrorCode.FRAME_TOO_LARGE,
        )
    if length < MIN_FRAME_SIZE:
        raise RemoteProtocolError("empty frame", ErrorCode.MALFORMED_MESSAGE)


def encode_frame_header(length: int) -> bytes:
    """The 4-byte header for a ``length``-byte body; ``LocalProtocolError`` outside the limits."""
    if length > MAX_FRAME_SIZE:
        raise LocalProtocolError(
            f"frame body of {length} bytes is over MAX_FRAME_SIZE", ErrorCode.FRAME_TOO_LARGE
        )
    if length < MIN_FRAME_SIZE:
        raise LocalProtocolError("frame body must not be empty", ErrorCode.MALFORMED_MESSAGE)
    return FRAME_HEADER.pack(length)


class FrameDecoder:
    """Turns stream bytes, fed in pieces of any size, into complete frame bodies in order.

    ``feed`` returns the bodies completed by that piece (possibly none) as ``bytes`` owned by the
    caller; it keeps no reference to the piece, so the caller may reuse its buffer. A bad header
    raises ``RemoteProtocolError`` (FRAME_TOO_LARGE, or MALFORMED_MESSAGE for an empty frame); the
    decoder then stays failed and raises again on every ``feed``. At end of stream, ``eof`` raises
    if a frame is cut. The close notice (header 0xFFFFFFFF, §4.3) is the channel's to intercept;
    here it is just an oversize header.
    """

    __slots__ = ("_body", "_body_fill", "_error", "_header", "_header_fill")

    def __init__(self) -> None:
        self._header = bytearray(_HEADER_SIZE)
        self._header_fill = 0
        self._body: bytearray | None = None
        self._body_fill = 0
        self._error: RemoteProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes held of an incomplete frame (header included); 0 exactly at a frame boundary."""
        if self._body is not None:
            return _HEADER_SIZE + self._body_fill
        return self._header_fill

    @property
    def has_partial_frame(self) -> bool:
        return self.pending > 0

    def eof(self) -> None:
        """End of stream: ``RemoteProtocolError`` (PROTOCOL_VIOLATION) if it cuts a frame."""
        if self._error is not None:
            raise RemoteProtocolError(str(self._error), self._error.code)
        if self.has_partial_frame:
            raise RemoteProtocolError(
                f"stream ended inside a frame ({self.pending} bytes pending)",
                ErrorCode.PROTOCOL_VIOLATION,
            )

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._error is not None:
            raise RemoteProtocolError(str(self._error), self._error.code)
        try:
            with memoryview(data) as raw, raw.cast("B") as view:
                return self._feed(view)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _feed(self, view: memoryview) -> list[bytes]:
        out: list[bytes] = []
        end = len(view)
        pos = 0
        while pos < end:
            body = self._body
            if body is None:
                if self._header_fill == 0 and end - pos >= _HEADER_SIZE:
                    (length,) = FRAME_HEADER.unpack_from(view, pos)
                    pos += _HEADER_SIZE
                else:
                    fill = self._header_fill
                    take = min(_HEADER_SIZE - fill, end - pos)
                    self._header[fill : fill + take] = view[pos : pos + take]
                    self._header_fill += take
                    pos += take
                    if self._header_fill < _HEADER_SIZE:
                        break
                    (length,) = FRAME_HEADER.unpack_from(self._header)
                    self._header_fill = 0
                _check_length(length)
                if end - pos >= length:
                    out.append(view[pos : pos + length].tobytes())
                    pos += length
                    continue
                body = self._body = bytearray(length)
                self._body_fill = 0
            take = min(len(body) - self._body_fill, end - pos)
            body[self._body_fill : self._body_fill + take] = view[pos : pos + take]
            self._body_fill += take
            pos += take
            if self._body_fill == len(body):
                out.append(bytes(body))
                self._body = None
        return out
