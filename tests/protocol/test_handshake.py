"""The channel's handshake: negotiation, XXpsk3 with identity binding, and every way it must fail.

Pure tests: two ``SecureChannel`` ends back to back (tests/helpers/channels.py), no loop or sockets.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol.channel import (
    MAGIC,
    TRANSITIONS,
    ChannelClosed,
    FrameReceived,
    HandshakeDone,
    Input,
    Role,
    State,
    encode_preamble,
)
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from tests.helpers.channels import (
    End,
    derive,
    make_end,
    make_pair,
    run_handshake,
    transfer,
)


def _done(end: End) -> list[HandshakeDone]:
    return [e for e in end.events if isinstance(e, HandshakeDone)]


def _assert_agreed(initiator: End, responder: End) -> None:
    (i_done,) = _done(initiator)
    (r_done,) = _done(responder)
    assert i_done.peer_node_id == responder.node_id
    assert r_done.peer_node_id == initiator.node_id
    assert i_done.handshake_hash == r_done.handshake_hash
    assert i_done.cipher == r_done.cipher
    assert initiator.channel.handshake_complete
    assert responder.channel.handshake_complete
    # The keys agree both ways: a frame each way decrypts to what was sent.
    [got] = transfer(initiator, responder, initiator.channel.send_frame(b"ping"))
    assert got == FrameReceived(body=b"ping")
    [got] = transfer(responder, initiator, responder.channel.send_frame(b"pong"))
    assert got == FrameReceived(body=b"pong")


def test_handshake_completes_and_binds_identities() -> None:
    initiator, responder = make_pair()
    run_handshake(initiator, responder)
    _assert_agreed(initiator, responder)
    assert _done(initiator)[0].cipher == "ChaChaPoly"


def test_different_ephemerals_give_different_sessions() -> None:
    a_i, a_r = make_pair(seed=1)
    b_i, b_r = make_pair(seed=2)
    run_handshake(a_i, a_r)
    run_handshake(b_i, b_r)
    assert _done(a_i)[0].handshake_hash != _done(b_i)[0].handshake_hash


@given(
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_any_chunking_and_interleaving_agrees(seed: int, data: st.DataObject) -> None:
    initiator, responder = make_pair(seed=seed)

    def chunker(size: int) -> list[int]:
        cuts = data.draw(st.lists(st.integers(1, max(1, size - 1)), max_size=6))
        return sorted(set(cuts))

    def initiator_first() -> bool:
        return data.draw(st.booleans())

    run_handshake(initiator, responder, chunker=chunker, initiator_first=initiator_first)
    _assert_agreed(initiator, responder)


@pytest.mark.parametrize(
    ("initiator_ciphers", "responder_ciphers", "expected"),
    [
        (("AESGCM", "ChaChaPoly"), ("ChaChaPoly", "AESGCM"), "AESGCM"),
        (("ChaChaPoly", "AESGCM"), ("AESGCM", "ChaChaPoly"), "ChaChaPoly"),
        (("AESGCM", "ChaChaPoly"), ("ChaChaPoly",), "ChaChaPoly"),
        (("ChaChaPoly",), ("AESGCM", "ChaChaPoly"), "ChaChaPoly"),
    ],
)
def test_cipher_negotiation_follows_initiator_preference(
    initiator_ciphers: tuple[str, ...], responder_ciphers: tuple[str, ...], expected: str
) -> None:
    initiator, responder = make_pair(
        initiator_ciphers=initiator_ciphers,  # type: ignore[arg-type]
        responder_ciphers=responder_ciphers,  # type: ignore[arg-type]
    )
    run_handshake(initiator, responder)
    _assert_agreed(initiator, responder)
    assert _done(initiator)[0].cipher == expected


def test_no_common_cipher_fails() -> None:
    initiator, responder = make_pair(initiator_ciphers=("AESGCM",))
    with pytest.raises(RemoteProtocolError) as err:
        run_handshake(initiator, responder)
    assert err.value.code == ErrorCode.UNSUPPORTED_VERSION


def test_no_common_version_fails() -> None:
    initiator, responder = make_pair()

    def newer_only(from_initiator: bool, index: int, data: bytes) -> bytes:
        if from_initiator and index == 0:  # the initiator's preamble: claims versions 2..3 only
            return MAGIC + bytes((2, 3)) + data[len(MAGIC) + 2 :]
        return data

    with pytest.raises(RemoteProtocolError) as err:
        run_handshake(initiator, responder, tamper=newer_only)
    assert err.value.code == ErrorCode.UNSUPPORTED_VERSION


def test_downgrade_of_the_offer_fails_the_handshake() -> None:
    """Stripping AESGCM from the initiator's offer in transit changes the prologue: refused."""
    initiator, responder = make_pair(
        initiator_ciphers=("AESGCM", "ChaChaPoly"), responder_ciphers=("AESGCM", "ChaChaPoly")
    )

    def strip(from_initiator: bool, index: int, data: bytes) -> bytes:
        if from_initiator and index == 0:
            assert data == encode_preamble(("AESGCM", "ChaChaPoly"))
            return encode_preamble(("ChaChaPoly",))
        return data

    with pytest.raises(RemoteProtocolError):
        run_handshake(initiator, responder, tamper=strip)
    assert not _done(initiator)
    assert not _done(responder)


def _flip(target_from_initiator: bool, target_index: int, bit: int) -> Callable[..., bytes]:
    def tamper(from_initiator: bool, index: int, data: bytes) -> bytes:
        if from_initiator == target_from_initiator and index == target_index:
            position = bit % (8 * len(data))
            flipped = bytearray(data)
            flipped[position // 8] ^= 1 << (position % 8)
            return bytes(flipped)
        return data

    return tamper


# Deliveries per direction in a handshake: initiator sends preamble, msg1, msg3; responder sends its
# preamble, msg2, and the identity record.
@given(
    from_initiator=st.booleans(),
    index=st.integers(0, 2),
    bit=st.integers(0, 10_000),
)
def test_any_flipped_bit_in_the_handshake_fails(from_initiator: bool, index: int, bit: int) -> None:
    initiator, responder = make_pair()

    def handshake_then_eof() -> None:
        run_handshake(initiator, responder, tamper=_flip(from_initiator, index, bit))
        # A flipped preamble length can leave both sides waiting for bytes that never come: the
        # driver's handshake timeout then ends the connection, which the channel sees as EOF.
        initiator.channel.receive_data(b"")

    with pytest.raises(RemoteProtocolError):
        handshake_then_eof()
    assert not _done(initiator)  # the initiator completes last: it never accepts a tampered session


@given(bit=st.integers(0, 10_000), direction=st.booleans())
def test_any_flipped_bit_in_a_record_fails(bit: int, direction: bool) -> None:
    initiator, responder = make_pair()
    run_handshake(initiator, responder)
    sender, receiver = (initiator, responder) if direction else (responder, initiator)
    wire = bytearray(b"".join(sender.channel.send_frames([b"x" * 100, b"y" * 70_000])))
    position = bit % (8 * len(wire))
    wire[position // 8] ^= 1 << (position % 8)

    def feed_then_eof() -> None:
        receiver.channel.receive_data(bytes(wire))
        receiver.channel.receive_data(b"")  # a shortened length may leave a cut record: EOF says so

    with pytest.raises(RemoteProtocolError):
        feed_then_eof()


def test_wrong_psk_fails() -> None:
    initiator = make_end(Role.INITIATOR, seed=0)
    responder = make_end(Role.RESPONDER, seed=0, psk=derive("another swarm", 0))
    with pytest.raises(RemoteProtocolError) as err:
        run_handshake(initiator, responder)
    assert err.value.code == ErrorCode.DECRYPT_FAILED
    assert not _done(initiator)
    assert not _done(responder)


@pytest.mark.parametrize("liar", [Role.INITIATOR, Role.RESPONDER])
def test_signature_by_another_key_fails(liar: Role) -> None:
    impostor = Ed25519PrivateKey.from_private_bytes(derive("impostor", 0))
    ends = {
        role: make_end(role, seed=0, sign=impostor.sign if role is liar else None) for role in Role
    }
    with pytest.raises(RemoteProtocolError) as err:
        run_handshake(ends[Role.INITIATOR], ends[Role.RESPONDER])
    assert err.value.code == ErrorCode.BAD_SIGNATURE
    assert not _done(ends[Role.INITIATOR])
    honest = Role.RESPONDER if liar is Role.INITIATOR else Role.INITIATOR
    assert not _done(ends[honest])


def test_signature_over_another_static_key_fails() -> None:
    """The right identity key signing a different static key (a proof lifted from elsewhere)."""
    initiator = make_end(Role.INITIATOR, seed=0)
    own_identity = Ed25519PrivateKey.from_private_bytes(derive("identity-responder", 0))

    def lift(message: bytes) -> bytes:
        return own_identity.sign(message[:-32] + bytes(32))

    responder = make_end(Role.RESPONDER, seed=0, sign=lift)
    assert responder.identity.private_bytes_raw() == own_identity.private_bytes_raw()
    with pytest.raises(RemoteProtocolError) as err:
        run_handshake(initiator, responder)
    assert err.value.code == ErrorCode.BAD_SIGNATURE


def test_plaintext_peer_fails_on_its_first_byte() -> None:
    responder = make_end(Role.RESPONDER, seed=0)
    responder.channel.initiate()
    with pytest.raises(RemoteProtocolError) as err:
        responder.channel.receive_data(b"G")
    assert err.value.code == ErrorCode.PROTOCOL_VIOLATION


def test_errors_are_sticky() -> None:
    responder = make_end(Role.RESPONDER, seed=0)
    responder.channel.initiate()
    with pytest.raises(RemoteProtocolError):
        responder.channel.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert responder.channel.state is State.FAILED
    with pytest.raises(RemoteProtocolError):
        responder.channel.receive_data(MAGIC)
    with pytest.raises(RemoteProtocolError):
        responder.channel.receive_data(b"")
    assert responder.channel.close() == []


def test_eof_during_handshake_fails() -> None:
    initiator, responder = make_pair()
    responder.channel.initiate()
    responder.channel.receive_data(b"".join(initiator.channel.initiate()))
    with pytest.raises(RemoteProtocolError):
        responder.channel.receive_data(b"")


def test_local_misuse_is_a_local_error() -> None:
    initiator, _ = make_pair()
    with pytest.raises(LocalProtocolError):
        initiator.channel.receive_data(b"too early")
    with pytest.raises(LocalProtocolError):
        initiator.channel.send_frame(b"before the handshake")
    initiator.channel.initiate()
    with pytest.raises(LocalProtocolError):
        initiator.channel.initiate()


def test_the_state_table_is_closed() -> None:
    """Every state but FAILED appears in the table, and every target is a known state."""
    sources = {state for (_, state, _) in TRANSITIONS}
    assert sources | {State.FAILED} == set(State)
    assert set(TRANSITIONS.values()) <= set(State)
    assert {inp for (_, _, inp) in TRANSITIONS} == set(Input)
    # States are named for their role; only the shared ones are used by both.
    for role, state, _ in TRANSITIONS:
        assert not state.name.startswith(("INITIATOR", "RESPONDER")) or state.name.startswith(
            role.name
        )


def test_handshake_events_end_with_close() -> None:
    initiator, responder = make_pair()
    run_handshake(initiator, responder)
    [closed] = transfer(initiator, responder, initiator.channel.close(ErrorCode.RESOURCE_LIMIT))
    assert closed == ChannelClosed(code=ErrorCode.RESOURCE_LIMIT)


def _transcript() -> dict[Role, list[bytes]]:
    """What each role sends, delivery by delivery, in a clean seed-0 handshake, then a frame."""
    initiator, responder = make_pair()
    sent: dict[Role, list[bytes]] = {Role.INITIATOR: [], Role.RESPONDER: []}

    def record(from_initiator: bool, index: int, data: bytes) -> bytes:
        sent[Role.INITIATOR if from_initiator else Role.RESPONDER].append(data)
        return data

    run_handshake(initiator, responder, tamper=record)
    sent[Role.INITIATOR].append(b"".join(initiator.channel.send_frame(b"frame")))
    sent[Role.RESPONDER][-1] += b"".join(responder.channel.send_frame(b"frame"))
    return sent


TRANSCRIPT = _transcript()


@pytest.mark.fuzz
@given(
    role=st.sampled_from(Role),
    valid_steps=st.integers(0, 3),
    junk=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 2_000), max_size=8),
    eof=st.booleans(),
)
def test_fuzz_any_bytes_give_events_or_remote_error(
    role: Role, valid_steps: int, junk: bytes, cuts: list[int], eof: bool
) -> None:
    """Totality: after a valid prefix of the peer's bytes, arbitrary bytes (cut anywhere) yield
    events or ``RemoteProtocolError``, nothing else (as h11's fuzzing checks its parser)."""
    end = make_end(role, seed=0)
    end.channel.initiate()
    peer = Role.RESPONDER if role is Role.INITIATOR else Role.INITIATOR
    stream = b"".join(TRANSCRIPT[peer][:valid_steps]) + junk
    points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    try:
        for start, stop in itertools.pairwise(points):
            end.events.extend(end.channel.receive_data(stream[start:stop]))
            end.channel.data_to_send()
        if eof:
            end.events.extend(end.channel.receive_data(b""))
    except RemoteProtocolError as exc:
        error: RemoteProtocolError | None = exc
    else:
        error = None
    if error is not None:
        assert isinstance(error.code, ErrorCode)
        assert end.channel.state is State.FAILED
        return
    assert end.channel.state is not State.FAILED
    # Without an error, what came out is what a valid prefix can produce.
    kinds = {type(e) for e in end.events}
    assert kinds <= {HandshakeDone, FrameReceived, ChannelClosed}


def test_spec_state_table_matches_the_code() -> None:
    """protocol/SPEC.md §3.4 lists exactly the transitions of ``TRANSITIONS``."""
    spec = (Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md").read_text()
    section = spec.split("### 3.4 States", 1)[1].split("\n## ", 1)[0]
    inputs = {
        "initiate": Input.INITIATE,
        "preamble": Input.PREAMBLE,
        "message": Input.MESSAGE,
        "close notice": Input.CLOSE_NOTICE,
        "end of stream": Input.EOF,
    }
    roles = {"initiator": [Role.INITIATOR], "responder": [Role.RESPONDER], "both": list(Role)}
    rows: dict[tuple[Role, State, Input], State] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] not in roles:
            continue
        role_text, state_text, input_text, next_text = cells
        kind = inputs[re.sub(r"\(.*\)", "", input_text).replace("`", "").strip()]
        for role in roles[role_text]:
            rows[(role, State[state_text.strip("`")], kind)] = State[next_text.strip("`")]
    assert rows == TRANSITIONS
