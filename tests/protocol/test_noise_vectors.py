"""protocol/noise.py against the published Noise test vectors, byte for byte.

Vectors: tests/protocol/vectors/README.md. Each is replayed with both roles: the writer's
ciphertext must equal the vector's and the reader must recover the vector's payload from it.
Transport messages alternate direction after the handshake, as the vector files lay them out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.errors import RemoteProtocolError
from protocol.noise import CipherState, HandshakeState, ProtocolName

VECTORS = Path(__file__).parent / "vectors"


def _load() -> Iterator[Any]:
    for path in sorted(VECTORS.glob("noise-*.json")):
        for index, vector in enumerate(json.loads(path.read_text())["vectors"]):
            yield pytest.param(vector, id=f"{path.stem}-{index}-{vector['protocol_name']}")


ALL_VECTORS = list(_load())


def _key(hex_text: str | None) -> X25519PrivateKey | None:
    return (
        None if hex_text is None else X25519PrivateKey.from_private_bytes(bytes.fromhex(hex_text))
    )


def _party(vector: dict[str, Any], prefix: str, *, initiator: bool) -> HandshakeState:
    ephemeral = _key(vector[f"{prefix}_ephemeral"])
    assert ephemeral is not None
    rs = vector.get(f"{prefix}_remote_static")
    return HandshakeState(
        vector["protocol_name"],
        initiator=initiator,
        prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
        ephemeral_factory=lambda: ephemeral,
        s=_key(vector.get(f"{prefix}_static")),
        rs=bytes.fromhex(rs) if rs else None,
        psks=[bytes.fromhex(p) for p in vector.get(f"{prefix}_psks", [])],
    )


def test_every_vector_file_contributes() -> None:
    names = {p.values[0]["protocol_name"] for p in ALL_VECTORS}
    assert {
        "Noise_NN_25519_ChaChaPoly_BLAKE2s",
        "Noise_XX_25519_ChaChaPoly_BLAKE2s",
        "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s",
    } <= names
    assert len(ALL_VECTORS) >= 5


@pytest.mark.parametrize("vector", ALL_VECTORS)
def test_vector(vector: dict[str, Any]) -> None:
    initiator = _party(vector, "init", initiator=True)
    responder = _party(vector, "resp", initiator=False)
    messages = vector["messages"]
    handshake_len = len(ProtocolName.parse(vector["protocol_name"]).message_patterns())
    assert len(messages) > handshake_len, "vector must include transport messages"

    for i, message in enumerate(messages[:handshake_len]):
        writer, reader = (initiator, responder) if i % 2 == 0 else (responder, initiator)
        payload = bytes.fromhex(message["payload"])
        ciphertext = writer.write_message(payload)
        assert ciphertext.hex() == message["ciphertext"]
        assert reader.read_message(ciphertext) == payload

    assert initiator.finished
    assert responder.finished
    assert initiator.handshake_hash == responder.handshake_hash
    if "handshake_hash" in vector:
        assert initiator.handshake_hash.hex() == vector["handshake_hash"]

    i_send, i_recv = initiator.split()
    r_recv, r_send = responder.split()
    # After the handshake the vectors alternate direction, continuing the handshake's turn order.
    for j, message in enumerate(messages[handshake_len:], start=handshake_len):
        from_initiator = j % 2 == 0
        send, recv = (i_send, r_recv) if from_initiator else (r_send, i_recv)
        payload = bytes.fromhex(message["payload"])
        ciphertext = send.encrypt_with_ad(b"", payload)
        assert ciphertext.hex() == message["ciphertext"]
        assert recv.decrypt_with_ad(b"", ciphertext) == payload


@pytest.mark.parametrize("vector", ALL_VECTORS)
def test_vector_tampered_first_encrypted_message_fails(vector: dict[str, Any]) -> None:
    """Flipping a bit of the last byte (a tag byte) of message 2 makes the initiator refuse it."""
    initiator = _party(vector, "init", initiator=True)
    responder = _party(vector, "resp", initiator=False)
    messages = vector["messages"]
    responder.read_message(initiator.write_message(bytes.fromhex(messages[0]["payload"])))
    message2 = bytearray(responder.write_message(bytes.fromhex(messages[1]["payload"])))
    message2[-1] ^= 0x01
    with pytest.raises(RemoteProtocolError):
        initiator.read_message(bytes(message2))


def test_transport_rekey_and_nonce_limit() -> None:
    """Rekey changes the key but not the nonce; nonce 2^64-1 is refused (Noise §5.1)."""
    key = bytes(range(32))
    a, b, c = (
        CipherState("ChaChaPoly", key),
        CipherState("ChaChaPoly", key),
        CipherState("ChaChaPoly", key),
    )
    a.rekey()
    b.rekey()
    ciphertext = a.encrypt_with_ad(b"", b"hello")
    assert a.n == 1
    assert b.decrypt_with_ad(b"", ciphertext) == b"hello"
    with pytest.raises(RemoteProtocolError):
        c.decrypt_with_ad(b"", ciphertext)
    a.set_nonce(2**64 - 2)
    a.encrypt_with_ad(b"", b"last one")
    from protocol.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        a.encrypt_with_ad(b"", b"one too many")
