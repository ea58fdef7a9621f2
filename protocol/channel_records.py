"""The record layer's sending half and constants (SPEC.md §4), sans-IO.

A record is ``u16 length | ciphertext`` (one Noise transport message, at most 65535 bytes). The
sender cuts its frame stream into records as full as possible and encrypts them straight into the
output buffer, in pieces a driver can write while they are still in the CPU cache.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Final

from protocol.noise import MAX_MESSAGE_LEN, TAGLEN, CipherState

__all__ = [
    "LENGTH",
    "MAX_PLAINTEXT",
    "REKEY_INTERVAL",
    "SEND_PIECE_RECORDS",
    "Allocator",
    "decrypt_record",
    "seal_pieces",
    "sealed_size",
]

LENGTH: Final = struct.Struct(">H")
# Noise §3: a transport message is at most 65535 bytes, 16 of them the tag.
MAX_PLAINTEXT: Final = MAX_MESSAGE_LEN - TAGLEN
# SPEC.md §4.4: both sides rekey a direction (Noise §11.3 Rekey) after every 2^16 records sent in
# it: at most 4 GiB under one key, and cheap (one 32-byte encryption per 4 GiB).
REKEY_INTERVAL: Final = 1 << 16
# send_frames_to seals and hands over this many records (~1 MiB) at a time. Measured with
# bench/channel.py on the asyncio driver: 16 beat 1, 4 and 8 (more write calls, each queued
# separately, cost more than they save in cache), and bounds the piece a driver must buffer.
SEND_PIECE_RECORDS: Final = 16

# Returns a writable buffer of at least the given size (``bytearray`` allocates a fresh one).
Allocator = Callable[[int], bytearray | memoryview]


def sealed_size(plaintext: int) -> int:
    """Wire bytes of ``plaintext`` bytes of frame stream: records of at most MAX_PLAINTEXT."""
    return plaintext + -(-plaintext // MAX_PLAINTEXT) * (LENGTH.size + TAGLEN)


def decrypt_record(rx: CipherState, ciphertext: memoryview, out: memoryview) -> None:
    """Decrypt one record into ``out`` and rekey at the interval (RemoteProtocolError if forged)."""
    rx.decrypt_into(ciphertext, out)
    if rx.n % REKEY_INTERVAL == 0:
        rx.rekey()


def seal_pieces(
    tx: CipherState,
    scratch: memoryview,
    segments: list[memoryview],
    total: int,
    piece_records: int | None,
    alloc: Allocator,
) -> Iterator[memoryview]:
    """Cut the plaintext ``segments`` (``total`` bytes) into records and encrypt them, yielding
    buffers of at most ``piece_records`` records each (``None``: one buffer for everything).

    A record whose plaintext lies inside one segment is encrypted from it directly; one that spans
    segments is gathered in ``scratch`` (MAX_PLAINTEXT bytes, reused) first. Nonces advance as
    pieces are made, so every piece must be sent, in order.
    """
    index, offset = 0, 0
    remaining = total
    while remaining:
        records = -(-remaining // MAX_PLAINTEXT)
        if piece_records is not None:
            records = min(records, piece_records)
        plain_bytes = min(remaining, records * MAX_PLAINTEXT)
        length = plain_bytes + records * (LENGTH.size + TAGLEN)
        out = memoryview(alloc(length))[:length]
        opos = 0
        for _ in range(records):
            size = min(MAX_PLAINTEXT, remaining)
            while offset == len(segments[index]):
                index, offset = index + 1, 0
            segment = segments[index]
            if len(segment) - offset >= size:
                plain = segment[offset : offset + size]
                offset += size
            else:
                filled = 0
                while filled < size:
                    while offset == len(segments[index]):
                        index, offset = index + 1, 0
                    segment = segments[index]
                    take = min(size - filled, len(segment) - offset)
                    scratch[filled : filled + take] = segment[offset : offset + take]
                    filled += take
                    offset += take
                plain = scratch[:size]
            LENGTH.pack_into(out, opos, size + TAGLEN)
            tx.encrypt_into(plain, out[opos + 2 : opos + 2 + size + TAGLEN])
            if tx.n % REKEY_INTERVAL == 0:
                tx.rekey()
            opos += 2 + size + TAGLEN
            remaining -= size
        yield out
