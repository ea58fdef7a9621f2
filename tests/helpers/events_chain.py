"""Properly chained and signed events of a *remote* source, as another node would publish them.

Tests feed these to ``EventLog.ingest`` and tamper with copies to check that the log refuses
forgeries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from protocol.eventchain import GENESIS_CHAIN, EventRecord, chain_hash, head_signing_bytes
from swarmnode.identity import Identity

__all__ = ["RemoteSource", "identity_from_seed", "resign"]


def identity_from_seed(seed: int) -> Identity:
    """A deterministic identity, so hypothesis can shrink and replay scenarios."""
    return Identity.from_private_bytes(hashlib.sha256(b"test identity %d" % seed).digest())


class RemoteSource:
    """Another node's event stream: offsets from 0, its own lamport clock, signed batch ends."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.records: list[EventRecord] = []
        self._chain = GENESIS_CHAIN
        self._lamport = 0

    @property
    def source(self) -> str:
        return self.identity.node_id

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    def batch(
        self,
        events: Sequence[tuple[str, str, str]],
        *,
        lamport_steps: Sequence[int] = (),
        timestamp: int = 1_700_000_000_000_000,
        sign: bool = True,
    ) -> list[EventRecord]:
        """Append ``(semantics, name, payload)`` events; the last one is signed when ``sign``.

        ``lamport_steps[i]`` (default 1) is how far the clock moves for event ``i``.
        """
        out = []
        for i, (semantics, name, payload) in enumerate(events):
            offset = len(self.records)
            self._lamport += lamport_steps[i] if i < len(lamport_steps) else 1
            self._chain = chain_hash(
                self._chain,
                source=self.source,
                offset=offset,
                lamport=self._lamport,
                timestamp=timestamp,
                semantics=semantics,
                name=name,
                payload=payload,
            )
            signature = None
            if sign and i == len(events) - 1:
                signature = self.identity.sign(head_signing_bytes(self.source, offset, self._chain))
            record = EventRecord(
                source=self.source,
                offset=offset,
                lamport=self._lamport,
                timestamp=timestamp,
                semantics=semantics,
                name=name,
                payload=payload,
                chain=self._chain,
                signature=signature,
            )
            self.records.append(record)
            out.append(record)
        return out


def resign(identity: Identity, record: EventRecord) -> EventRecord:
    """``record`` with a fresh signature by ``identity`` over its (possibly altered) head."""
    signature = identity.sign(head_signing_bytes(record.source, record.offset, record.chain))
    return replace(record, signature=signature)
