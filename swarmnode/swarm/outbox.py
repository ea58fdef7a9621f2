"""One connection's send queue, emptied only as fast as the peer reads (write back-pressure).

The machines produce messages whenever they like; a peer reads at its own pace. Handing every
frame to the transport at once would let a slow or stalled reader grow our memory without bound,
so the driver puts frames here and one task per connection moves them to the transport in pieces
of about one sealed piece (~1 MiB), awaiting ``PeerConnection.drain()`` before each. The transport
then never holds more than its high-water mark plus one piece, and the rest waits here, counted.

The driver reads two signals off the count: ``congested`` (above ``pause_bytes`` until it falls
to ``resume_bytes``: hysteresis, so serving does not flap per frame) gates what it chooses to
send, such as answers to the peer's ``RequestRange``; ``put`` returning False (the count would
pass ``max_bytes``) means the peer does not read even what we must send, and the driver drops it.

Frames go to the transport at once when nothing is queued and it is under its high-water mark.
Measured on this machine (catch-up of 100,000 events between two drivers on loopback, medians of
3): through the writer task always, 1.07x the time of plain direct sends; with the direct path,
0.985x, i.e. no cost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

from protocol.channel import MAX_PLAINTEXT, SEND_PIECE_RECORDS
from swarmnode.swarm.transport import PeerConnection

__all__ = ["PIECE_BYTES", "Outbox", "Outboxes"]

log = logging.getLogger(__name__)

# Frames handed to the transport per drain check: one sealed piece, what the channel seals and
# writes in one go while it is in cache (transport.py), so batching costs no extra copies.
PIECE_BYTES: Final = SEND_PIECE_RECORDS * MAX_PLAINTEXT


class Outbox:
    """Frames queued for one connection. ``run()`` is its writer task; it ends when the
    connection fails, or when the driver cancels it as the connection goes."""

    __slots__ = (
        "_congested",
        "_on_change",
        "_queue",
        "_uncongested",
        "_wake",
        "conn",
        "frames_sent",
        "max_bytes",
        "pause_bytes",
        "peak_bytes",
        "queued_bytes",
        "resume_bytes",
    )

    def __init__(
        self,
        conn: PeerConnection,
        *,
        pause_bytes: int,
        resume_bytes: int,
        max_bytes: int,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """``on_change`` is called whenever ``congested`` flips."""
        if not 0 <= resume_bytes <= pause_bytes <= max_bytes:
            raise ValueError("need 0 <= resume_bytes <= pause_bytes <= max_bytes")
        self.conn = conn
        self.pause_bytes = pause_bytes
        self.resume_bytes = resume_bytes
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        """Bytes of frames waiting here (not yet handed to the transport)."""
        self.peak_bytes = 0
        self.frames_sent = 0
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._uncongested = asyncio.Event()
        self._uncongested.set()
        self._congested = False
        self._on_change = on_change

    @property
    def congested(self) -> bool:
        """Over ``pause_bytes``, and not yet back down to ``resume_bytes``."""
        return self._congested

    def put(self, bodies: Sequence[bytes]) -> bool:
        """Queue frames in order. False, queuing nothing, if they would pass ``max_bytes``.

        With nothing queued and the transport under its high-water mark they go out at once
        (module docstring: a task hop per send cost ~7 % of catch-up throughput)."""
        if not self._queue and self.conn.writable:
            try:
                self.conn.send_frames(bodies)
            except ConnectionError:
                return True  # the connection is going; its disconnect cleans up
            self.frames_sent += len(bodies)
            return True
        size = sum(len(b) for b in bodies)
        if self.queued_bytes + size > self.max_bytes:
            return False
        self._queue.extend(bodies)
        self.queued_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.queued_bytes)
        if self.queued_bytes > self.pause_bytes and not self._congested:
            self._congested = True
            self._uncongested.clear()
            if self._on_change is not None:
                self._on_change()
        self._wake.set()
        return True

    async def wait_uncongested(self) -> None:
        """Return once ``congested`` is False (at once if it is)."""
        await self._uncongested.wait()

    async def run(self) -> None:
        """Move queued frames to the transport as it drains; ends when the connection fails."""
        queue = self._queue
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while queue:
                    await self.conn.drain()
                    piece: list[bytes] = []
                    size = 0
                    while queue and size < PIECE_BYTES:
                        body = queue.popleft()
                        piece.append(body)
                        size += len(body)
                    self.queued_bytes -= size
                    self._update()
                    self.conn.send_frames(piece)
                    self.frames_sent += len(piece)
        except ConnectionError:
            log.debug(
                "peer.outbox_closed",
                extra={"node_id": self.conn.peer_node_id, "dropped_bytes": self.queued_bytes},
            )
        finally:
            queue.clear()
            self.queued_bytes = 0
            self._update()

    def _update(self) -> None:
        if self._congested and self.queued_bytes <= self.resume_bytes:
            self._congested = False
            self._uncongested.set()
            if self._on_change is not None:
                self._on_change()


class Outboxes:
    """The outboxes of a node's connections, each with its writer task (made on first send)."""

    __slots__ = ("_boxes", "_make", "_spawn")

    def __init__(
        self,
        make: Callable[[PeerConnection], Outbox],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]],
    ) -> None:
        self._make = make
        self._spawn = spawn
        self._boxes: dict[PeerConnection, tuple[Outbox, asyncio.Task[Any]]] = {}

    def get(self, conn: PeerConnection) -> Outbox | None:
        entry = self._boxes.get(conn)
        return None if entry is None else entry[0]

    def put(self, conn: PeerConnection, bodies: Sequence[bytes]) -> bool:
        """``Outbox.put`` on ``conn``'s outbox, made and started if it has none."""
        entry = self._boxes.get(conn)
        if entry is None:
            outbox = self._make(conn)
            entry = self._boxes[conn] = (outbox, self._spawn(outbox.run()))
        return entry[0].put(bodies)

    def drop(self, conn: PeerConnection) -> None:
        """Forget a closed connection's outbox and stop its task."""
        entry = self._boxes.pop(conn, None)
        if entry is not None:
            entry[1].cancel()

    def bytes_by_peer(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for outbox, _ in self._boxes.values():
            peer = outbox.conn.peer_node_id
            out[peer] = out.get(peer, 0) + outbox.queued_bytes
        return out
