"""Serving verified chunks to peers: the provider side of SPEC §7.5.

A peer's ``RequestOutline`` / ``RequestChunks`` / ``Cancel`` arrive through ``handle_message``
(sync, from the driver's frame handler) and only queue work; ``run()`` is the one serving task.

Why it is shaped like this:

- **Fair across requesters** (issue 5): each peer has its own queue and the loop takes one job
  per peer per turn (round-robin), so a peer asking for a thousand chunks cannot starve one asking
  for ten.
- **Bounded memory whatever the readers do**: at most ``max_parallel_reads`` jobs are between
  "read started" and "handed to ``send``" at any time (a job keeps its slot while it waits for an
  earlier job of the same peer, so ChunkData leaves in request order). A peer whose ``Outbox`` is
  congested gets no new reads until it drains; the others go on. Per-peer queues are capped
  (``max_queued_chunks_per_peer``); beyond it a request is answered ``DontHave`` (SPEC §7.5.4
  allows it), and the fetcher asks elsewhere.
- **Have-state follows our own downloads** (swarming): ``chunks_verified`` batches ``HaveUpdate``
  per interested peer and flushes every ``have_flush_s`` or at ``MAX_HAVE_INDICES``; a peer only
  gets indices verified since the last update or bitmap we sent it.

Interest (SPEC §7.5.1) is registered by every ``RequestOutline``, also one answered ``DontHave``:
the fetcher then learns from ``HaveUpdate`` when we start holding chunks of the blob.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from protocol.errors import LocalProtocolError
from protocol.messages import (
    DIGEST_SIZE,
    MAX_CHUNK_RANGES,
    MAX_HAVE_INDICES,
    MAX_OUTLINE_PAGE,
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
    bitmap_size,
)

__all__ = [
    "MAX_INTEREST_PER_PEER",
    "ChunkServer",
    "ChunkSource",
    "CongestionGate",
    "dont_have_messages",
]

log = logging.getLogger(__name__)

# Blobs one peer may register interest in. A fetcher asks for the outline of the blobs it fetches
# (a handful at a time, 1,000 small ones in a burst); 16,384 leaves room for that and bounds the
# sets a hostile peer can make us keep (~100 bytes each, ~1.6 MiB per peer).
MAX_INTEREST_PER_PEER: Final = 16384


class ChunkSource(Protocol):
    """What this node holds; implemented by the lead's glue over the blob store and downloads."""

    async def outline(self, handle: bytes) -> tuple[int, int, bytes] | None:
        """(size, chunk_size, verified outline) of a blob held fully or partially; None: none."""
        ...

    def have(self, handle: bytes) -> tuple[int, bytes] | None:
        """(chunk_count, SPEC §7.5.6 bitmap) of verified chunks, None if nothing; cheap, sync."""
        ...

    async def read_chunk(self, handle: bytes, index: int) -> bytes | memoryview | None:
        """The bytes of a verified chunk (read on a worker thread), None if not held (any more)."""
        ...


class CongestionGate(Protocol):
    """The part of ``outbox.Outbox`` the server reads: whether the peer keeps up."""

    @property
    def congested(self) -> bool: ...

    async def wait_uncongested(self) -> None: ...


class _Ranges:
    """Builds ascending, merged ``ChunkRange`` lists from ascending indices or spans."""

    __slots__ = ("spans",)

    def __init__(self) -> None:
        self.spans: list[list[int]] = []

    def add(self, start: int, count: int = 1) -> None:
        spans = self.spans
        if spans and spans[-1][0] + spans[-1][1] == start:
            spans[-1][1] += count
        else:
            spans.append([start, count])

    def chunks(self) -> int:
        return sum(count for _, count in self.spans)


def dont_have_messages(handle: bytes, spans: Iterable[Sequence[int]]) -> list[DontHave]:
    """``DontHave`` messages covering ``(start, count)`` spans, at most MAX_CHUNK_RANGES each."""
    ranges = [ChunkRange(start=start, count=count) for start, count in spans]
    return [
        DontHave(handle=handle, ranges=tuple(ranges[i : i + MAX_CHUNK_RANGES]))
        for i in range(0, len(ranges), MAX_CHUNK_RANGES)
    ]


def _bit(bitmap: bytes, count: int, index: int) -> bool:
    return index < count and bool(bitmap[index >> 3] & (0x80 >> (index & 7)))


@dataclass(slots=True)
class _Job:
    """One unit of serving work: a chunk, or (``index`` < 0) an outline answer from ``start``."""

    handle: bytes
    index: int
    start: int = 0


@dataclass(slots=True)
class _Slot:
    """A started job: holds its answer until the peer's earlier jobs are sent."""

    job: _Job
    done: bool = False
    msgs: list[SendableMessage] = field(default_factory=list)
    bitmap: bool = False  # append a HaveBitmap computed at send time (outline answers)
    chunk_count: int = 0  # for that bitmap when the source has no verified chunk yet


@dataclass(slots=True, eq=False)
class _Peer:
    queue: deque[_Job] = field(default_factory=deque)
    inflight: deque[_Slot] = field(default_factory=deque)
    interest: set[bytes] = field(default_factory=set)
    in_ready: bool = False
    blocked: bool = False
    alive: bool = True
    waiter: asyncio.Task[None] | None = None


class ChunkServer:
    """Answers peers' chunk requests fairly and pushes have-state (module docstring).

    Inputs: ``handle_message``, ``peer_down``, ``chunks_verified``, ``blob_completed``,
    ``blob_removed``. Output: ``send(peer, msgs)``. Invariants: per peer, ChunkData leave in
    request order; at most ``max_parallel_reads`` jobs hold read data not yet handed to ``send``.
    """

    def __init__(
        self,
        source: ChunkSource,
        *,
        send: Callable[[str, list[SendableMessage]], None],
        outbox_of: Callable[[str], CongestionGate | None],
        max_queued_chunks_per_peer: int = 256,
        max_parallel_reads: int = 4,
        have_flush_s: float = 0.05,
        counters: MutableMapping[str, int] | None = None,
    ) -> None:
        if max_queued_chunks_per_peer < 1 or max_parallel_reads < 1 or have_flush_s < 0:
            raise ValueError("need max_queued_chunks_per_peer >= 1, max_parallel_reads >= 1")
        self._source = source
        self._send = send
        self._outbox_of = outbox_of
        self.max_queued_chunks_per_peer = max_queued_chunks_per_peer
        self.max_parallel_reads = max_parallel_reads
        self.have_flush_s = have_flush_s
        self.counters: MutableMapping[str, int] = {} if counters is None else counters
        for key in ("bytesServed", "chunksServed", "dontHave", "shed"):
            self.counters.setdefault(key, 0)
        self._peers: dict[str, _Peer] = {}
        self._ready: deque[str] = deque()
        self._interest: dict[bytes, set[str]] = {}
        self._pending: dict[bytes, dict[str, set[int]]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._slots = 0
        self.peak_slots = 0
        """Most jobs ever holding read data not yet sent (tests, status)."""
        self._wake = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None

    # ---- peer input ---------------------------------------------------------------------------

    def handle_message(self, peer: str, msg: RequestOutline | RequestChunks | Cancel) -> None:
        """Queue the work a peer's request asks for (answered by ``run``)."""
        match msg:
            case RequestOutline(handle=handle, start=start):
                self._on_request_outline(peer, handle, start)
            case RequestChunks(handle=handle, ranges=ranges):
                self._on_request_chunks(peer, handle, ranges)
            case Cancel(handle=handle, ranges=ranges):
                self._on_cancel(peer, handle, ranges)

    def peer_down(self, peer: str) -> None:
        """Drop the peer's queue, interest and pending updates; its reads in flight are dropped
        when they finish."""
        st = self._peers.pop(peer, None)
        if st is None:
            return
        st.alive = False
        st.queue.clear()
        if st.waiter is not None:
            st.waiter.cancel()
        for handle in st.interest:
            self._drop_interest(peer, handle)
        st.interest.clear()

    def _peer(self, peer: str) -> _Peer:
        st = self._peers.get(peer)
        if st is None:
            st = self._peers[peer] = _Peer()
        return st

    def _on_request_outline(self, peer: str, handle: bytes, start: int) -> None:
        st = self._peer(peer)
        if handle not in st.interest:
            if len(st.interest) >= MAX_INTEREST_PER_PEER:
                self.counters["shed"] += 1
                return
            st.interest.add(handle)
            self._interest.setdefault(handle, set()).add(peer)
        if any(j.index < 0 and j.handle == handle and j.start == start for j in st.queue):
            return  # the same answer is already on its way
        if len(st.queue) >= self.max_queued_chunks_per_peer:
            # DontHave without ranges would say we hold nothing; the fetcher's timeout asks again.
            self.counters["shed"] += 1
            return
        st.queue.append(_Job(handle, -1, start))
        self._make_ready(peer, st)

    def _on_request_chunks(self, peer: str, handle: bytes, ranges: Sequence[ChunkRange]) -> None:
        st = self._peer(peer)
        held = self._source.have(handle)
        missing = _Ranges()
        shed = _Ranges()
        room = self.max_queued_chunks_per_peer - len(st.queue)
        queued = 0
        for r in ranges:
            end = r.start + r.count
            if held is None:
                missing.add(r.start, r.count)
                continue
            count, bitmap = held
            index = r.start
            while index < end:
                if room <= 0:
                    shed.add(index, end - index)  # no per-index work beyond the cap
                    break
                if _bit(bitmap, count, index):
                    st.queue.append(_Job(handle, index))
                    room -= 1
                    queued += 1
                else:
                    missing.add(index)
                index += 1
        self.counters["shed"] += shed.chunks()
        for start, count in shed.spans:
            missing.add(start, count)  # both are ascending and disjoint: merge in order
        self._answer_dont_have(peer, handle, sorted(missing.spans))
        if queued:
            self._make_ready(peer, st)

    def _on_cancel(self, peer: str, handle: bytes, ranges: Sequence[ChunkRange]) -> None:
        st = self._peers.get(peer)
        if st is None:
            return
        if not ranges:
            kept = [j for j in st.queue if j.handle != handle]
            if handle in st.interest:
                st.interest.discard(handle)
                self._drop_interest(peer, handle)
        else:
            kept = [
                j
                for j in st.queue
                if j.handle != handle
                or j.index < 0
                or not any(r.start <= j.index < r.start + r.count for r in ranges)
            ]
        if len(kept) != len(st.queue):
            st.queue = deque(kept)

    def _drop_interest(self, peer: str, handle: bytes) -> None:
        peers = self._interest.get(handle)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self._interest[handle]
        pending = self._pending.get(handle)
        if pending is not None:
            pending.pop(peer, None)
            if not pending:
                del self._pending[handle]

    def _answer_dont_have(self, peer: str, handle: bytes, spans: Sequence[Sequence[int]]) -> None:
        if spans:
            self.counters["dontHave"] += sum(count for _, count in spans)
            self._send(peer, list(dont_have_messages(handle, spans)))

    # ---- our own downloads --------------------------------------------------------------------

    def chunks_verified(self, handle: bytes, indices: Sequence[int]) -> None:
        """Our download of ``handle`` stored these chunks: batch ``HaveUpdate`` to interested
        peers (flushed after ``have_flush_s``, or at once when a batch is full)."""
        peers = self._interest.get(handle)
        if not peers or not indices:
            return
        pending = self._pending.setdefault(handle, {})
        full: list[str] = []
        for peer in peers:
            batch = pending.setdefault(peer, set())
            batch.update(indices)
            if len(batch) >= MAX_HAVE_INDICES:
                full.append(peer)
        for peer in full:
            self._flush_have(handle, peer)
        if self._pending and self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self.have_flush_s, self.flush_haves)

    def flush_haves(self) -> None:
        """Send every pending ``HaveUpdate`` now (the batching timer calls this)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for handle in list(self._pending):
            for peer in list(self._pending.get(handle, ())):
                self._flush_have(handle, peer)

    def _flush_have(self, handle: bytes, peer: str) -> None:
        pending = self._pending.get(handle)
        batch = None if pending is None else pending.pop(peer, None)
        if pending is not None and not pending:
            del self._pending[handle]
        if not batch:
            return
        ordered = sorted(batch)
        self._send(
            peer,
            [
                HaveUpdate(handle=handle, indices=tuple(ordered[i : i + MAX_HAVE_INDICES]))
                for i in range(0, len(ordered), MAX_HAVE_INDICES)
            ],
        )

    def blob_completed(self, handle: bytes) -> None:
        """Send our full ``HaveBitmap`` to the peers interested in ``handle`` (SPEC §7.5.6)."""
        held = self._source.have(handle)
        peers = self._interest.get(handle)
        if held is None or not peers:
            return
        for peer in list(peers):
            self._send(peer, [self._bitmap_message(peer, handle, held[0], held)])

    def blob_removed(self, handle: bytes) -> None:
        """Retention deleted the blob: its queued chunk requests are answered ``DontHave``."""
        self._pending.pop(handle, None)
        for peer, st in self._peers.items():
            spans = _Ranges()
            kept: deque[_Job] = deque()
            for job in st.queue:
                if job.handle == handle and job.index >= 0:
                    spans.add(job.index)
                else:
                    kept.append(job)
            if spans.spans:
                st.queue = kept
                self._answer_dont_have(peer, handle, sorted(spans.spans))

    def _bitmap_message(
        self, peer: str, handle: bytes, count: int, held: tuple[int, bytes] | None
    ) -> HaveBitmap:
        """Our bitmap for ``handle``; it covers every pending update to ``peer``."""
        pending = self._pending.get(handle)
        if pending is not None:
            pending.pop(peer, None)
            if not pending:
                del self._pending[handle]
        if held is None:
            return HaveBitmap(handle=handle, chunk_count=count, bitmap=bytes(bitmap_size(count)))
        return HaveBitmap(handle=handle, chunk_count=held[0], bitmap=held[1])

    # ---- the serving loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve queued jobs until cancelled (the driver's task group owns this task)."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                while True:
                    self._start_reads(tg)
                    await self._wake.wait()
                    self._wake.clear()
        finally:
            self._tg = None
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None

    def _make_ready(self, peer: str, st: _Peer) -> None:
        if st.queue and not st.in_ready and not st.blocked:
            st.in_ready = True
            self._ready.append(peer)
            self._wake.set()

    def _start_reads(self, tg: asyncio.TaskGroup) -> None:
        """Round-robin: one job per ready peer per turn while read slots are free."""
        ready = self._ready
        while ready and self._slots < self.max_parallel_reads:
            peer = ready.popleft()
            st = self._peers.get(peer)
            if st is None:
                continue
            st.in_ready = False
            if not st.queue:
                continue
            gate = self._outbox_of(peer)
            if gate is not None and gate.congested:
                st.blocked = True
                st.waiter = tg.create_task(self._await_drain(peer, st, gate))
                continue
            job = st.queue.popleft()
            slot = _Slot(job)
            st.inflight.append(slot)
            self._slots += 1
            self.peak_slots = max(self.peak_slots, self._slots)
            tg.create_task(self._serve(peer, st, slot))
            if st.queue:
                st.in_ready = True
                ready.append(peer)

    async def _await_drain(self, peer: str, st: _Peer, gate: CongestionGate) -> None:
        await gate.wait_uncongested()
        st.blocked = False
        st.waiter = None
        if st.alive:
            self._make_ready(peer, st)

    async def _serve(self, peer: str, st: _Peer, slot: _Slot) -> None:
        job = slot.job
        try:
            if job.index >= 0:
                await self._read_chunk(slot)
            else:
                await self._read_outline(slot)
        except Exception:
            # The disk or the source failed: the peer asks elsewhere; we log it as ours.
            log.exception(
                "chunkserver.read_failed", extra={"handle": job.handle.hex(), "index": job.index}
            )
            slot.msgs = [self._dont_have_job(job)]
            slot.bitmap = False
        slot.done = True
        self._send_done(peer, st)

    def _dont_have_job(self, job: _Job) -> DontHave:
        if job.index < 0:
            return DontHave(handle=job.handle)
        return DontHave(handle=job.handle, ranges=(ChunkRange(start=job.index, count=1),))

    async def _read_chunk(self, slot: _Slot) -> None:
        job = slot.job
        data = await self._source.read_chunk(job.handle, job.index)
        if data is None:
            slot.msgs = [self._dont_have_job(job)]
        else:
            slot.msgs = [ChunkData(handle=job.handle, index=job.index, data=data)]

    async def _read_outline(self, slot: _Slot) -> None:
        job = slot.job
        found = await self._source.outline(job.handle)
        if found is None:
            slot.msgs = [DontHave(handle=job.handle)]
            return
        size, chunk_size, outline = found
        total = len(outline) // DIGEST_SIZE
        if total == 0:
            starts = [0] if job.start == 0 else []
        elif job.start == 0:
            starts = list(range(0, total, MAX_OUTLINE_PAGE))
        else:
            starts = [job.start] if job.start < total else []
        view = memoryview(outline)
        slot.msgs = [
            Outline(
                handle=job.handle,
                size=size,
                chunk_size=chunk_size,
                start=start,
                digests=bytes(
                    view[start * DIGEST_SIZE : min(start + MAX_OUTLINE_PAGE, total) * DIGEST_SIZE]
                ),
            )
            for start in starts
        ]
        slot.bitmap = True
        slot.chunk_count = total

    def _send_done(self, peer: str, st: _Peer) -> None:
        """Hand the peer's finished jobs to ``send`` in request order; free their slots."""
        out: list[SendableMessage] = []
        inflight = st.inflight
        while inflight and inflight[0].done:
            slot = inflight.popleft()
            self._slots -= 1
            if not st.alive:
                continue
            for msg in slot.msgs:
                self._append(out, msg)
            if slot.bitmap:
                try:
                    held = self._source.have(slot.job.handle)
                    out.append(self._bitmap_message(peer, slot.job.handle, slot.chunk_count, held))
                except LocalProtocolError:
                    log.exception("chunkserver.bad_bitmap", extra={"handle": slot.job.handle.hex()})
        if out:
            self._send(peer, out)
        self._wake.set()

    def _append(self, out: list[SendableMessage], msg: SendableMessage) -> None:
        """Add ``msg`` to a send batch, merging a one-chunk DontHave into the previous one."""
        counters = self.counters
        if isinstance(msg, ChunkData):
            counters["chunksServed"] += 1
            counters["bytesServed"] += len(msg.data)
        elif isinstance(msg, DontHave):
            counters["dontHave"] += max(1, sum(r.count for r in msg.ranges))
            last = out[-1] if out else None
            if (
                isinstance(last, DontHave)
                and last.handle == msg.handle
                and last.ranges
                and len(msg.ranges) == 1
                and len(last.ranges) < MAX_CHUNK_RANGES
            ):
                tail, new = last.ranges[-1], msg.ranges[0]
                if tail.start + tail.count == new.start:
                    merged = ChunkRange(start=tail.start, count=tail.count + new.count)
                    out[-1] = DontHave(handle=msg.handle, ranges=(*last.ranges[:-1], merged))
                    return
                if tail.start + tail.count < new.start:
                    out[-1] = DontHave(handle=msg.handle, ranges=(*last.ranges, new))
                    return
        out.append(msg)

    # ---- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counters, requests queued per peer (chunks and outlines), interested peers per blob."""
        return {
            "bytesServed": self.counters["bytesServed"],
            "chunksServed": self.counters["chunksServed"],
            "dontHave": self.counters["dontHave"],
            "shed": self.counters["shed"],
            "queued": {peer: len(st.queue) for peer, st in self._peers.items() if st.queue},
            "readsInFlight": self._slots,
            "interestedPeers": {
                "blake3:" + handle.hex(): len(peers) for handle, peers in self._interest.items()
            },
        }
