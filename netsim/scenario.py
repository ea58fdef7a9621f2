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

from netsim.blobs import BlobRead, BlobSpec, read_blob, upload_blob, wait_local
from netsim.cluster import Cluster, Member
from netsim.invariants import Check, History, StateSeen
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


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, *, nodes: int, summary: str, env: dict[str, str] | None = None
) -> Callable[[Callable[[Run], Awaitable[None]]], Callable[[Run], Awaitable[None]]]:
    """Register ``script`` under ``name`` (``python -m netsim run NAME``)."""

    def register(script: Callable[[Run], Awaitable[None]]) -> Callable[[Run], Awaitable[None]]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(name, summary, nodes, script, dict(env or {}))
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
        # Checks of this scenario's own, run over the history after the standard ones.
        self.checks: list[Callable[[History], Check]] = []
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


# flaky-links: how long each arrangement of cut links lasts, and how many there are.
FLAKY_STEP_S = 0.5
FLAKY_STEPS = 10


@scenario(
    "flaky-links",
    nodes=8,
    summary=f"{FLAKY_STEPS} times, every {FLAKY_STEP_S} s, a random third of the nodes loses all "
    "its links (resets) while two random nodes write; then every link steady",
    env=FAST_PROBES,
)
async def flaky_links(run: Run) -> None:
    await run.begin()
    names = [m.name for m in run.cluster]
    for step in range(FLAKY_STEPS):
        cut = run.rng.sample(names, k=max(1, len(names) // 3))
        rest = [n for n in names if n not in cut]
        run.cluster.partition([[n] for n in cut] + [rest], mode="reset")
        await run.publish(run.members(run.rng.sample(names, 2)), f"flaky{step}")
        # The fault's duration, not a wait for anything: links flap on a schedule.
        await asyncio.sleep(FLAKY_STEP_S)
    run.cluster.heal()
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
