"""Cluster faults on recording proxies: which bytes each node's proxy stops for which client and
direction under splits, bridges, one-way and stacked rules and stalls; which links one reset
closes; which shaping and token buckets each proxy gets for a link, a node and a node's uplink
and downlink. Then clock skew: the start-up hook on a bare interpreter, and a real node that
stamps its events with the skewed clock, and with the right one after a restart."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from netsim.cluster import Cluster, Member
from netsim.nodeproc import http_offsets, http_publish, http_query
from netsim.proxy import LinkShape
from netsim.skew import SKEW_DIR, SKEW_ENV
from swarmnode.swarm.driver_config import ADVERTISE_ENV

Way = str  # "to_target" | "to_client"


class RecordingProxy:
    """Keeps the blocks, resets and link shapes the cluster hands it, like a TcpProxy would."""

    def __init__(self, name: str) -> None:
        self.address = f"proxy-of-{name}:1"
        self.blocks: dict[int, tuple[str, frozenset[str], str]] = {}
        self.healed = 0
        self.resets: list[frozenset[str]] = []
        self.shapes: dict[str, dict[Way, LinkShape]] = {}
        self.unblocked = asyncio.Event()
        self._seq = 0

    def block(self, mode: str, *, sources: frozenset[str], direction: str) -> int:
        self._seq += 1
        self.blocks[self._seq] = (mode, frozenset(sources), direction)
        return self._seq

    def unblock(self, *ids: int) -> None:
        for block_id in ids:
            del self.blocks[block_id]  # a KeyError would show a rule lifted twice
        self.unblocked.set()

    def heal(self) -> None:
        self.healed += 1
        self.blocks.clear()

    def reset(self, *, sources: frozenset[str]) -> None:
        self.resets.append(frozenset(sources))

    def shape_link(self, label: str, *, to_target: LinkShape, to_client: LinkShape) -> None:
        self.shapes[label] = {"to_target": to_target, "to_client": to_client}

    def stops(self, label: str, way: Way) -> bool:
        """Whether ``label``'s connections carry nothing ``way`` (a reset stops both ways)."""
        return any(
            label in sources and (mode == "reset" or direction in ("both", way))
            for mode, sources, direction in self.blocks.values()
        )


class FakeProc:
    def __init__(self) -> None:
        self.env: dict[str, str] = {}


def _cluster(count: int, **kwargs: Any) -> tuple[Cluster, dict[str, RecordingProxy]]:
    names = [f"n{i}" for i in range(count)]
    cluster = Cluster(Path("/nonexistent"), count, swarm_key="00" * 32, **kwargs)
    proxies = {name: RecordingProxy(name) for name in names}
    cluster.members = [
        Member(name, FakeProc(), proxies[name])  # type: ignore[arg-type]
        for name in names
    ]
    return cluster, proxies


def flows(proxies: dict[str, RecordingProxy], src: str, dst: str) -> bool:
    """Whether bytes from ``src`` reach ``dst``: the same on a connection ``src`` dialled (at
    ``dst``'s proxy, to_target) and on one ``dst`` dialled (at ``src``'s proxy, to_client)."""
    dialled_by_src = not proxies[dst].stops(src, "to_target")
    dialled_by_dst = not proxies[src].stops(dst, "to_client")
    assert dialled_by_src == dialled_by_dst, (src, dst)
    return dialled_by_src


def reach(proxies: dict[str, RecordingProxy]) -> set[tuple[str, str]]:
    return {(a, b) for a in proxies for b in proxies if a != b and flows(proxies, a, b)}


def pairs(*groups: list[str]) -> set[tuple[str, str]]:
    return {(a, b) for g in groups for a in g for b in g if a != b}


def test_a_split_cuts_each_side_from_the_other_only() -> None:
    cluster, proxies = _cluster(4)
    cluster.partition([["n0", "n1"], ["n2", "n3"]], mode="reset")
    assert reach(proxies) == pairs(["n0", "n1"], ["n2", "n3"])
    assert {mode for p in proxies.values() for mode, _, _ in p.blocks.values()} == {"reset"}
    assert len(cluster.rules) == 2  # one rule per ordered pair of sides, not per node pair


def test_a_node_in_two_groups_bridges_them_and_a_node_in_none_is_alone() -> None:
    cluster, proxies = _cluster(5)
    cluster.partition([["n0", "n1", "n2"], ["n2", "n3"]])
    assert reach(proxies) == pairs(["n0", "n1", "n2"], ["n2", "n3"])  # n4 reaches nobody
    cluster.heal()
    assert all(p.healed == 1 for p in proxies.values())
    assert reach(proxies) == pairs(list(proxies))
    assert cluster.rules == {}


def test_one_way_rules_stop_one_direction_and_stack() -> None:
    cluster, proxies = _cluster(4)
    everyone = pairs(list(proxies))
    n0_to_n1 = cluster.block(["n0"], ["n1"])
    assert reach(proxies) == everyone - {("n0", "n1")}  # n1 still reaches n0
    n2_to_01 = cluster.block(["n2"], ["n0", "n1"], mode="reset")
    # A reset closes the connections it touches: both ways, whatever the rule's direction.
    assert reach(proxies) == everyone - {("n0", "n1"), ("n2", "n0"), ("n2", "n1")} - {
        ("n0", "n2"),
        ("n1", "n2"),
    }
    cluster.unblock(n0_to_n1)
    assert flows(proxies, "n0", "n1")
    assert not flows(proxies, "n2", "n0")
    cluster.unblock(n2_to_01, n2_to_01)  # twice: the second is ignored
    assert reach(proxies) == everyone
    assert all(not p.blocks for p in proxies.values())


def test_a_partition_replaces_the_previous_one_and_keeps_other_rules() -> None:
    cluster, proxies = _cluster(4)
    cluster.block(["n3"], ["n0"])
    cluster.partition([["n0", "n1"], ["n2", "n3"]])
    cluster.partition([["n0", "n2"], ["n1", "n3"]])
    assert reach(proxies) == pairs(["n0", "n2"], ["n1", "n3"])
    cluster.partition([list(proxies)])  # one group: the partition is over, the rule is not
    assert reach(proxies) == pairs(list(proxies)) - {("n3", "n0")}
    with pytest.raises(KeyError, match="n9"):
        cluster.partition([["n0", "n9"]])


async def test_a_stall_blackholes_a_link_both_ways_and_ends_by_itself() -> None:
    cluster, proxies = _cluster(3)
    everyone = pairs(list(proxies))
    async with asyncio.timeout(10):
        rule = cluster.stall("n0", "n1", 0.05)
        assert reach(proxies) == everyone - {("n0", "n1"), ("n1", "n0")}
        assert {mode for mode, _, _ in proxies["n0"].blocks.values()} == {"blackhole"}
        await proxies["n0"].unblocked.wait()  # the scheduled release, not this test, ends it
        assert rule not in cluster.rules
    assert reach(proxies) == everyone
    cluster.stall("n1", "n2", 60.0)
    cluster.heal()  # ends the stall and its timer
    assert reach(proxies) == everyone
    assert not cluster._timers
    with pytest.raises(ValueError, match="itself"):
        cluster.stall("n1", "n1", 1.0)


def test_a_reset_closes_the_link_at_both_proxies_once() -> None:
    cluster, proxies = _cluster(3)
    cluster.reset("n0", "n2")
    assert proxies["n2"].resets == [frozenset({"n0"})]  # connections n0 dialled into n2
    assert proxies["n0"].resets == [frozenset({"n2"})]  # and those n2 dialled into n0
    assert proxies["n1"].resets == []
    assert all(not p.blocks for p in proxies.values())  # nothing refused afterwards


def _buckets(shape: LinkShape) -> list[int]:
    return [id(b) for b in shape.buckets]


def test_link_shaping_goes_to_both_proxies_with_one_bucket_per_direction() -> None:
    cluster, proxies = _cluster(3)
    cluster.shape_link("n0", "n1", delay_s=0.05, jitter_s=0.01, loss=0.1, rate_bps=1000.0)
    n0_to_n1 = proxies["n1"].shapes["n0"]["to_target"]  # n0 dialled n1
    also_n0_to_n1 = proxies["n0"].shapes["n1"]["to_client"]  # n1 dialled n0
    n1_to_n0 = proxies["n1"].shapes["n0"]["to_client"]
    for shape in (n0_to_n1, also_n0_to_n1, n1_to_n0):
        assert (shape.delay_s, shape.jitter_s, shape.loss) == (0.05, 0.01, 0.1)
    link_bucket = n0_to_n1.buckets[0]
    assert link_bucket is also_n0_to_n1.buckets[0]  # one cap for the direction, both proxies
    assert link_bucket is not n1_to_n0.buckets[0]  # and another for the way back
    assert link_bucket.rate_bps == 1000.0
    assert n1_to_n0.buckets[0].rate_bps == 1000.0
    assert "n2" not in proxies["n0"].shapes
    assert proxies["n2"].shapes == {}
    cluster.shape_link("n1", "n0")  # the defaults: unshaped again
    plain = proxies["n1"].shapes["n0"]["to_target"]
    assert (plain.delay_s, plain.loss, plain.buckets[0].rate_bps) == (0.0, 0.0, None)
    with pytest.raises(ValueError, match="loss"):
        cluster.shape_link("n0", "n1", loss=1.5)
    with pytest.raises(KeyError):
        cluster.shape_link("n0", "n7")


def test_a_node_uplink_is_one_bucket_over_every_connection_it_sends_on() -> None:
    cluster, proxies = _cluster(3)
    cluster.cap_uplink("n0", 5000.0)
    cluster.cap_downlink("n0", 7000.0)
    up = [  # what n0 sends: on connections it dialled, and on those dialled into it
        *(proxies[x].shapes["n0"]["to_target"] for x in ("n1", "n2")),
        *(proxies["n0"].shapes[x]["to_client"] for x in ("n1", "n2")),
    ]
    down = [
        *(proxies[x].shapes["n0"]["to_client"] for x in ("n1", "n2")),
        *(proxies["n0"].shapes[x]["to_target"] for x in ("n1", "n2")),
    ]
    uplinks = {b for shape in up for b in shape.buckets if b.rate_bps == 5000.0}
    downlinks = {b for shape in down for b in shape.buckets if b.rate_bps == 7000.0}
    assert len(uplinks) == 1  # one shared bucket ...
    assert len(downlinks) == 1
    [uplink], [downlink] = uplinks, downlinks
    assert all(uplink in shape.buckets for shape in up)  # ... drawn on by every send of n0
    assert all(uplink not in shape.buckets for shape in down)
    assert all(downlink in shape.buckets for shape in down)
    assert all(downlink not in shape.buckets for shape in up)
    cluster.cap_uplink("n0", None)
    assert uplink.rate_bps is None


def test_shaping_a_node_shapes_all_its_links_and_only_those() -> None:
    cluster, proxies = _cluster(3)
    cluster.shape_node("n2", delay_s=0.2)
    for other in ("n0", "n1"):
        assert proxies["n2"].shapes[other]["to_client"].delay_s == 0.2
        assert proxies[other].shapes["n2"]["to_target"].delay_s == 0.2
    assert "n1" not in proxies["n0"].shapes


def test_a_clock_skew_goes_into_the_node_environment_for_its_next_start() -> None:
    cluster, _ = _cluster(2, env={"PYTHONPATH": "/mine"}, clock_skew={"n1": 5.0})
    skewed = cluster.member("n1")
    cluster.set_clock_skew("n1", 3600.0)
    env = skewed.proc.env
    assert env[SKEW_ENV] == "3600.0"
    assert env["PYTHONPATH"] == f"{SKEW_DIR}{os.pathsep}/mine"
    assert env[ADVERTISE_ENV] == "proxy-of-n1:1"
    cluster.set_clock_skew("n1", None)
    assert SKEW_ENV not in skewed.proc.env
    assert skewed.proc.env["PYTHONPATH"] == "/mine"
    with pytest.raises(KeyError):
        cluster.set_clock_skew("n2", 1.0)  # a two-node cluster has no n2


def test_a_clock_skew_set_before_the_start_is_kept_for_it() -> None:
    cluster = Cluster(Path("/nonexistent"), 2, swarm_key="00" * 32)
    cluster.set_clock_skew("n1", -30.0)
    proxy: Any = RecordingProxy("n1")
    assert cluster._node_env("n1", proxy)[SKEW_ENV] == "-30.0"
    assert SKEW_ENV not in cluster._node_env("n0", proxy)


def test_the_skew_hook_moves_wall_time_and_leaves_monotonic_time() -> None:
    probe = "import time; print(time.time(), time.time_ns(), time.monotonic())"
    env = {**os.environ, SKEW_ENV: "-7200", "PYTHONPATH": str(SKEW_DIR)}
    before = time.time(), time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    after = time.time(), time.monotonic()
    assert out.returncode == 0, out.stderr
    wall, wall_ns, mono = (float(x) for x in out.stdout.split())
    assert before[0] - 7200 <= wall <= after[0] - 7200
    assert before[0] - 7200 <= wall_ns / 1e9 <= after[0] - 7200
    assert before[1] <= mono <= after[1]  # the system's monotonic clock, unskewed


async def _latest_timestamp_s(session: aiohttp.ClientSession, member: Member, tag: str) -> float:
    """Publish one event on ``member`` and return its timestamp (seconds since the epoch)."""
    data = [{"semantics": "skew", "name": tag, "payload": {}}]
    assert await http_publish(session, member.proc, data) == 201
    offsets = await http_offsets(session, member.proc)
    body = {"subscriptions": [{}], "upperBound": offsets, "order": "lamport"}
    events = [e for e in await http_query(session, member.proc, body) if e["stream"]["name"] == tag]
    return float(events[-1]["timestamp"]) / 1e6


async def test_a_node_started_with_a_clock_skew_stamps_events_that_far_off(tmp_path: Path) -> None:
    skew = 3600.0
    key = hashlib.blake2s(b"netsim/test-cluster/skew").hexdigest()
    async with (
        asyncio.timeout(100),
        Cluster(tmp_path, 1, swarm_key=key, clock_skew={"n0": skew}) as cluster,
        aiohttp.ClientSession() as session,
    ):
        [node] = cluster.members
        stamped = await _latest_timestamp_s(session, node, "skewed")
        assert abs(stamped - time.time() - skew) < 30, stamped - time.time()
        cluster.set_clock_skew("n0", None)
        await cluster.kill("n0")
        await cluster.restart("n0")
        stamped = await _latest_timestamp_s(session, node, "right")
        assert abs(stamped - time.time()) < 30, stamped - time.time()


async def test_connections_a_node_makes_while_it_starts_are_labelled_with_it(
    tmp_path: Path,
) -> None:
    """n1 dials its seed n0 while it starts, before the cluster knows it is ready: that
    connection must carry n1's label, or shaping and blocks keyed by name would miss it."""
    key = hashlib.blake2s(b"netsim/test-cluster/labels").hexdigest()
    async with asyncio.timeout(100), Cluster(tmp_path, 2, swarm_key=key) as cluster:
        seed = cluster.member("n0").proxy
        await seed.wait_until(lambda p: p.open_links >= 1)
        await seed.settled()
        assert seed.open_labels
        assert set(seed.open_labels) == {"n1"}
