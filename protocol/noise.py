"""The Noise Protocol Framework, revision 34, for the suites swarmnode needs (sans-IO).

CipherState, SymmetricState and HandshakeState (Noise §5) for DH ``25519``, ciphers ``ChaChaPoly``
and ``AESGCM``, hash ``BLAKE2s``, patterns ``NN`` and ``XX`` with ``pskN`` modifiers (§9): the
swarm's ``Noise_XXpsk3_25519_{ChaChaPoly,AESGCM}_BLAKE2s`` and the published test vectors.

Nothing here draws randomness: ephemeral keys come from an ``ephemeral_factory`` the caller passes,
so the test vectors replay byte for byte. What the peer causes (a failed tag, a short message, a
low-order point) raises ``RemoteProtocolError``; misuse by our code raises ``LocalProtocolError``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DHLEN",
    "HASHLEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "TAGLEN",
    "CipherName",
    "CipherState",
    "HandshakeState",
    "SymmetricState",
    "hkdf",
    "public_bytes",
]

# Noise §3: every Noise message, handshake or transport, is at most 65535 bytes.
MAX_MESSAGE_LEN: Final = 65535
# Noise §5.1: nonce 2^64-1 is reserved (Rekey uses it); encrypting with it must fail.
MAX_NONCE: Final = 2**64 - 1
DHLEN: Final = 32
HASHLEN: Final = 32
TAGLEN: Final = 16
_BLOCKLEN: Final = 64
_ZEROS32: Final = bytes(32)

CipherName = Literal["ChaChaPoly", "AESGCM"]
KeypairFactory = Callable[[], X25519PrivateKey]


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of an X25519 private key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """Noise §4.3 HKDF with HMAC-BLAKE2s: two or three 32-byte outputs."""
    temp_key = _hmac(chaining_key, ikm)
    out1 = _hmac(temp_key, b"\x01")
    out2 = _hmac(temp_key, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp_key, out2 + b"\x03")


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # a low-order point gives an all-zero secret (Noise §12.1)
        raise RemoteProtocolError("invalid DH public key", ErrorCode.HANDSHAKE_FAILED) from exc


class CipherState:
    """Noise §5.1: a key ``k`` and a nonce counter ``n``; without a key, encryption is the identity.

    ``encrypt_into``/``decrypt_into`` are the record layer's hot path: they fill a caller's buffer.
    """

    __slots__ = ("_aead", "_cipher", "_key", "n")

    def __init__(self, cipher: CipherName, key: bytes | None = None) -> None:
        self._cipher: CipherName = cipher
        self._key: bytes | None = None
        self._aead: ChaCha20Poly1305 | AESGCM | None = None
        self.n = 0
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        self._key = key
        self._aead = ChaCha20Poly1305(key) if self._cipher == "ChaChaPoly" else AESGCM(key)
        self.n = 0

    def has_key(self) -> bool:
        return self._aead is not None

    def set_nonce(self, nonce: int) -> None:
        if not 0 <= nonce <= MAX_NONCE:
            raise LocalProtocolError("nonce out of range")
        self.n = nonce

    def _nonce(self, n: int) -> bytes:
        # Noise §12.3: ChaChaPoly encodes n little-endian, AESGCM big-endian, after 32 zero bits.
        if self._cipher == "ChaChaPoly":
            return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")
        return b"\x00\x00\x00\x00" + n.to_bytes(8, "big")

    def _next_nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce exhausted; the connection must be replaced")
        nonce = self._nonce(self.n)
        self.n += 1
        return nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | memoryview) -> bytes:
        if self._aead is None:
            return bytes(plaintext)
        return self._aead.encrypt(self._next_nonce(), plaintext, ad)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes | memoryview) -> bytes:
        if self._aead is None:
            return bytes(ciphertext)
        if len(ciphertext) < TAGLEN:
            raise RemoteProtocolError("ciphertext shorter than its tag", ErrorCode.DECRYPT_FAILED)
        if self.n >= MAX_NONCE:
            raise RemoteProtocolError("peer exhausted the nonce space", ErrorCode.DECRYPT_FAILED)
        try:
            plaintext = self._aead.decrypt(self._nonce(self.n), ciphertext, ad)
        except InvalidTag as exc:
            raise RemoteProtocolError("authentication failed", ErrorCode.DECRYPT_FAILED) from exc
        self.n += 1  # Noise §5.1: n is incremented only after a successful decryption
        return plaintext

    def encrypt_into(self, plaintext: bytes | bytearray | memoryview, out: memoryview) -> None:
        """Encrypt, empty associated data, into ``out`` (exactly ``len(plaintext) + TAGLEN``)."""
        assert self._aead is not None
        self._aead.encrypt_into(self._next_nonce(), plaintext, None, out)

    def decrypt_into(self, ciphertext: bytes | bytearray | memoryview, out: memoryview) -> None:
        """Decrypt, empty associated data, into ``out`` (exactly ``len(ciphertext) - TAGLEN``).

        On failure ``out`` may hold unauthenticated bytes: the caller must discard it.
        """
        assert self._aead is not None
        if self.n >= MAX_NONCE:
            raise RemoteProtocolError("peer exhausted the nonce space", ErrorCode.DECRYPT_FAILED)
        try:
            self._aead.decrypt_into(self._nonce(self.n), ciphertext, None, out)
        except InvalidTag as exc:
            raise RemoteProtocolError("authentication failed", ErrorCode.DECRYPT_FAILED) from exc
        self.n += 1

    def rekey(self) -> None:
        """Noise §4.2 REKEY: k = ENCRYPT(k, maxnonce, zerolen, zeros)[:32]; n is kept."""
        assert self._aead is not None
        new_key = self._aead.encrypt(self._nonce(MAX_NONCE), _ZEROS32, b"")[:32]
        n = self.n
        self.initialize_key(new_key)
        self.n = n


class SymmetricState:
    """Noise §5.2: the chaining key ``ck``, the handshake hash ``h`` and the current CipherState."""

    __slots__ = ("cipher", "cipher_name", "ck", "h")

    def __init__(self, protocol_name: bytes, cipher: CipherName) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher_name: CipherName = cipher
        self.cipher = CipherState(cipher)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cipher.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(self.cipher_name, k1), CipherState(self.cipher_name, k2)


# Noise §7.4/§7.5: message patterns as token lists, initiator first. No pre-messages in NN or XX.
_PATTERNS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "NN": (("e",), ("e", "ee")),
    "XX": (("e",), ("e", "ee", "s", "es"), ("s", "se")),
}


@dataclass(frozen=True, slots=True)
class ProtocolName:
    """A parsed ``Noise_<pattern>_25519_<cipher>_BLAKE2s`` name."""

    pattern: str
    psk_positions: tuple[int, ...]
    cipher: CipherName

    @classmethod
    def parse(cls, name: str) -> ProtocolName:
        parts = name.split("_")
        if len(parts) != 5 or parts[0] != "Noise" or parts[2] != "25519" or parts[4] != "BLAKE2s":
            raise LocalProtocolError(f"unsupported Noise protocol {name!r}")
        cipher = parts[3]
        if cipher not in ("ChaChaPoly", "AESGCM"):
            raise LocalProtocolError(f"unsupported Noise cipher {cipher!r}")
        base, _, modifiers = parts[1].partition("psk")
        if base not in _PATTERNS:
            raise LocalProtocolError(f"unsupported Noise pattern {parts[1]!r}")
        positions: tuple[int, ...] = ()
        if modifiers:
            items = ("psk" + modifiers).split("+")
            if not all(item.startswith("psk") and item[3:].isdigit() for item in items):
                raise LocalProtocolError(f"bad psk modifier in {name!r}")
            positions = tuple(int(item[3:]) for item in items)
        return cls(base, positions, "ChaChaPoly" if cipher == "ChaChaPoly" else "AESGCM")

    def message_patterns(self) -> tuple[tuple[str, ...], ...]:
        """Token lists with ``psk`` placed per Noise §9.2: psk0 opens message 1, pskN ends N."""
        messages = [list(tokens) for tokens in _PATTERNS[self.pattern]]
        for position in self.psk_positions:
            if position == 0:
                messages[0].insert(0, "psk")
            elif position <= len(messages):
                messages[position - 1].append("psk")
            else:
                raise LocalProtocolError(f"psk{position} beyond the pattern's messages")
        return tuple(tuple(tokens) for tokens in messages)


class HandshakeState:
    """Noise §5.3: runs one handshake pattern; ``split()`` then yields the transport CipherStates.

    ``write_message(payload) -> bytes`` and ``read_message(message) -> payload`` alternate as the
    pattern dictates. ``ephemeral_factory`` supplies the ephemeral key (the only randomness a
    handshake needs).
    """

    __slots__ = (
        "_e",
        "_ephemeral_factory",
        "_index",
        "_initiator",
        "_messages",
        "_psks",
        "_rs",
        "_s",
        "_ss",
        "_uses_psk",
        "re",
    )

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes,
        ephemeral_factory: KeypairFactory,
        s: X25519PrivateKey | None = None,
        rs: bytes | None = None,
        psks: Sequence[bytes] = (),
    ) -> None:
        name = ProtocolName.parse(protocol_name)
        self._messages = name.message_patterns()
        if len(psks) != len(name.psk_positions) or any(len(psk) != 32 for psk in psks):
            raise LocalProtocolError("need one 32-byte PSK per psk modifier")
        self._uses_psk = bool(name.psk_positions)
        self._psks = list(psks)
        self._ss = SymmetricState(protocol_name.encode("ascii"), name.cipher)
        self._ss.mix_hash(prologue)
        self._initiator = initiator
        self._ephemeral_factory = ephemeral_factory
        self._s = s
        self._e: X25519PrivateKey | None = None
        self._rs = rs
        self.re: bytes | None = None
        self._index = 0

    @property
    def finished(self) -> bool:
        return self._index >= len(self._messages)

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    def is_my_turn_to_write(self) -> bool:
        return not self.finished and (self._index % 2 == 0) == self._initiator

    def _dh_token(self, token: str) -> bytes:
        e, s, re, rs = self._e, self._s, self.re, self._rs
        if token == "ee":
            pair = (e, re)
        elif token == "ss":
            pair = (s, rs)
        elif (token == "es") == self._initiator:  # es as initiator or se as responder: DH(e, rs)
            pair = (e, rs)
        else:  # se as initiator or es as responder: DH(s, re)
            pair = (s, re)
        private, public = pair
        if private is None or public is None:
            raise LocalProtocolError(f"token {token} needs a key this handshake lacks")
        return _dh(private, public)

    def write_message(self, payload: bytes = b"") -> bytes:
        if not self.is_my_turn_to_write():
            raise LocalProtocolError("not our turn to write a handshake message")
        out = bytearray()
        ss = self._ss
        for token in self._messages[self._index]:
            if token == "e":
                self._e = self._ephemeral_factory()
                e_pub = public_bytes(self._e)
                out += e_pub
                ss.mix_hash(e_pub)
                if self._uses_psk:
                    ss.mix_key(e_pub)
            elif token == "s":
                if self._s is None:
                    raise LocalProtocolError("pattern sends a static key but none was given")
                out += ss.encrypt_and_hash(public_bytes(self._s))
            elif token == "psk":
                ss.mix_key_and_hash(self._psks.pop(0))
            else:
                ss.mix_key(self._dh_token(token))
        out += ss.encrypt_and_hash(payload)
        self._index += 1
        if len(out) > MAX_MESSAGE_LEN:
            raise LocalProtocolError("handshake message longer than 65535 bytes")
        return bytes(out)

    def read_message(self, message: bytes | memoryview) -> bytes:
        """Process a peer's handshake message; returns its payload or raises RemoteProtocolError."""
        if self.finished or self.is_my_turn_to_write():
            raise LocalProtocolError("not our turn to read a handshake message")
        if len(message) > MAX_MESSAGE_LEN:
            raise RemoteProtocolError("handshake message too long", ErrorCode.HANDSHAKE_FAILED)
        view = memoryview(message)
        pos = 0
        ss = self._ss

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(view):
                raise RemoteProtocolError("handshake message too short", ErrorCode.HANDSHAKE_FAILED)
            chunk = bytes(view[pos : pos + n])
            pos += n
            return chunk

        for token in self._messages[self._index]:
            if token == "e":
                self.re = take(DHLEN)
                ss.mix_hash(self.re)
                if self._uses_psk:
                    ss.mix_key(self.re)
            elif token == "s":
                self._rs = ss.decrypt_and_hash(
                    take(DHLEN + TAGLEN if ss.cipher.has_key() else DHLEN)
                )
            elif token == "psk":
                ss.mix_key_and_hash(self._psks.pop(0))
            else:
                ss.mix_key(self._dh_token(token))
        payload = ss.decrypt_and_hash(bytes(view[pos:]))
        self._index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """``(initiator→responder, responder→initiator)`` CipherStates after the handshake."""
        if not self.finished:
            raise LocalProtocolError("handshake not finished")
        return self._ss.split()
