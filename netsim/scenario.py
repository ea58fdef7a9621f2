"""Scenarios: seeded, repeatable fault scripts written as code, and what they can use.

A scenario is an ``async def`` taking a ``Run`` and registered with ``@scenario``. The runner
(``netsim/runner.py``) has started the cluster before it and, after it returns, waits for every
live node to converge, then checks the invariants. A scenario ends its faults with
``run.faults_over()``: convergence time is measured from there.

Writing your own::

    @scenario("my-split", nodes=6, summary="three ways apart, then whole")
    async def my_split(run: Run) -> None:
        await run.all_alive()
        await run.subscribe_all()
        groups = run.split(3)
        run.cluster.partition(groups)
        await run.publish_everywhere("during")
        run.cluster.heal()
        run.faults_over()

Everything random comes from ``run.rng`` (seeded by ``--seed``), so a seed replays the same
choices; the timing of real processes on a real machine still varies run to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from netsim.blobs import BlobRead, BlobSpec, blob_is_known, read_blob, upload_blob, wait_local
from netsim.cluster import Cluster, Member
from netsim.invariants import Check, History, StateSeen, never_marked_dead
from netsim.nodeproc import http_offsets, http_publish
from netsim.observe import node_status, peer_states, wait_holds, wait_states

__all__ = ["SCENARIOS", "Run", "Scenario", "scenario"]

# Events per node per publish round: a batch, so a round is one 201 per node.
EVENTS_PER_ROUND = 5
# SWIM probing every 0.2 s instead of 1 s: failures are detected in seconds, so scenarios that
# wait for "dead" stay short.
FAST_PROBES = {"SWARMNODE_PROBE_PERIOD": "0.2"}


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    nodes: int  # the default size
    script: Callable[[Run], Awaitable[None]]
    env: dict[str, str] = field(default_factory=dict)
    clock_skew: dict[str, float] = field(default_factory=dict)  # node name → seconds off


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str,
    *,
    nodes: int,
    summary: str,
    env: dict[str, str] | None = None,
    clock_skew: dict[str, float] | None = None,
) -> Callable[[Callable[[Run], Awaitable[None]]], Callable[[Run], Awaitable[None]]]:
    """Register ``script`` under ``name`` (``python -m netsim run NAME``). ``env`` is set for
    every node; ``clock_skew`` runs some nodes' wall clocks off by so many seconds."""

    def register(script: Callable[[Run], Awaitable[None]]) -> Callable[[Run], Awaitable[None]]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(
            name, summary, nodes, script, dict(env or {}), dict(clock_skew or {})
        )
        return script

    return register


class Run:
    """What a scenario works with: the cluster, an HTTP session, the seeded RNG, the history the
    invariants are checked against, and a few steps most scenarios share."""

    def __init__(
        self,
        cluster: Cluster,
        session: aiohttp.ClientSession,
        rng: random.Random,
        *,
        deadline_s: float,
        progress: Callable[[str], None],
    ) -> None:
        self.cluster = cluster
        self.session = session
        self.rng = rng
        self.deadline_s = deadline_s
        self.progress = progress
        self.history = History()
        self.marks: dict[str, float] = {}
        # Checks of this scenario's own: run over the history after the standard ones, or
        # already decided by the script.
        self.checks: list[Callable[[History], Check]] = []
        self.results: list[Check] = []
        self._rounds = 0
        self._blobs = 0
        self._subscriptions: list[asyncio.Task[None]] = []
        self._started = time.monotonic()

    # -- steps -------------------------------------------------------------------------------------

    async def all_alive(self, members: Sequence[Member] | None = None) -> None:
        """Wait until each of ``members`` (default: the live ones) sees every other as alive."""
        group = list(members) if members is not None else self.cluster.live()
        ids = [m.node_id for m in group]

        def alive(state: str | None) -> bool:
            return state == "alive"

        async with asyncio.timeout(self.deadline_s):
            await asyncio.gather(
                *(
                    wait_states(self.session, m.proc, {p: alive for p in ids if p != m.node_id})
                    for m in group
                )
            )

    async def sees_dead(self, watchers: Sequence[Member], gone: Sequence[Member]) -> None:
        """Wait until every watcher marks every one of ``gone`` dead."""

        def dead(state: str | None) -> bool:
            return state == "dead"

        want: dict[str, Callable[[str | None], bool]] = {m.node_id: dead for m in gone}
        async with asyncio.timeout(self.deadline_s):
            await asyncio.gather(*(wait_states(self.session, w.proc, want) for w in watchers))

    async def publish(self, members: Sequence[Member], tag: str) -> None:
        """One batch of EVENTS_PER_ROUND events on each of ``members``, recorded when acked."""
        self._rounds += 1
        round_no = self._rounds

        async def one(m: Member) -> None:
            ids = [f"{m.name}-{tag}-{round_no}-{k}" for k in range(EVENTS_PER_ROUND)]
            data = [{"semantics": "netsim", "name": tag, "payload": {"id": i}} for i in ids]
            if await http_publish(self.session, m.proc, data) == 201:
                self.history.acked(m.node_id, ids)
                await self._reached(m)

        await asyncio.gather(*(one(m) for m in members))

    async def publish_everywhere(self, tag: str) -> None:
        await self.publish(self.cluster.live(), tag)

    async def upload(self, m: Member, size: int, tag: str) -> BlobSpec:
        """Upload a new blob of ``size`` bytes on ``m``; recorded when acknowledged."""
        self._blobs += 1
        spec = BlobSpec.make(f"{m.name}-{tag}-{self._blobs}-{self.rng.getrandbits(64):016x}", size)
        status, handle = await upload_blob(self.session, m.proc, spec, semantics="netsim")
        if status == 201 and handle is not None:
            self.history.blob_acked(m.name, spec, handle)
            await self._reached(m)
        return spec

    async def _reached(self, m: Member) -> None:
        """Record how far ``m``'s own stream got right after an acknowledged write."""
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, AssertionError):
            offsets = await http_offsets(self.session, m.proc)
            if m.node_id in offsets:
                self.history.reached(m.node_id, offsets[m.node_id])

    async def read(self, m: Member, spec: BlobSpec) -> BlobRead:
        """GET ``spec`` from ``m`` (hashed as it streams); recorded for the served-bytes check."""
        result = await read_blob(self.session, m.proc, m.name, spec.handle)
        self.history.read(result)
        return result

    async def blobs_everywhere_now(
        self, members: Sequence[Member] | None = None, blobs: Sequence[BlobSpec] | None = None
    ) -> None:
        """Wait until each of ``members`` (default: the live ones) holds each of ``blobs``
        (default: every acknowledged one)."""
        group = list(members) if members is not None else self.cluster.live()
        handles = [b.handle for b in blobs] if blobs is not None else list(self.history.blobs)
        async with asyncio.timeout(self.deadline_s):
            await asyncio.gather(
                *(wait_local(self.session, m.proc, h) for m in group for h in handles)
            )

    def watch_states(self) -> None:
        """Record every membership state each live node reports, until the run ends (for
        checks such as ``never_marked_dead``)."""
        for m in self.cluster.live():
            self._subscriptions.append(asyncio.create_task(self._watch(m)))

    async def subscribe_all(self) -> None:
        """A subscription on every live node, recorded until the run ends (or its node dies)."""
        for m in self.cluster.live():
            self.subscribe(m)

    def subscribe(self, m: Member) -> None:
        """A subscription on ``m`` from offset 0 (e.g. again after a restart)."""
        self._subscriptions.append(asyncio.create_task(self._subscribe(m)))

    async def begin(self) -> None:
        """The usual start: every node sees every other alive, a subscription on each, and one
        write on each."""
        await self.all_alive()
        await self.subscribe_all()
        await self.publish_everywhere("before")

    def split(self, parts: int) -> list[list[str]]:
        """The node names dealt into ``parts`` non-empty groups at random (seeded)."""
        names = [m.name for m in self.cluster]
        if not 1 <= parts <= len(names):
            raise ValueError(f"cannot split {len(names)} nodes into {parts} groups")
        self.rng.shuffle(names)
        return [sorted(names[i::parts]) for i in range(parts)]

    def members(self, names: Collection[str]) -> list[Member]:
        return [m for m in self.cluster if m.name in names]

    async def converged_now(self) -> None:
        """Wait until every live node holds every acknowledged event (faults may still be on)."""
        want = self.history.upper_bounds()
        async with asyncio.timeout(self.deadline_s):
            await asyncio.gather(
                *(wait_holds(self.session, m.proc, want) for m in self.cluster.live())
            )

    async def status(self, m: Member) -> dict[str, Any]:
        return await node_status(self.session, m.proc)

    async def status_until(self, m: Member, check: Callable[[dict[str, Any]], bool]) -> None:
        """Wait, within the deadline, until ``m``'s status satisfies ``check`` (a long poll: the
        status generation moves with membership and with every chunk a download stores)."""
        async with asyncio.timeout(self.deadline_s):
            body = await node_status(self.session, m.proc)
            while not check(body):
                body = await node_status(self.session, m.proc, after=body["generation"])

    async def until(self, check: Callable[[], Awaitable[bool]], poll_s: float = 0.05) -> None:
        """Wait, within the deadline, until ``check()`` holds: for states no node notifies
        (e.g. how far a download got), asked every ``poll_s``."""
        async with asyncio.timeout(self.deadline_s):
            while not await check():  # noqa: ASYNC110 (nothing to wait on but the answer)
                await asyncio.sleep(poll_s)

    def elapsed(self, since: str) -> float:
        """Seconds since the mark ``since``."""
        return time.monotonic() - self.marks[since]

    def mark(self, what: str) -> None:
        self.marks[what] = time.monotonic()
        self.progress(what)

    def faults_over(self) -> None:
        """The last fault is lifted: convergence is timed from here."""
        self.mark("faults over")

    async def stop_subscriptions(self) -> None:
        for task in self._subscriptions:
            task.cancel()
        for task in self._subscriptions:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._subscriptions.clear()

    async def _watch(self, m: Member) -> None:
        last: dict[str, str] = {}
        after: int | None = None
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, AssertionError):
            while True:
                body = await node_status(self.session, m.proc, after=after)
                after = body["generation"]
                now = time.monotonic() - self._started
                for peer, state in peer_states(body).items():
                    if last.get(peer) != state:
                        last[peer] = state
                        self.history.states.append(StateSeen(m.name, peer, state, now))

    async def _subscribe(self, m: Member) -> None:
        label = f"{m.name}#{len(self._subscriptions)}"
        body: dict[str, Any] = {"subscriptions": [{}]}
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            async with self.session.post(
                m.proc.events_url + "/subscribe",
                json=body,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
            ) as resp:
                if resp.status != 200:
                    return
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    self.history.delivered(label, event["stream"]["source"], event["offset"])


@scenario(
    "partition-heal",
    nodes=12,
    summary="split in two at random, both halves keep writing until each marks the other dead, "
    "heal, one more write on each side",
    env=FAST_PROBES,
)
async def partition_heal(run: Run) -> None:
    await run.begin()
    left, right = (run.members(g) for g in run.split(2))
    run.cluster.partition([[m.name for m in left], [m.name for m in right]])
    run.mark("partitioned")
    await run.publish_everywhere("during")
    await asyncio.gather(run.sees_dead(left, right), run.sees_dead(right, left))
    run.mark("each side marked the other dead")
    run.cluster.heal()
    run.faults_over()
    await run.publish([left[0], right[0]], "after")


@scenario(
    "crash-restart",
    nodes=6,
    summary="kill -9 a random node (not the first seed), keep writing on the others until they "
    "mark it dead, restart it on its data dir, one more write everywhere",
    env=FAST_PROBES,
)
async def crash_restart(run: Run) -> None:
    await run.begin()
    victim = run.rng.choice(run.cluster.members[1:])
    await run.cluster.kill(victim.name)
    run.mark(f"killed {victim.name}")
    await run.publish_everywhere("while down")
    await run.sees_dead(run.cluster.live(), [victim])
    run.mark(f"{victim.name} marked dead")
    await run.cluster.restart(victim.name)
    run.mark(f"restarted {victim.name}")
    run.subscribe(victim)
    run.faults_over()
    await run.publish_everywhere("after")


@scenario(
    "bridge",
    nodes=7,
    summary="two halves that reach each other only through one bridge node: writes on both "
    "sides must arrive everywhere through it; then heal",
    env=FAST_PROBES,
)
async def bridge(run: Run) -> None:
    await run.begin()
    names = [m.name for m in run.cluster]
    run.rng.shuffle(names)
    hub, rest = names[0], names[1:]
    left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    run.cluster.partition([[*left, hub], [*right, hub]])
    run.mark(f"bridged by {hub}")
    await run.publish(run.members(left[:1] + right[:1]), "across")
    await run.converged_now()
    run.mark("converged through the bridge")
    run.cluster.heal()
    run.faults_over()
    await run.publish_everywhere("after")


# flaky-links: how long each arrangement of faults lasts, how many there are, and the latency,
# jitter and loss every link has meanwhile (loss as TCP shows it: a read held back by a 200 ms
# retransmission timeout, netsim/proxy.py).
FLAKY_STEP_S = 0.5
FLAKY_STEPS = 10
FLAKY_DELAY_S = 0.005
FLAKY_JITTER_S = 0.02
FLAKY_LOSS = 0.02


@scenario(
    "flaky-links",
    nodes=8,
    summary=f"every link {FLAKY_DELAY_S * 1000:.0f} ms + up to {FLAKY_JITTER_S * 1000:.0f} ms "
    f"each way with {FLAKY_LOSS:.0%} loss; {FLAKY_STEPS} times, every {FLAKY_STEP_S} s, either a "
    "random third of the nodes loses all its links (resets), or random links stall for a second, "
    "or random links are reset once, while two random nodes write; then every link steady",
    env=FAST_PROBES,
)
async def flaky_links(run: Run) -> None:
    await run.begin()
    names = [m.name for m in run.cluster]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    for a, b in pairs:
        run.cluster.shape_link(
            a, b, delay_s=FLAKY_DELAY_S, jitter_s=FLAKY_JITTER_S, loss=FLAKY_LOSS
        )
    for step in range(FLAKY_STEPS):
        fault = run.rng.choice(["isolate", "stall", "reset"])
        if fault == "isolate":
            cut = run.rng.sample(names, k=max(1, len(names) // 3))
            rest = [n for n in names if n not in cut]
            run.cluster.partition([[n] for n in cut] + [rest], mode="reset")
        else:
            run.cluster.partition([names])  # the previous step's isolation ends
            for a, b in run.rng.sample(pairs, k=max(1, len(pairs) // 4)):
                if fault == "stall":
                    run.cluster.stall(a, b, 2 * FLAKY_STEP_S)
                else:
                    run.cluster.reset(a, b)
        await run.publish(run.members(run.rng.sample(names, 2)), f"flaky{step}")
        # The fault's duration, not a wait for anything: links flap on a schedule.
        await asyncio.sleep(FLAKY_STEP_S)
    run.cluster.heal()
    for a, b in pairs:
        run.cluster.shape_link(a, b)
    run.faults_over()
    await run.publish_everywhere("after")


# split-brain: the size of the blob each side uploads while apart.
SPLIT_BLOB_BYTES = 4 << 20


@scenario(
    "split-brain",
    nodes=9,
    summary="split three ways at random; every side writes events and uploads a blob, which "
    "reach its own side, until each side marks the others dead; heal; one more write everywhere",
    env=FAST_PROBES,
)
async def split_brain(run: Run) -> None:
    await run.begin()
    groups = run.split(3)
    run.cluster.partition(groups)
    run.mark("split three ways")
    sides = [run.members(g) for g in groups]
    await run.publish_everywhere("split")
    blobs = await asyncio.gather(
        *(run.upload(side[0], SPLIT_BLOB_BYTES, "split") for side in sides)
    )
    await asyncio.gather(
        *(run.blobs_everywhere_now(side, [blob]) for side, blob in zip(sides, blobs, strict=True))
    )
    run.mark("each side holds its own blob")
    await asyncio.gather(
        *(
            run.sees_dead(side, [m for other in sides if other is not side for m in other])
            for side in sides
        )
    )
    run.mark("each side marked the others dead")
    await run.publish_everywhere("split2")
    run.cluster.heal()
    run.faults_over()
    await run.publish_everywhere("after")


# churn: how many nodes leave and come back, and how long each stays away (seconds).
CHURN_STEPS = 6
CHURN_AWAY_S = (0.3, 2.0)
CHURN_BLOB_BYTES = 1 << 20


@scenario(
    "churn",
    nodes=8,
    summary=f"{CHURN_STEPS} times: one or two nodes leave (kill -9 or a clean stop, at random) "
    "while the others write and upload, and come back after 0.3-2 s and write at once",
    env=FAST_PROBES,
)
async def churn(run: Run) -> None:
    """Node 0 stays (it has no seed to rejoin through), and two nodes leave together only when
    neither is the other's seed: a restarted node rejoins through the node before it."""
    await run.begin()
    names = [m.name for m in run.cluster][1:]
    for step in range(CHURN_STEPS):
        first = run.rng.choice(names)
        away = [first]
        others = [n for n in names if abs(int(n[1:]) - int(first[1:])) > 1]
        if others and run.rng.random() < 0.5:
            away.append(run.rng.choice(others))
        for name in away:
            if run.rng.random() < 0.5:
                await run.cluster.kill(name)
            else:
                await run.cluster.member(name).proc.stop()
        run.mark(f"step {step}: {', '.join(away)} left")
        staying = run.cluster.live()
        await run.publish(staying, f"churn{step}")
        await run.upload(run.rng.choice(staying), CHURN_BLOB_BYTES, f"churn{step}")
        # How long the nodes stay away: the fault's duration, not a wait for anything.
        await asyncio.sleep(run.rng.uniform(*CHURN_AWAY_S))
        for name in away:
            await run.cluster.restart(name)
            run.subscribe(run.cluster.member(name))
        await run.publish(run.members(away), f"back{step}")
    run.faults_over()


# blob-swarm: every node's uplink cap R, and the blob's size.
SWARM_UPLINK_BPS = 8 << 20
SWARM_BLOB_BYTES = 64 << 20


@scenario(
    "blob-swarm",
    nodes=8,
    summary=f"every node's uplink capped at R = {SWARM_UPLINK_BPS >> 20} MiB/s; one uploads "
    f"{SWARM_BLOB_BYTES >> 20} MiB; it must reach all N nodes within 2 x size / R (a lone "
    "source would need (N-1) x size / R)",
)
async def blob_swarm(run: Run) -> None:
    await run.begin()
    for m in run.cluster:
        run.cluster.cap_uplink(m.name, SWARM_UPLINK_BPS)
    source = run.rng.choice(run.cluster.members)
    run.mark(f"uplinks capped; uploading on {source.name}")
    spec = await run.upload(source, SWARM_BLOB_BYTES, "swarm")
    run.mark("upload acknowledged")
    await run.blobs_everywhere_now(blobs=[spec])
    took = run.elapsed("upload acknowledged")
    run.mark("blob on every node")
    bound = 2 * SWARM_BLOB_BYTES / SWARM_UPLINK_BPS
    lone = (len(run.cluster.members) - 1) * SWARM_BLOB_BYTES / SWARM_UPLINK_BPS
    run.results.append(
        Check(
            "blob on all nodes within 2 x size / R",
            took <= bound,
            f"{took:.2f} s for {len(run.cluster.members)} nodes; bound {bound:.2f} s, a lone "
            f"source {lone:.2f} s ({took / (SWARM_BLOB_BYTES / SWARM_UPLINK_BPS):.2f} x size / R)",
        )
    )
    for m in run.cluster:
        run.cluster.cap_uplink(m.name, None)
    run.faults_over()


# crash-mid-transfer: the uplink cap that makes the transfer last, the blob, and how much of it
# the victim's own persisted bitmap must vouch for when it is killed (a node persists what it
# verified every second, transfer_config.flush_interval_s: killed before that, it would start
# again from zero, which is right but tests no resume).
CRASH_UPLINK_BPS = 2 << 20
CRASH_BLOB_BYTES = 24 << 20
CRASH_AT_FRACTION = 0.25


@scenario(
    "crash-mid-transfer",
    nodes=5,
    summary=f"uplinks capped at {CRASH_UPLINK_BPS >> 20} MiB/s; one node uploads "
    f"{CRASH_BLOB_BYTES >> 20} MiB; a fetching node is killed -9 a quarter of the way in while "
    "another is read mid-download, then restarted: it resumes and every copy is byte-exact",
    env=FAST_PROBES,
)
async def crash_mid_transfer(run: Run) -> None:
    await run.begin()
    for m in run.cluster:
        run.cluster.cap_uplink(m.name, CRASH_UPLINK_BPS)
    source, victim, reader = run.rng.sample(run.cluster.members[1:], 3)
    spec = await run.upload(source, CRASH_BLOB_BYTES, "crash")
    run.mark(f"uploaded on {source.name}")

    async def known_to_reader() -> bool:
        return await blob_is_known(run.session, reader.proc, spec.handle)

    # A read on another fetcher, as soon as it knows the blob, streams the bytes as they arrive
    # and verify.
    await run.until(known_to_reader)
    read = asyncio.create_task(run.read(reader, spec))

    def durable_enough(body: dict[str, Any]) -> bool:
        rows = [t for t in body["transfers"] if t["handle"] == spec.handle]
        if not rows and body["transferTotals"].get("completed"):
            raise RuntimeError(f"{victim.name} finished the download before it could be killed")
        return bool(rows) and rows[0]["durableBytes"] >= CRASH_AT_FRACTION * spec.size

    await run.status_until(victim, durable_enough)
    await run.cluster.kill(victim.name)
    run.mark(f"killed {victim.name} mid-download")
    await run.publish_everywhere("while down")
    await run.cluster.restart(victim.name)
    run.subscribe(victim)
    run.mark(f"restarted {victim.name}")
    for m in run.cluster:
        run.cluster.cap_uplink(m.name, None)
    run.faults_over()
    await run.blobs_everywhere_now([victim], [spec])
    totals = (await run.status(victim))["transferTotals"]
    resumed = int(totals.get("resumedBytes", 0))
    run.results.append(
        Check(
            "the killed node resumed its download",
            resumed > 0,
            f"{victim.name} resumed {resumed:,} of {spec.size:,} bytes from its partial file",
        )
    )
    async with asyncio.timeout(run.deadline_s):
        got = await read
    run.results.append(
        Check(
            "a read during the download got the whole blob",
            got.complete and got.length == spec.size,
            f"{reader.name} streamed {got.length:,} bytes, status {got.status} {got.error}",
        )
    )
    await run.publish_everywhere("after")


# slow-node: one node's links (each way) and how long the others keep working with it. A round
# trip of 0.5-0.8 s, plus retransmission stalls, outlasts SWIM's 0.5 s direct-probe timeout:
# probes of it fail and it is suspected now and then; it must refute every suspicion in time.
SLOW_DELAY_S = 0.25
SLOW_JITTER_S = 0.15
SLOW_LOSS = 0.03
SLOW_RATE_BPS = 1 << 20
SLOW_FOR_S = 20.0  # twenty SWIM periods at production timers: each node probes it a few times
SLOW_ROUND_EVERY_S = 1.0


@scenario(
    "slow-node",
    nodes=6,
    summary=f"one node's links get {SLOW_DELAY_S * 1000:.0f} ms + up to "
    f"{SLOW_JITTER_S * 1000:.0f} ms each way, {SLOW_LOSS:.0%} of reads held by a "
    f"retransmission timeout and {SLOW_RATE_BPS >> 20} MiB/s, with production SWIM timers, "
    f"for {SLOW_FOR_S:.0f} s while everyone writes; nobody may ever mark it dead",
)
async def slow_node(run: Run) -> None:
    await run.begin()
    slow = run.rng.choice(run.cluster.members)
    run.watch_states()
    run.cluster.shape_node(
        slow.name,
        delay_s=SLOW_DELAY_S,
        jitter_s=SLOW_JITTER_S,
        loss=SLOW_LOSS,
        rate_bps=SLOW_RATE_BPS,
    )
    run.mark(f"{slow.name} slowed")
    run.checks.append(lambda h: never_marked_dead(h, {slow.node_id: slow.name}))
    await run.upload(slow, 1 << 20, "from the slow node")
    rounds = 0
    while run.elapsed(f"{slow.name} slowed") < SLOW_FOR_S:
        await run.publish_everywhere(f"slow{rounds}")
        rounds += 1
        # The writers' pace, not a wait for anything.
        await asyncio.sleep(SLOW_ROUND_EVERY_S)
    await run.converged_now()
    run.mark("converged with the slow node still slow")
    run.cluster.shape_node(slow.name)
    run.faults_over()


@scenario(
    "clock-skew",
    nodes=5,
    summary="three nodes' wall clocks are off (+1 h, -1 h, +45 s); everyone writes, one node "
    "restarts; events carry their node's clock and still converge in order",
    env=FAST_PROBES,
    clock_skew={"n1": 3600.0, "n2": -3600.0, "n3": 45.0},
)
async def clock_skew(run: Run) -> None:
    await run.begin()
    await run.publish_everywhere("skewed")
    restarted = run.rng.choice(run.cluster.members[1:])
    await run.cluster.kill(restarted.name)
    await run.cluster.restart(restarted.name)
    run.subscribe(restarted)
    run.mark(f"restarted {restarted.name}")
    run.faults_over()
    await run.publish_everywhere("after")
    await run.converged_now()
    run.results.append(await _skew_shows(run))


async def _skew_shows(run: Run) -> Check:
    """The skew was real: each node's events, read on node 0, carry its clock's offset."""
    reader = run.cluster.members[0].proc  # everything is read on n0
    events = await wait_holds(run.session, reader, run.history.upper_bounds())
    wall = time.time()
    problems, seen = [], []
    for m in run.cluster:
        want = SCENARIOS["clock-skew"].clock_skew.get(m.name, 0.0)
        stamps = [e["timestamp"] / 1e6 for e in events if e["stream"]["source"] == m.node_id]
        if not stamps:
            problems.append(f"no events of {m.name}")
            continue
        offset = max(stamps) - wall
        seen.append(f"{m.name} {offset:+.0f} s")
        # Its newest event is at most the run's length old, as its own clock tells it.
        if not want - run.deadline_s * 3 <= offset <= want + 5:
            problems.append(
                f"{m.name}'s newest event is {offset:+.0f} s off, not about {want:+.0f}"
            )
    return Check(
        "events carry their node's skewed clock",
        not problems,
        "; ".join(problems) or ", ".join(seen),
    )


@scenario(
    "one-way",
    nodes=6,
    summary="asymmetric partition: a random third of the nodes still reach the rest, but hear "
    "nothing back, until the others mark them dead; heal; everything converges",
    env=FAST_PROBES,
)
async def one_way(run: Run) -> None:
    await run.begin()
    names = [m.name for m in run.cluster]
    deaf = run.rng.sample(names, k=max(1, len(names) // 3))
    rest = [n for n in names if n not in deaf]
    run.cluster.block(rest, deaf)
    run.mark(f"{', '.join(deaf)} hear nothing from the rest")
    await run.publish_everywhere("one-way")
    await run.sees_dead(run.members(rest), run.members(deaf))
    run.mark("the rest marked them dead")
    run.cluster.heal()
    run.faults_over()
    await run.publish_everywhere("after")
