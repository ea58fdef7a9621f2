"""Decoder totality (SPEC §9): any bytes give messages or RemoteProtocolError, nothing else.

The ``fuzz``-marked test runs the hypothesis profile's number of cases (100,000 under
``HYPOTHESIS_PROFILE=fuzz``; ``SWARMNODE_FUZZ_CASES`` overrides it).
"""

from __future__ import annotations

import os
from itertools import pairwise
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol import messages as m
from protocol.errors import RemoteProtocolError
from protocol.framing import FrameDecoder
from tests.protocol.strategies import any_message

_TAGS = sorted(m.MESSAGE_TYPES)

# msgpack values of every kind the wire may (or must not) carry.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=20,
)


def decode_or_remote_error(body: bytes) -> m.Message | None:
    try:
        return codec.decode(body)
    except RemoteProtocolError:
        return None


@given(st.binary(max_size=2000))
def test_decode_is_total_on_random_bytes(body: bytes) -> None:
    result = decode_or_remote_error(body)
    assert result is None or isinstance(result, m.Message)


@given(
    tag=st.sampled_from(_TAGS) | st.integers(0, 300), fields=st.lists(msgpack_values, max_size=10)
)
def test_decode_is_total_on_msgpack_arrays_with_a_tag(tag: int, fields: list[Any]) -> None:
    result = decode_or_remote_error(msgpack.packb([tag, *fields]))
    assert result is None or isinstance(result, m.Message)


def _cases() -> settings:
    env = os.environ.get("SWARMNODE_FUZZ_CASES")
    return settings(max_examples=int(env)) if env else settings()


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """Valid frames, then byte flips, insertions, deletions, truncation, or random bytes instead."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=400))
    stream = bytearray(
        b"".join(
            b"".join(codec.encode_frame(msg))
            for msg in draw(st.lists(any_message, min_size=1, max_size=3))
        )
    )
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(stream) - 1, 0)))
        if kind == "flip" and stream:
            stream[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and stream:
            stream[at] = draw(
                st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC4, 0xDC, 0xDD, 0xFF])
            )
        elif kind == "insert":
            stream[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del stream[at : at + draw(st.integers(1, 8))]
        else:
            del stream[at:]
    return bytes(stream)


@pytest.mark.fuzz
@_cases()
@given(stream=mutated_streams(), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_fuzz_frame_decoder_and_decode(stream: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    bounds = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    try:
        for start, end in pairwise(bounds):
            for body in decoder.feed(stream[start:end]):
                assert len(body) >= 1
                result = decode_or_remote_error(body)
                assert result is None or isinstance(result, m.Message)
                if result is not None and not isinstance(result, m.Unrecognized):
                    assert codec.decode(codec.encode(result)) == result
        decoder.eof()
    except RemoteProtocolError:
        pass
