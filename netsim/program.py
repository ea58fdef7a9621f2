"""What the simulation kernel drives and what it reports: the node-program protocol, the virtual
clock, one delivery record and per-node counters (shared by netsim/sim.py, adapters and tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

__all__ = ["Delivery", "EffectsLike", "NodeMetrics", "Program", "SimulationError", "VirtualClock"]


class SimulationError(RuntimeError):
    """The simulation was misused (time going backwards, unknown node, duplicate node)."""


class EffectsLike(Protocol):
    """What the kernel reads from ``drain()``: ``swarmnode.swarm.effects.Effects`` fits."""

    @property
    def sends(self) -> Sequence[tuple[str, Any]]: ...
    @property
    def dials(self) -> Sequence[Any]: ...
    @property
    def hangups(self) -> Sequence[str]: ...
    @property
    def notices(self) -> Sequence[object]: ...
    @property
    def deadline(self) -> float | None: ...


class Program(Protocol):
    """A node program: one machine, or several behind an adapter (netsim.simnode)."""

    def handle_message(self, now: float, peer: str, msg: Any) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def handle_connected(self, now: float, peer: str) -> None: ...
    def handle_disconnected(self, now: float, peer: str) -> None: ...
    def handle_dial_failed(self, now: float, target: Any) -> None: ...
    def drain(self) -> EffectsLike: ...


class VirtualClock:
    """Virtual seconds that only move forward."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    @property
    def now(self) -> float:
        return self._now

    def advance_to(self, t: float) -> None:
        if t < self._now:
            raise SimulationError(f"time cannot go back from {self._now} to {t}")
        self._now = t


class Delivery(NamedTuple):
    """One message handed to its destination machine (the trace hook's argument)."""

    time: float
    sent_at: float
    src: str
    dst: str
    msg: Any
    size: int
    """Encoded bytes when the simulator has a ``sizer``, else 0."""


@dataclass(slots=True)
class NodeMetrics:
    """Counters per node; drops are counted at the sender."""

    sent: int = 0
    received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    dropped_loss: int = 0
    dropped_blocked: int = 0
    dropped_dead: int = 0
    unconnected_sends: int = 0
    timers: int = 0
    dials: int = 0
    dial_failures: int = 0
    connects: int = 0
    disconnects: int = 0
    crashes: int = 0
