"""Origin-authenticated events: a per-source hash chain with signed heads (DESIGN.md, "Data model").

Every event of a source carries ``chain`` = BLAKE3(domain ‖ previous chain ‖ canonical event bytes),
the previous chain of offset 0 being 32 zero bytes. The origin signs *heads* — ``(source, offset,
chain)`` — with its Ed25519 key: at least the last event of every publish batch. A receiver that
holds offsets ``0..k`` of a source recomputes the chain of the events after ``k`` and accepts them
up to the highest signed head whose signature verifies; a relay can neither alter, reorder, drop
from the middle of, nor invent events of another source. Signing one head per batch keeps signing
off the publish hot path.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3
import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.ids import node_id_from_public_key

__all__ = [
    "GENESIS_CHAIN",
    "EventRecord",
    "chain_hash",
    "head_signing_bytes",
    "record_chain",
    "record_fields",
    "verify_head",
]

GENESIS_CHAIN = bytes(32)
_EVENT_DOMAIN = b"swarmnode event v1\x00"
_HEAD_DOMAIN = b"swarmnode head v1\x00"


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    """One stored event, as it is hashed, stored and replicated.

    ``payload`` is the compact JSON text of the event's payload, kept verbatim so every node hashes
    and serves the same bytes. ``timestamp`` is microseconds since the Unix epoch. ``signature`` is
    present on signed heads only.
    """

    source: str
    offset: int
    lamport: int
    timestamp: int
    semantics: str
    name: str
    payload: str
    chain: bytes
    signature: bytes | None = None


def record_fields(
    r: EventRecord,
) -> tuple[str, int, int, int, str, str, str, bytes, bytes | None]:
    """Every field of a record in declaration order: the row and wire layouts (SPEC.md §6.3)."""
    return (
        r.source,
        r.offset,
        r.lamport,
        r.timestamp,
        r.semantics,
        r.name,
        r.payload,
        r.chain,
        r.signature,
    )


def _canonical(
    source: str, offset: int, lamport: int, timestamp: int, semantics: str, name: str, payload: str
) -> bytes:
    packed: bytes = msgpack.packb(
        [source, offset, lamport, timestamp, semantics, name, payload], use_bin_type=True
    )
    return packed


def chain_hash(
    previous: bytes,
    *,
    source: str,
    offset: int,
    lamport: int,
    timestamp: int,
    semantics: str,
    name: str,
    payload: str,
) -> bytes:
    """The chain value of an event, given the chain value of the event before it in its source."""
    body = _canonical(source, offset, lamport, timestamp, semantics, name, payload)
    return blake3.blake3(_EVENT_DOMAIN + previous + body).digest()


def record_chain(previous: bytes, record: EventRecord) -> bytes:
    """The chain value ``record`` must carry when the event before it has chain ``previous``."""
    return chain_hash(
        previous,
        source=record.source,
        offset=record.offset,
        lamport=record.lamport,
        timestamp=record.timestamp,
        semantics=record.semantics,
        name=record.name,
        payload=record.payload,
    )


def head_signing_bytes(source: str, offset: int, chain: bytes) -> bytes:
    """The exact bytes an origin signs to vouch for every event of ``source`` up to ``offset``."""
    packed: bytes = msgpack.packb([source, offset, chain], use_bin_type=True)
    return _HEAD_DOMAIN + packed


def verify_head(
    public_key: bytes, source: str, offset: int, chain: bytes, signature: bytes
) -> bool:
    """True when ``signature`` is ``source``'s signature over this head and the key belongs to
    ``source``.
    """
    if len(public_key) != 32 or node_id_from_public_key(public_key) != source:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, head_signing_bytes(source, offset, chain)
        )
    except (InvalidSignature, ValueError):
        return False
    return True
