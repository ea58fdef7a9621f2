"""The chunk server against an in-memory source and a recording send (SPEC §7.5, provider side)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import pytest

from protocol.messages import (
    MAX_HAVE_INDICES,
    MAX_OUTLINE_PAGE,
    MIN_CHUNK_SIZE,
    Cancel,
    ChunkData,
    ChunkRange,
    DontHave,
    HaveBitmap,
    HaveUpdate,
    Outline,
    RequestChunks,
    RequestOutline,
    SendableMessage,
)
from swarmnode.swarm.chunkserver import ChunkServer, CongestionGate
from swarmnode.swarm.outbox import Outbox

CS = MIN_CHUNK_SIZE
H1 = bytes(range(32))
H2 = bytes(range(1, 33))
UNKNOWN = b"\x99" * 32
DEADLINE = 5.0


def chunk_bytes(handle: bytes, index: int, length: int = CS) -> bytes:
    return bytes([handle[0] ^ (index & 0xFF)]) * (length - 1) + bytes([index % 251])


def bitmap_of(count: int, held: Iterable[int]) -> bytes:
    out = bytearray((count + 7) // 8)
    for i in held:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


@dataclass
class FakeBlob:
    size: int
    outline: bytes
    held: set[int]

    @property
    def count(self) -> int:
        return -(-self.size // CS)


@dataclass
class FakeSource:
    """In-memory ChunkSource; counts reads in flight and lets them finish out of order."""

    blobs: dict[bytes, FakeBlob] = field(default_factory=dict)
    vanished: set[tuple[bytes, int]] = field(default_factory=set)
    reads: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    gate: asyncio.Event | None = None  # reads wait for it when set up
    started: asyncio.Event | None = None  # set as each read starts

    def add(self, handle: bytes, chunks: int, held: Iterable[int] | None = None) -> FakeBlob:
        outline = b"".join(i.to_bytes(4, "big") * 8 for i in range(chunks))
        blob = FakeBlob(chunks * CS - 7, outline, set(range(chunks) if held is None else held))
        self.blobs[handle] = blob
        return blob

    async def outline(self, handle: bytes) -> tuple[int, int, bytes] | None:
        await asyncio.sleep(0)
        blob = self.blobs.get(handle)
        return None if blob is None else (blob.size, CS, blob.outline)

    def have(self, handle: bytes) -> tuple[int, bytes] | None:
        blob = self.blobs.get(handle)
        if blob is None or not blob.held:
            return None
        return blob.count, bitmap_of(blob.count, blob.held)

    async def read_chunk(self, handle: bytes, index: int) -> bytes | None:
        self.reads += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.started is not None:
            self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            for _ in range(7 - index % 4):  # later chunks finish first: order is the server's job
                await asyncio.sleep(0)
            blob = self.blobs.get(handle)
            if blob is None or index not in blob.held or (handle, index) in self.vanished:
                return None
            return chunk_bytes(handle, index, min(CS, blob.size - index * CS))
        finally:
            self.in_flight -= 1


class FakeOutbox:
    def __init__(self) -> None:
        self._clear = asyncio.Event()
        self._clear.set()

    @property
    def congested(self) -> bool:
        return not self._clear.is_set()

    def set_congested(self, value: bool) -> None:
        if value:
            self._clear.clear()
        else:
            self._clear.set()

    async def wait_uncongested(self) -> None:
        await self._clear.wait()


@dataclass
class Wire:
    """Records sends; ``until`` waits (under the caller's deadline) for a condition on them."""

    sent: list[tuple[str, SendableMessage]] = field(default_factory=list)
    outboxes: dict[str, FakeOutbox] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, peer: str, msgs: list[SendableMessage]) -> None:
        self.sent.extend((peer, m) for m in msgs)
        self.changed.set()

    def outbox_of(self, peer: str) -> CongestionGate | None:
        return self.outboxes.get(peer)

    def to(self, peer: str, kind: type[SendableMessage] | None = None) -> list[SendableMessage]:
        return [m for p, m in self.sent if p == peer and (kind is None or isinstance(m, kind))]

    def chunks(self, peer: str) -> list[ChunkData]:
        return [m for p, m in self.sent if p == peer and isinstance(m, ChunkData)]

    async def until(self, cond: Callable[[], bool]) -> None:
        while not cond():
            self.changed.clear()
            await self.changed.wait()


def make(
    source: FakeSource,
    wire: Wire,
    *,
    max_queued_chunks_per_peer: int = 256,
    max_parallel_reads: int = 4,
    have_flush_s: float = 0.05,
) -> ChunkServer:
    return ChunkServer(
        source,
        send=wire.send,
        outbox_of=wire.outbox_of,
        max_queued_chunks_per_peer=max_queued_chunks_per_peer,
        max_parallel_reads=max_parallel_reads,
        have_flush_s=have_flush_s,
    )


@contextlib.asynccontextmanager
async def running(server: ChunkServer) -> AsyncIterator[None]:
    task = asyncio.create_task(server.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def ranges(*spans: tuple[int, int]) -> tuple[ChunkRange, ...]:
    return tuple(ChunkRange(start=s, count=c) for s, c in spans)


def dont_have_indices(msgs: Iterable[SendableMessage]) -> list[int]:
    return [
        i
        for m in msgs
        if isinstance(m, DontHave)
        for r in m.ranges
        for i in range(r.start, r.start + r.count)
    ]


async def test_outline_pages_then_bitmap() -> None:
    source, wire = FakeSource(), Wire()
    total = 2 * MAX_OUTLINE_PAGE + 5
    blob = source.add(H1, total, held=range(0, total, 3))
    server = make(source, wire)
    async with asyncio.timeout(DEADLINE), running(server):
        server.handle_message("a", RequestOutline(handle=H1))
        await wire.until(lambda: bool(wire.to("a", HaveBitmap)))
        msgs = wire.to("a")
        pages = [m for m in msgs if isinstance(m, Outline)]
        assert [p.start for p in pages] == [0, MAX_OUTLINE_PAGE, 2 * MAX_OUTLINE_PAGE]
        assert b"".join(p.digests for p in pages) == blob.outline
        assert all(p.size == blob.size and p.chunk_size == CS for p in pages)
        assert isinstance(msgs[-1], HaveBitmap)
        assert msgs[-1].chunk_count == total
        assert msgs[-1].bitmap == bitmap_of(total, blob.held)

        wire.sent.clear()
        server.handle_message("a", RequestOutline(handle=H1, start=MAX_OUTLINE_PAGE + 1))
        await wire.until(lambda: bool(wire.to("a", HaveBitmap)))
        (page, bitmap) = wire.to("a")
        assert isinstance(page, Outline)
        assert page.start == MAX_OUTLINE_PAGE + 1
        assert page.digests == blob.outline[(MAX_OUTLINE_PAGE + 1) * 32 :][: MAX_OUTLINE_PAGE * 32]
        assert isinstance(bitmap, HaveBitmap)


async def test_outline_without_verified_chunks_sends_empty_bitmap() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 10, held=())
    server = make(source, wire)
    async with asyncio.timeout(DEADLINE), running(server):
        server.handle_message("a", RequestOutline(handle=H1))
        await wire.until(lambda: bool(wire.to("a", HaveBitmap)))
    (bitmap,) = wire.to("a", HaveBitmap)
    assert isinstance(bitmap, HaveBitmap)
    assert bitmap.chunk_count == 10
    assert bitmap.bitmap == bytes(2)


async def test_dont_have_keeps_interest_and_have_update_goes_to_that_peer_only() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H2, 4)
    server = make(source, wire, have_flush_s=0.01)
    async with asyncio.timeout(DEADLINE), running(server):
        server.handle_message("a", RequestOutline(handle=UNKNOWN))
        server.handle_message("b", RequestOutline(handle=H2))  # interested in another blob
        await wire.until(lambda: bool(wire.to("a")) and bool(wire.to("b", HaveBitmap)))
        assert wire.to("a") == [DontHave(handle=UNKNOWN)]
        wire.sent.clear()

        server.chunks_verified(UNKNOWN, [7, 2, 5])
        await wire.until(lambda: bool(wire.to("a")))
        assert wire.to("a") == [HaveUpdate(handle=UNKNOWN, indices=(2, 5, 7))]
        server.chunks_verified(UNKNOWN, [3])
        await wire.until(lambda: len(wire.to("a")) == 2)
        assert wire.to("a")[1] == HaveUpdate(handle=UNKNOWN, indices=(3,))
        assert wire.to("b") == []


async def test_have_updates_are_capped_and_ascending_and_end_with_cancel() -> None:
    source, wire = FakeSource(), Wire()
    server = make(source, wire, have_flush_s=10.0)  # only a full batch goes out before flush
    n = MAX_HAVE_INDICES + 100
    async with asyncio.timeout(DEADLINE), running(server):
        server.handle_message("a", RequestOutline(handle=UNKNOWN))
        await wire.until(lambda: bool(wire.to("a")))
        wire.sent.clear()
        server.chunks_verified(UNKNOWN, [n + 5])
        assert wire.to("a") == []  # batched
        server.chunks_verified(UNKNOWN, list(reversed(range(n))))
        updates = [m for m in wire.to("a") if isinstance(m, HaveUpdate)]
        assert all(len(u.indices) <= MAX_HAVE_INDICES for u in updates)
        assert [i for u in updates for i in u.indices] == [*range(n), n + 5]

        server.handle_message("a", Cancel(handle=UNKNOWN))
        assert server.status()["interestedPeers"] == {}
        server.chunks_verified(UNKNOWN, [n + 1])
        server.flush_haves()
        assert len(wire.to("a")) == len(updates)


async def test_have_update_flushes_after_the_interval() -> None:
    source, wire = FakeSource(), Wire()
    server = make(source, wire, have_flush_s=0.02)
    async with asyncio.timeout(DEADLINE), running(server):
        server.handle_message("a", RequestOutline(handle=UNKNOWN))
        await wire.until(lambda: bool(wire.to("a")))
        server.chunks_verified(UNKNOWN, [4])
        server.chunks_verified(UNKNOWN, [1])
        assert len(wire.to("a")) == 1
        await wire.until(lambda: len(wire.to("a")) == 2)
    assert wire.to("a")[1] == HaveUpdate(handle=UNKNOWN, indices=(1, 4))


async def test_bitmap_covers_updates_pending_before_it() -> None:
    source, wire = FakeSource(), Wire()
    blob = source.add(H1, 8, held=[0])
    server = make(source, wire, have_flush_s=10.0)
    async with asyncio.timeout(DEADLINE), running(server):
        server.handle_message("a", RequestOutline(handle=H1))
        await wire.until(lambda: bool(wire.to("a", HaveBitmap)))
        blob.held.update([1, 2])
        server.chunks_verified(H1, [1, 2])
        blob.held.add(3)
        server.blob_completed(H1)
        server.flush_haves()
    (_, bitmap) = wire.to("a", HaveBitmap)
    assert isinstance(bitmap, HaveBitmap)
    assert bitmap.bitmap == bitmap_of(8, [0, 1, 2, 3])
    assert wire.to("a", HaveUpdate) == []  # the bitmap already said it


async def test_request_chunks_answered_in_order_with_the_right_bytes() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 12, held=set(range(12)) - {6})
    server = make(source, wire)
    async with asyncio.timeout(DEADLINE), running(server):
        server.handle_message("a", RequestChunks(handle=H1, ranges=ranges((0, 4), (5, 3), (11, 1))))
        await wire.until(lambda: len(wire.chunks("a")) == 7)
    got = wire.chunks("a")
    assert [c.index for c in got] == [0, 1, 2, 3, 5, 7, 11]
    for c in got:
        assert c.data == chunk_bytes(H1, c.index, min(CS, 12 * CS - 7 - c.index * CS))
    assert dont_have_indices(wire.to("a")) == [6]
    assert server.status()["chunksServed"] == 7
    assert server.status()["bytesServed"] == sum(len(c.data) for c in got)


async def test_queue_cap_answers_the_excess_dont_have() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 20)
    server = make(source, wire, max_queued_chunks_per_peer=4)
    server.handle_message("a", RequestChunks(handle=H1, ranges=ranges((0, 3), (10, 5))))
    assert dont_have_indices(wire.to("a")) == [11, 12, 13, 14]
    assert server.counters["shed"] == 4
    assert server.status()["queued"] == {"a": 4}
    async with asyncio.timeout(DEADLINE), running(server):
        await wire.until(lambda: len(wire.chunks("a")) == 4)
    assert [c.index for c in wire.chunks("a")] == [0, 1, 2, 10]


async def test_cancel_drops_queued_chunks() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 10)
    source.add(H2, 10)
    server = make(source, wire)
    server.handle_message("a", RequestChunks(handle=H1, ranges=ranges((0, 10))))
    server.handle_message("a", RequestChunks(handle=H2, ranges=ranges((0, 2))))
    server.handle_message("a", Cancel(handle=H1, ranges=ranges((2, 3), (8, 1))))
    assert server.status()["queued"] == {"a": 8}
    async with asyncio.timeout(DEADLINE), running(server):
        await wire.until(lambda: len(wire.chunks("a")) == 8)
        server.handle_message("a", RequestChunks(handle=H1, ranges=ranges((0, 10))))
        server.handle_message("a", Cancel(handle=H1))
        assert server.status()["queued"] == {}
    got = [(c.handle, c.index) for c in wire.chunks("a")]
    assert got == [(H1, i) for i in (0, 1, 5, 6, 7, 9)] + [(H2, 0), (H2, 1)]


async def test_round_robin_between_two_peers() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 60)
    server = make(source, wire, max_parallel_reads=2)
    server.handle_message("a", RequestChunks(handle=H1, ranges=ranges((0, 60))))
    server.handle_message("b", RequestChunks(handle=H1, ranges=ranges((0, 20))))
    async with asyncio.timeout(DEADLINE), running(server):
        await wire.until(lambda: len(wire.chunks("a")) == 60 and len(wire.chunks("b")) == 20)
    order = [p for p, m in wire.sent if isinstance(m, ChunkData)]
    first = order[:30]
    assert 12 <= first.count("b") <= 18
    longest = max(len(list(group)) for _, group in itertools.groupby(order[:40]))
    assert longest <= 2  # one chunk per peer per turn (two reads in flight)
    assert [c.index for c in wire.chunks("a")] == list(range(60))


async def test_congested_outbox_does_not_block_another_peer() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 30)
    wire.outboxes["slow"] = FakeOutbox()
    wire.outboxes["slow"].set_congested(True)
    server = make(source, wire)
    server.handle_message("slow", RequestChunks(handle=H1, ranges=ranges((0, 30))))
    server.handle_message("fast", RequestChunks(handle=H1, ranges=ranges((0, 30))))
    async with asyncio.timeout(DEADLINE), running(server):
        await wire.until(lambda: len(wire.chunks("fast")) == 30)
        assert wire.chunks("slow") == []
        assert server.status()["queued"] == {"slow": 30}
        wire.outboxes["slow"].set_congested(False)
        await wire.until(lambda: len(wire.chunks("slow")) == 30)
    assert [c.index for c in wire.chunks("slow")] == list(range(30))


async def test_removed_blob_is_answered_dont_have() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 10)
    server = make(source, wire)
    server.handle_message("a", RequestChunks(handle=H1, ranges=ranges((0, 6))))
    del source.blobs[H1]
    server.blob_removed(H1)
    assert dont_have_indices(wire.to("a")) == list(range(6))
    assert server.status()["queued"] == {}
    # A chunk deleted between the request and the read: DontHave from the read.
    source.add(H2, 4)
    source.vanished.update({(H2, 1), (H2, 2)})
    async with asyncio.timeout(DEADLINE), running(server):
        server.handle_message("a", RequestChunks(handle=H2, ranges=ranges((0, 4))))
        await wire.until(lambda: len(wire.chunks("a")) == 2)
    assert [c.index for c in wire.chunks("a")] == [0, 3]
    tail = [m for m in wire.to("a") if isinstance(m, DontHave) and m.handle == H2]
    assert tail == [DontHave(handle=H2, ranges=ranges((1, 2)))]  # merged into one range
    assert server.counters["dontHave"] == 8


async def test_peer_down_frees_queue_and_interest() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 10)
    server = make(source, wire)
    server.handle_message("a", RequestOutline(handle=H1))
    server.handle_message("a", RequestChunks(handle=H1, ranges=ranges((0, 10))))
    server.handle_message("b", RequestChunks(handle=H1, ranges=ranges((0, 2))))
    assert server.status()["queued"] == {"a": 11, "b": 2}
    server.peer_down("a")
    assert server.status()["queued"] == {"b": 2}
    assert server.status()["interestedPeers"] == {}
    async with asyncio.timeout(DEADLINE), running(server):
        await wire.until(lambda: len(wire.chunks("b")) == 2)
        server.chunks_verified(H1, [1])
        server.flush_haves()
    assert wire.to("a") == []
    assert source.reads == 2


async def test_reads_in_flight_never_exceed_the_limit() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 40)
    server = make(source, wire, max_parallel_reads=3)
    for peer in "abcd":
        server.handle_message(peer, RequestChunks(handle=H1, ranges=ranges((0, 40))))
    async with asyncio.timeout(DEADLINE), running(server):
        await wire.until(lambda: all(len(wire.chunks(p)) == 40 for p in "abcd"))
    assert source.max_in_flight == 3  # reached, never passed
    assert server.peak_slots == 3
    assert server.status()["readsInFlight"] == 0


@pytest.mark.parametrize("cap", [1, 3])
async def test_outline_requests_count_against_the_queue_cap(cap: int) -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 4)
    server = make(source, wire, max_queued_chunks_per_peer=cap)
    for start in range(5):
        server.handle_message("a", RequestOutline(handle=H1, start=start))
    assert server.status()["queued"] == {"a": cap}
    assert server.counters["shed"] == 5 - cap


async def test_peer_down_drops_reads_in_flight() -> None:
    wire = Wire()
    source = FakeSource(gate=asyncio.Event(), started=wire.changed)
    source.add(H1, 10)
    server = make(source, wire, max_parallel_reads=2)
    server.handle_message("a", RequestChunks(handle=H1, ranges=ranges((0, 10))))
    server.handle_message("b", RequestChunks(handle=H1, ranges=ranges((0, 3))))
    async with asyncio.timeout(DEADLINE), running(server):
        await wire.until(lambda: source.in_flight == 2)
        server.peer_down("a")
        assert source.gate is not None
        source.gate.set()
        await wire.until(lambda: len(wire.chunks("b")) == 3)
    assert wire.to("a") == []
    assert server.status()["readsInFlight"] == 0


async def test_accepts_the_drivers_outbox_lookup_and_shared_counters() -> None:
    source, wire = FakeSource(), Wire()
    source.add(H1, 3)

    def outbox_of(peer: str) -> Outbox | None:  # the driver's signature: no outbox yet
        return None

    counters: dict[str, int] = {"other": 1}
    server = ChunkServer(source, send=wire.send, outbox_of=outbox_of, counters=counters)
    server.handle_message("a", RequestChunks(handle=H1, ranges=ranges((0, 3))))
    async with asyncio.timeout(DEADLINE), running(server):
        await wire.until(lambda: len(wire.chunks("a")) == 3)
    assert counters["chunksServed"] == 3
    assert counters["bytesServed"] == 3 * CS - 7
    assert counters["other"] == 1
