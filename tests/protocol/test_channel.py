"""The channel's record layer: frames over records, limits, close, rekey, nonce exhaustion.

Pure tests on two ends after a real handshake (tests/helpers/channels.py).
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.channel import (
    CLOSE_MARKER,
    MAX_PLAINTEXT,
    REKEY_INTERVAL,
    SEND_PIECE_RECORDS,
    ChannelClosed,
    FrameReceived,
    State,
)
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.framing import MAX_FRAME_SIZE
from protocol.noise import MAX_MESSAGE_LEN, MAX_NONCE, TAGLEN, CipherName, CipherState
from tests.helpers.channels import End, make_pair, run_handshake

U16 = struct.Struct(">H")


def _connected(cipher: CipherName = "ChaChaPoly") -> tuple[End, End]:
    initiator, responder = make_pair(initiator_ciphers=(cipher,), responder_ciphers=(cipher,))
    run_handshake(initiator, responder)
    return initiator, responder


def _records(wire: bytes) -> list[int]:
    """The declared length of every record in ``wire`` (which must hold whole records)."""
    lengths, pos = [], 0
    while pos < len(wire):
        (length,) = U16.unpack_from(wire, pos)
        lengths.append(length)
        pos += 2 + length
    assert pos == len(wire)
    return lengths


def _body(size: int, salt: int = 0) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(size))


SIZES = [1, 2, MAX_PLAINTEXT - 4, MAX_PLAINTEXT - 3, MAX_PLAINTEXT, 3 * MAX_PLAINTEXT + 5, 1 << 20]


@pytest.mark.parametrize("cipher", ["ChaChaPoly", "AESGCM"])
@pytest.mark.parametrize("size", SIZES)
def test_frame_round_trip_and_record_limit(cipher: CipherName, size: int) -> None:
    initiator, responder = _connected(cipher)
    body = _body(size)
    wire = b"".join(initiator.channel.send_frame(body))
    lengths = _records(wire)
    assert all(TAGLEN < n <= MAX_MESSAGE_LEN for n in lengths)  # Noise §3: at most 65535 bytes
    assert sum(n - TAGLEN for n in lengths) == 4 + size
    assert len(lengths) == -(-(4 + size) // MAX_PLAINTEXT)
    assert responder.channel.receive_data(wire) == [FrameReceived(body=body)]


def test_largest_frame_passes_and_one_more_byte_is_refused_locally() -> None:
    initiator, responder = _connected()
    body = bytes(MAX_FRAME_SIZE)
    [event] = responder.channel.receive_data(b"".join(initiator.channel.send_frame(body)))
    assert isinstance(event, FrameReceived)
    assert len(event.body) == MAX_FRAME_SIZE
    with pytest.raises(LocalProtocolError):
        initiator.channel.send_frame(bytes(MAX_FRAME_SIZE + 1))
    with pytest.raises(LocalProtocolError):
        initiator.channel.send_frame(b"")


@given(
    sizes=st.lists(st.integers(1, 150_000), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 10**6), max_size=20),
)
def test_any_chunking_gives_the_same_frames(sizes: list[int], cuts: list[int]) -> None:
    initiator, responder = _connected()
    bodies = [_body(size, salt) for salt, size in enumerate(sizes)]
    wire = b"".join(initiator.channel.send_frames(bodies))
    points = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    events = []
    # Feed from one reused buffer that is overwritten after every call: the channel keeps no view.
    scratch = bytearray(len(wire))
    for start, stop in itertools.pairwise(points):
        scratch[: stop - start] = wire[start:stop]
        events += responder.channel.receive_data(memoryview(scratch)[: stop - start])
        scratch[: stop - start] = bytes(stop - start)
    assert events == [FrameReceived(body=b) for b in bodies]
    assert responder.channel.receive_data(b"") == [ChannelClosed(code=ErrorCode.NO_ERROR)]


@given(
    sizes=st.lists(st.integers(1, 150_000), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
)
def test_bodies_decrypt_into_the_drivers_buffers(sizes: list[int], cuts: list[int]) -> None:
    # A driver that recycles buffers hands out dirty ones bigger than asked: each body must be
    # exactly its frame, whatever the buffer held and however the wire is cut.
    handed: list[tuple[int, bytearray]] = []

    def dirty_buffer(size: int) -> bytearray:
        buffer = bytearray(b"\xa5" * (size + 1000))
        handed.append((size, buffer))
        return buffer

    initiator, responder = make_pair(responder_body_buffer=dirty_buffer)
    run_handshake(initiator, responder)
    bodies = [_body(size, salt) for salt, size in enumerate(sizes)]
    wire = b"".join(initiator.channel.send_frames(bodies))
    points = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    events = []
    for start, stop in itertools.pairwise(points):
        events += responder.channel.receive_data(wire[start:stop])
    assert [bytes(e.body) for e in events if isinstance(e, FrameReceived)] == bodies
    assert [size for size, _ in handed] == sizes
    for event, (_, buffer) in zip(events, handed, strict=True):
        assert isinstance(event, FrameReceived)
        assert isinstance(event.body, memoryview)
        assert event.body.obj is buffer  # decrypted in place, not copied out


def test_small_frames_share_records() -> None:
    initiator, responder = _connected()
    bodies = [b"m%d" % i for i in range(100)]
    packed = b"".join(initiator.channel.send_frames(bodies))
    assert len(_records(packed)) == 1
    assert responder.channel.receive_data(packed) == [FrameReceived(body=b) for b in bodies]


def _forge(sender: End, plaintext: bytes) -> bytes:
    """Records carrying arbitrary plaintext under the sender's real keys (a misbehaving peer)."""
    return bytes(sender.channel._seal_stream([memoryview(plaintext)], len(plaintext)))


def test_oversized_frame_header_is_refused_before_allocation() -> None:
    initiator, responder = _connected()
    wire = _forge(initiator, struct.pack(">I", MAX_FRAME_SIZE + 1))  # the header alone
    with pytest.raises(RemoteProtocolError) as err:
        responder.channel.receive_data(wire)
    assert err.value.code == ErrorCode.FRAME_TOO_LARGE
    assert responder.channel.state is State.FAILED


def test_empty_frame_is_refused() -> None:
    initiator, responder = _connected()
    with pytest.raises(RemoteProtocolError) as err:
        responder.channel.receive_data(_forge(initiator, struct.pack(">I", 0)))
    assert err.value.code == ErrorCode.MALFORMED_MESSAGE


def test_empty_record_is_refused() -> None:
    _, responder = _connected()
    with pytest.raises(RemoteProtocolError):
        responder.channel.receive_data(U16.pack(TAGLEN) + bytes(TAGLEN))


def _sendable(end: End) -> bool:
    return end.channel.can_send


def test_close_notice_carries_the_code_and_stops_sending() -> None:
    initiator, responder = _connected()
    assert _sendable(initiator)
    assert _sendable(responder)
    wire = b"".join(initiator.channel.send_frame(b"last words"))
    wire += b"".join(initiator.channel.close(ErrorCode.BAD_DATA))
    assert not _sendable(initiator)
    assert initiator.channel.close() == []  # only once
    with pytest.raises(LocalProtocolError):
        initiator.channel.send_frame(b"after close")
    assert responder.channel.receive_data(wire) == [
        FrameReceived(body=b"last words"),
        ChannelClosed(code=ErrorCode.BAD_DATA),
    ]
    assert responder.channel.state is State.CLOSED
    # The frame before the notice is handled after the channel closed: a driver must check
    # can_send (a reply then raises LocalProtocolError, which the transport turns into a
    # closing connection).
    assert not _sendable(responder)
    assert responder.channel.receive_data(b"ignored after close") == []
    assert responder.channel.receive_data(b"") == []
    # The responder can still answer with its own notice.
    assert initiator.channel.receive_data(b"".join(responder.channel.close())) == [
        ChannelClosed(code=ErrorCode.NO_ERROR)
    ]


def test_unknown_close_code_is_passed_on_as_a_number() -> None:
    initiator, responder = _connected()
    wire = _forge(initiator, struct.pack(">II", CLOSE_MARKER, 999))
    assert responder.channel.receive_data(wire) == [ChannelClosed(code=999)]


def test_close_after_a_receive_failure_still_notifies_the_peer() -> None:
    initiator, responder = _connected()
    with pytest.raises(RemoteProtocolError):
        responder.channel.receive_data(U16.pack(40) + bytes(40))
    notice = responder.channel.close(ErrorCode.DECRYPT_FAILED)
    assert initiator.channel.receive_data(b"".join(notice)) == [
        ChannelClosed(code=ErrorCode.DECRYPT_FAILED)
    ]


def test_eof_inside_a_record_or_frame_fails() -> None:
    initiator, responder = _connected()
    wire = b"".join(initiator.channel.send_frame(_body(200_000)))
    responder.channel.receive_data(wire[: MAX_PLAINTEXT + 100])
    with pytest.raises(RemoteProtocolError):
        responder.channel.receive_data(b"")
    initiator2, responder2 = _connected()
    wire2 = b"".join(initiator2.channel.send_frame(_body(200_000)))
    responder2.channel.receive_data(wire2[: 2 * (2 + MAX_MESSAGE_LEN)])  # whole records, cut frame
    with pytest.raises(RemoteProtocolError):
        responder2.channel.receive_data(b"")


def test_replayed_record_fails() -> None:
    initiator, responder = _connected()
    wire = b"".join(initiator.channel.send_frame(b"once"))
    assert responder.channel.receive_data(wire) == [FrameReceived(body=b"once")]
    with pytest.raises(RemoteProtocolError) as err:
        responder.channel.receive_data(wire)
    assert err.value.code == ErrorCode.DECRYPT_FAILED


def test_both_sides_rekey_at_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Crossing REKEY_INTERVAL records: both ends call Rekey() once and keep talking."""
    initiator, responder = _connected()
    tx, rx = initiator.channel._tx, responder.channel._rx
    assert tx is not None
    assert rx is not None
    rekeyed: list[CipherState] = []
    real_rekey = CipherState.rekey

    def counting_rekey(self: CipherState) -> None:
        rekeyed.append(self)
        real_rekey(self)

    monkeypatch.setattr(CipherState, "rekey", counting_rekey)
    for i in range(REKEY_INTERVAL + 3):
        events = responder.channel.receive_data(initiator.channel.send_frame(b"%d" % i)[0])
        assert events == [FrameReceived(body=b"%d" % i)]
    assert rekeyed == [tx, rx]
    assert tx.n == rx.n == REKEY_INTERVAL + 3


def test_nonce_exhaustion_is_refused() -> None:
    initiator, responder = _connected()
    tx, rx = initiator.channel._tx, responder.channel._rx
    assert tx is not None
    assert rx is not None
    tx.set_nonce(MAX_NONCE - 1)
    rx.set_nonce(MAX_NONCE - 1)
    assert responder.channel.receive_data(initiator.channel.send_frame(b"last")[0]) == [
        FrameReceived(body=b"last")
    ]
    with pytest.raises(LocalProtocolError):
        initiator.channel.send_frame(b"one too many")


def test_send_frames_to_seals_in_pieces_into_the_callers_buffers() -> None:
    initiator, responder = _connected()
    bodies = [_body(MAX_FRAME_SIZE, 1), _body(10, 2), _body(1 << 20, 3)]
    pieces: list[bytes] = []
    sizes: list[int] = []

    def alloc(size: int) -> bytearray:
        sizes.append(size)
        return bytearray(size + 100)  # larger than asked: only the first ``size`` bytes are used

    initiator.channel.send_frames_to(bodies, lambda piece: pieces.append(bytes(piece)), alloc)
    assert [len(p) for p in pieces] == sizes
    assert all(len(_records(p)) <= SEND_PIECE_RECORDS for p in pieces)
    assert len(pieces) > 1
    assert responder.channel.receive_data(b"".join(pieces)) == [
        FrameReceived(body=b) for b in bodies
    ]


def test_a_failed_write_stops_all_sending() -> None:
    initiator, _ = _connected()

    def broken(piece: memoryview) -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        initiator.channel.send_frames_to([_body(200_000)], broken)
    with pytest.raises(LocalProtocolError):
        initiator.channel.send_frame(b"the stream was cut mid-frame")
