"""A tiny fake swarm for the fetch scheduler: providers that answer SPEC §7.5 on virtual time, a
driver that verifies WriteChunk like the real one, and invariant checks on every drain.

Providers serve one chunk at a time at ``rate`` bytes/s after ``latency`` seconds, drop queued
chunks on ``Cancel``, and may lose, corrupt or refuse. Chunk data are reused bytes objects, so a
4,096-chunk blob costs no memory; their digests are cached per object.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

import blake3

from protocol.messages import SendableMessage
from protocol.messages_base import MAX_OUTLINE_PAGE
from protocol.messages_transfer import (
    Cancel,
    ChunkData,
    DontHave,
    HaveBitmap,
    HaveUpdate,
    Outline,
    RequestChunks,
    RequestOutline,
    bitmap_size,
)
from swarmnode.swarm.fetcher import (
    BlobSpec,
    FetchComplete,
    Fetcher,
    OutlineVerified,
    WriteChunk,
)
from swarmnode.swarm.fetcher_blob import ranges
from swarmnode.swarm.plumtree import PeerMisbehaved

CHUNK = 65536


@dataclass
class FakeBlob:
    """Content as per-chunk data objects; ``outline`` and ``spec`` derived from them."""

    spec: BlobSpec
    chunks: list[bytes]
    outline: bytes


_PATTERNS: dict[tuple[int, int], bytes] = {}


def make_blob(
    count: int,
    *,
    chunk_size: int = CHUNK,
    last: int | None = None,
    seed: int = 0,
    origin: str | None = None,
) -> FakeBlob:
    """A blob of ``count`` chunks (the last ``last`` bytes long); chunk i is one of 251 patterns."""
    chunks = []
    for i in range(count):
        n = chunk_size if i < count - 1 or last is None else last
        key = ((i + seed) % 251, n)
        if key not in _PATTERNS:
            _PATTERNS[key] = bytes([key[0]]) * n
        chunks.append(_PATTERNS[key])
    digests = b"".join(digest_of(c) for c in chunks)
    size = sum(len(c) for c in chunks)
    seeded = blake3.blake3(digests + seed.to_bytes(8, "big")).digest()
    handle = digests if count == 1 else seeded
    return FakeBlob(
        BlobSpec(handle, size, chunk_size, blake3.blake3(digests).digest(), origin), chunks, digests
    )


_DIGESTS: dict[int, tuple[bytes, bytes]] = {}


def digest_of(data: bytes) -> bytes:
    hit = _DIGESTS.get(id(data))
    if hit is not None and hit[0] is data:
        return hit[1]
    d = blake3.blake3(data).digest()
    _DIGESTS[id(data)] = (data, d)
    return d


def bitmap(indices: set[int], count: int) -> bytes:
    out = bytearray(bitmap_size(count))
    for i in indices:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


@dataclass
class Provider:
    name: str
    blobs: dict[bytes, FakeBlob] = field(default_factory=dict)
    have: dict[bytes, set[int]] = field(default_factory=dict)
    rate: float = 100e6
    latency: float = 0.001
    loss: float = 0.0
    corrupt: bool = False
    bad_outline: bool = False
    up: bool = True
    queue: deque[tuple[bytes, int]] = field(default_factory=deque)
    busy: bool = False
    served: int = 0
    interest: set[bytes] = field(default_factory=set)
    announced: dict[bytes, set[int]] = field(default_factory=dict)

    def holds(self, blob: FakeBlob, indices: set[int] | None = None) -> None:
        self.blobs[blob.spec.handle] = blob
        self.have[blob.spec.handle] = set(range(len(blob.chunks))) if indices is None else indices


class FakeSwarm:
    """Routes the fetcher's sends to providers and back on a virtual clock; checks invariants."""

    def __init__(self, fetcher: Fetcher, providers: list[Provider], seed: int = 0) -> None:
        self.f = fetcher
        self.providers = {p.name: p for p in providers}
        self.rng = random.Random(seed)
        self.now = 0.0
        self.events: list[tuple[float, int, str, str, object]] = []
        self.seq = 0
        self.deadline: float | None = None
        self.notices: list[object] = []
        self.complete: set[bytes] = set()
        self.misbehaved: list[str] = []
        self.requests: list[tuple[float, str, RequestChunks]] = []
        self.arrivals: list[tuple[bytes, int, str]] = []
        self.cap = fetcher.config.max_inflight_bytes_per_peer
        self.check_bitmaps = True
        self.hold_writes = False
        self.held_writes: list[WriteChunk] = []
        self.sent: list[tuple[str, SendableMessage]] = []

    def __repr__(self) -> str:
        provs = [
            (
                p.name,
                p.rate,
                round(p.latency, 4),
                p.loss,
                p.corrupt,
                p.bad_outline,
                {h.hex()[:6]: sorted(v) for h, v in p.have.items()},
            )
            for p in self.providers.values()
        ]
        return f"FakeSwarm({self.f.config}, {provs})"

    # -- plumbing --------------------------------------------------------------------------

    def _push(self, at: float, kind: str, peer: str, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, peer, payload))

    def connect_all(self) -> None:
        for name in self.providers:
            self.f.peer_up(self.now, name)
        self.pump()

    def pump(self) -> None:
        while True:
            fx = self.f.drain()
            self.deadline = fx.deadline
            for peer, msg in fx.sends:
                self._on_send(peer, msg)
            for n in fx.notices:
                self.notices.append(n)
                self._on_notice(n)
            for name in self.providers:
                assert self.f.inflight_bytes(name) <= self.cap, "per-peer in-flight cap passed"
            if not fx:
                return

    def _on_send(self, peer: str, msg: SendableMessage) -> None:
        self.sent.append((peer, msg))
        if isinstance(msg, RequestChunks):
            self.requests.append((self.now, peer, msg))
            if self.check_bitmaps:
                announced = self.providers[peer].announced.get(msg.handle, set())
                for r in msg.ranges:
                    for i in range(r.start, r.start + r.count):
                        assert i in announced, f"requested chunk {i} not announced by {peer}"
        prov = self.providers.get(peer)
        if prov is None or not prov.up:
            return
        self._push(self.now + prov.latency, "to_prov", peer, msg)

    def _on_notice(self, n: object) -> None:
        if isinstance(n, WriteChunk):
            if self.hold_writes:
                self.held_writes.append(n)
            else:
                self.write(n)
        elif isinstance(n, FetchComplete):
            self.complete.add(n.handle)
        elif isinstance(n, PeerMisbehaved):
            self.misbehaved.append(n.peer)
        elif isinstance(n, OutlineVerified):
            assert blake3.blake3(n.outline).digest() is not None

    def write(self, n: WriteChunk) -> None:
        assert isinstance(n.data, bytes), "the fake swarm sends bytes"
        if digest_of(n.data) == n.digest:
            self.arrivals.append((n.handle, n.index, n.peer))
            self.f.chunk_stored(self.now, n.handle, n.index)
        else:
            self.f.chunk_rejected(self.now, n.handle, n.index, n.peer)

    def to_fetcher(self, prov: Provider, msg: object) -> None:
        self._push(self.now + prov.latency, "to_fetch", prov.name, msg)

    # -- providers -------------------------------------------------------------------------

    def _provider(self, prov: Provider, msg: object) -> None:
        if isinstance(msg, RequestOutline):
            blob = prov.blobs.get(msg.handle)
            prov.interest.add(msg.handle)
            if blob is None or not prov.have.get(msg.handle):
                self.to_fetcher(prov, DontHave(handle=msg.handle, ranges=()))
                return
            outline = blob.outline
            if prov.bad_outline:
                outline = bytes(32) + outline[32:]
            count = len(blob.chunks)
            for start in range(msg.start, count, MAX_OUTLINE_PAGE):
                page = outline[start * 32 : (start + MAX_OUTLINE_PAGE) * 32]
                self.to_fetcher(
                    prov,
                    Outline(
                        handle=msg.handle,
                        size=blob.spec.size,
                        chunk_size=blob.spec.chunk_size,
                        start=start,
                        digests=page,
                    ),
                )
            self.announce(prov, msg.handle)
        elif isinstance(msg, RequestChunks):
            have = prov.have.get(msg.handle, set())
            refused = []
            for r in msg.ranges:
                for i in range(r.start, r.start + r.count):
                    if i in have:
                        prov.queue.append((msg.handle, i))
                    else:
                        refused.append(i)
            if refused:
                self.to_fetcher(prov, DontHave(handle=msg.handle, ranges=tuple(ranges(refused))))
            self._kick(prov)
        elif isinstance(msg, Cancel):
            if not msg.ranges:
                prov.interest.discard(msg.handle)
                prov.queue = deque(q for q in prov.queue if q[0] != msg.handle)
            else:
                gone = {
                    (msg.handle, i) for r in msg.ranges for i in range(r.start, r.start + r.count)
                }
                prov.queue = deque(q for q in prov.queue if q not in gone)

    def announce(self, prov: Provider, handle: bytes) -> None:
        blob = prov.blobs[handle]
        have = prov.have[handle]
        prov.announced.setdefault(handle, set()).update(have)
        self.to_fetcher(
            prov,
            HaveBitmap(
                handle=handle, chunk_count=len(blob.chunks), bitmap=bitmap(have, len(blob.chunks))
            ),
        )

    def gain(self, prov: Provider, handle: bytes, indices: list[int]) -> None:
        """``prov`` verified more chunks: HaveUpdate to an interested fetcher."""
        prov.have[handle].update(indices)
        if handle in prov.interest:
            prov.announced.setdefault(handle, set()).update(indices)
            self.to_fetcher(prov, HaveUpdate(handle=handle, indices=tuple(sorted(indices))))

    def _kick(self, prov: Provider) -> None:
        if not prov.busy and prov.queue and prov.up:
            prov.busy = True
            handle, i = prov.queue[0]
            size = len(prov.blobs[handle].chunks[i])
            self._push(self.now + size / prov.rate, "tick", prov.name, None)

    def _tick(self, prov: Provider) -> None:
        prov.busy = False
        if not prov.queue or not prov.up:
            return
        handle, i = prov.queue.popleft()
        data = prov.blobs[handle].chunks[i]
        if prov.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        prov.served += len(data)
        if self.rng.random() >= prov.loss:
            self.to_fetcher(prov, ChunkData(handle=handle, index=i, data=data))
        self._kick(prov)

    def down(self, name: str) -> None:
        prov = self.providers[name]
        prov.up = False
        prov.queue.clear()
        self.f.peer_down(self.now, name)
        self.pump()

    # -- the loop --------------------------------------------------------------------------

    def step(self) -> bool:
        """Run the next event (or the fetcher's timer); False when nothing is left."""
        nxt = self.events[0][0] if self.events else None
        if self.deadline is not None and (nxt is None or self.deadline < nxt):
            self.now = max(self.now, self.deadline)
            self.f.handle_timer(self.now)
            self.pump()
            return True
        if nxt is None:
            return False
        at, _, kind, peer, payload = heapq.heappop(self.events)
        self.now = at
        prov = self.providers[peer]
        if kind == "to_prov":
            if prov.up:
                self._provider(prov, payload)
        elif kind == "tick":
            self._tick(prov)
        elif prov.up:
            self.f.handle_message(self.now, peer, payload)  # type: ignore[arg-type]
        self.pump()
        return True

    def run_until(self, done: object, *, limit: float = 120.0, max_steps: int = 2_000_000) -> None:
        """Step until ``done()`` or the virtual time ``limit``."""
        assert callable(done)
        steps = 0
        while not done() and self.now < limit and steps < max_steps:
            if not self.step():
                break
            steps += 1
