"""Cluster.partition: which clients each node's proxy drops, for splits and bridges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netsim.cluster import Cluster, Member


class RecordingProxy:
    def __init__(self) -> None:
        self.cuts: list[tuple[str, frozenset[str]]] = []
        self.healed = 0

    def cut(self, mode: str, *, sources: set[str]) -> None:
        self.cuts.append((mode, frozenset(sources)))

    def heal(self) -> None:
        self.healed += 1


def _cluster(names: list[str]) -> tuple[Cluster, dict[str, RecordingProxy]]:
    cluster = Cluster(Path("/nonexistent"), len(names), swarm_key="00" * 32)
    proxies = {name: RecordingProxy() for name in names}
    proc: Any = None
    cluster.members = [Member(name, proc, proxies[name]) for name in names]  # type: ignore[arg-type]
    return cluster, proxies


def test_a_split_cuts_each_side_from_the_other_only() -> None:
    cluster, proxies = _cluster(["n0", "n1", "n2", "n3"])
    cluster.partition([["n0", "n1"], ["n2", "n3"]], mode="reset")
    assert proxies["n0"].cuts == [("reset", frozenset({"n2", "n3"}))]
    assert proxies["n3"].cuts == [("reset", frozenset({"n0", "n1"}))]


def test_a_node_in_two_groups_bridges_them_and_a_node_in_none_is_alone() -> None:
    cluster, proxies = _cluster(["n0", "n1", "n2", "n3", "n4"])
    cluster.partition([["n0", "n1", "n2"], ["n2", "n3"]])
    assert proxies["n2"].cuts == [("blackhole", frozenset({"n4"}))]  # the bridge reaches both
    assert proxies["n0"].cuts == [("blackhole", frozenset({"n3", "n4"}))]
    assert proxies["n3"].cuts == [("blackhole", frozenset({"n0", "n1", "n4"}))]
    assert proxies["n4"].cuts == [("blackhole", frozenset({"n0", "n1", "n2", "n3"}))]
    cluster.heal()
    assert all(p.healed == 1 for p in proxies.values())
