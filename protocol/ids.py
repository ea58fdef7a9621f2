"""Node ids: derived from the node's Ed25519 public key (API.md: 1–15 chars of ``[a-z0-9]``)."""

from __future__ import annotations

import base64

import blake3

__all__ = ["NODE_ID_LENGTH", "is_valid_node_id", "node_id_from_public_key"]

# 15 base32 characters carry 75 bits: collisions are negligible for swarms of thousands of nodes,
# and API.md caps source ids at 15 characters.
NODE_ID_LENGTH = 15
_DOMAIN = b"swarmnode node id v1\x00"
_ALPHABET = set("abcdefghijklmnopqrstuvwxyz234567")


def node_id_from_public_key(public_key: bytes) -> str:
    """The stable node id (= event source id) for a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    digest = blake3.blake3(_DOMAIN + public_key).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:NODE_ID_LENGTH]


def is_valid_node_id(value: str) -> bool:
    """True when ``value`` has the shape of a node id this protocol derives."""
    return len(value) == NODE_ID_LENGTH and set(value) <= _ALPHABET
