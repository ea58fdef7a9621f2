"""What a pure swarm machine hands back to its driver, and the timer heap machines keep inside.

Membership, views, Plumtree and anti-entropy share one shape (STYLE.md §2): inputs are
``handle_message(now, peer, msg)``, ``handle_timer(now)`` and transport events; outputs pile up
in the machine and leave through ``drain() -> Effects``. The asyncio driver and netsim's
simulator are two drivers of the same shape, so everything a driver must do is data in here.
This module is pure: no clock, no sockets, no randomness.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from protocol.messages import SendableMessage
from protocol.messages_base import Address, PeerInfo

__all__ = ["Effects", "TimerHeap"]

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class Effects:
    """Everything a machine asks its driver to do since the last ``drain()``.

    The driver performs them in field order: dial, send, hang up, then publish notices, then
    arms one timer for ``deadline`` (absolute seconds on the machine's clock, ``None`` = no timer).
    A send to a peer without a connection is the driver's to drop (or to dial first); the machine
    learns the outcome through ``handle_connected`` / ``handle_disconnected``.
    """

    sends: list[tuple[str, SendableMessage]] = field(default_factory=list)
    """``(peer node id, message)`` in the order they were produced."""
    dials: list[Address | PeerInfo] = field(default_factory=list)
    """Connections to open: a bare seed address, or a known peer and its addresses."""
    hangups: list[str] = field(default_factory=list)
    """Peers whose connection to close (after the sends above to them have been flushed)."""
    notices: list[object] = field(default_factory=list)
    """Frozen notice values for the node (``PeerAlive``, ``ActivePeerAdded`` ...)."""
    deadline: float | None = None
    """The machine's earliest pending timer; call ``handle_timer`` at or after it."""

    def __bool__(self) -> bool:
        return bool(self.sends or self.dials or self.hangups or self.notices)

    def merge(self, other: Effects) -> None:
        """Append ``other``'s actions to ours and keep the earlier deadline (one driver pump for
        several machines)."""
        self.sends.extend(other.sends)
        self.dials.extend(other.dials)
        self.hangups.extend(other.hangups)
        self.notices.extend(other.notices)
        if other.deadline is not None and (self.deadline is None or other.deadline < self.deadline):
            self.deadline = other.deadline


class TimerHeap(Generic[K]):
    """Named one-shot timers: at most one deadline per key, the earliest one readable in O(1).

    Re-scheduling or cancelling a key leaves a stale heap entry that is skipped when it surfaces
    (lazy deletion), so both are O(log n) without searching the heap. The heap is compacted when
    stale entries outnumber live ones, which keeps memory bounded by twice the live timers.
    """

    __slots__ = ("_due", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, tuple[float, int]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def schedule(self, key: K, at: float) -> None:
        """Set ``key`` to fire at ``at``, replacing any earlier schedule for it."""
        self._seq += 1
        self._due[key] = (at, self._seq)
        heapq.heappush(self._heap, (at, self._seq, key))
        if len(self._heap) > 2 * len(self._due) + 16:
            self._compact()

    def cancel(self, key: K) -> None:
        """Forget ``key``'s timer; a no-op when none is set."""
        self._due.pop(key, None)

    def deadline_of(self, key: K) -> float | None:
        entry = self._due.get(key)
        return None if entry is None else entry[0]

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or ``None``."""
        heap = self._heap
        while heap:
            at, seq, key = heap[0]
            if self._due.get(key) == (at, seq):
                return at
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key due at or before ``now``, earliest first."""
        fired: list[K] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, seq, key = heapq.heappop(heap)
            if self._due.get(key) == (at, seq):
                del self._due[key]
                fired.append(key)
        return fired

    def _compact(self) -> None:
        self._heap = [(at, seq, key) for key, (at, seq) in self._due.items()]
        heapq.heapify(self._heap)
