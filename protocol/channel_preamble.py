"""The connection preamble and the version and cipher negotiation (SPEC.md §2), sans-IO.

Both sides send ``MAGIC | min_version | max_version | n | cipher ids`` at once. ``PreambleReader``
reads the peer's, checking the magic byte by byte so that a plaintext peer fails on its first
byte; ``negotiate`` picks the version and cipher both sides compute alike, and the Noise prologue
that binds the exchange into the handshake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.messages_base import PROTOCOL_VERSION  # one version for preamble and Hello
from protocol.noise import CipherName

__all__ = [
    "CIPHER_IDS",
    "MAGIC",
    "MAX_OFFERED_CIPHERS",
    "MAX_PREAMBLE",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "Negotiated",
    "PreambleReader",
    "encode_preamble",
    "negotiate",
]

# The magic starts with a non-ASCII byte, so no text protocol (HTTP, SSH, SMTP) can be mistaken
# for it, and holds CR LF and ^Z so line-ending or text-mode mangling shows at once (SPEC.md §2.1).
MAGIC: Final = b"\x89SWN\r\n\x1a\n"
MIN_PROTOCOL_VERSION: Final = 1
# Cipher ids on the wire; ChaChaPoly is the baseline every node must offer (edge CPUs without AES).
CIPHER_IDS: Final[dict[CipherName, int]] = {"ChaChaPoly": 1, "AESGCM": 2}
_CIPHER_BY_ID: Final[dict[int, CipherName]] = {v: k for k, v in CIPHER_IDS.items()}
# At most this many cipher ids in a preamble, so a preamble is at most 19 bytes.
MAX_OFFERED_CIPHERS: Final = 8
_FIXED: Final = len(MAGIC) + 3
MAX_PREAMBLE: Final = _FIXED + MAX_OFFERED_CIPHERS


def encode_preamble(ciphers: Sequence[CipherName]) -> bytes:
    """Our preamble: magic, supported protocol versions, ciphers in preference order."""
    if not ciphers or len(ciphers) > MAX_OFFERED_CIPHERS or len(set(ciphers)) != len(ciphers):
        raise LocalProtocolError("offer 1 to 8 distinct ciphers")
    ids = bytes(CIPHER_IDS[c] for c in ciphers)
    return MAGIC + bytes((MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, len(ids))) + ids


class PreambleReader:
    """Collects the peer's preamble from pieces of any size; never holds more than 19 bytes."""

    __slots__ = ("_got",)

    def __init__(self) -> None:
        self._got = bytearray()

    def feed(self, view: memoryview, pos: int) -> tuple[int, bytes | None]:
        """Consume from ``view[pos:]``; returns the new position and the preamble once complete."""
        got = self._got
        while pos < len(view):
            if len(got) < _FIXED:
                need = _FIXED - len(got)
            else:
                count = got[_FIXED - 1]
                if not 1 <= count <= MAX_OFFERED_CIPHERS:
                    raise RemoteProtocolError("preamble offers 0 or too many ciphers")
                need = _FIXED + count - len(got)
                if need == 0:
                    break
            start = len(got)
            got += view[pos : pos + need]
            pos += len(got) - start
            seen = min(len(got), len(MAGIC))
            if got[start:seen] != MAGIC[start:seen]:  # checked as it arrives, byte by byte
                raise RemoteProtocolError(
                    "not a swarmnode peer (bad magic)", ErrorCode.PROTOCOL_VIOLATION
                )
        if len(got) >= _FIXED and len(got) == _FIXED + got[_FIXED - 1]:
            return pos, bytes(got)
        return pos, None


@dataclass(frozen=True, slots=True)
class Negotiated:
    version: int
    cipher: CipherName
    prologue: bytes


def negotiate(
    *, initiator: bool, own_preamble: bytes, peer_preamble: bytes, own_ciphers: Sequence[CipherName]
) -> Negotiated:
    """SPEC.md §2.2: the common version, the initiator's first cipher the responder offers, and
    the prologue ``initiator preamble ‖ responder preamble`` that binds them into the handshake."""
    peer_min, peer_max = peer_preamble[len(MAGIC)], peer_preamble[len(MAGIC) + 1]
    if peer_min > peer_max:
        raise RemoteProtocolError("preamble versions out of order", ErrorCode.UNSUPPORTED_VERSION)
    version = min(PROTOCOL_VERSION, peer_max)
    if version < max(MIN_PROTOCOL_VERSION, peer_min):
        raise RemoteProtocolError(
            f"no common protocol version (peer {peer_min}..{peer_max})",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    # Unknown cipher ids are skipped: a newer peer may offer ciphers we do not know.
    peer_ciphers = [_CIPHER_BY_ID[i] for i in peer_preamble[_FIXED:] if i in _CIPHER_BY_ID]
    if initiator:
        preference, accepted = list(own_ciphers), set(peer_ciphers)
        prologue = own_preamble + peer_preamble
    else:
        preference, accepted = peer_ciphers, set(own_ciphers)
        prologue = peer_preamble + own_preamble
    cipher = next((c for c in preference if c in accepted), None)
    if cipher is None:
        raise RemoteProtocolError("no common cipher", ErrorCode.UNSUPPORTED_VERSION)
    return Negotiated(version, cipher, prologue)
