"""Two ``SecureChannel`` ends back to back on deterministic keys (STYLE.md §8: cores in pairs).

``make_pair`` builds an initiator and a responder whose static, identity and ephemeral keys derive
from a seed, so every run (and every hypothesis example) is reproducible. ``run_handshake`` shuttles
bytes between them until neither has anything to send, optionally cutting every delivery into
pieces and choosing which direction moves next.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.channel import ChannelEvent, Role, SecureChannel
from protocol.ids import node_id_from_public_key
from protocol.noise import CipherName

__all__ = [
    "PSK",
    "End",
    "derive",
    "make_end",
    "make_pair",
    "run_handshake",
    "transfer",
]

PSK = hashlib.blake2s(b"test swarm key").digest()

# Splits one delivery into pieces: given the byte count, returns the cut points (sorted, inside it).
Chunker = Callable[[int], Sequence[int]]
# Chooses whether the initiator's bytes move next (True) when both directions have bytes pending.
Scheduler = Callable[[], bool]


def derive(label: str, seed: int) -> bytes:
    return hashlib.blake2s(f"{label}/{seed}".encode()).digest()


@dataclass
class End:
    """One channel plus its keys and what it has emitted so far."""

    channel: SecureChannel
    identity: Ed25519PrivateKey
    events: list[ChannelEvent] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        raw = self.identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return node_id_from_public_key(raw)


def make_end(
    role: Role,
    *,
    seed: int,
    psk: bytes = PSK,
    ciphers: Sequence[CipherName] = ("ChaChaPoly",),
    sign: Callable[[bytes], bytes] | None = None,
    body_buffer: Callable[[int], bytearray] | None = None,
) -> End:
    identity = Ed25519PrivateKey.from_private_bytes(derive(f"identity-{role.value}", seed))
    static = X25519PrivateKey.from_private_bytes(derive(f"static-{role.value}", seed))
    counter = itertools.count()

    def ephemeral() -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(
            derive(f"ephemeral-{role.value}-{next(counter)}", seed)
        )

    channel = SecureChannel(
        role,
        psk=psk,
        static_private=static,
        identity_public=identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        identity_sign=sign if sign is not None else identity.sign,
        ephemeral_factory=ephemeral,
        ciphers=ciphers,
        body_buffer=body_buffer,
    )
    return End(channel, identity)


def make_pair(
    *,
    seed: int = 0,
    initiator_ciphers: Sequence[CipherName] = ("ChaChaPoly",),
    responder_ciphers: Sequence[CipherName] = ("ChaChaPoly",),
    responder_body_buffer: Callable[[int], bytearray] | None = None,
) -> tuple[End, End]:
    return (
        make_end(Role.INITIATOR, seed=seed, ciphers=initiator_ciphers),
        make_end(
            Role.RESPONDER,
            seed=seed,
            ciphers=responder_ciphers,
            body_buffer=responder_body_buffer,
        ),
    )


def _deliver(end: End, data: bytes, chunker: Chunker | None) -> None:
    cuts = [0, *(chunker(len(data)) if chunker else ()), len(data)]
    for start, stop in itertools.pairwise(cuts):
        if stop > start:
            end.events.extend(end.channel.receive_data(data[start:stop]))


def run_handshake(
    initiator: End,
    responder: End,
    *,
    chunker: Chunker | None = None,
    initiator_first: Scheduler | None = None,
    tamper: Callable[[bool, int, bytes], bytes] | None = None,
) -> None:
    """Start both ends and shuttle bytes until quiet. Raises whatever ``receive_data`` raises.

    ``tamper(from_initiator, index, data)`` may rewrite the ``index``-th delivery of a direction.
    """
    to_responder = b"".join(initiator.channel.initiate())
    to_initiator = b"".join(responder.channel.initiate())
    sent = {True: 0, False: 0}
    while to_responder or to_initiator:
        move_initiator_bytes = bool(to_responder) and (
            not to_initiator or initiator_first is None or initiator_first()
        )
        if move_initiator_bytes:
            data, to_responder = to_responder, b""
            if tamper is not None:
                data = tamper(True, sent[True], data)
            sent[True] += 1
            _deliver(responder, data, chunker)
            to_initiator += b"".join(responder.channel.data_to_send())
        else:
            data, to_initiator = to_initiator, b""
            if tamper is not None:
                data = tamper(False, sent[False], data)
            sent[False] += 1
            _deliver(initiator, data, chunker)
            to_responder += b"".join(initiator.channel.data_to_send())


def transfer(
    sender: End, receiver: End, buffers: Sequence[bytes | bytearray]
) -> list[ChannelEvent]:
    """Deliver ``sender``'s buffers (``send_frame(s)``, ``close``); ``receiver``'s events."""
    del sender  # named for readability at the call site
    events = receiver.channel.receive_data(b"".join(buffers))
    receiver.events.extend(events)
    return events
