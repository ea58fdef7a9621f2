"""Which peers the driver refuses, and for how long: a backoff per peer that doubles per offence.

A broken or hostile peer must not make us re-verify its garbage in a loop, so after an offence it
is refused (dials and accepts) for a while; a repeat offender for longer, up to a cap. An entry
whose refusal ended ``forget_s`` ago is forgotten, so the table holds recent offenders only and
a peer fixed by a restart starts afresh. Times are the loop's monotonic seconds, given by the
caller.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Penalties"]


@dataclass(slots=True)
class _Entry:
    until: float
    next_backoff: float


class Penalties:
    """Refusal deadlines per peer id."""

    __slots__ = ("_entries", "forget_s", "initial_s", "max_s")

    def __init__(self, *, initial_s: float, max_s: float, forget_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.forget_s = forget_s
        self._entries: dict[str, _Entry] = {}

    def refused(self, peer: str, now: float) -> bool:
        entry = self._entries.get(peer)
        return entry is not None and now < entry.until

    def add(self, peer: str, now: float) -> float:
        """Record an offence; returns how long ``peer`` is now refused."""
        entry = self._entries.get(peer)
        backoff = self.initial_s if entry is None else entry.next_backoff
        self._entries[peer] = _Entry(now + backoff, min(backoff * 2, self.max_s))
        return backoff

    def expire(self, now: float) -> None:
        """Forget peers whose refusal ended ``forget_s`` before ``now``."""
        stale = [p for p, e in self._entries.items() if now >= e.until + self.forget_s]
        for peer in stale:
            del self._entries[peer]

    def peers(self) -> list[str]:
        """Peers with an entry (refused now, or remembered for the backoff)."""
        return sorted(self._entries)
