"""Membership side by side with Serf (memberlist): convergence and crash detection at the same N.

Both systems run as real processes on loopback in the same run, a trial of each per N and run, so
machine load drifts over both alike. In a trial, N agents start: the first, then the other N-1 at
once, each told only the first (swarmnode ``--peers``, Serf ``-join``). Start-up and convergence
are measured one system at a time (Serf's converged agents idle meanwhile); then both victims are
killed together and the two detection waits, bound by timers, run at once (``--sequential`` runs
the trials apart, about a minute slower in full mode). Times are read from outside, like an
operator would, by polling every agent about every ``POLL_S`` seconds (swarmnode:
``GET /api/v1/node/status``; Serf: the ``members`` command of its msgpack RPC):

- **converge**: from the first start until every agent has seen all N alive (each agent's first
  such poll; the last of these). Process start-up is in it, so **settle** (from the last agent
  up until converged) is reported apart: a Python node takes about a second to import, a Go
  binary a few milliseconds.
- **detect**: ``kill -9`` of the last agent (never the seed), until every other agent shows it
  dead (swarmnode ``dead``, Serf ``failed``). Also the first agent to show it dead, and for
  swarmnode the first to show it ``suspect`` (Serf does not expose memberlist's suspicion).

Neither system is tuned: detection time is mostly their timer settings (probe period, suspicion
timeout), recorded in each figure's params.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import msgpack

from bench.figures import figure, progress, series, write_report
from bench.swarm_procs import SWARM_KEY, status
from netsim.nodeproc import NodeProcess
from swarmnode.swarm.driver_config import PROBE_PERIOD_ENV
from swarmnode.swarm.membership_types import MembershipConfig, suspicion_timeout

__all__ = ["SerfAgent", "SwarmAgent", "Trial", "main", "measure", "parse_args"]

POLL_S = 0.1
START_TIMEOUT_S = 60.0
DETECT_TIMEOUT_S = 120.0
SERF_BASELINE = "Serf 0.8.2 (memberlist), same N"
# memberlist.DefaultLANConfig plus serf.DefaultConfig, which Serf's LAN profile uses unchanged.
SERF_LAN_TIMERS: dict[str, Any] = {
    "probe_interval_s": 1.0,
    "probe_timeout_s": 0.5,
    "indirect_checks": 3,
    "suspicion_mult": 4,
    "suspicion_max_timeout_mult": 6,
    "gossip_interval_s": 0.2,
    "gossip_nodes": 3,
    "retransmit_mult": 4,
    "push_pull_interval_s": 30.0,
    "awareness_max_multiplier": 8,
    "reap_interval_s": 15.0,
    "reconnect_interval_s": 30.0,
}


class Agent(Protocol):
    """One member process as the measurement sees it."""

    @property
    def name(self) -> str: ...

    async def view(self) -> dict[str, str]:
        """Every other member this agent knows, name → state (lower case)."""
        ...

    async def kill(self) -> None: ...


# -- swarmnode -------------------------------------------------------------------------------------


class SwarmAgent:
    """A ``python -m swarmnode`` process, read through its status API."""

    def __init__(self, node: NodeProcess, session: aiohttp.ClientSession) -> None:
        self.node = node
        self.session = session

    @property
    def name(self) -> str:
        return self.node.info.node_id

    async def view(self) -> dict[str, str]:
        body = await status(self.session, self.node)
        return {p["nodeId"]: p["state"] for p in body.get("peers", [])}

    async def kill(self) -> None:
        await self.node.kill()


def _swarm_node(root: Path, index: int, seed: NodeProcess | None) -> NodeProcess:
    args = ["--swarm-key", SWARM_KEY, "--log-level", "WARNING"]
    if seed is not None:
        args += ["--peers", seed.info.swarm]
    # An empty override keeps the defaults even if the caller's environment tunes the period.
    return NodeProcess(root / f"n{index}", extra_args=args, env={PROBE_PERIOD_ENV: ""})


async def start_swarmnode(stack: contextlib.AsyncExitStack, root: Path, n: int) -> list[SwarmAgent]:
    """The seed, then the other ``n - 1`` at once with ``--peers`` the seed; all reaped by
    ``stack`` (``NodeProcess`` kills on exit)."""
    session = await stack.enter_async_context(aiohttp.ClientSession())
    seed = await stack.enter_async_context(_swarm_node(root, 0, None))
    rest = [_swarm_node(root, i, seed) for i in range(1, n)]
    for node in rest:
        stack.push_async_callback(node.aclose)  # before start: a failed start is reaped too
    async with asyncio.TaskGroup() as group:  # one failed start cancels the others
        for node in rest:
            group.create_task(node.start())
    return [SwarmAgent(node, session) for node in (seed, *rest)]


# -- Serf --------------------------------------------------------------------------------------


class SerfRpcError(RuntimeError):
    """The agent answered an RPC with an error."""


class SerfRpc:
    """Serf's agent RPC (msgpack header then body over TCP): just handshake and members."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        # Member addresses are raw IP bytes: keep undecodable bytes instead of failing.
        self._unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        self._seq = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> SerfRpc:
        reader, writer = await asyncio.open_connection(host, port)
        rpc = cls(reader, writer)
        try:
            await rpc.call("handshake", {"Version": 1}, reply=False)
        except BaseException:
            rpc.close()
            raise
        return rpc

    async def call(self, command: str, body: dict[str, Any] | None = None, *, reply: bool) -> Any:
        """One request; calls must not overlap (replies are read in order)."""
        seq, self._seq = self._seq, self._seq + 1
        frame = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=False)
        if body is not None:
            frame += msgpack.packb(body, use_bin_type=False)
        self._writer.write(frame)
        await self._writer.drain()
        header = await self._next()
        if header.get("Error"):
            raise SerfRpcError(f"{command}: {header['Error']}")
        return await self._next() if reply else None

    async def _next(self) -> Any:
        while True:
            with contextlib.suppress(StopIteration):
                return next(self._unpacker)
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("serf closed the RPC connection")
            self._unpacker.feed(data)

    def close(self) -> None:
        self._writer.close()


_ports_given: set[int] = set()


def _free_port() -> int:
    """A loopback port free for TCP and UDP both (memberlist binds both); not handed out before
    by this process, as agents start at once."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        if port not in _ports_given:
            _ports_given.add(port)
            return port


class SerfAgent:
    """A ``serf agent`` process (LAN profile defaults), read through its RPC."""

    def __init__(self, root: Path, name: str, join: str | None) -> None:
        self._name = name
        self.bind = f"127.0.0.1:{_free_port()}"
        self.rpc_port = _free_port()
        self.join = join
        self.log_path = root / f"{name}.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._rpc: SerfRpc | None = None

    @property
    def name(self) -> str:
        return self._name

    def command(self) -> list[str]:
        cmd = ["serf", "agent", "-node", self._name, "-bind", self.bind]
        cmd += ["-rpc-addr", f"127.0.0.1:{self.rpc_port}", "-log-level", "warn"]
        return cmd + (["-join", self.join] if self.join else [])

    async def start(self, within: float = START_TIMEOUT_S) -> None:
        """Spawn, then wait until the RPC answers (the gossip listener is up before it)."""
        with self.log_path.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        async with asyncio.timeout(within):
            while self._rpc is None:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"serf {self._name} exited: {self._log_tail()}")
                try:
                    self._rpc = await SerfRpc.connect("127.0.0.1", self.rpc_port)
                except (ConnectionError, OSError):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._proc.wait(), 0.02)

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    async def view(self) -> dict[str, str]:
        assert self._rpc is not None, "agent not started"
        body = await self._rpc.call("members", reply=True)
        members = body["Members"]
        return {m["Name"]: str(m["Status"]).lower() for m in members if m["Name"] != self._name}

    async def kill(self) -> None:
        """``kill -9`` and reap."""
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()

    async def aclose(self) -> None:
        await self.kill()


async def start_serf(stack: contextlib.AsyncExitStack, root: Path, n: int) -> list[SerfAgent]:
    """The seed, then the other ``n - 1`` at once with ``-join`` the seed; all reaped by
    ``stack``."""
    seed = SerfAgent(root, "n0", None)
    rest = [SerfAgent(root, f"n{i}", seed.bind) for i in range(1, n)]
    for agent in (seed, *rest):
        stack.push_async_callback(agent.aclose)
    await seed.start()
    async with asyncio.TaskGroup() as group:
        for agent in rest:
            group.create_task(agent.start())
    return [seed, *rest]


# -- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """How to start one system's agents and what its views call a dead member."""

    key: str
    dead: str
    suspect: str | None
    start: Callable[[contextlib.AsyncExitStack, Path, int], Awaitable[Sequence[Agent]]]


SWARMNODE = System("swarmnode", "dead", "suspect", start_swarmnode)
SERF = System("serf", "failed", None, start_serf)


@dataclass(frozen=True)
class Trial:
    """One run of one system at one N; seconds."""

    system: str
    n: int
    startup_s: float
    converge_s: float
    settle_s: float
    detect_s: float
    first_dead_s: float
    first_suspect_s: float | None
    # Raw detail per agent in start order (n0 first): when each saw all alive (from the first
    # start), when each observer saw the victim dead (from the kill).
    converge_by_agent_s: tuple[float, ...] = ()
    detect_by_observer_s: tuple[float, ...] = ()


async def _views(agents: Sequence[Agent]) -> list[tuple[dict[str, str] | None, float]]:
    """Each agent's view and when it arrived; None for an agent that did not answer."""
    loop = asyncio.get_running_loop()

    async def one(agent: Agent) -> tuple[dict[str, str] | None, float]:
        try:
            view: dict[str, str] | None = await agent.view()
        except (aiohttp.ClientError, ConnectionError, OSError, SerfRpcError):
            view = None
        return view, loop.time()

    return await asyncio.gather(*(one(a) for a in agents))


async def poll_until(
    agents: Sequence[Agent], done: Callable[[Agent, dict[str, str], float], bool], within: float
) -> dict[str, float]:
    """Poll the agents not done yet every ``POLL_S`` until ``done(agent, view, arrived)`` held
    for each; returns when each was first seen done. Agents once done are not asked again (fewer
    requests, less load on the machine measured)."""
    pending = list(agents)
    seen: dict[str, float] = {}
    async with asyncio.timeout(within):
        while pending:
            answers = await _views(pending)
            for agent, (view, at) in zip(list(pending), answers, strict=True):
                if view is not None and done(agent, view, at):
                    seen[agent.name] = at
                    pending.remove(agent)
            if pending:
                await asyncio.sleep(POLL_S)
    return seen


async def converged(agents: Sequence[Agent], within: float) -> dict[str, float]:
    """Loop time by which each agent had seen every other alive."""
    names = {a.name for a in agents}

    def sees_all(agent: Agent, view: dict[str, str], _at: float) -> bool:
        return all(view.get(other) == "alive" for other in names - {agent.name})

    return await poll_until(agents, sees_all, within)


async def deaths(
    observers: Sequence[Agent], victim: str, system: System, within: float
) -> tuple[dict[str, float], float | None]:
    """When each observer first showed ``victim`` dead, and when the first showed it suspect
    (or dead: a dead rumour may arrive before any own suspicion)."""
    first_suspect: list[float] = []
    suspicious = {system.dead} | ({system.suspect} if system.suspect else set())

    def dead(agent: Agent, view: dict[str, str], at: float) -> bool:
        state = view.get(victim)
        if system.suspect and state in suspicious:
            first_suspect.append(at)
        return state == system.dead

    seen = await poll_until(observers, dead, within)
    return seen, min(first_suspect, default=None)


@dataclass(frozen=True)
class Gate:
    """Lets two trials share their detection wait: ``converged`` is set by the trial once its
    agents converged (or it failed), and it kills its victim only once ``go`` is set."""

    converged: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    go: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


async def trial(system: System, n: int, root: Path, gate: Gate | None = None) -> Trial:
    """Start ``n`` agents, time convergence, kill the last one, time detection; always reaps.
    With a ``gate``, waits for its ``go`` between convergence and the kill."""
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(root.mkdir, parents=True)
    async with contextlib.AsyncExitStack() as stack:
        t0 = loop.time()
        agents = await system.start(stack, root, n)
        up = loop.time()
        conv_at = await converged(agents, START_TIMEOUT_S + n)
        conv = max(conv_at.values())
        if gate is not None:
            gate.converged.set()
            await gate.go.wait()
        victim, observers = agents[-1], agents[:-1]
        killed = loop.time()
        await victim.kill()
        seen, suspect = await deaths(observers, victim.name, system, DETECT_TIMEOUT_S)
    return Trial(
        system=system.key,
        n=n,
        startup_s=up - t0,
        converge_s=conv - t0,
        settle_s=max(0.0, conv - up),
        detect_s=max(seen.values()) - killed,
        first_dead_s=min(seen.values()) - killed,
        first_suspect_s=None if suspect is None else suspect - killed,
        converge_by_agent_s=tuple(round(conv_at[a.name] - t0, 3) for a in agents),
        detect_by_observer_s=tuple(round(seen[a.name] - killed, 3) for a in observers),
    )


# -- the report --------------------------------------------------------------------------------


def swarmnode_timers(n: int) -> dict[str, Any]:
    """swarmnode's membership defaults (``MembershipConfig``) and the suspicion window at ``n``."""
    cfg = MembershipConfig()
    keys = (
        "protocol_period",
        "ack_timeout",
        "indirect_timeout",
        "indirect_probes",
        "suspicion_alpha",
        "suspicion_beta",
        "suspicion_k",
        "max_local_health",
        "retransmit_mult",
        "gossip_interval",
        "gossip_fanout",
        "sync_interval",
    )
    timers: dict[str, Any] = {k: getattr(cfg, k) for k in keys}
    # Suspicion of the victim by the observers: n live (victim and observer included), from one
    # suspicion (the max) to as many as can count (the min).
    timers["suspicion_timeout_s_min"] = suspicion_timeout(cfg, n, cfg.suspicion_k + 1)
    timers["suspicion_timeout_s_max"] = suspicion_timeout(cfg, n, 1)
    return timers


def serf_timers(n: int) -> dict[str, Any]:
    """memberlist's LAN suspicion window at ``n``: min = mult * max(1, log10 n) * interval,
    max = 6 * min; with fewer than ``mult - 2`` possible confirmers (``n - 2``) it expects none
    and waits just the min."""
    timers = dict(SERF_LAN_TIMERS)
    low = timers["suspicion_mult"] * max(1.0, math.log10(n)) * timers["probe_interval_s"]
    timers["suspicion_timeout_s_min"] = low
    timers["suspicion_timeout_s_max"] = low if n - 2 < 2 else 6 * low
    return timers


NOTE = (
    "Read from outside by polling every agent every ~{poll} s (resolution ~{poll} s plus one"
    " status round trip); agents once done are not asked again. Unless params say"
    " sequential, the two systems' detection waits run at the same time (start-up and"
    " convergence are measured one system at a time). Neither system is tuned: detection"
    " time is mostly the timer settings in params (probe period, suspicion timeout), not"
    " implementation speed. Serf's LAN profile expects no confirmations below 4 members and then"
    " uses its minimum suspicion timeout; swarmnode's Lifeguard timeout shrinks from its max as"
    " independent suspicions arrive (k = {k}, capped at N − 2), each node counting its own"
    " failed probe and gossiping every new one. Converge includes process start-up (Python vs"
    " Go); settle is the protocol's part."
)


def _runs(trials: list[Trial], system: str, n: int, attr: str) -> list[float]:
    values = (getattr(t, attr) for t in trials if t.system == system and t.n == n)
    return [v for v in values if v is not None]


def figures_for(trials: list[Trial], n: int, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Converge, settle and detect of swarmnode against Serf at ``n`` (skipped when no run)."""
    k = MembershipConfig().suspicion_k
    out = []
    for attr, what in (
        ("converge_s", "convergence (first start → all see all alive)"),
        ("settle_s", "convergence after last agent up"),
        ("detect_s", "kill -9 → all others show it dead"),
    ):
        runs = _runs(trials, "swarmnode", n, attr)
        if not runs:
            continue
        fid = f"membership.{attr.removesuffix('_s')}.n{n}"
        extra = {
            "first_dead_s": _runs(trials, "swarmnode", n, "first_dead_s"),
            "first_suspect_s": _runs(trials, "swarmnode", n, "first_suspect_s"),
            "serf_first_failed_s": _runs(trials, "serf", n, "first_dead_s"),
            "startup_s": _runs(trials, "swarmnode", n, "startup_s"),
            "serf_startup_s": _runs(trials, "serf", n, "startup_s"),
        }
        out.append(
            figure(
                fid,
                group="membership",
                name=f"{what}, N={n}",
                unit="s",
                runs=runs,
                better="lower",
                baseline=SERF_BASELINE,
                baseline_runs=_runs(trials, "serf", n, attr) or None,
                params=params | {"n": n} | (extra if attr == "detect_s" else {}),
                note=NOTE.format(poll=POLL_S, k=k),
            )
        )
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def plot_series(trials: list[Trial], nodes: list[int]) -> list[dict[str, Any]]:
    """Median converge, settle and detect against N, swarmnode and Serf (N without runs left
    out): converge carries process start-up, settle is the protocol alone."""
    out = []
    for system, style in (("swarmnode", "measured"), ("serf", "baseline")):
        label = "swarmnode" if system == "swarmnode" else "Serf"
        for attr, what in (
            ("converge_s", "converge"),
            ("settle_s", "settle"),
            ("detect_s", "detect"),
        ):
            xs = [n for n in nodes if _runs(trials, system, n, attr)]
            ys = [_median(_runs(trials, system, n, attr)) for n in xs]
            if xs:
                out.append(series("membership_vs_n", f"{label} {what}", xs, ys, style=style))
    return out


def table(trials: list[Trial], nodes: list[int]) -> str:
    """Medians (min–max) per N and system."""
    cols = ("startup_s", "converge_s", "settle_s", "detect_s", "first_dead_s", "first_suspect_s")
    lines = [f"{'N':>3} {'system':<10}" + "".join(f"{c.removesuffix('_s'):>20}" for c in cols)]
    for n in nodes:
        for system in ("swarmnode", "serf"):
            if not any(t.system == system and t.n == n for t in trials):
                continue
            cells = []
            for c in cols:
                runs = _runs(trials, system, n, c)
                cell = f"{_median(runs):.2f} ({min(runs):.2f}–{max(runs):.2f})" if runs else "-"
                cells.append(f"{cell:>20}")
            lines.append(f"{n:>3} {system:<10}" + "".join(cells))
    return "\n".join(lines)


Outcome = Trial | str  # a trial, or why it failed


async def attempt(system: System, n: int, where: Path, gate: Gate | None = None) -> Outcome:
    """One trial; an expected failure (timeout, a process that would not start) comes back as
    its message so the other trials go on. Its directory is removed either way."""
    try:
        return await trial(system, n, where, gate)
    except (TimeoutError, RuntimeError, AssertionError, OSError, ExceptionGroup) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if gate is not None:
            gate.converged.set()
        await asyncio.to_thread(shutil.rmtree, where, ignore_errors=True)


async def paired(n: int, root: Path, with_serf: bool, overlap: bool) -> list[Outcome]:
    """A swarmnode and a Serf trial. Start-up and convergence are measured one system at a time
    (Serf first, its converged agents then idle); with ``overlap`` both victims are killed
    together and the two detection waits (timer-bound, little CPU) run at once, which keeps
    full mode within its time budget."""
    if not with_serf:
        return [await attempt(SWARMNODE, n, root / "swarmnode")]
    if not overlap:
        ours = await attempt(SWARMNODE, n, root / "swarmnode")
        return [ours, await attempt(SERF, n, root / "serf")]
    theirs_gate, ours_gate = Gate(), Gate()
    async with asyncio.TaskGroup() as group:
        theirs_task = group.create_task(attempt(SERF, n, root / "serf", theirs_gate))
        await theirs_gate.converged.wait()
        ours_task = group.create_task(attempt(SWARMNODE, n, root / "swarmnode", ours_gate))
        await ours_gate.converged.wait()
        theirs_gate.go.set()
        ours_gate.go.set()
    return [ours_task.result(), theirs_task.result()]


def _report_progress(outcome: Outcome, system: str, errors: list[str], label: str) -> None:
    if isinstance(outcome, str):
        errors.append(f"{system} {label}: {outcome}")
        progress(f"  {system} failed: {outcome}")
        return
    progress(
        f"  {system}: up {outcome.startup_s:.2f} s, converged {outcome.converge_s:.2f} s,"
        f" detected {outcome.detect_s:.2f} s (first {outcome.first_dead_s:.2f} s)"
    )


async def measure(
    nodes: list[int], runs: int, root: Path, *, overlap: bool = True
) -> tuple[list[Trial], dict[str, str], list[str]]:
    """All trials, a swarmnode and a Serf one per N and run; returns trials, skipped reasons
    and errors (a failed trial is recorded and the rest go on)."""
    skipped: dict[str, str] = {}
    if shutil.which("serf") is None:
        skipped["serf"] = "serf not found on PATH (Debian package `serf`)"
    trials: list[Trial] = []
    errors: list[str] = []
    for n in nodes:
        for run in range(runs):
            label = f"N={n} run {run + 1}/{runs}"
            progress(f"membership: {label}")
            where = root / f"n{n}-r{run}"
            outcomes = await paired(n, where, "serf" not in skipped, overlap)
            for system, outcome in zip(("swarmnode", "serf"), outcomes, strict=False):
                _report_progress(outcome, system, errors, label)
                if isinstance(outcome, Trial):
                    trials.append(outcome)
    return trials, skipped, errors


def _serf_version() -> str:
    try:
        out = subprocess.run(
            ["serf", "version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=3, one run")
    parser.add_argument("--nodes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="run Serf's trial after swarmnode's, not during its detection wait (slower)",
    )
    args = parser.parse_args(argv)
    args.nodes = args.nodes or ([3] if args.quick else [5, 10, 20])
    args.runs = args.runs or (1 if args.quick else 3)
    if min(args.nodes) < 3 or args.runs < 1:
        parser.error("--nodes needs N >= 3 (a seed, a victim and another observer); --runs >= 1")
    return args


async def _main(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM cancels like Ctrl-C does, so every agent is still killed and every dir removed.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with tempfile.TemporaryDirectory(prefix="bench-membership-") as tmp:
        trials, skipped, errors = await measure(
            args.nodes, args.runs, Path(tmp), overlap=not args.sequential
        )
    print(table(trials, args.nodes))
    for error in errors:
        print(f"error: {error}")
    for key, reason in skipped.items():
        print(f"skipped {key}: {reason}")
    params = {
        "runs": args.runs,
        "poll_s": POLL_S,
        "topology": "all join the first agent; the others start at once after it",
        "sequential": args.sequential,
        "cpus": os.cpu_count(),
        "serf_version": _serf_version() if "serf" not in skipped else None,
    }
    figures = []
    for n in args.nodes:
        timers = {"swarmnode_timers": swarmnode_timers(n), "serf_timers": serf_timers(n)}
        figures += figures_for(trials, n, params | timers)
    write_report(
        args.json,
        figures,
        plot_series(trials, args.nodes),
        skipped=skipped,
        errors=errors,
        trials=[dataclasses.asdict(t) for t in trials],
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (_main)
        progress("membership: interrupted; every agent killed, temp dirs removed")
        sys.exit(130)


if __name__ == "__main__":
    main()
