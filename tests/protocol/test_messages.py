"""Message set and codec: round trips, layout rules (SPEC §6, §9) and every limit of §11 crossed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec
from protocol import messages as m
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.eventchain import EventRecord
from protocol.framing import FRAME_HEADER, MAX_FRAME_SIZE, FrameDecoder
from tests.protocol.strategies import STRATEGIES, any_message

ALL_CLASSES = sorted(m.MESSAGE_TYPES.values(), key=lambda cls: cls.TAG)
NODE = "a" * 15
HANDLE = bytes(range(32))
_B32 = "234567abcdefghijklmnopqrstuvwxyz"  # the node id alphabet in ASCII order


def node_id(i: int) -> str:
    """The i-th distinct node id (base 32, padded), sorting in the order of ``i``."""
    out = ""
    for _ in range(15):
        out = _B32[i % 32] + out
        i //= 32
    return out


def unchecked(cls: type[Any], **values: Any) -> Any:
    """A message built without ``__post_init__``: what a hostile peer can put on the wire."""
    msg = object.__new__(cls)
    for field in dataclasses.fields(cls):
        object.__setattr__(msg, field.name, values[field.name])
    return msg


def wire(msg: m.SendableMessage) -> tuple[Any, ...]:
    value: tuple[Any, ...] = msgpack.unpackb(codec.encode(msg), use_list=False)
    return value


def event(source: str = NODE, offset: int = 0, **changes: Any) -> EventRecord:
    fields: dict[str, Any] = {
        "source": source,
        "offset": offset,
        "lamport": 1,
        "timestamp": 2,
        "semantics": "s",
        "name": "n",
        "payload": "{}",
        "chain": bytes(32),
        "signature": None,
    }
    fields.update(changes)
    return EventRecord(**fields)


# --- round trips ------------------------------------------------------------


def test_every_registered_class_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(m.MESSAGE_TYPES.values())


def test_registry_maps_each_tag_to_its_class() -> None:
    for tag, cls in m.MESSAGE_TYPES.items():
        assert tag == cls.TAG
        assert 1 <= tag < m.IGNORABLE_TAG_MIN


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_round_trip(cls: type[m.SendableMessage], data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    body = codec.encode(msg)
    decoded = codec.decode(body)
    assert type(decoded) is cls
    assert decoded == msg
    assert codec.encode(decoded) == body  # canonical: re-encoding gives the same bytes
    frame = b"".join(codec.encode_frame(msg))
    assert frame == FRAME_HEADER.pack(len(body)) + body
    assert FrameDecoder().feed(frame) == [body]


@given(
    msg=any_message,
    extra=st.lists(
        st.integers(-(2**63), 2**64 - 1) | st.text() | st.none(), min_size=1, max_size=3
    ),
)
def test_extra_trailing_fields_are_ignored(msg: m.SendableMessage, extra: list[Any]) -> None:
    body = msgpack.packb([*wire(msg), *extra])
    assert codec.decode(body) == msg


@given(msg=any_message)
def test_a_missing_field_is_malformed(msg: m.SendableMessage) -> None:
    fields = wire(msg)
    if len(fields) == 1:
        return  # messages without fields cannot lose one
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(msgpack.packb(fields[:-1]))
    assert info.value.code == ErrorCode.MALFORMED_MESSAGE


def test_chunk_data_frame_hands_the_data_buffer_on_uncopied() -> None:
    data = bytes(300_000)
    msg = m.ChunkData(handle=HANDLE, index=7, data=data)
    frame = codec.encode_frame(msg)
    assert frame[-1] is data
    generic = msgpack.packb([msg.TAG, HANDLE, 7, data])
    assert b"".join(frame)[4:] == generic == codec.encode(msg)


@pytest.mark.parametrize("size", [1, 255, 256, 65535, 65536, m.MAX_CHUNK_SIZE])
def test_chunk_data_bin_header_matches_msgpack_at_every_width(size: int) -> None:
    msg = m.ChunkData(handle=HANDLE, index=m.MAX_CHUNK_COUNT - 1, data=b"x" * size)
    assert codec.encode(msg) == msgpack.packb([msg.TAG, HANDLE, msg.index, msg.data])
    assert codec.decode(codec.encode(msg)) == msg


def test_error_keeps_an_unknown_code_as_an_int() -> None:
    decoded = codec.decode(codec.encode(m.Error(code=999, message="x")))
    assert isinstance(decoded, m.Error)
    assert decoded.code == 999
    assert not isinstance(decoded.code, ErrorCode)
    known = codec.decode(codec.encode(m.Error(code=2)))
    assert isinstance(known, m.Error)
    assert known.code is ErrorCode.FRAME_TOO_LARGE


def test_offset_map_helpers() -> None:
    offsets = {node_id(2): 5, node_id(1): 0}
    msg = m.OffsetMap.from_mapping(offsets, more=True)
    assert msg.entries == ((node_id(1), 0), (node_id(2), 5))
    assert msg.as_dict() == offsets


def test_have_bitmap_bit_order_is_msb_first() -> None:
    msg = m.HaveBitmap(handle=HANDLE, chunk_count=10, bitmap=bytes([0b1000_0001, 0b0100_0000]))
    assert [i for i in range(12) if msg.has(i)] == [0, 7, 9]


def test_event_record_size_adds_up_to_the_batch_body() -> None:
    events = tuple(event(offset=i, payload="x" * i) for i in range(5))
    body = codec.encode(m.EventBatch(events=events))
    assert sum(map(codec.event_record_size, events)) == len(body) - len(
        msgpack.packb([m.EventBatch.TAG, [], [], None])
    )


# --- tags and layout (SPEC §6, §9) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", ErrorCode.MALFORMED_MESSAGE),
        (msgpack.packb([]), ErrorCode.MALFORMED_MESSAGE),
        (msgpack.packb(1), ErrorCode.MALFORMED_MESSAGE),
        (msgpack.packb(["1"]), ErrorCode.MALFORMED_MESSAGE),
        (msgpack.packb([True]), ErrorCode.MALFORMED_MESSAGE),
        (msgpack.packb([-1]), ErrorCode.MALFORMED_MESSAGE),
        (msgpack.packb([m.MAX_TAG + 1]), ErrorCode.MALFORMED_MESSAGE),
        (msgpack.packb([0]), ErrorCode.UNKNOWN_MESSAGE),
        (msgpack.packb([m.IGNORABLE_TAG_MIN - 1]), ErrorCode.UNKNOWN_MESSAGE),
        (msgpack.packb([m.Join.TAG]) + b"\x00", ErrorCode.MALFORMED_MESSAGE),  # trailing bytes
        (msgpack.packb([m.Join.TAG, {"a": 1}]), ErrorCode.MALFORMED_MESSAGE),  # maps never
        (msgpack.packb([m.IGNORABLE_TAG_MIN, {}]), ErrorCode.MALFORMED_MESSAGE),  # not even empty
        (msgpack.packb([m.Join.TAG, msgpack.ExtType(1, b"x")]), ErrorCode.MALFORMED_MESSAGE),
        (msgpack.packb([m.Goodbye.TAG, True, b"\xff"]), ErrorCode.MALFORMED_MESSAGE),
        (b"\x92\x02\xc3\xa1\xff", ErrorCode.MALFORMED_MESSAGE),  # str that is not UTF-8
        (msgpack.packb([m.Ping.TAG, 1.0, []]), ErrorCode.MALFORMED_MESSAGE),  # float, not int
        (msgpack.packb([m.Ping.TAG, True, []]), ErrorCode.MALFORMED_MESSAGE),  # bool, not int
        (msgpack.packb([m.Ping.TAG, 1, [[NODE, 9, 0, [], NODE]]]), ErrorCode.MALFORMED_MESSAGE),
    ],
)
def test_bad_bodies_get_their_error_code(body: bytes, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(body)
    assert info.value.code == code


@pytest.mark.parametrize("tag", [m.IGNORABLE_TAG_MIN, 1000, m.MAX_TAG])
def test_unknown_ignorable_tags_decode_to_unrecognized(tag: int) -> None:
    decoded = codec.decode(msgpack.packb([tag, 1, "x", [b"y"]]))
    assert decoded == m.Unrecognized(tag=tag)
    with pytest.raises(LocalProtocolError):
        codec.encode(decoded)
    with pytest.raises(LocalProtocolError):
        m.Unrecognized(tag=m.IGNORABLE_TAG_MIN - 1)


@pytest.mark.parametrize(
    "build",
    [
        lambda: m.Ping(seq=[1], updates=()),  # type: ignore[arg-type]
        lambda: m.PeerList(peers=[]),  # type: ignore[arg-type]
        lambda: m.Goodbye(leaving=1),  # type: ignore[arg-type]
        lambda: m.Hello(version=0, node_id=NODE, features=(), listen=()),
        lambda: m.Hello(version=1, node_id="A" * 15, features=(), listen=()),
        lambda: m.Hello(version=1, node_id=NODE, features=("a", "a"), listen=()),
        lambda: m.Hello(version=1, node_id=NODE, features=("Bad",), listen=()),
        lambda: m.Address(host="a b", port=1),
        lambda: m.Address(host="a", port=0),
        lambda: m.Goodbye(leaving=True, reason="\ud800" * 300),  # lone surrogates: not UTF-8
        lambda: m.OffsetMap(entries=((node_id(2), 1), (node_id(1), 1))),
        lambda: m.OffsetMap(entries=((node_id(1), 1), (node_id(1), 2))),
        lambda: m.EventBatch(events=(event(offset=0), event(offset=2))),
        lambda: m.EventBatch(events=(event(offset=1), event(offset=0))),
        lambda: m.EventBatch(events=(event(semantics=""),)),
        lambda: m.EventBatch(events=(event(chain=bytes(31)),)),
        lambda: m.EventBatch(events=(event(signature=bytes(63)),)),
        lambda: m.EventBatch(events=(event(),), keys=((node_id(1), bytes(32)),)),
        lambda: m.EventBatch(events=(event(),), keys=((NODE, bytes(31)),)),
        lambda: m.OffsetRange(source=NODE, first=2, last=1),
        lambda: m.RequestRange(source=NODE, first=2, last=1),
        lambda: m.RequestOutline(handle=bytes(31)),
        lambda: m.Outline(handle=HANDLE, size=1, chunk_size=3 * 65536, start=0, digests=bytes(32)),
        lambda: m.Outline(handle=HANDLE, size=0, chunk_size=65536, start=0, digests=bytes(32)),
        lambda: m.Outline(handle=HANDLE, size=65537, chunk_size=65536, start=1, digests=bytes(64)),
        lambda: m.Outline(handle=HANDLE, size=65537, chunk_size=65536, start=0, digests=bytes(33)),
        lambda: m.Outline(handle=HANDLE, size=65537, chunk_size=65536, start=0, digests=b""),
        lambda: m.RequestChunks(handle=HANDLE, ranges=()),
        lambda: m.RequestChunks(
            handle=HANDLE, ranges=(m.ChunkRange(start=0, count=2), m.ChunkRange(start=1, count=1))
        ),
        lambda: m.ChunkRange(start=0, count=0),
        lambda: m.ChunkData(handle=HANDLE, index=0, data=b""),
        lambda: m.ChunkData(handle=HANDLE, index=0, data=bytearray(1)),  # type: ignore[arg-type]
        lambda: m.HaveBitmap(handle=HANDLE, chunk_count=9, bitmap=b"\x00"),
        lambda: m.HaveBitmap(handle=HANDLE, chunk_count=9, bitmap=b"\x00\x01"),  # spare bit set
        lambda: m.HaveUpdate(handle=HANDLE, indices=()),
        lambda: m.HaveUpdate(handle=HANDLE, indices=(2, 2)),
        lambda: m.MemberUpdate(
            node_id=NODE,
            state=1,  # type: ignore[arg-type]
            incarnation=0,
            addresses=(),
            origin=NODE,
        ),
    ],
)
def test_invalid_values_cannot_be_built(build: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError):
        build()


def test_invalid_values_from_the_wire_are_a_remote_error() -> None:
    bad = unchecked(m.OffsetMap, entries=((node_id(2), 1), (node_id(1), 1)), more=False)
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(codec.encode(bad))
    assert info.value.code == ErrorCode.MALFORMED_MESSAGE


def test_encode_refuses_a_body_over_the_frame_limit() -> None:
    big = "x" * m.MAX_PAYLOAD_LEN
    events = tuple(event(offset=i, payload=big) for i in range(3))
    with pytest.raises(LocalProtocolError) as info:
        codec.encode(m.EventBatch(events=events))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


# --- every limit crossed (SPEC §11) ----------------------------------------
#
# Each entry builds a message with a parameter at the limit (must work and round-trip) and one
# past it (must be refused when built locally, and when it arrives from the wire).

_addr_max = m.Address(host="h" * m.MAX_HOST_LEN, port=65535)


def _updates(n: int) -> tuple[m.MemberUpdate, ...]:
    return tuple(
        m.MemberUpdate(
            node_id=node_id(i), state=m.MemberState.ALIVE, incarnation=0, addresses=(), origin=NODE
        )
        for i in range(n)
    )


def _peers(n: int) -> tuple[m.PeerInfo, ...]:
    return tuple(m.PeerInfo(node_id=node_id(i), addresses=()) for i in range(n))


def _offset_ranges(n: int) -> tuple[m.OffsetRange, ...]:
    return tuple(m.OffsetRange(source=node_id(i), first=0, last=0) for i in range(n))


def _chunk_ranges(n: int) -> tuple[m.ChunkRange, ...]:
    return tuple(m.ChunkRange(start=2 * i, count=1) for i in range(n))


def _keyed_batch(n: int) -> dict[str, Any]:
    return {
        "events": tuple(event(source=node_id(i)) for i in range(n)),
        "keys": tuple((node_id(i), bytes(32)) for i in range(n)),
        "hops": None,
    }


def _outline(chunk_size: int, total: int, digests: int) -> dict[str, Any]:
    return {
        "handle": HANDLE,
        "size": total * chunk_size,
        "chunk_size": chunk_size,
        "start": 0,
        "digests": bytes(32 * digests),
    }


LIMITS: dict[str, tuple[int, type[Any], Callable[[int], dict[str, Any]]]] = {
    "MAX_COUNTER": (m.MAX_COUNTER, m.Ping, lambda n: {"seq": n, "updates": ()}),
    "MAX_TEXT_LEN": (
        m.MAX_TEXT_LEN,
        m.Error,
        lambda n: {"code": 1, "message": "é" * (n // 2) + "x" * (n % 2)},
    ),
    "MAX_AGENT_LEN": (
        m.MAX_AGENT_LEN,
        m.Hello,
        lambda n: {"version": 1, "node_id": NODE, "features": (), "listen": (), "agent": "a" * n},
    ),
    "MAX_FEATURES": (
        m.MAX_FEATURES,
        m.Hello,
        lambda n: {
            "version": 1,
            "node_id": NODE,
            "features": tuple(f"f{i}" for i in range(n)),
            "listen": (),
            "agent": None,
        },
    ),
    "MAX_FEATURE_LEN": (
        m.MAX_FEATURE_LEN,
        m.Hello,
        lambda n: {
            "version": 1,
            "node_id": NODE,
            "features": ("f" * n,),
            "listen": (),
            "agent": None,
        },
    ),
    "MAX_ADDRESSES": (
        m.MAX_ADDRESSES,
        m.Hello,
        lambda n: {
            "version": 1,
            "node_id": NODE,
            "features": (),
            "listen": tuple(m.Address(host="h", port=i + 1) for i in range(n)),
            "agent": None,
        },
    ),
    "MAX_MEMBER_UPDATES": (
        m.MAX_MEMBER_UPDATES,
        m.MemberUpdates,
        lambda n: {"updates": _updates(n)},
    ),
    "MAX_TTL": (m.MAX_TTL, m.ForwardJoin, lambda n: {"peer": _peers(1)[0], "ttl": n}),
    "MAX_SHUFFLE_SAMPLE": (
        m.MAX_SHUFFLE_SAMPLE,
        m.ShuffleReply,
        lambda n: {"shuffle_id": 1, "sample": _peers(n)},
    ),
    "MAX_PEER_LIST": (m.MAX_PEER_LIST, m.PeerList, lambda n: {"peers": _peers(n)}),
    "MAX_OFFSET_MAP_ENTRIES": (
        m.MAX_OFFSET_MAP_ENTRIES,
        m.OffsetMap,
        lambda n: {"entries": tuple((node_id(i), i) for i in range(n)), "more": True},
    ),
    "MAX_BATCH_EVENTS": (
        m.MAX_BATCH_EVENTS,
        m.EventBatch,
        lambda n: {"events": tuple(event(offset=i) for i in range(n)), "keys": (), "hops": 0},
    ),
    "MAX_BATCH_KEYS": (m.MAX_BATCH_KEYS, m.EventBatch, _keyed_batch),
    "MAX_STREAM_NAME_LEN": (
        m.MAX_STREAM_NAME_LEN,
        m.EventBatch,
        lambda n: {
            "events": (event(semantics="s" * n, name="€" * (n // 3)),),
            "keys": (),
            "hops": 0,
        },
    ),
    "MAX_PAYLOAD_LEN": (
        m.MAX_PAYLOAD_LEN,
        m.EventBatch,
        lambda n: {"events": (event(payload="p" * n),), "keys": (), "hops": None},
    ),
    "MAX_HOPS": (m.MAX_HOPS, m.EventIds, lambda n: {"ranges": _offset_ranges(1), "hops": n}),
    "MAX_ID_RANGES": (m.MAX_ID_RANGES, m.Graft, lambda n: {"ranges": _offset_ranges(n)}),
    "MAX_CHUNK_SIZE": (
        m.MAX_CHUNK_SIZE,
        m.ChunkData,
        lambda n: {"handle": HANDLE, "index": 0, "data": b"d" * n},
    ),
    "MAX_CHUNK_COUNT": (
        m.MAX_CHUNK_COUNT,
        m.HaveBitmap,
        lambda n: {"handle": HANDLE, "chunk_count": n, "bitmap": bytes(m.bitmap_size(n))},
    ),
    "MAX_OUTLINE_PAGE": (
        m.MAX_OUTLINE_PAGE,
        m.Outline,
        lambda n: _outline(m.MIN_CHUNK_SIZE, n + 1, n),
    ),
    "MAX_CHUNK_RANGES": (
        m.MAX_CHUNK_RANGES,
        m.Cancel,
        lambda n: {"handle": HANDLE, "ranges": _chunk_ranges(n)},
    ),
    "MAX_HAVE_INDICES": (
        m.MAX_HAVE_INDICES,
        m.HaveUpdate,
        lambda n: {"handle": HANDLE, "indices": tuple(range(n))},
    ),
}


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_limit_is_enforced_at_its_value(name: str) -> None:
    limit, cls, make = LIMITS[name]
    ok = cls(**make(limit))
    assert codec.decode(codec.encode(ok)) == ok
    with pytest.raises(LocalProtocolError):
        cls(**make(limit + 1))
    try:
        body = codec.encode(unchecked(cls, **make(limit + 1)))
    except LocalProtocolError:
        return  # cannot even be packed (e.g. an int over 64 bits): nothing can arrive either
    with pytest.raises(RemoteProtocolError):
        codec.decode(body)


def test_max_host_len() -> None:
    assert m.Address(host="h" * m.MAX_HOST_LEN, port=1).host == "h" * m.MAX_HOST_LEN
    with pytest.raises(LocalProtocolError):
        m.Address(host="h" * (m.MAX_HOST_LEN + 1), port=1)
    long_host = unchecked(m.Address, host="h" * (m.MAX_HOST_LEN + 1), port=1)
    body = codec.encode(m.Hello(version=1, node_id=NODE, features=(), listen=(long_host,)))
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(body)
    assert info.value.code == ErrorCode.RESOURCE_LIMIT


def test_max_counter_plus_one_still_fits_msgpack_and_is_refused() -> None:
    body = msgpack.packb([m.Ping.TAG, m.MAX_COUNTER + 1, []])
    with pytest.raises(RemoteProtocolError):
        codec.decode(body)


def test_min_chunk_size_and_chunk_count_limits_of_outlines() -> None:
    assert m.Outline(**_outline(m.MIN_CHUNK_SIZE, 1, 1)).chunk_size == m.MIN_CHUNK_SIZE
    with pytest.raises(LocalProtocolError):
        m.Outline(**_outline(m.MIN_CHUNK_SIZE // 2, 1, 1))
    with pytest.raises(LocalProtocolError):
        m.Outline(**_outline(m.MAX_CHUNK_SIZE * 2, 1, 1))
    at_max = m.Outline(**_outline(m.MAX_CHUNK_SIZE, m.MAX_CHUNK_COUNT, 1))
    assert at_max.size == m.MAX_CHUNK_SIZE * m.MAX_CHUNK_COUNT
    with pytest.raises(LocalProtocolError) as info:
        m.Outline(**{**_outline(m.MAX_CHUNK_SIZE, m.MAX_CHUNK_COUNT, 1), "size": at_max.size + 1})
    assert info.value.code == ErrorCode.RESOURCE_LIMIT


def test_ignorable_tag_min_and_max_tag() -> None:
    assert isinstance(codec.decode(msgpack.packb([m.IGNORABLE_TAG_MIN])), m.Unrecognized)
    for tag, code in (
        (m.IGNORABLE_TAG_MIN - 1, ErrorCode.UNKNOWN_MESSAGE),
        (m.MAX_TAG + 1, ErrorCode.MALFORMED_MESSAGE),
    ):
        with pytest.raises(RemoteProtocolError) as info:
            codec.decode(msgpack.packb([tag]))
        assert info.value.code == code


@pytest.mark.parametrize(
    ("name", "limit", "make"),
    [
        ("MSGPACK_MAX_BIN_LEN", codec.MSGPACK_MAX_BIN_LEN, lambda n: b"b" * n),
        ("MSGPACK_MAX_STR_LEN", codec.MSGPACK_MAX_STR_LEN, lambda n: "s" * n),
        ("MSGPACK_MAX_ARRAY_LEN", codec.MSGPACK_MAX_ARRAY_LEN, lambda n: [0] * n),
    ],
)
def test_msgpack_limits(name: str, limit: int, make: Callable[[int], object]) -> None:
    """At the limit an ignorable message decodes; one past it the unpacker refuses it."""
    assert codec.decode(msgpack.packb([m.IGNORABLE_TAG_MIN, make(limit)])) == m.Unrecognized(
        tag=m.IGNORABLE_TAG_MIN
    )
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(msgpack.packb([m.IGNORABLE_TAG_MIN, make(limit + 1)]))
    assert info.value.code == ErrorCode.MALFORMED_MESSAGE


@pytest.mark.parametrize("size", [codec.MSGPACK_MAX_MAP_LEN, codec.MSGPACK_MAX_MAP_LEN + 1, 1000])
def test_msgpack_map_limit_refuses_every_map(size: int) -> None:
    body = msgpack.packb([m.IGNORABLE_TAG_MIN, {str(i): 0 for i in range(size)}])
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(body)
    assert info.value.code == ErrorCode.MALFORMED_MESSAGE


def test_msgpack_ext_len_limit_refuses_every_ext() -> None:
    assert codec.MSGPACK_MAX_EXT_LEN == 0
    with pytest.raises(RemoteProtocolError):
        codec.decode(msgpack.packb([m.IGNORABLE_TAG_MIN, msgpack.ExtType(5, b"\x00")]))


# --- the frame holds the largest message (SPEC §5) -----------------------------------------------


def _largest_messages() -> dict[str, Callable[[], m.SendableMessage]]:
    peer = m.PeerInfo(node_id=NODE, addresses=(_addr_max,) * m.MAX_ADDRESSES)
    update = m.MemberUpdate(
        node_id=NODE,
        state=m.MemberState.SUSPECT,
        incarnation=m.MAX_COUNTER,
        addresses=peer.addresses,
        origin=NODE,
    )
    one_big_event = event(
        offset=m.MAX_COUNTER,
        lamport=m.MAX_COUNTER,
        timestamp=m.MAX_COUNTER,
        semantics="s" * m.MAX_STREAM_NAME_LEN,
        name="n" * m.MAX_STREAM_NAME_LEN,
        payload="p" * m.MAX_PAYLOAD_LEN,
        signature=bytes(64),
    )
    ranges = tuple(
        m.ChunkRange(start=m.MAX_CHUNK_COUNT - 2 * m.MAX_CHUNK_RANGES + 2 * i, count=1)
        for i in range(m.MAX_CHUNK_RANGES)
    )
    return {
        "ChunkData": lambda: m.ChunkData(
            handle=HANDLE, index=m.MAX_CHUNK_COUNT - 1, data=bytes(m.MAX_CHUNK_SIZE)
        ),
        "MemberUpdates": lambda: m.MemberUpdates(updates=(update,) * m.MAX_MEMBER_UPDATES),
        "Ping": lambda: m.Ping(seq=m.MAX_COUNTER, updates=(update,) * m.MAX_MEMBER_UPDATES),
        "PeerList": lambda: m.PeerList(peers=(peer,) * m.MAX_PEER_LIST),
        "Shuffle": lambda: m.Shuffle(
            shuffle_id=m.MAX_COUNTER,
            origin=peer,
            ttl=m.MAX_TTL,
            sample=(peer,) * m.MAX_SHUFFLE_SAMPLE,
        ),
        "Hello": lambda: m.Hello(
            version=0xFFFF,
            node_id=NODE,
            features=tuple(
                f"{i:02d}" + "f" * (m.MAX_FEATURE_LEN - 2) for i in range(m.MAX_FEATURES)
            ),
            listen=peer.addresses,
            agent="a" * m.MAX_AGENT_LEN,
        ),
        "OffsetMap": lambda: m.OffsetMap(
            entries=tuple((node_id(i), m.MAX_COUNTER) for i in range(m.MAX_OFFSET_MAP_ENTRIES)),
            more=True,
        ),
        "EventBatch": lambda: m.EventBatch(
            events=(one_big_event,), keys=((NODE, bytes(32)),), hops=m.MAX_HOPS
        ),
        "EventIds": lambda: m.EventIds(
            ranges=tuple(
                m.OffsetRange(source=node_id(i), first=m.MAX_COUNTER, last=m.MAX_COUNTER)
                for i in range(m.MAX_ID_RANGES)
            ),
            hops=m.MAX_HOPS,
        ),
        "Outline": lambda: m.Outline(
            handle=HANDLE,
            size=m.MAX_CHUNK_COUNT * m.MIN_CHUNK_SIZE,
            chunk_size=m.MIN_CHUNK_SIZE,
            start=0,
            digests=bytes(32 * m.MAX_OUTLINE_PAGE),
        ),
        "HaveBitmap": lambda: m.HaveBitmap(
            handle=HANDLE,
            chunk_count=m.MAX_CHUNK_COUNT,
            bitmap=bytes(m.bitmap_size(m.MAX_CHUNK_COUNT)),
        ),
        "HaveUpdate": lambda: m.HaveUpdate(
            handle=HANDLE,
            indices=tuple(range(m.MAX_CHUNK_COUNT - m.MAX_HAVE_INDICES, m.MAX_CHUNK_COUNT)),
        ),
        "RequestChunks": lambda: m.RequestChunks(handle=HANDLE, ranges=ranges),
        "Cancel": lambda: m.Cancel(handle=HANDLE, ranges=ranges),
        "DontHave": lambda: m.DontHave(handle=HANDLE, ranges=ranges),
        "Goodbye": lambda: m.Goodbye(leaving=True, reason="r" * m.MAX_TEXT_LEN),
        "Error": lambda: m.Error(code=0xFFFF, message="r" * m.MAX_TEXT_LEN),
    }


LARGEST = _largest_messages()


@pytest.mark.parametrize("name", sorted(LARGEST))
def test_the_largest_instance_of_each_capped_message_fits_a_frame(name: str) -> None:
    msg = LARGEST[name]()
    body = codec.encode(msg)
    assert len(body) <= MAX_FRAME_SIZE
    assert codec.decode(body) == msg


def test_a_batch_packed_to_the_budget_with_every_key_fits_a_frame() -> None:
    """Sender rule of SPEC §7.4.2: add events while their sizes stay within EVENT_BATCH_BUDGET."""
    payload = "p" * (m.EVENT_BATCH_BUDGET // m.MAX_BATCH_KEYS)
    candidates = [
        event(source=node_id(i), payload=payload, signature=bytes(64))
        for i in range(m.MAX_BATCH_KEYS)
    ]
    events: list[EventRecord] = []
    used = 0
    for record in candidates:
        size = codec.event_record_size(record)
        if events and used + size > m.EVENT_BATCH_BUDGET:
            break
        events.append(record)
        used += size
    keys = tuple((record.source, bytes(32)) for record in events)
    body = codec.encode(m.EventBatch(events=tuple(events), keys=keys))
    assert used <= m.EVENT_BATCH_BUDGET
    assert len(body) <= MAX_FRAME_SIZE
