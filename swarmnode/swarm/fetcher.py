"""The blob fetch scheduler as a pure state machine (DESIGN.md "swarm/transfer", SPEC §7.5).

Inputs (STYLE.md §2), each with an explicit ``now``: ``add``/``remove``/``prioritize`` from the
node, ``peer_up``/``peer_down`` from the connection layer, ``handle_message`` for ``Outline``,
``HaveBitmap``, ``HaveUpdate``, ``ChunkData`` and ``DontHave``, ``chunk_stored``/
``chunk_rejected``/``chunk_failed`` from the driver's writer, ``pause``/``resume`` (disk full) and
``handle_timer``. Output: ``drain() -> Effects`` with sends, notices (``WriteChunk``,
``OutlineVerified``, ``FetchComplete``, ``PeerMisbehaved``) and the next deadline.

Rules:
- Probing: ``RequestOutline`` to at most ``max_probe_peers`` connected peers (origin first) and to
  every new peer; re-probed every ``reprobe_s`` while the outline is unknown or a missing chunk has
  no known provider. A HaveBitmap/HaveUpdate from anyone counts as "it holds these".
- Single-chunk blobs whose root is BLAKE3(handle) skip the outline round trip: the outline is the
  handle, and chunk 0 is asked of one peer at a time (origin first; DontHave -> next peer).
- Outline pages are assembled per peer and checked against the root; a mismatch or a size that
  disagrees with the spec is ``PeerMisbehaved``.
- Scheduling (in ``drain``, for peers whose budget or knowledge changed): a peer's requested but
  not arrived bytes stay <= ``max_inflight_bytes_per_peer``; priority blobs first, then
  round-robin one chunk per blob per turn; within a blob rarest first, ties by lowest index, only
  chunks the peer's bitmap shows. Nothing is requested while paused or while more than
  ``max_unstored_bytes`` wait for the disk.
- Fellow fetchers (a probed peer answers DontHave, or shows part of the blob): ties are broken in
  a shuffled order salted with our id instead (``BlobState.diversify``), so fetchers take
  different chunks from the origin and have something to give each other.
- Endgame near the tail only (``FetcherConfig.endgame_chunks``): a chunk may be outstanding at up
  to ``endgame_copies`` peers; the first arrival cancels the others.
- The machine never hashes chunk data: ``WriteChunk`` carries the outline digest to the driver,
  whose verdict comes back as ``chunk_stored``/``chunk_rejected``. Peer input never raises.
"""

from __future__ import annotations

from collections import deque

import blake3

from protocol.messages import SendableMessage
from protocol.messages_base import MAX_CHUNK_RANGES, MAX_OUTLINE_PAGE
from protocol.messages_transfer import (
    Cancel,
    ChunkData,
    ChunkRange,
    DontHave,
    HaveBitmap,
    HaveUpdate,
    Outline,
    RequestChunks,
    RequestOutline,
)
from swarmnode.swarm.effects import Effects, TimerHeap
from swarmnode.swarm.fetcher_blob import (
    MISSING,
    STORED,
    WRITING,
    BlobState,
    bitmap_to_bits,
    bits_to_bitmap,
    ranges,
)
from swarmnode.swarm.fetcher_schedule import PeerState, note_busy, note_delivery, plan, window
from swarmnode.swarm.fetcher_types import (
    BlobSpec,
    FetchComplete,
    FetcherConfig,
    FetchProgress,
    OutlineVerified,
    WriteChunk,
)
from swarmnode.swarm.plumtree import PeerMisbehaved

__all__ = [
    "BlobSpec",
    "FetchComplete",
    "FetchProgress",
    "Fetcher",
    "FetcherConfig",
    "OutlineVerified",
    "WriteChunk",
]

FetcherInput = Outline | HaveBitmap | HaveUpdate | ChunkData | DontHave
TimerKey = tuple[str, str]
assert MAX_OUTLINE_PAGE > 0  # outlines longer than a page arrive as several pages


class Fetcher:
    """Schedules chunk requests for every active download across connected peers."""

    def __init__(self, config: FetcherConfig | None = None, *, salt: bytes = b"") -> None:
        """``salt`` (the node's id) makes this node's chunk order its own once fellow fetchers
        show up (``BlobState.diversify``)."""
        self.config = config or FetcherConfig()
        self._salt = salt
        self._blobs: dict[bytes, BlobState] = {}
        self._incomplete: dict[bytes, BlobState] = {}
        self._prio: list[bytes] = []
        self._rr: deque[bytes] = deque()
        self._peers: dict[str, PeerState] = {}
        self._timers: TimerHeap[TimerKey] = TimerHeap()
        self._fx = Effects()
        self._dirty: set[str] = set()
        self._dirty_all = False
        self._unstored = 0
        self._paused = False
        self._now = 0.0
        """Latest ``now`` seen: ``drain`` has none and stamps new requests with it."""

    # -- node inputs --------------------------------------------------------------------------

    def add(
        self,
        now: float,
        spec: BlobSpec,
        *,
        outline: bytes | None = None,
        have: bytes | None = None,
        priority: bool = False,
    ) -> None:
        """Start or resume a download; idempotent for an active handle (may raise priority)."""
        self._now = now
        blob = self._blobs.get(spec.handle)
        if blob is not None:
            if priority and not blob.priority:
                self.prioritize(now, spec.handle)
            return
        blob = self._blobs[spec.handle] = BlobState(spec)
        if have is not None:
            blob.load_have(have)
        if blob.complete:
            self._fx.notices.append(FetchComplete(spec.handle))
            return
        self._incomplete[spec.handle] = blob
        self._rr.append(spec.handle)
        if priority:
            self._set_priority(blob, 0)
        if outline is not None and blob.outline_ok(outline):
            blob.start(outline)
        elif blob.count == 1 and blake3.blake3(spec.handle).digest() == spec.outline_root:
            blob.start(spec.handle)
            blob.fast = True
            self._fx.notices.append(OutlineVerified(spec.handle, spec.handle))
            self._next_fast_target(now, blob)
        if blob.fast_target is None:
            self._probe(now, blob, self._connected())
        self._timers.schedule(("r", spec.handle.hex()), now + self.config.reprobe_s)
        self._dirty_all = True

    def remove(self, now: float, handle: bytes) -> None:
        """Forget a blob: cancel every request and the interest at every peer that has them."""
        self._now = now
        blob = self._blobs.pop(handle, None)
        if blob is None:
            return
        self._forget(handle)
        targets = set(blob.probed) | blob.asked
        for peer, ps in self._peers.items():
            held = ps.inflight.pop(handle, None)
            if held:
                ps.inflight_bytes -= sum(blob.chunk_len(i) for i in held)
                self._dirty.add(peer)
                targets.add(peer)
        for i in blob.writer:
            self._unstored -= blob.chunk_len(i)
        for peer in sorted(targets):
            if self._is_connected(peer):
                self._send(peer, Cancel(handle=handle, ranges=()))

    def prioritize(self, now: float, handle: bytes, first_index: int = 0) -> None:
        """An HTTP reader waits: this blob goes first, its chunks from ``first_index`` ascending."""
        self._now = now
        blob = self._blobs.get(handle)
        if blob is None or blob.complete:
            return
        self._set_priority(blob, first_index)
        self._dirty_all = True

    def pause(self, now: float) -> None:
        self._now = now
        self._paused = True

    def resume(self, now: float) -> None:
        self._now = now
        self._paused = False
        self._dirty_all = True

    # -- peers ----------------------------------------------------------------------------------

    def peer_up(self, now: float, peer: str) -> None:
        self._now = now
        ps = self._peer(peer)
        if ps.connected:
            return
        ps.connected = True
        for blob in self._incomplete.values():
            if blob.fast and (blob.fast_target is not None or self._next_fast_target(now, blob)):
                continue
            self._probe(now, blob, [peer])
        self._dirty.add(peer)

    def peer_down(self, now: float, peer: str) -> None:
        self._now = now
        ps = self._peers.get(peer)
        if ps is None:
            return
        ps.connected = False
        self._release_all(peer)
        self._timers.cancel(("t", peer))
        for blob in self._incomplete.values():
            if peer in blob.bitmaps:
                blob.set_bitmap(peer, bytearray(blob.count))
            blob.parts.pop(peer, None)
            blob.probed.pop(peer, None)
            blob.asked.discard(peer)
            if blob.fast_target == peer:
                blob.fast_tried.discard(peer)
                blob.fast_target = None
                self._next_fast_target(now, blob)
        self._dirty_all = True

    # -- peer messages ----------------------------------------------------------------------------

    def handle_message(self, now: float, peer: str, msg: FetcherInput) -> None:
        self._now = now
        blob = self._blobs.get(msg.handle)
        if blob is None:
            return
        self._peer(peer)
        match msg:
            case ChunkData():
                self._on_chunk(now, peer, blob, msg)
            case HaveUpdate():
                self._on_have_update(now, peer, blob, msg)
            case HaveBitmap():
                self._on_have_bitmap(now, peer, blob, msg)
            case Outline():
                self._on_outline(now, peer, blob, msg)
            case DontHave():
                self._on_dont_have(now, peer, blob, msg)

    def _on_chunk(self, now: float, peer: str, blob: BlobState, msg: ChunkData) -> None:
        i, size = msg.index, len(msg.data)
        blob.bytes_received += size
        ps = self._peers[peer]
        asked = blob.requested.get(i)
        if asked is None or peer not in asked or i >= blob.count or blob.state[i] != MISSING:
            blob.duplicate_bytes += size
            return
        ps.last_progress = now
        note_delivery(ps, now, size)
        self._release(blob, i, peer)
        if size != blob.chunk_len(i):
            self._strike(peer, "chunk of the wrong size")
            blob.set_bit(peer, i, 0)
            self._requeue(blob, i)
            return
        for other in sorted(asked):
            self._release(blob, i, other)
            self._send(
                other, Cancel(handle=blob.spec.handle, ranges=(ChunkRange(start=i, count=1),))
            )
        blob.state[i] = WRITING
        blob.remaining -= 1
        blob.writer[i] = peer
        self._unstored += size
        self._fx.notices.append(WriteChunk(blob.spec.handle, i, msg.data, blob.digest(i), peer))

    def _on_have_update(self, now: float, peer: str, blob: BlobState, msg: HaveUpdate) -> None:
        for i in msg.indices:
            if i < blob.count:
                blob.set_bit(peer, i, 1)
        self._answered(now, peer, blob)

    def _on_have_bitmap(self, now: float, peer: str, blob: BlobState, msg: HaveBitmap) -> None:
        if msg.chunk_count != blob.count:
            return
        blob.set_bitmap(peer, bitmap_to_bits(msg.bitmap, blob.count))
        self._answered(now, peer, blob)

    def _note_fellow(self, blob: BlobState, peer: str) -> None:
        """``peer`` holds part of the blob: it is fetching it too."""
        if 0 < blob.held.get(peer, 0) < blob.count:
            self._diversify(blob)

    def _diversify(self, blob: BlobState) -> None:
        """Fellow fetchers: from now on take chunks in an order of our own
        (``BlobState.diversify``), salted with our id and the blob."""
        if not blob.diversified:
            salt = blake3.blake3(self._salt + blob.spec.handle).digest()
            blob.diversify(int.from_bytes(salt[:8], "big"))

    def _answered(self, now: float, peer: str, blob: BlobState) -> None:
        blob.dont_have.discard(peer)
        self._note_fellow(blob, peer)
        if (
            blob.outline is None
            and peer in blob.held
            and peer not in blob.parts
            and now - blob.probed.get(peer, -1e18) >= self.config.reprobe_s
        ):
            self._probe(now, blob, [peer])
        self._dirty.add(peer)

    def _on_outline(self, now: float, peer: str, blob: BlobState, msg: Outline) -> None:
        if blob.outline is not None:
            return
        spec = blob.spec
        if msg.size != spec.size or msg.chunk_size != spec.chunk_size:
            self._bad_outline(
                now, blob, peer, "outline size or chunk size differs from the metadata"
            )
            return
        outline = blob.outline_page(peer, msg.start, msg.digests)
        if outline is None:
            return
        if blake3.blake3(outline).digest() != spec.outline_root:
            self._bad_outline(now, blob, peer, "outline does not match the root")
            return
        blob.start(outline)
        if blob.dont_have or any(0 < held < blob.count for held in blob.held.values()):
            # Peers we asked that lack the blob, or hold part of it, fetch it too (every node
            # replicates what it learns of): differ from them before the first request.
            self._diversify(blob)
        self._fx.notices.append(OutlineVerified(spec.handle, outline))
        self._dirty_all = True

    def _on_dont_have(self, now: float, peer: str, blob: BlobState, msg: DontHave) -> None:
        if not msg.ranges:
            blob.dont_have.add(peer)
            blob.parts.pop(peer, None)
            if not blob.fast:
                self._diversify(blob)  # it lacks the whole blob: it will fetch it too
            if peer in blob.bitmaps:
                blob.set_bitmap(peer, bytearray(blob.count))
            for i in sorted(self._peers[peer].inflight.get(blob.spec.handle, ())):
                self._release(blob, i, peer)
                self._requeue(blob, i)
        else:
            for r in msg.ranges:
                for i in range(r.start, min(r.start + r.count, blob.count)):
                    blob.set_bit(peer, i, 0)
                    if peer in blob.requested.get(i, ()):
                        self._release(blob, i, peer)
                        self._requeue(blob, i)
        if blob.fast_target == peer:
            blob.fast_target = None
            self._next_fast_target(now, blob)
            if blob.fast_target is None:
                self._probe(now, blob, self._connected())
        self._dirty_all = True

    # -- driver feedback -------------------------------------------------------------------------

    def chunk_stored(self, now: float, handle: bytes, index: int) -> None:
        self._now = now
        blob = self._blobs.get(handle)
        if blob is None or not 0 <= index < blob.count or blob.state[index] != WRITING:
            return
        blob.state[index] = STORED
        size = blob.chunk_len(index)
        self._unstored_release(size)
        blob.stored_chunks += 1
        blob.stored_bytes += size
        blob.peers_used.add(blob.writer.pop(index))
        if blob.complete:
            self._forget(handle)
            self._fx.notices.append(FetchComplete(handle))

    def chunk_rejected(self, now: float, handle: bytes, index: int, peer: str) -> None:
        self._now = now
        blob = self._blobs.get(handle)
        if blob is None or not 0 <= index < blob.count or blob.state[index] != WRITING:
            return
        self._unwrite(blob, index)
        blob.set_bit(peer, index, 0)
        self._strike(peer, "chunk failed verification")
        self._requeue(blob, index)

    def chunk_failed(self, now: float, handle: bytes, index: int) -> None:
        self._now = now
        blob = self._blobs.get(handle)
        if blob is None or not 0 <= index < blob.count or blob.state[index] != WRITING:
            return
        self._unwrite(blob, index)
        self._requeue(blob, index)

    def _unwrite(self, blob: BlobState, index: int) -> None:
        blob.state[index] = MISSING
        blob.remaining += 1
        blob.writer.pop(index, None)
        self._unstored_release(blob.chunk_len(index))

    def _unstored_release(self, size: int) -> None:
        was_over = self._unstored > self.config.max_unstored_bytes
        self._unstored -= size
        if was_over and self._unstored <= self.config.max_unstored_bytes:
            self._dirty_all = True

    # -- timers -----------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        self._now = now
        for kind, key in self._timers.pop_due(now):
            if kind == "t":
                self._on_timeout(now, key)
            elif kind == "c":
                self._peer(key).cooling = False
                self._dirty.add(key)
            else:
                blob = self._incomplete.get(bytes.fromhex(key))
                if blob is not None:
                    self._reprobe(now, blob)
                    self._timers.schedule(("r", key), now + self.config.reprobe_s)

    def _on_timeout(self, now: float, peer: str) -> None:
        ps = self._peers.get(peer)
        if ps is None or not ps.inflight_bytes:
            return
        due = ps.last_progress + self.config.request_timeout_s
        if now < due:
            self._timers.schedule(("t", peer), due)
            return
        self._release_all(peer)
        self._strike(peer, "requests timed out")
        ps.cooling = True
        self._timers.schedule(("c", peer), now + self.config.reprobe_s)
        self._dirty_all = True

    def _reprobe(self, now: float, blob: BlobState) -> None:
        if blob.outline is not None and blob.fast_target is not None:
            return
        if blob.outline is not None and all(
            blob.avail[i] or blob.state[i] != MISSING for i in range(blob.count)
        ):
            return
        due = now - self.config.reprobe_s
        peers = [
            p
            for p in self._connected()
            if p in blob.dont_have or (p not in blob.held and blob.probed.get(p, -1e18) <= due)
        ]
        self._probe(now, blob, peers)

    # -- outputs ----------------------------------------------------------------------------------

    def drain(self) -> Effects:
        if self._dirty_all:
            self._dirty.update(p for p, ps in self._peers.items() if ps.connected)
            self._dirty_all = False
        if self._dirty and not self._paused:
            dirty = sorted(self._dirty)
            self._dirty.clear()
            for peer in dirty:
                if self._unstored > self.config.max_unstored_bytes:
                    break
                ps = self._peers.get(peer)
                if ps is not None and ps.inflight_bytes:
                    cap = self._window(ps)
                    if cap - ps.inflight_bytes < min(self.config.refill_bytes, cap // 2):
                        continue  # busy: top it up in batches (FetcherConfig.refill_bytes)
                self._fill(peer)
        fx, self._fx = self._fx, Effects()
        fx.deadline = self._timers.next_deadline()
        return fx

    def progress(self, handle: bytes) -> FetchProgress | None:
        blob = self._blobs.get(handle)
        if blob is None:
            return None
        return blob.progress(self._paused)

    def active(self) -> list[bytes]:
        return list(self._blobs)

    def stored_bitmap(self, handle: bytes) -> bytes:
        blob = self._blobs.get(handle)
        if blob is None:
            return b""
        return bits_to_bitmap(blob.state, blob.count)

    def inflight_bytes(self, peer: str) -> int:
        """Requested from ``peer`` and not yet arrived (tests check the cap)."""
        ps = self._peers.get(peer)
        return 0 if ps is None else ps.inflight_bytes

    # -- scheduling -------------------------------------------------------------------------------

    def _window(self, ps: PeerState) -> int:
        config = self.config
        return window(
            ps,
            target_s=config.window_target_s,
            initial=config.initial_window_bytes,
            least=config.min_window_bytes,
            most=config.max_inflight_bytes_per_peer,
        )

    def _fill(self, peer: str) -> None:
        """Fill ``peer``'s free budget in one pass: priority blobs, then one chunk per blob per
        round-robin turn."""
        ps = self._peers.get(peer)
        if ps is None or not ps.connected or ps.cooling:
            return
        if not ps.inflight_bytes:
            ps.last_progress = self._now
            note_busy(ps, self._now)
        cap = self._window(ps)
        if ps.inflight_bytes >= cap:
            return
        incomplete = self._incomplete
        endgame = self.config.endgame_chunks
        picks = plan(
            peer,
            ps,
            (incomplete[h] for h in self._prio if incomplete[h].outline is not None),
            (b for h in self._rr if not (b := incomplete[h]).priority and b.has_work(endgame)),
            cap=cap,
            copies=self.config.endgame_copies,
            endgame_chunks=endgame,
        )
        if self._rr:
            self._rr.rotate(-1)
        if picks and ("t", peer) not in self._timers:
            self._timers.schedule(("t", peer), ps.last_progress + self.config.request_timeout_s)
        for handle, indices in picks.items():
            indices.sort()
            runs = ranges(indices)
            for k in range(0, len(runs), MAX_CHUNK_RANGES):
                self._send(
                    peer, RequestChunks(handle=handle, ranges=tuple(runs[k : k + MAX_CHUNK_RANGES]))
                )
            self._blobs[handle].asked.add(peer)

    # -- helpers ----------------------------------------------------------------------------------

    def _forget(self, handle: bytes) -> None:
        """The blob is complete or removed: no more scheduling or probing for it."""
        if self._incomplete.pop(handle, None) is not None:
            self._rr.remove(handle)
        if handle in self._prio:
            self._prio.remove(handle)
        self._timers.cancel(("r", handle.hex()))

    def _set_priority(self, blob: BlobState, first_index: int) -> None:
        blob.prioritize(first_index)
        handle = blob.spec.handle
        if handle in self._prio:
            self._prio.remove(handle)
        self._prio.insert(0, handle)

    def _next_fast_target(self, now: float, blob: BlobState) -> bool:
        """Single-chunk fast path: ask one peer at a time, origin first."""
        origin = blob.spec.origin
        order = self._connected()
        if origin is not None and origin in order:
            order.remove(origin)
            order.insert(0, origin)
        for p in order:
            if p not in blob.fast_tried:
                blob.fast_target = p
                blob.fast_tried.add(p)
                self._dirty.add(p)
                return True
        blob.fast_target = None
        return False

    def _probe(self, now: float, blob: BlobState, peers: list[str]) -> None:
        """RequestOutline to at most ``max_probe_peers`` of ``peers``, origin first, skipping peers
        whose outline pages are on their way or whose outline was bad."""
        order = [p for p in peers if p not in blob.parts and p not in blob.bad_outline]
        origin = blob.spec.origin
        if origin in order:
            order.remove(origin)
            order.insert(0, origin)
        for p in order[: self.config.max_probe_peers]:
            self._send_probe(now, blob, p)

    def _bad_outline(self, now: float, blob: BlobState, peer: str, reason: str) -> None:
        """Blame ``peer`` and ask peers not asked yet; those already asked answer anyway (asking
        them again would let two bad peers start a probe storm)."""
        blob.parts.pop(peer, None)
        blob.bad_outline.add(peer)
        self._misbehaved(peer, reason)
        self._probe(now, blob, [p for p in self._connected() if p not in blob.probed])

    def _send_probe(self, now: float, blob: BlobState, peer: str) -> None:
        blob.probed[peer] = now
        self._send(peer, RequestOutline(handle=blob.spec.handle, start=0))

    def _release(self, blob: BlobState, index: int, peer: str) -> None:
        """Forget one outstanding request (arrived, cancelled, refused or timed out)."""
        asked = blob.requested.get(index)
        if asked is not None:
            asked.discard(peer)
            if not asked:
                del blob.requested[index]
        ps = self._peers[peer]
        held = ps.inflight.get(blob.spec.handle)
        if held is not None and index in held:
            held.discard(index)
            if not held:
                del ps.inflight[blob.spec.handle]
            ps.inflight_bytes -= blob.chunk_len(index)
            self._dirty.add(peer)

    def _release_all(self, peer: str) -> None:
        ps = self._peers[peer]
        for handle, held in list(ps.inflight.items()):
            blob = self._blobs[handle]
            for i in sorted(held):
                self._release(blob, i, peer)
                self._requeue(blob, i)

    def _requeue(self, blob: BlobState, index: int) -> None:
        blob.requeue(index)
        self._dirty_all = True

    def _strike(self, peer: str, reason: str) -> None:
        ps = self._peer(peer)
        ps.strikes += 1
        if ps.strikes >= self.config.bad_data_strikes:
            ps.strikes = 0
            self._misbehaved(peer, reason)

    def _misbehaved(self, peer: str, reason: str) -> None:
        self._fx.notices.append(PeerMisbehaved(peer=peer, reason=reason))

    def _peer(self, peer: str) -> PeerState:
        ps = self._peers.get(peer)
        if ps is None:
            ps = self._peers[peer] = PeerState()
        return ps

    def _is_connected(self, peer: str) -> bool:
        ps = self._peers.get(peer)
        return ps is not None and ps.connected

    def _connected(self) -> list[str]:
        return sorted(p for p, ps in self._peers.items() if ps.connected)

    def _send(self, peer: str, msg: SendableMessage) -> None:
        self._fx.sends.append((peer, msg))
