"""The simulated network's fault model: per-link latency, loss and outages, and cut rules.

Kept apart from the kernel (netsim/sim.py) so the kernel only routes. A cut rule is a pair of node
sets ``(frm, to)``: nothing from a node in ``frm`` reaches a node in ``to``. Symmetric, asymmetric
and bridge partitions are all made of such rules, so checking a message costs the number of active
rules (a handful), never the number of nodes or of blocked pairs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["LatencyFn", "Link", "Network", "check_loss", "uniform_latency"]

LatencyFn = Callable[[random.Random, str, str], float]
"""``(rng, src, dst) -> seconds`` for one message or handshake leg."""


def uniform_latency(bounds: tuple[float, float]) -> LatencyFn:
    """Latency drawn uniformly from ``[min, max]``: the spread is the jitter."""
    low, high = bounds
    if not 0.0 <= low <= high:
        raise ValueError(f"latency bounds must satisfy 0 <= min <= max, got {bounds}")
    return lambda rng, _src, _dst: low + (high - low) * rng.random()


def check_loss(loss: float) -> float:
    if not 0.0 <= loss <= 1.0:
        raise ValueError(f"loss must be within 0..1, got {loss}")
    return loss


@dataclass(slots=True)
class Link:
    """Overrides for one directed link; ``None`` keeps the network's default."""

    latency: LatencyFn | None = None
    loss: float | None = None
    down: bool = False


class Network:
    """Latency, loss and reachability between node ids; draws from the simulator's Random."""

    def __init__(
        self,
        rng: random.Random,
        *,
        latency: tuple[float, float] | LatencyFn,
        loss: float,
    ) -> None:
        self.rng = rng
        self.default_latency = latency if callable(latency) else uniform_latency(latency)
        self.default_loss = check_loss(loss)
        self.links: dict[tuple[str, str], Link] = {}
        self.rules: dict[int, tuple[frozenset[str], frozenset[str]]] = {}
        self._rule_seq = 0

    def set_link(
        self,
        src: str,
        dst: str,
        *,
        latency: tuple[float, float] | LatencyFn | None = None,
        loss: float | None = None,
        down: bool = False,
        both: bool = True,
    ) -> None:
        """Override one link (both directions unless ``both=False``); ``down`` blocks it."""
        fn = None if latency is None else latency if callable(latency) else uniform_latency(latency)
        checked = None if loss is None else check_loss(loss)
        for key in ((src, dst), (dst, src)) if both else ((src, dst),):
            self.links[key] = Link(latency=fn, loss=checked, down=down)

    def clear_link(self, src: str, dst: str, *, both: bool = True) -> None:
        for key in ((src, dst), (dst, src)) if both else ((src, dst),):
            self.links.pop(key, None)

    def block(self, frm: Iterable[str], to: Iterable[str]) -> int:
        """Nothing from a node in ``frm`` reaches a node in ``to``; returns the rule id."""
        self._rule_seq += 1
        self.rules[self._rule_seq] = (frozenset(frm), frozenset(to))
        return self._rule_seq

    def partition(self, *groups: Iterable[str]) -> list[int]:
        """Symmetric cut between every two of ``groups``; nodes in no group are not affected."""
        sets = [frozenset(g) for g in groups]
        return [self.block(a, b) for i, a in enumerate(sets) for j, b in enumerate(sets) if i != j]

    def bridge(self, left: Iterable[str], right: Iterable[str], via: Iterable[str]) -> list[int]:
        """``left`` and ``right`` cannot reach each other; the ``via`` nodes reach both."""
        bridges = frozenset(via)
        return self.partition(frozenset(left) - bridges, frozenset(right) - bridges)

    def heal(self, *rule_ids: int) -> None:
        """Remove the given rules, or every rule and every link outage when none is given."""
        if rule_ids:
            for rule in rule_ids:
                self.rules.pop(rule, None)
            return
        self.rules.clear()
        for link in self.links.values():
            link.down = False

    def reachable(self, src: str, dst: str) -> bool:
        """Whether a message from ``src`` would reach ``dst`` now (random loss aside)."""
        link = self.links.get((src, dst))
        if link is not None and link.down:
            return False
        return not any(src in frm and dst in to for frm, to in self.rules.values())

    def latency(self, src: str, dst: str) -> float:
        link = self.links.get((src, dst))
        fn = self.default_latency if link is None or link.latency is None else link.latency
        return fn(self.rng, src, dst)

    def lost(self, src: str, dst: str) -> bool:
        """Draw whether one message is lost (no draw at all on a lossless link)."""
        link = self.links.get((src, dst))
        loss = self.default_loss if link is None or link.loss is None else link.loss
        return bool(loss) and self.rng.random() < loss
