"""Plumtree edges per source over the active view — the tree half of ``plumtree.Dissemination``.

Every source's events travel on their own tree (SPEC §7.4.6), so each tree can converge to
shortest paths from its origin: one tree shared by all sources cannot be shallow for all of them
(a tree of degree ≤ 8 over 1,000 nodes has pairs 7+ hops apart, while 1 + ⌈log₄ N⌉ = 6 is the
goal). Pure and bounded: one edge per (source, active peer), like the offset map.

Rules (Leitão, Pereira, Rodrigues, "Epidemic Broadcast Trees", SRDS 2007, per source):
- A new neighbour is EAGER in the default tree. A source without a tree of its own rides the
  default, and the prunes of its first push round shape the default: new sources' duplicates
  prune it to a spanning tree, so a new source's first events flood nothing.
- Its first graft, a prune after its first round (optimisation moves wait for the second
  round), or an explicit ``fork`` gives the source its own tree, a copy of the default, which from
  then on only that source's grafts and prunes change: no source's move reshapes another's tree.
- An input for no source (an empty ``Prune`` or ``Graft``) sets the peer's edge in every tree.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence

__all__ = ["Edge", "EdgeTable", "next_edge"]


class Edge(enum.Enum):
    """Plumtree role of an active-view neighbour."""

    EAGER = "eager"
    LAZY = "lazy"


# Every edge transition, in one place (STYLE.md §4): (input) → next state. "up" adds a neighbour as
# EAGER (paper: eagerPushPeers starts as the neighbours), "down" removes it.
_EDGE_TABLE: Mapping[str, Edge | None] = {
    "up": Edge.EAGER,
    "graft_received": Edge.EAGER,
    "graft_sent": Edge.EAGER,
    "prune_received": Edge.LAZY,
    "duplicate_received": Edge.LAZY,
    "down": None,
}

# Push rounds counted per source: the first prunes the default tree, the second and later are
# the source's own (counting stops here, so the table stays one small int per source).
_SETTLED = 2


def next_edge(current: Edge | None, event: str) -> Edge | None:
    """The edge state after ``event``; inputs other than "up" leave a non-neighbour absent."""
    if current is None and event != "up":
        return None
    return _EDGE_TABLE[event]


class EdgeTable:
    """The default tree and the per-source trees of one node; see the module docstring."""

    __slots__ = ("_default", "_rounds", "_trees")

    def __init__(self) -> None:
        self._default: dict[str, Edge] = {}  # peer -> edge of sources without their own tree
        self._trees: dict[str, dict[str, Edge]] = {}  # source -> peer -> edge
        self._rounds: dict[str, int] = {}  # source -> push rounds relayed, up to _SETTLED

    def __contains__(self, peer: object) -> bool:
        return peer in self._default

    def __iter__(self) -> Iterator[str]:
        return iter(self._default)

    def __len__(self) -> int:
        return len(self._default)

    def up(self, peer: str) -> bool:
        """``peer`` joined the active view; False if it already was a neighbour."""
        state = next_edge(self._default.get(peer), "up")
        if peer in self._default or state is None:
            return False
        self._default[peer] = state
        return True

    def down(self, peer: str) -> None:
        self._default.pop(peer, None)
        for tree in self._trees.values():
            tree.pop(peer, None)

    def get(self, peer: str, source: str | None = None) -> Edge | None:
        """``peer``'s edge in ``source``'s tree, or in the default tree when ``source`` is None."""
        default = self._default.get(peer)
        if source is None or default is None:
            return default
        return self._trees.get(source, {}).get(peer, default)

    def eager_count(self) -> int:
        return sum(1 for e in self._default.values() if e is Edge.EAGER)

    def pushed(self, source: str) -> None:
        """One eager push round of ``source`` went out (or would have) from here."""
        self._rounds[source] = min(_SETTLED, self._rounds.get(source, 0) + 1)

    def settled(self, source: str) -> bool:
        """``source`` is past its first push round: its prunes are moves of its own tree."""
        return self._rounds.get(source, 0) >= _SETTLED

    def apply(
        self, peer: str, event: str, sources: Sequence[str] = (), *, fork: bool = False
    ) -> None:
        """Apply ``event`` to ``peer``'s edge for ``sources`` (every tree when empty)."""
        state = next_edge(self._default.get(peer), event)
        if state is None:
            return
        if not sources:
            self._default[peer] = state
            for tree in self._trees.values():
                tree.pop(peer, None)
            return
        for source in sources:
            own = self._trees.get(source)
            if own is None:
                if state is Edge.LAZY and not fork and not self.settled(source):
                    self._default[peer] = state
                    continue
                own = self._trees[source] = dict(self._default)
            own[peer] = state
