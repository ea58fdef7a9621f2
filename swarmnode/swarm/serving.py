"""Serving requests that must wait: for the disk, or for the peer to read what we already sent.

A peer's ``RequestRange`` or ``Graft`` makes the dissemination machine read a span of the log
and send it. Two things can make that wait, and both are the driver's business, not the
machine's: the span is only on disk (``LogStore.prefetch`` must read it first, off the loop),
or the peer's ``Outbox`` is congested (it has not read what we sent; answering now would only
grow our memory). Such a request is parked in a per-peer queue and handed to the machine in
order, each once its wait is over; later requests from that peer queue behind it, other
messages do not. The queue is capped: past ``max_parked`` a request is dropped (counted), and the
peer's request timeout makes it ask again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any

from protocol.messages import Graft, Message, RequestRange
from swarmnode.swarm.logstore import LogStore
from swarmnode.swarm.outbox import Outbox

__all__ = ["ServeQueue", "spans"]


def spans(msg: object) -> list[tuple[str, int, int]]:
    """The ``(source, first, last)`` spans a serving request makes the machine read."""
    match msg:
        case RequestRange(source=source, first=first, last=last):
            return [(source, first, last)]
        case Graft(ranges=ranges):
            return [(r.source, r.first, r.last) for r in ranges]
    return []


class ServeQueue:
    """Parks serving requests per peer (module docstring) and delivers them in order."""

    def __init__(
        self,
        *,
        store: LogStore,
        max_parked: int,
        max_serve_events: int,
        outbox_of: Callable[[str], Outbox | None],
        deliver: Callable[[str, Message], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]],
        counters: MutableMapping[str, int],
        touch: Callable[[], None],
    ) -> None:
        """``touch`` is called whenever a request starts waiting for the peer to read."""
        self._store = store
        self._max_parked = max_parked
        self._max_serve_events = max_serve_events
        self._outbox_of = outbox_of
        self._deliver = deliver
        self._spawn = spawn
        self._counters = counters
        self._touch = touch
        self._parked: dict[str, deque[Message]] = {}

    def admit(self, peer: str, msg: Message) -> bool:
        """True if ``msg`` was parked or dropped here; False: hand it to the machine now."""
        wanted = spans(msg)
        if not wanted:
            return False
        parked = self._parked.get(peer)
        if parked is not None:
            if len(parked) >= self._max_parked:
                self._counters["requests_shed"] += 1
            else:
                parked.append(msg)  # keep this peer's serving requests in order
            return True
        outbox = self._outbox_of(peer)
        store = self._store
        if (outbox is not None and outbox.congested) or any(
            store.needs_read(source, first - 1) for source, first, _ in wanted
        ):
            self._parked[peer] = deque([msg])
            self._spawn(self._serve(peer))
            return True
        return False

    def backlog(self) -> dict[str, int]:
        """Requests parked per peer."""
        return {peer: len(parked) for peer, parked in self._parked.items() if parked}

    async def _serve(self, peer: str) -> None:
        """Deliver parked requests in order, each once the peer's outbox is not congested and
        its spans are read from disk."""
        parked = self._parked[peer]
        store = self._store
        try:
            while parked:
                msg = parked[0]
                outbox = self._outbox_of(peer)
                if outbox is not None and outbox.congested:
                    self._counters["serves_deferred"] += 1
                    self._touch()
                    await outbox.wait_uncongested()
                for source, first, last in spans(msg):
                    if store.needs_read(source, first - 1):
                        limit = min(last - first + 1, self._max_serve_events)
                        self._counters["disk_reads"] += 1
                        await store.prefetch(source, first - 1, limit)
                parked.popleft()
                self._deliver(peer, msg)
        finally:
            self._parked.pop(peer, None)
