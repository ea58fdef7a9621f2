"""FrameDecoder and frame headers (SPEC §5): any chunking gives the same frames, limits hold."""

from __future__ import annotations

import array
import tracemalloc
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.framing import (
    FRAME_HEADER,
    MAX_FRAME_SIZE,
    MIN_FRAME_SIZE,
    FrameDecoder,
    encode_frame_header,
)


def stream_of(bodies: list[bytes]) -> bytes:
    return b"".join(encode_frame_header(len(body)) + body for body in bodies)


def feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[list[bytes], FrameDecoder]:
    decoder = FrameDecoder()
    out: list[bytes] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in pairwise(bounds):
        out.extend(decoder.feed(data[start:end]))
    return out, decoder


SMALL = [b"a", b"bc", bytes(range(256)), b"\x00" * 7, b"z"]


def test_header_is_four_bytes_big_endian() -> None:
    assert encode_frame_header(0x0F0203) == b"\x00\x0f\x02\x03"
    assert FRAME_HEADER.size == 4


def test_header_limits() -> None:
    assert encode_frame_header(MAX_FRAME_SIZE) == MAX_FRAME_SIZE.to_bytes(4, "big")
    assert encode_frame_header(MIN_FRAME_SIZE) == b"\x00\x00\x00\x01"
    with pytest.raises(LocalProtocolError) as info:
        encode_frame_header(MAX_FRAME_SIZE + 1)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(LocalProtocolError) as info:
        encode_frame_header(MIN_FRAME_SIZE - 1)
    assert info.value.code == ErrorCode.MALFORMED_MESSAGE


def test_whole_stream_in_one_feed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(stream_of(SMALL)) == SMALL
    assert not decoder.has_partial_frame
    decoder.eof()


def test_cut_at_every_offset() -> None:
    data = stream_of(SMALL)
    for cut in range(len(data) + 1):
        frames, decoder = feed_in_pieces(data, [cut])
        assert frames == SMALL, cut
        decoder.eof()


def test_cut_at_every_pair_of_offsets() -> None:
    data = stream_of(SMALL[:3])
    for first in range(len(data) + 1):
        for second in range(first, len(data) + 1, 3):
            assert feed_in_pieces(data, [first, second])[0] == SMALL[:3]


def test_byte_by_byte_needs_more_until_each_frame_ends() -> None:
    data = stream_of(SMALL)
    decoder = FrameDecoder()
    ends = set()
    position = 0
    for body in SMALL:
        position += 4 + len(body)
        ends.add(position)
    out = []
    for i in range(len(data)):
        got = decoder.feed(data[i : i + 1])
        assert bool(got) == (i + 1 in ends)
        out.extend(got)
    assert out == SMALL


@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), max_size=12),
    cuts=st.lists(st.integers(0, 5000), max_size=20),
)
def test_any_chunking_gives_the_same_frames(bodies: list[bytes], cuts: list[int]) -> None:
    data = stream_of(bodies)
    frames, decoder = feed_in_pieces(data, [cut % (len(data) + 1) for cut in cuts])
    assert frames == bodies
    assert not decoder.has_partial_frame


@settings(max_examples=20)
@given(
    sizes=st.lists(st.integers(1, MAX_FRAME_SIZE), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 4 * MAX_FRAME_SIZE), max_size=40),
    seed=st.binary(min_size=8, max_size=8),
)
def test_big_frames_split_at_random_points(sizes: list[int], cuts: list[int], seed: bytes) -> None:
    bodies = [(seed * (size // 8 + 1))[:size] for size in sizes]
    data = stream_of(bodies)
    frames, _ = feed_in_pieces(data, [cut % (len(data) + 1) for cut in cuts])
    assert frames == bodies


def test_a_declared_length_over_the_max_fails_before_allocating() -> None:
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError) as info:
            decoder.feed(FRAME_HEADER.pack(0xFFFFFFFF))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert peak < 64 * 1024


def test_max_plus_one_is_refused_and_max_is_accepted() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().feed(FRAME_HEADER.pack(MAX_FRAME_SIZE + 1))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    body = bytes(range(256)) * (MAX_FRAME_SIZE // 256)
    assert len(body) == MAX_FRAME_SIZE
    assert FrameDecoder().feed(FRAME_HEADER.pack(MAX_FRAME_SIZE) + body) == [body]


def test_a_header_split_before_the_bad_length_fails_when_complete() -> None:
    decoder = FrameDecoder()
    header = FRAME_HEADER.pack(MAX_FRAME_SIZE + 1)
    assert decoder.feed(header[:3]) == []
    with pytest.raises(RemoteProtocolError):
        decoder.feed(header[3:])


def test_empty_frame_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().feed(b"\x00\x00\x00\x00")
    assert info.value.code == ErrorCode.MALFORMED_MESSAGE


def test_a_failed_decoder_stays_failed() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(FRAME_HEADER.pack(MAX_FRAME_SIZE + 1))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(stream_of([b"ok"]))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(RemoteProtocolError):
        decoder.eof()


@pytest.mark.parametrize("tail", [1, 3, 4, 5, 9])
def test_trailing_partial_frames_stay_buffered(tail: int) -> None:
    whole = stream_of(SMALL[:2])
    partial = stream_of([b"123456"])
    decoder = FrameDecoder()
    assert decoder.feed(whole + partial[:tail]) == SMALL[:2]
    assert decoder.has_partial_frame
    assert decoder.pending == tail
    with pytest.raises(RemoteProtocolError) as info:
        decoder.eof()
    assert info.value.code == ErrorCode.PROTOCOL_VIOLATION
    assert decoder.feed(partial[tail:]) == [b"123456"]
    assert decoder.pending == 0
    decoder.eof()


def test_caller_may_reuse_its_buffer() -> None:
    data = bytearray(stream_of([b"first", b"second-frame"]))
    decoder = FrameDecoder()
    out = decoder.feed(data[:7])
    out += decoder.feed(memoryview(data)[7:12])
    data[4:9] = b"XXXXX"  # mutate what was fed; nothing kept may change
    out += decoder.feed(memoryview(data)[12:])
    data.extend(b"resizable")  # no memoryview export left behind
    assert out == [b"first", b"second-frame"]
    assert all(type(body) is bytes for body in out)


def test_accepts_a_memoryview_of_any_format() -> None:
    data = stream_of([b"abcd", b"efgh"])
    words = array.array("I")
    words.frombytes(data + bytes(-len(data) % 4))
    frames = FrameDecoder().feed(memoryview(words)[: len(data) // 4])
    assert frames[0] == b"abcd"
