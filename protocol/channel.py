"""The secure channel, sans-IO: preamble, Noise XXpsk3 handshake with identity binding, records.

Bytes go in through ``receive_data`` and come out as events (``HandshakeDone``, ``FrameReceived``,
``ChannelClosed``); what the channel must send is handed back as buffers (``initiate``,
``data_to_send``, ``send_frame(s)``, ``close``) for ``transport.writelines``. SPEC.md §2–4
and §12 are the normative text; the section numbers cited below are its.

Wire, in order (SPEC.md §2–4):
  1. both sides send a preamble at once: magic, min and max protocol version, cipher ids;
  2. ``Noise_XXpsk3_25519_<cipher>_BLAKE2s``, the swarm key as PSK, prologue = initiator preamble ‖
     responder preamble (tampering fails the handshake); each message is ``u16 len | msg``;
  3. the responder's first transport record is its identity proof; then both directions carry
     records (``u16 len | ciphertext``, at most 65535 bytes) whose plaintext stream is frames
     (``u32 len | body``, protocol/framing.py), decrypted in place into each frame's body buffer.

Every byte string fed in yields events or ``RemoteProtocolError``; after an error the channel stays
FAILED. Every length is checked before anything is allocated; partial records go to a reused buffer.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.channel_preamble import (
    CIPHER_IDS,
    MAGIC,
    PROTOCOL_VERSION,
    PreambleReader,
    encode_preamble,
    negotiate,
)
from protocol.channel_records import (
    LENGTH,
    MAX_PLAINTEXT,
    REKEY_INTERVAL,
    SEND_PIECE_RECORDS,
    Allocator,
    decrypt_record,
    seal_pieces,
    sealed_size,
)
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.framing import FRAME_HEADER, MAX_FRAME_SIZE, MIN_FRAME_SIZE, encode_frame_header
from protocol.ids import node_id_from_public_key
from protocol.noise import (
    DHLEN,
    MAX_MESSAGE_LEN,
    TAGLEN,
    CipherName,
    CipherState,
    HandshakeState,
    KeypairFactory,
    public_bytes,
)

__all__ = [
    "CIPHER_IDS",
    "CLOSE_MARKER",
    "IDENTITY_DOMAIN",
    "MAGIC",
    "MAX_PLAINTEXT",
    "PROTOCOL_VERSION",
    "REKEY_INTERVAL",
    "SEND_PIECE_RECORDS",
    "TRANSITIONS",
    "Allocator",
    "ChannelClosed",
    "ChannelEvent",
    "FrameReceived",
    "HandshakeDone",
    "Input",
    "Role",
    "SecureChannel",
    "State",
    "encode_preamble",
    "sealed_size",
]

# SPEC.md §3.3: the Ed25519 identity key signs this domain ‖ the X25519 static public key.
IDENTITY_DOMAIN: Final = b"swarmnode noise static key v1\x00"
_PROOF_LEN: Final = 32 + 64
# Exact handshake message sizes (SPEC.md §3.2): all handshake payloads but message 3's are empty.
_MSG1_LEN: Final = DHLEN + TAGLEN
_MSG2_LEN: Final = DHLEN + (DHLEN + TAGLEN) + TAGLEN
_MSG3_LEN: Final = (DHLEN + TAGLEN) + (_PROOF_LEN + TAGLEN)
_IDENTITY_RECORD_LEN: Final = _PROOF_LEN + TAGLEN

# SPEC.md §4.3: a frame header with this value is a close notice; a u32 error code follows.
CLOSE_MARKER: Final = 0xFFFFFFFF
_CODE: Final = struct.Struct(">I")
if MAX_FRAME_SIZE >= CLOSE_MARKER:  # pragma: no cover - a guard against a framing change
    raise ImportError("MAX_FRAME_SIZE must leave room for the close marker")


class Role(Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(Enum):
    """Named for what the channel awaits next (STYLE.md §4)."""

    INITIATOR_START = "initiator awaits initiate()"
    INITIATOR_EXPECT_PREAMBLE = "initiator awaits the responder's preamble"
    INITIATOR_EXPECT_MSG2 = "initiator awaits handshake message 2 (e, ee, s, es)"
    INITIATOR_EXPECT_IDENTITY = "initiator awaits the responder's identity record"
    RESPONDER_START = "responder awaits initiate()"
    RESPONDER_EXPECT_PREAMBLE = "responder awaits the initiator's preamble"
    RESPONDER_EXPECT_MSG1 = "responder awaits handshake message 1 (e)"
    RESPONDER_EXPECT_MSG3 = "responder awaits handshake message 3 (s, se, psk)"
    TRANSPORT = "both await records"
    CLOSED = "the peer closed; nothing more is read"
    FAILED = "an error happened; sticky"


class Input(Enum):
    INITIATE = "initiate()"  # local
    PREAMBLE = "a complete preamble"
    MESSAGE = "a complete length-prefixed Noise message"
    CLOSE_NOTICE = "a close notice inside the record stream"
    EOF = "end of the byte stream"


_I, _R = Role.INITIATOR, Role.RESPONDER
# Every legal move, (role, state, input) -> next state. Anything missing is an error: the peer's
# (RemoteProtocolError) for received input, ours (LocalProtocolError) for INITIATE (SPEC.md §3.4).
TRANSITIONS: Final[dict[tuple[Role, State, Input], State]] = {
    (_I, State.INITIATOR_START, Input.INITIATE): State.INITIATOR_EXPECT_PREAMBLE,
    (_I, State.INITIATOR_EXPECT_PREAMBLE, Input.PREAMBLE): State.INITIATOR_EXPECT_MSG2,
    (_I, State.INITIATOR_EXPECT_MSG2, Input.MESSAGE): State.INITIATOR_EXPECT_IDENTITY,
    (_I, State.INITIATOR_EXPECT_IDENTITY, Input.MESSAGE): State.TRANSPORT,
    (_R, State.RESPONDER_START, Input.INITIATE): State.RESPONDER_EXPECT_PREAMBLE,
    (_R, State.RESPONDER_EXPECT_PREAMBLE, Input.PREAMBLE): State.RESPONDER_EXPECT_MSG1,
    (_R, State.RESPONDER_EXPECT_MSG1, Input.MESSAGE): State.RESPONDER_EXPECT_MSG3,
    (_R, State.RESPONDER_EXPECT_MSG3, Input.MESSAGE): State.TRANSPORT,
    **{(role, State.TRANSPORT, Input.MESSAGE): State.TRANSPORT for role in Role},
    **{(role, State.TRANSPORT, Input.CLOSE_NOTICE): State.CLOSED for role in Role},
    **{(role, State.TRANSPORT, Input.EOF): State.CLOSED for role in Role},
    **{(role, State.CLOSED, Input.EOF): State.CLOSED for role in Role},
}

# Exact length of the one Noise message each handshake state accepts.
_EXPECTED_LEN: Final[dict[State, int]] = {
    State.INITIATOR_EXPECT_MSG2: _MSG2_LEN,
    State.INITIATOR_EXPECT_IDENTITY: _IDENTITY_RECORD_LEN,
    State.RESPONDER_EXPECT_MSG1: _MSG1_LEN,
    State.RESPONDER_EXPECT_MSG3: _MSG3_LEN,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeDone:
    """The peer holds the swarm key and proved its identity; frames may flow."""

    peer_node_id: str
    """The node id derived from ``peer_public_key`` (protocol.ids)."""
    peer_public_key: bytes
    """The peer's Ed25519 identity key, raw 32 bytes."""
    cipher: CipherName
    """The negotiated cipher."""
    handshake_hash: bytes
    """Noise ``h`` after the handshake: equal on both sides, unique per session."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameReceived:
    """One complete frame body; the buffer is the receiver's to keep (the channel drops it)."""

    body: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelClosed:
    """The peer closed: a close notice carrying ``code``, or NO_ERROR at end of stream."""

    code: ErrorCode | int


ChannelEvent = HandshakeDone | FrameReceived | ChannelClosed


def identity_proof_message(static_public: bytes) -> bytes:
    """What a node's Ed25519 key signs to bind its X25519 static key (SPEC.md §3.3)."""
    return IDENTITY_DOMAIN + static_public


class SecureChannel:
    """One end of a swarm connection.

    Call ``initiate()`` once the byte stream is up, in both roles, and send what it returns; then
    feed every received chunk to ``receive_data`` (``b""`` = end of stream) and send
    ``data_to_send()`` after
    each call. After ``HandshakeDone``, ``send_frame``/``send_frames`` return buffers to write.
    ``receive_data`` raises only ``RemoteProtocolError``; the methods we call raise
    ``LocalProtocolError``
    when misused.
    """

    def __init__(
        self,
        role: Role,
        *,
        psk: bytes,
        static_private: X25519PrivateKey,
        identity_public: bytes,
        identity_sign: Callable[[bytes], bytes],
        ephemeral_factory: KeypairFactory,
        ciphers: Sequence[CipherName] = ("ChaChaPoly",),
        body_buffer: Callable[[int], bytearray] | None = None,
    ) -> None:
        """``body_buffer(n)``, if given, supplies the buffer (at least ``n`` bytes) a frame body
        of ``n`` bytes is decrypted into; ``FrameReceived.body`` is then a view of its first
        ``n`` bytes. A driver can so recycle body buffers once nothing refers to them."""
        if len(psk) != 32:
            raise LocalProtocolError("the swarm key (PSK) has 32 bytes")
        if len(identity_public) != 32:
            raise LocalProtocolError("an Ed25519 public key has 32 bytes")
        self.role = role
        self.state = State.INITIATOR_START if role is Role.INITIATOR else State.RESPONDER_START
        self._psk = psk
        self._static = static_private
        self._identity_public = identity_public
        self._identity_sign = identity_sign
        self._ephemeral_factory = ephemeral_factory
        self._preamble = encode_preamble(ciphers)
        self._ciphers = tuple(ciphers)
        self._preamble_reader = PreambleReader()
        self._handshake: HandshakeState | None = None
        self._tx: CipherState | None = None
        self._rx: CipherState | None = None
        self.cipher: CipherName | None = None
        self.peer_node_id: str | None = None
        self._outgoing: list[bytes | bytearray] = []
        self._error: RemoteProtocolError | None = None
        self._close_sent = False
        self._established = False  # HandshakeDone was reported
        # A partial Noise message: u16 length + up to 65535 bytes, preallocated once and reused.
        self._partial = bytearray(2 + MAX_MESSAGE_LEN)
        self._partial_view = memoryview(self._partial)
        self._partial_fill = 0
        self._partial_need = 0  # total bytes of the message being assembled, header included
        # Plaintext scratch for records that do not go straight into a frame body (reused).
        self._scratch = bytearray(MAX_PLAINTEXT)
        self._scratch_view = memoryview(self._scratch)
        self._tx_scratch = bytearray(MAX_PLAINTEXT)  # gathers records that span frames when sending
        self._tx_scratch_view = memoryview(self._tx_scratch)
        # Frame reassembly: a 4-byte header (may span records), then the body, decrypted in place.
        self._header = bytearray(FRAME_HEADER.size)
        self._header_fill = 0
        self._body_buffer = body_buffer
        self._body: bytearray | memoryview | None = None
        self._body_view: memoryview | None = None
        self._body_fill = 0
        self._body_is_close = False

    # ---- state table

    def _advance(self, event: Input) -> None:
        next_state = TRANSITIONS.get((self.role, self.state, event))
        if next_state is None:
            if event is Input.INITIATE:
                raise LocalProtocolError(f"initiate() in state {self.state.name}")
            raise RemoteProtocolError(
                f"unexpected {event.value} in state {self.state.name}", ErrorCode.PROTOCOL_VIOLATION
            )
        self.state = next_state

    # ---- the calls

    def initiate(self) -> list[bytes]:
        """The bytes to send as soon as the connection is up (both roles): our preamble."""
        self._advance(Input.INITIATE)
        return [self._preamble]

    def data_to_send(self) -> list[bytes | bytearray]:
        """Handshake bytes (and the identity record) from ``receive_data``; empties the queue."""
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def handshake_complete(self) -> bool:
        return self.state is State.TRANSPORT

    @property
    def can_send(self) -> bool:
        """True while frames may be sent: the handshake is done and neither side has closed.
        A close notice read in the same ``receive_data`` call as earlier frames makes this False
        before the driver has handled those frames."""
        return self.state is State.TRANSPORT and not self._close_sent

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ChannelEvent]:
        """Feed received bytes; ``b""`` means end of stream. Never keeps a reference to ``data``.

        Returns the events in order, or raises ``RemoteProtocolError`` (events decoded earlier in
        the same call are dropped then: the connection is over). After an error every call raises
        again.
        """
        if self._error is not None:
            raise RemoteProtocolError(f"channel failed earlier: {self._error}", self._error.code)
        if self.state in (State.INITIATOR_START, State.RESPONDER_START):
            raise LocalProtocolError("receive_data() before initiate()")
        events: list[ChannelEvent] = []
        try:
            if len(data) == 0:
                self._on_eof(events)
            elif self.state is not State.CLOSED:
                self._feed(memoryview(data).cast("B"), events)
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        return events

    def send_frame(self, body: bytes | bytearray | memoryview) -> list[bytearray]:
        """Encrypt one frame; returns buffers to write (fresh, never reused by the channel)."""
        return self.send_frames((body,))

    def send_frames(self, bodies: Iterable[bytes | bytearray | memoryview]) -> list[bytearray]:
        """Encrypt frames back to back, packing small ones into shared records."""
        segments, total = self._frame_segments(bodies)
        return [self._seal_stream(segments, total)]

    def _frame_segments(
        self, bodies: Iterable[bytes | bytearray | memoryview]
    ) -> tuple[list[memoryview], int]:
        if self.state is not State.TRANSPORT or self._close_sent:
            raise LocalProtocolError(f"cannot send frames in state {self.state.name}")
        segments: list[memoryview] = []
        total = 0
        for body in bodies:
            view = memoryview(body).cast("B")
            segments.append(memoryview(encode_frame_header(len(view))))
            segments.append(view)
            total += FRAME_HEADER.size + len(view)
        return segments, total

    def send_frames_to(
        self,
        bodies: Iterable[bytes | bytearray | memoryview],
        write: Callable[[memoryview], object],
        alloc: Allocator = bytearray,
    ) -> None:
        """Like ``send_frames``, but seals into buffers from ``alloc(n)`` (at least ``n`` bytes
        each; the channel writes the first ``n``), ``SEND_PIECE_RECORDS`` records at a time, and
        hands each piece to ``write`` at once. A driver can so recycle its buffers and write each
        piece while it is still in the CPU cache. The channel keeps no reference to a piece after
        ``write`` returns. If ``write`` raises, the stream is cut mid-frame: the channel refuses to
        send anything more (LocalProtocolError).
        """
        segments, total = self._frame_segments(bodies)
        try:
            for piece in self._seal_pieces(segments, total, SEND_PIECE_RECORDS, alloc):
                write(piece)
        except BaseException:
            self._close_sent = True
            raise

    def close(self, code: ErrorCode | int = ErrorCode.NO_ERROR) -> list[bytearray]:
        """A close notice carrying ``code``, to send before closing the connection, if possible.

        Possible once the handshake is done (also after our receive side failed); ``[]`` otherwise.
        Sending frames afterwards is a LocalProtocolError.
        """
        if not self._established or self._close_sent:
            return []
        self._close_sent = True
        notice = memoryview(FRAME_HEADER.pack(CLOSE_MARKER) + _CODE.pack(int(code)))
        return [self._seal_stream([notice], len(notice))]

    # ---- receiving

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self.state = State.FAILED
        self._body = self._body_view = None

    def _on_eof(self, events: list[ChannelEvent]) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.TRANSPORT and (
            self._partial_fill or self._header_fill or self._body is not None
        ):
            raise RemoteProtocolError("connection closed inside a record or frame")
        self._advance(Input.EOF)
        events.append(ChannelClosed(code=ErrorCode.NO_ERROR))

    def _feed(self, view: memoryview, events: list[ChannelEvent]) -> None:
        pos, end = 0, len(view)
        while pos < end and self.state is not State.CLOSED:
            if self.state is State.TRANSPORT and self._partial_fill == 0:
                pos = self._feed_body_records(view, pos, events)
                if pos == end:
                    break
            if self.state in (State.INITIATOR_EXPECT_PREAMBLE, State.RESPONDER_EXPECT_PREAMBLE):
                pos = self._feed_preamble(view, pos)
                continue
            if self._partial_fill == 0 and end - pos >= 2:
                length = (view[pos] << 8) | view[pos + 1]
                self._check_message_length(length)
                if end - pos - 2 >= length:  # the whole message is here: no copy
                    self._on_message(view[pos + 2 : pos + 2 + length], events)
                    pos += 2 + length
                    continue
            pos = self._fill_partial(view, pos)
            if self._partial_fill == self._partial_need:
                self._partial_fill = 0
                self._on_message(self._partial_view[2 : self._partial_need], events)

    def _feed_body_records(self, view: memoryview, pos: int, events: list[ChannelEvent]) -> int:
        """The bulk-transfer fast path: decrypt whole records that lie in ``view`` straight into
        the frame body they belong to, without the general path's per-record calls (17 records
        per 1 MiB chunk). Stops, returning the position, at anything else — a partial record, one
        that is not all body, an invalid length — which the general path then handles."""
        rx = self._rx
        body = self._body_view
        assert rx is not None
        end = len(view)
        while body is not None and end - pos >= 2:
            length = (view[pos] << 8) | view[pos + 1]
            size = length - TAGLEN
            fill = self._body_fill
            if size <= 0 or end - pos - 2 < length or len(body) - fill < size:
                break
            decrypt_record(rx, view[pos + 2 : pos + 2 + length], body[fill : fill + size])
            pos += 2 + length
            self._body_fill = fill + size
            if self._body_fill == len(body):
                self._finish_body(events)
                body = self._body_view
        return pos

    def _fill_partial(self, view: memoryview, pos: int) -> int:
        """Copy as much of a message as is here into the reusable buffer; returns the new
        position."""
        partial = self._partial
        if self._partial_fill < 2:
            take = min(2 - self._partial_fill, len(view) - pos)
            partial[self._partial_fill : self._partial_fill + take] = view[pos : pos + take]
            self._partial_fill += take
            pos += take
            if self._partial_fill < 2:
                return pos
            length = (partial[0] << 8) | partial[1]
            self._check_message_length(length)
            self._partial_need = 2 + length
        take = min(self._partial_need - self._partial_fill, len(view) - pos)
        self._partial_view[self._partial_fill : self._partial_fill + take] = view[pos : pos + take]
        self._partial_fill += take
        return pos + take

    def _check_message_length(self, length: int) -> None:
        expected = _EXPECTED_LEN.get(self.state)
        if expected is not None:
            if length != expected:
                raise RemoteProtocolError(
                    f"handshake message of {length} bytes, expected {expected}",
                    ErrorCode.HANDSHAKE_FAILED,
                )
        elif length <= TAGLEN:  # records are never empty (SPEC.md §4.1)
            raise RemoteProtocolError("empty or short record", ErrorCode.PROTOCOL_VIOLATION)

    def _feed_preamble(self, view: memoryview, pos: int) -> int:
        pos, peer_preamble = self._preamble_reader.feed(view, pos)
        if peer_preamble is not None:
            self._on_preamble(peer_preamble)
        return pos

    def _on_preamble(self, peer_preamble: bytes) -> None:
        agreed = negotiate(
            initiator=self.role is Role.INITIATOR,
            own_preamble=self._preamble,
            peer_preamble=peer_preamble,
            own_ciphers=self._ciphers,
        )
        self._advance(Input.PREAMBLE)
        self.cipher = agreed.cipher
        self._handshake = HandshakeState(
            f"Noise_XXpsk3_25519_{agreed.cipher}_BLAKE2s",
            initiator=self.role is Role.INITIATOR,
            prologue=agreed.prologue,
            ephemeral_factory=self._ephemeral_factory,
            s=self._static,
            psks=(self._psk,),
        )
        if self.role is Role.INITIATOR:
            self._queue_message(self._handshake.write_message(b""))

    def _queue_message(self, message: bytes) -> None:
        self._outgoing.append(LENGTH.pack(len(message)) + message)

    def _proof(self) -> bytes:
        signature = self._identity_sign(identity_proof_message(public_bytes(self._static)))
        if len(signature) != 64:
            raise LocalProtocolError("identity_sign must return a 64-byte Ed25519 signature")
        return self._identity_public + signature

    def _verify_proof(self, proof: bytes, events: list[ChannelEvent]) -> None:
        assert self._handshake is not None
        assert self.cipher is not None
        remote_static = self._handshake.remote_static
        assert remote_static is not None
        if len(proof) != _PROOF_LEN:
            raise RemoteProtocolError(
                "identity proof of the wrong size", ErrorCode.HANDSHAKE_FAILED
            )
        peer_key, signature = proof[:32], proof[32:]
        try:
            Ed25519PublicKey.from_public_bytes(peer_key).verify(
                signature, identity_proof_message(remote_static)
            )
        except (InvalidSignature, ValueError) as exc:
            raise RemoteProtocolError(
                "identity signature invalid", ErrorCode.BAD_SIGNATURE
            ) from exc
        self.peer_node_id = node_id_from_public_key(peer_key)
        self._established = True
        events.append(
            HandshakeDone(
                peer_node_id=self.peer_node_id,
                peer_public_key=peer_key,
                cipher=self.cipher,
                handshake_hash=self._handshake.handshake_hash,
            )
        )

    def _on_message(self, message: memoryview, events: list[ChannelEvent]) -> None:
        state = self.state
        if state is State.TRANSPORT:
            self._on_record(message, events)
            return
        hs = self._handshake
        assert hs is not None
        self._advance(Input.MESSAGE)
        if state is State.RESPONDER_EXPECT_MSG1:
            hs.read_message(message)
            self._queue_message(hs.write_message(b""))
        elif state is State.INITIATOR_EXPECT_MSG2:
            hs.read_message(message)
            self._queue_message(hs.write_message(self._proof()))
            self._tx, self._rx = hs.split()
        elif state is State.RESPONDER_EXPECT_MSG3:
            proof = hs.read_message(message)
            self._rx, self._tx = hs.split()
            self._verify_proof(proof, events)
            identity_record = self._seal_stream([memoryview(self._proof())], _PROOF_LEN)
            self._outgoing.append(identity_record)
        else:  # INITIATOR_EXPECT_IDENTITY
            assert self._rx is not None
            plain = self._scratch_view[:_PROOF_LEN]
            self._decrypt_record(message, plain)
            self._verify_proof(bytes(plain), events)

    # ---- the record layer

    def _decrypt_record(self, ciphertext: memoryview, out: memoryview) -> None:
        assert self._rx is not None
        decrypt_record(self._rx, ciphertext, out)

    def _on_record(self, ciphertext: memoryview, events: list[ChannelEvent]) -> None:
        size = len(ciphertext) - TAGLEN
        body_view = self._body_view
        if body_view is not None and len(body_view) - self._body_fill >= size:
            # The whole record belongs to the current frame body: decrypt straight into it.
            self._decrypt_record(ciphertext, body_view[self._body_fill : self._body_fill + size])
            self._body_fill += size
            if self._body_fill == len(body_view):
                self._finish_body(events)
            return
        plain = self._scratch_view[:size]
        self._decrypt_record(ciphertext, plain)
        self._on_plaintext(plain, events)

    def _on_plaintext(self, plain: memoryview, events: list[ChannelEvent]) -> None:
        pos, end = 0, len(plain)
        while pos < end:
            if self.state is State.CLOSED:
                return  # bytes after a close notice are ignored
            body_view = self._body_view
            if body_view is not None:
                take = min(len(body_view) - self._body_fill, end - pos)
                body_view[self._body_fill : self._body_fill + take] = plain[pos : pos + take]
                self._body_fill += take
                pos += take
                if self._body_fill == len(body_view):
                    self._finish_body(events)
                continue
            take = min(FRAME_HEADER.size - self._header_fill, end - pos)
            self._header[self._header_fill : self._header_fill + take] = plain[pos : pos + take]
            self._header_fill += take
            pos += take
            if self._header_fill == FRAME_HEADER.size:
                self._header_fill = 0
                self._start_body(FRAME_HEADER.unpack(self._header)[0], events)

    def _start_body(self, length: int, events: list[ChannelEvent]) -> None:
        if length == CLOSE_MARKER:
            length, self._body_is_close = _CODE.size, True
        elif length > MAX_FRAME_SIZE:
            raise RemoteProtocolError(
                f"frame of {length} bytes exceeds {MAX_FRAME_SIZE}", ErrorCode.FRAME_TOO_LARGE
            )
        elif length < MIN_FRAME_SIZE:
            raise RemoteProtocolError("empty frame", ErrorCode.MALFORMED_MESSAGE)
        # Checked above: at most MAX_FRAME_SIZE.
        if self._body_buffer is None:
            self._body = bytearray(length)
            self._body_view = memoryview(self._body)
        else:
            self._body = self._body_view = memoryview(self._body_buffer(length))[:length]
        self._body_fill = 0

    def _finish_body(self, events: list[ChannelEvent]) -> None:
        body = self._body
        assert body is not None
        self._body = self._body_view = None
        if self._body_is_close:
            self._body_is_close = False
            self._advance(Input.CLOSE_NOTICE)
            code: ErrorCode | int = _CODE.unpack(body)[0]
            with contextlib.suppress(ValueError):  # a newer peer's code stays a number
                code = ErrorCode(code)
            events.append(ChannelClosed(code=code))
            return
        events.append(FrameReceived(body=body))

    # ---- sending

    def _seal_stream(self, segments: list[memoryview], total: int) -> bytearray:
        """Seal ``segments`` (``total`` plaintext bytes) into records, all in one buffer."""
        out = bytearray(sealed_size(total))
        for _ in self._seal_pieces(segments, total, None, lambda n: out):
            pass
        return out

    def _seal_pieces(
        self,
        segments: list[memoryview],
        total: int,
        piece_records: int | None,
        alloc: Allocator,
    ) -> Iterator[memoryview]:
        assert self._tx is not None
        return seal_pieces(self._tx, self._tx_scratch_view, segments, total, piece_records, alloc)
