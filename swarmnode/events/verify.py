"""Checks replicated events of another source before they are stored (protocol/eventchain.py).

Pure: no I/O, no clock. Given what the log holds of a source (its head) and a batch a peer sent, it
returns the prefix that may be stored: records that continue the source's gapless offsets, whose
chain recomputes from the stored head, whose lamport rises with the offset, whose fields are well
formed, and that end at the last head whose signature verifies. Everything after the first bad
record is dropped, and so is an unsigned tail: a relay can neither alter, reorder, skip nor invent
events of another source.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.eventchain import GENESIS_CHAIN, EventRecord, record_chain, verify_head
from protocol.ids import node_id_from_public_key

__all__ = ["EMPTY_HEAD", "SourceHead", "Verdict", "verify_batch"]

# Signatures and chains have fixed sizes; anything else is malformed before any crypto runs.
_SIGNATURE_BYTES = 64
_CHAIN_BYTES = 32


@dataclass(frozen=True, slots=True)
class SourceHead:
    """The last stored event of a source: ``offset`` -1 and the genesis chain when none is held."""

    offset: int
    lamport: int
    chain: bytes


EMPTY_HEAD = SourceHead(offset=-1, lamport=-1, chain=GENESIS_CHAIN)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``accepted``: the records to store, in order. ``duplicates``: records already held, skipped.
    ``problem``: why the batch was cut short (``None`` when every record was taken or already
    held)."""

    accepted: list[EventRecord]
    duplicates: int
    problem: str | None


def _well_formed(r: EventRecord) -> bool:
    if not (r.semantics.strip() and r.name.strip()) or len(r.chain) != _CHAIN_BYTES:
        return False
    if r.timestamp < 0 or r.lamport < 0:
        return False
    if r.signature is not None and len(r.signature) != _SIGNATURE_BYTES:
        return False
    try:
        # The payload is written verbatim into API lines, so it must be JSON text that encodes as
        # UTF-8.
        r.payload.encode("utf-8")
        r.semantics.encode("utf-8")
        r.name.encode("utf-8")
        json.loads(r.payload)
    except (UnicodeEncodeError, ValueError):
        return False
    return True


def verify_batch(public_key: bytes, head: SourceHead, records: Sequence[EventRecord]) -> Verdict:
    """The part of ``records`` that may be appended after ``head`` for the source owning
    ``public_key``.

    Records at or below ``head.offset`` are counted as duplicates and skipped without being checked
    (they are not stored again). The first record that breaks a rule ends the batch; of the records
    before it, only those up to the last verified signed head are accepted.
    """
    if len(public_key) != 32:
        return Verdict([], 0, "public key is not 32 bytes")
    source = node_id_from_public_key(public_key)
    expected = head.offset + 1
    previous_chain = head.chain
    previous_lamport = head.lamport
    candidates: list[EventRecord] = []
    signed_upto = 0
    duplicates = 0
    problem: str | None = None
    for r in records:
        if r.source != source:
            problem = "record of another source"
            break
        if r.offset < expected and not candidates:
            duplicates += 1
            continue
        if r.offset != expected:
            problem = f"offset {r.offset} where {expected} was expected"
            break
        if not _well_formed(r):
            problem = f"malformed record at offset {r.offset}"
            break
        if r.lamport <= previous_lamport:
            problem = f"lamport does not rise at offset {r.offset}"
            break
        chain = record_chain(previous_chain, r)
        if chain != r.chain:
            problem = f"chain mismatch at offset {r.offset}"
            break
        candidates.append(r)
        if r.signature is not None:
            if not verify_head(public_key, source, r.offset, r.chain, r.signature):
                problem = f"bad signature at offset {r.offset}"
                break
            signed_upto = len(candidates)
        expected += 1
        previous_chain = chain
        previous_lamport = r.lamport
    if problem is None and signed_upto < len(candidates):
        problem = "unsigned tail"
    return Verdict(candidates[:signed_upto], duplicates, problem)
