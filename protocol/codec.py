"""Messages to frame bodies and back: msgpack arrays ``[tag, field, ...]`` (SPEC.md §6).

``decode`` is total: any byte string yields a message or ``RemoteProtocolError``, nothing else.
The msgpack unpacker runs with limits tied to the message limits, so a hostile body cannot make it
allocate more than a small multiple of its own size. Raw msgpack values never leave this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, Final, NamedTuple

import msgpack

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.eventchain import EventRecord, record_fields
from protocol.framing import FRAME_HEADER, MAX_FRAME_SIZE, encode_frame_header
from protocol.messages import (
    IGNORABLE_TAG_MIN,
    MAX_BATCH_EVENTS,
    MAX_CHUNK_RANGES,
    MAX_CHUNK_SIZE,
    MAX_HAVE_INDICES,
    MAX_ID_RANGES,
    MAX_OFFSET_MAP_ENTRIES,
    MAX_PAYLOAD_LEN,
    MAX_TAG,
    MESSAGE_TYPES,
    Ack,
    Address,
    Cancel,
    ChunkData,
    ChunkRange,
    DontHave,
    Error,
    EventBatch,
    EventIds,
    ForwardJoin,
    Graft,
    Hello,
    MemberState,
    MemberUpdate,
    MemberUpdates,
    Message,
    OffsetMap,
    OffsetRange,
    PeerInfo,
    PeerList,
    Ping,
    PingReq,
    RequestChunks,
    SendableMessage,
    Shuffle,
    ShuffleReply,
    Unrecognized,
)
from protocol.messages_base import DIGEST_SIZE

__all__ = [
    "MSGPACK_MAX_ARRAY_LEN",
    "MSGPACK_MAX_BIN_LEN",
    "MSGPACK_MAX_EXT_LEN",
    "MSGPACK_MAX_MAP_LEN",
    "MSGPACK_MAX_STR_LEN",
    "decode",
    "encode",
    "encode_frame",
    "event_record_size",
]

# Unpacker limits: the longest bin is a chunk, the longest str an event payload, the longest array
# the largest count cap. The wire uses neither maps nor ext types (SPEC §6), so any is refused
# outright.
MSGPACK_MAX_BIN_LEN = MAX_CHUNK_SIZE
MSGPACK_MAX_STR_LEN = MAX_PAYLOAD_LEN
MSGPACK_MAX_ARRAY_LEN = max(
    MAX_OFFSET_MAP_ENTRIES, MAX_BATCH_EVENTS, MAX_HAVE_INDICES, MAX_ID_RANGES, MAX_CHUNK_RANGES
)
MSGPACK_MAX_MAP_LEN = 0
MSGPACK_MAX_EXT_LEN = 0

_MALFORMED = ErrorCode.MALFORMED_MESSAGE


def _fail(what: str) -> Any:
    raise LocalProtocolError(what, _MALFORMED)


def _record(value: object, size: int, what: str) -> tuple[Any, ...]:
    """A wire record: an array of ``size``+ items; extra trailing items are ignored (SPEC §6)."""
    if type(value) is not tuple or len(value) < size:
        _fail(f"{what} must be an array of {size}+ items")
    assert isinstance(value, tuple)
    return value


class _Conv(NamedTuple):
    """How one field travels: ``pack`` to msgpack-ready values, ``unpack`` back (shape checks only;
    the message's own ``__post_init__`` checks values and limits)."""

    pack: Callable[[Any], object]
    unpack: Callable[[Any], Any]


def _identity(value: object) -> object:
    return value


_PLAIN = _Conv(_identity, _identity)


def _seq(item: _Conv) -> _Conv:
    def unpack(value: object) -> tuple[object, ...]:
        if type(value) is not tuple:
            _fail("expected an array")
        assert isinstance(value, tuple)
        return tuple(map(item.unpack, value))

    return _Conv(lambda value: [item.pack(x) for x in value], unpack)


def _unpack_address(value: object) -> Address:
    host, port = _record(value, 2, "an address")[:2]
    return Address(host=host, port=port)


_ADDRESS = _Conv(lambda a: (a.host, a.port), _unpack_address)
_ADDRESSES = _seq(_ADDRESS)


def _unpack_peer(value: object) -> PeerInfo:
    node_id, addresses = _record(value, 2, "a peer")[:2]
    return PeerInfo(node_id=node_id, addresses=_ADDRESSES.unpack(addresses))


_PEER = _Conv(lambda p: (p.node_id, _ADDRESSES.pack(p.addresses)), _unpack_peer)
_PEERS = _seq(_PEER)


def _pack_update(u: MemberUpdate) -> object:
    return (u.node_id, int(u.state), u.incarnation, _ADDRESSES.pack(u.addresses), u.origin)


def _unpack_update(value: object) -> MemberUpdate:
    node_id, state, incarnation, addresses, origin = _record(value, 5, "a member update")[:5]
    if type(state) is not int or state not in MemberState._value2member_map_:
        _fail("unknown member state")
    return MemberUpdate(
        node_id=node_id,
        state=MemberState(state),
        incarnation=incarnation,
        addresses=_ADDRESSES.unpack(addresses),
        origin=origin,
    )


_UPDATES = _seq(_Conv(_pack_update, _unpack_update))
_PAIRS = _seq(_Conv(_identity, lambda value: _record(value, 2, "a pair")[:2]))


def _pack_event(r: EventRecord) -> object:
    return record_fields(r)


def _unpack_event(value: Any) -> EventRecord:
    if type(value) is not tuple or len(value) < 9:
        _fail("an event must be an array of 9+ items")
    source, offset, lamport, timestamp, semantics, name, payload, chain, signature = value[:9]
    return EventRecord(
        source=source,
        offset=offset,
        lamport=lamport,
        timestamp=timestamp,
        semantics=semantics,
        name=name,
        payload=payload,
        chain=chain,
        signature=signature,
    )


_EVENTS = _seq(_Conv(_pack_event, _unpack_event))


def _unpack_offset_range(value: object) -> OffsetRange:
    source, first, last = _record(value, 3, "an offset range")[:3]
    return OffsetRange(source=source, first=first, last=last)


_OFFSET_RANGES = _seq(_Conv(lambda r: (r.source, r.first, r.last), _unpack_offset_range))


def _unpack_chunk_range(value: object) -> ChunkRange:
    start, count = _record(value, 2, "a chunk range")[:2]
    return ChunkRange(start=start, count=count)


_CHUNK_RANGES = _seq(_Conv(lambda r: (r.start, r.count), _unpack_chunk_range))


def _unpack_error_code(value: object) -> object:
    if type(value) is int and value in ErrorCode._value2member_map_:
        return ErrorCode(value)
    return value


_ERROR_CODE = _Conv(int, _unpack_error_code)

# Fields that are not plain msgpack values (int, bool, nil, str, bin, array of those).
_SPECIAL: dict[type[SendableMessage], dict[str, _Conv]] = {
    Hello: {"listen": _ADDRESSES},
    Error: {"code": _ERROR_CODE},
    Ping: {"updates": _UPDATES},
    Ack: {"updates": _UPDATES},
    MemberUpdates: {"updates": _UPDATES},
    PingReq: {"target": _PEER},
    ForwardJoin: {"peer": _PEER},
    Shuffle: {"origin": _PEER, "sample": _PEERS},
    ShuffleReply: {"sample": _PEERS},
    PeerList: {"peers": _PEERS},
    OffsetMap: {"entries": _PAIRS},
    EventBatch: {"events": _EVENTS, "keys": _PAIRS},
    EventIds: {"ranges": _OFFSET_RANGES},
    Graft: {"ranges": _OFFSET_RANGES},
    RequestChunks: {"ranges": _CHUNK_RANGES},
    Cancel: {"ranges": _CHUNK_RANGES},
    DontHave: {"ranges": _CHUNK_RANGES},
}

# Wire order of a message's fields = declaration order of its dataclass fields.
_SCHEMAS: dict[type[SendableMessage], tuple[tuple[str, _Conv], ...]] = {
    cls: tuple((f.name, _SPECIAL.get(cls, {}).get(f.name, _PLAIN)) for f in fields(cls))
    for cls in MESSAGE_TYPES.values()
}


def _bin_header(length: int) -> bytes:
    """msgpack's shortest bin header (bin8 / bin16 / bin32), as ``packb`` writes it."""
    if length < 0x100:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 0x10000:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def _chunk_head(msg: ChunkData) -> bytes:
    """Everything of a ChunkData body before its data, so the data buffer itself is never copied."""
    head: bytes = msgpack.packb([msg.TAG, msg.handle, msg.index], use_bin_type=True)
    # [tag, handle, index] has the 3-item fixarray header 0x93; the message has 4 items (0x94).
    return b"\x94" + head[1:] + _bin_header(len(msg.data))


def encode(msg: Message) -> bytes:
    """The frame body of ``msg``; ``LocalProtocolError`` if it cannot be sent (Unrecognized,
    oversize)."""
    if type(msg) is ChunkData:
        body = _chunk_head(msg) + msg.data
    else:
        schema = _SCHEMAS.get(type(msg))  # type: ignore[arg-type]
        if schema is None:
            raise LocalProtocolError(f"{type(msg).__name__} cannot be encoded", _MALFORMED)
        wire = [msg.TAG, *(conv.pack(getattr(msg, name)) for name, conv in schema)]
        try:
            body = msgpack.packb(wire, use_bin_type=True)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. lone surrogates in a str
            what = f"cannot encode {type(msg).__name__}: {exc}"
            raise LocalProtocolError(what, _MALFORMED) from exc
    if len(body) > MAX_FRAME_SIZE:
        raise LocalProtocolError(
            f"{type(msg).__name__} encodes to {len(body)} bytes, over MAX_FRAME_SIZE",
            ErrorCode.FRAME_TOO_LARGE,
        )
    return body


def encode_frame(msg: Message) -> list[bytes | memoryview]:
    """Header and body of ``msg`` as buffers for ``writelines``; a ChunkData's data goes
    uncopied."""
    if type(msg) is ChunkData:
        head = _chunk_head(msg)
        length = len(head) + len(msg.data)
        return [encode_frame_header(length) + head, msg.data]
    body = encode(msg)
    return [FRAME_HEADER.pack(len(body)), body]


def event_record_size(record: EventRecord) -> int:
    """Bytes ``record`` adds to an EventBatch body, for packing batches under EVENT_BATCH_BUDGET."""
    return len(msgpack.packb(_pack_event(record), use_bin_type=True))


def _refuse_map(pairs: object) -> object:
    raise ValueError("the wire never carries maps")


def _relabel(exc: LocalProtocolError) -> RemoteProtocolError:
    return RemoteProtocolError(str(exc), exc.code)


_UINT_SIZES: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4}
_BIN_SIZES: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}
# [0x94 fixarray(4), 63, bin8(32) handle]: the fixed start of every ChunkData body we send.
_CHUNK_PREFIX: Final = bytes((0x94, ChunkData.TAG, 0xC4, DIGEST_SIZE))


def _chunk_data_view(body: bytes | bytearray | memoryview) -> ChunkData | None:
    """A ChunkData whose ``data`` is a view into ``body`` (no copy of up to 1 MiB per chunk), if
    ``body`` has exactly the canonical layout; ``None`` sends it down the general path, which
    also reports every error."""
    view = memoryview(body).cast("B")
    head = len(_CHUNK_PREFIX) + DIGEST_SIZE
    if len(view) < head + 2 or view[: len(_CHUNK_PREFIX)] != _CHUNK_PREFIX:
        return None
    pos, marker = head + 1, view[head]
    if marker <= 0x7F:
        index = marker
    else:
        width = _UINT_SIZES.get(marker)
        if width is None:
            return None
        index = int.from_bytes(view[pos : pos + width], "big")
        pos += width
    width = _BIN_SIZES.get(view[pos]) if pos < len(view) else None
    if width is None:
        return None
    length = int.from_bytes(view[pos + 1 : pos + 1 + width], "big")
    start = pos + 1 + width
    if start + length != len(view):
        return None
    try:
        return ChunkData(
            handle=bytes(view[len(_CHUNK_PREFIX) : head]),
            index=index,
            data=view[start:].toreadonly(),
        )
    except LocalProtocolError:
        return None


def decode(body: bytes | bytearray | memoryview) -> Message:
    """The message in a frame body. Raises ``RemoteProtocolError`` and nothing else on bad input:
    MALFORMED_MESSAGE (not msgpack, wrong shape or values), RESOURCE_LIMIT (over a §11 limit),
    FRAME_TOO_LARGE, UNKNOWN_MESSAGE (unknown tag below IGNORABLE_TAG_MIN). An unknown tag at or
    above IGNORABLE_TAG_MIN gives ``Unrecognized`` (SPEC §9).

    A ChunkData keeps a read-only view of ``body`` as its data (the channel hands each frame
    body over in a buffer of its own); every other message copies what it keeps."""
    if len(body) > MAX_FRAME_SIZE:
        raise RemoteProtocolError("message over MAX_FRAME_SIZE", ErrorCode.FRAME_TOO_LARGE)
    if body[:2] == b"\x94\x3f":
        chunk = _chunk_data_view(body)
        if chunk is not None:
            return chunk
    try:
        wire = msgpack.unpackb(
            body,
            use_list=False,
            raw=False,
            strict_map_key=True,
            max_bin_len=MSGPACK_MAX_BIN_LEN,
            max_str_len=MSGPACK_MAX_STR_LEN,
            max_array_len=MSGPACK_MAX_ARRAY_LEN,
            max_map_len=MSGPACK_MAX_MAP_LEN,
            max_ext_len=MSGPACK_MAX_EXT_LEN,
            object_pairs_hook=_refuse_map,  # also refuses the empty map, which no limit catches
        )
    # msgpack raises ValueError subclasses, UnicodeDecodeError, TypeError, ...: all mean "not ours".
    except Exception as exc:
        raise RemoteProtocolError(f"not a msgpack value: {exc}", _MALFORMED) from None
    if type(wire) is not tuple or not wire:
        raise RemoteProtocolError("a message is a non-empty array", _MALFORMED)
    tag = wire[0]
    if type(tag) is not int or not 0 <= tag <= MAX_TAG:
        raise RemoteProtocolError("a message tag is an int in 0..65535", _MALFORMED)
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        if tag >= IGNORABLE_TAG_MIN:
            return Unrecognized(tag=tag)
        raise RemoteProtocolError(f"unknown message tag {tag}", ErrorCode.UNKNOWN_MESSAGE)
    schema = _SCHEMAS[cls]
    if len(wire) - 1 < len(schema):
        raise RemoteProtocolError(f"{cls.__name__} needs {len(schema)} fields", _MALFORMED)
    try:
        return cls(
            **{
                name: conv.unpack(value)
                for (name, conv), value in zip(schema, wire[1:], strict=False)
            }
        )
    except LocalProtocolError as exc:
        raise _relabel(exc) from None
