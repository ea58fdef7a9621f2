"""N real, unmodified node processes, each behind a fault-injecting proxy of its own.

How every link is made controllable. Node ``i`` listens on an ephemeral loopback port and
announces its proxy's address (``SWARMNODE_ADVERTISE``); every seed is a proxy address. Peers learn
addresses only from Hello and peer exchange, which carry the announced address, so every
connection between two nodes runs through the proxy of the node that was dialled. A proxy tells
its clients apart by asking who dialled: ``process_of_port`` finds the node process that owns the
client socket through ``/proc``. Nothing in the node knows it is being tested.

On a connection ``A`` dialled into ``B``'s proxy (labelled ``A``), ``"to_target"`` is ``A → B``
and ``"to_client"`` is ``B → A``. Every fault is written in terms of nodes and turned into that:

- rules (``block(frm, to, mode)``: nothing from a node in ``frm`` reaches a node in ``to``, as in
  the simulator's ``netsim/network.py``) become per-label, per-direction blocks at each proxy;
  ``partition`` is a set of symmetric rules, ``stall`` a timed one, ``heal`` removes them all;
- shaping (``shape_link``, ``shape_node``) is installed for the link's label at both proxies,
  with the same token bucket per direction, and every direction also draws on its sender's
  uplink and its receiver's downlink bucket (``cap_uplink``, ``cap_downlink``): one bucket per
  node, however many connections it has through however many proxies;
- clock skew is a ``sitecustomize`` hook (``netsim/skew``) in the node's start-up environment.

Kernel ``netem`` is not available here (and would need root): delay and loss always come from
the proxies, where an application sees them as TCP shows them (``netsim/proxy.py``).

Node ``i`` is seeded with node ``i - 1`` (node 0 with nobody), as an operator hands each new
device the address of one already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from netsim.nodeproc import NodeProcess
from netsim.proxy import (
    DEFAULT_RTO_S,
    CutMode,
    LinkShape,
    SocketOwners,
    TcpProxy,
    TokenBucket,
    process_of_port,
)
from netsim.skew import SKEW_DIR, SKEW_ENV
from swarmnode.swarm.driver_config import ADVERTISE_ENV

__all__ = ["Cluster", "LinkSpec", "Member"]


@dataclass(slots=True)
class Member:
    """One node of the cluster: its name (``n0``, ``n1``, ...), process and inbound proxy."""

    name: str
    proc: NodeProcess
    proxy: TcpProxy

    @property
    def node_id(self) -> str:
        return self.proc.info.node_id


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """How a link between two nodes is shaped, the same both ways (``netsim/proxy.py``)."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    rto_s: float = DEFAULT_RTO_S
    rate_bps: float | None = None

    def __post_init__(self) -> None:
        LinkShape(self.delay_s, self.jitter_s, self.loss, self.rto_s)  # raises if out of range
        TokenBucket(self.rate_bps)


_PLAIN = LinkSpec()


class Cluster:
    """Start with ``async with Cluster(root, n, swarm_key=...)``; every node and proxy is
    stopped on exit, whatever happened. ``rng`` seeds the proxies' jitter and loss draws;
    ``clock_skew`` maps node names to seconds their wall clock is off."""

    def __init__(
        self,
        root: Path,
        count: int,
        *,
        swarm_key: str,
        env: dict[str, str] | None = None,
        rng: random.Random | None = None,
        clock_skew: Mapping[str, float] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("a cluster has at least one node")
        self.root = root
        self.count = count
        self.swarm_key = swarm_key
        self.env = dict(env or {})
        self.rng = rng if rng is not None else random.Random(0)
        self.members: list[Member] = []
        self.rules: dict[int, tuple[frozenset[str], frozenset[str], CutMode]] = {}
        self._names: dict[int, str] = {}  # pid → name, for the proxies' identify
        self._owners = SocketOwners()  # the nodes' sockets, scanned once for many lookups
        self._stack = contextlib.AsyncExitStack()
        self._skews = {name: float(s) for name, s in (clock_skew or {}).items()}
        self._rule_blocks: dict[int, list[tuple[TcpProxy, int]]] = {}
        self._rule_seq = 0
        self._partition_rules: list[int] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._links: dict[frozenset[str], LinkSpec] = {}
        self._link_buckets: dict[tuple[str, str], TokenBucket] = {}
        self._uplinks: dict[str, TokenBucket] = {}
        self._downlinks: dict[str, TokenBucket] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        try:
            for i in range(self.count):
                await self._add(i)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cancel_timers()
        await self._stack.aclose()

    async def _add(self, i: int) -> None:
        name = f"n{i}"
        proxy = TcpProxy(("127.0.0.1", 0), rng=random.Random(self.rng.getrandbits(64)))
        proxy.identify = self._identify_for(proxy)
        await self._stack.enter_async_context(proxy)
        args = ["--swarm-key", self.swarm_key, "--listen", "127.0.0.1:0"]
        if i:
            args += ["--peers", self.members[i - 1].proxy.address]
        proc = NodeProcess(self.root / name, extra_args=args, env=self._node_env(name, proxy))
        proc.on_spawn = functools.partial(self._spawned, name)
        await self._stack.enter_async_context(proc)
        proxy.target = _host_port(proc.info.swarm)
        self.members.append(Member(name, proc, proxy))

    def _spawned(self, name: str, pid: int) -> None:
        """Name the node's process before it dials anyone (NodeProcess.on_spawn): connections
        made while it starts are labelled too, and so shaped and blocked as its own."""
        self._names = {p: n for p, n in self._names.items() if n != name}
        self._names[pid] = name

    def _node_env(self, name: str, proxy: TcpProxy) -> dict[str, str]:
        """What node ``name`` starts with: the cluster's env, its proxy to announce, its skew."""
        env = {**self.env, ADVERTISE_ENV: proxy.address}
        skew = self._skews.get(name)
        if skew:
            env[SKEW_ENV] = repr(skew)
            own_path = env.get("PYTHONPATH")
            env["PYTHONPATH"] = str(SKEW_DIR) + (os.pathsep + own_path if own_path else "")
        return env

    def _identify_for(self, proxy: TcpProxy) -> Callable[[tuple[str, int]], str | None]:
        def identify(peer: tuple[str, int]) -> str | None:
            names = self._names  # replaced, never changed in place: a consistent view
            pid = process_of_port(peer, proxy.port, list(names), self._owners)
            return None if pid is None else names.get(pid)

        return identify

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def live(self) -> list[Member]:
        return [m for m in self.members if m.proc.running]

    async def kill(self, name: str) -> None:
        """``kill -9`` the node (its proxy stays: the address is dead, not gone)."""
        await self.member(name).proc.kill()

    async def restart(self, name: str) -> None:
        """Start a killed or stopped node again on the same data dir and identity."""
        m = self.member(name)
        await m.proc.start()
        m.proxy.target = _host_port(m.proc.info.swarm)

    def set_clock_skew(self, name: str, seconds: float | None) -> None:
        """Run node ``name``'s wall clock ``seconds`` off (None or 0: right) from its next
        start (also before the cluster started); monotonic clocks are not affected
        (``netsim/skew``)."""
        if name not in {f"n{i}" for i in range(self.count)}:
            raise KeyError(name)
        if seconds:
            self._skews[name] = float(seconds)
        else:
            self._skews.pop(name, None)
        for m in self.members:
            if m.name == name:
                m.proc.env = self._node_env(name, m.proxy)

    # -- rules: who reaches whom -------------------------------------------------------------------

    def block(self, frm: Iterable[str], to: Iterable[str], mode: CutMode = "blackhole") -> int:
        """Nothing from a node in ``frm`` reaches a node in ``to`` (the other way is untouched);
        returns the rule id for ``unblock``. ``"reset"`` closes the connections the rule
        touches and refuses new ones (TCP has no one-way connection); ``"blackhole"`` stops the
        covered direction without closing anything."""
        senders, receivers = frozenset(frm), frozenset(to)
        self._check_names(senders | receivers)
        blocks: list[tuple[TcpProxy, int]] = []
        for m in self.members:
            # On connections others dialled into m, what they send m is to_target ...
            if m.name in receivers and (labels := senders - {m.name}):
                block = m.proxy.block(mode, sources=labels, direction="to_target")
                blocks.append((m.proxy, block))
            # ... and what m sends them back is to_client.
            if m.name in senders and (labels := receivers - {m.name}):
                block = m.proxy.block(mode, sources=labels, direction="to_client")
                blocks.append((m.proxy, block))
        self._rule_seq += 1
        self.rules[self._rule_seq] = (senders, receivers, mode)
        self._rule_blocks[self._rule_seq] = blocks
        return self._rule_seq

    def unblock(self, *rule_ids: int) -> None:
        """Remove these rules (unknown or removed ones are ignored)."""
        for rule in rule_ids:
            self.rules.pop(rule, None)
            for proxy, block in self._rule_blocks.pop(rule, []):
                proxy.unblock(block)

    def partition(
        self, groups: Sequence[Collection[str]], mode: CutMode = "blackhole"
    ) -> list[int]:
        """Split the nodes into ``groups`` of names: two nodes can talk when some group holds
        both. A node in no group is cut from everyone; a node in two groups bridges them.
        Replaces the previous ``partition`` (other rules stay); returns its rule ids."""
        reach: dict[str, set[str]] = {m.name: {m.name} for m in self.members}
        for group in groups:
            self._check_names(group)
            for name in group:
                reach[name] |= set(group)
        # Nodes that reach the same nodes form a class; a class reaches all of another or none.
        classes: dict[frozenset[str], list[str]] = {}
        for name, reached in reach.items():
            classes.setdefault(frozenset(reached), []).append(name)
        rules = [
            self.block(senders, receivers, mode)
            for reached, senders in classes.items()
            for receivers in classes.values()
            if receivers[0] not in reached
        ]
        earlier, self._partition_rules = self._partition_rules, rules
        self.unblock(*earlier)  # after the new rules are on: no link is open in between
        return rules

    def heal(self) -> None:
        """Remove every rule (partitions, blocks, stalls): every link carries traffic again.
        Shaping and caps stay."""
        self._cancel_timers()
        self.rules.clear()
        self._rule_blocks.clear()
        self._partition_rules = []
        for m in self.members:
            m.proxy.heal()

    def stall(self, a: str, b: str, seconds: float) -> int:
        """Blackhole both directions between ``a`` and ``b`` for ``seconds``, then let them
        resume (scheduled: the caller does not wait); returns the rule id, to end it early.
        Connections they open meanwhile are held, and closed at the end."""
        if a == b:
            raise ValueError(f"a stall is between two nodes, not {a} and itself")
        rule = self.block({a, b}, {a, b})
        handle: asyncio.TimerHandle

        def resume() -> None:
            self._timers.discard(handle)
            self.unblock(rule)

        handle = asyncio.get_running_loop().call_later(seconds, resume)
        self._timers.add(handle)
        return rule

    def reset(self, a: str, b: str) -> None:
        """Close the current connections between ``a`` and ``b`` once; new ones are allowed."""
        self.member(b).proxy.reset(sources={a})
        self.member(a).proxy.reset(sources={b})

    def _cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    def _check_names(self, names: Iterable[str]) -> None:
        known = {m.name for m in self.members}
        unknown = sorted(set(names) - known)
        if unknown:
            raise KeyError(f"no such nodes: {', '.join(unknown)}")

    # -- shaping -----------------------------------------------------------------------------------

    def shape_link(
        self,
        a: str,
        b: str,
        *,
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
        loss: float = 0.0,
        rto_s: float = DEFAULT_RTO_S,
        rate_bps: float | None = None,
    ) -> None:
        """Shape both directions of every connection between ``a`` and ``b``, whoever dialled:
        one-way delay plus jitter up to ``jitter_s``, the chance ``loss`` that a read waits a
        retransmission timeout ``rto_s``, and a cap of ``rate_bps`` each way. Replaces the
        link's earlier shaping; the defaults leave it unshaped."""
        spec = LinkSpec(delay_s, jitter_s, loss, rto_s, rate_bps)
        self._check_names((a, b))
        if a == b:
            raise ValueError(f"a link joins two nodes, not {a} and itself")
        self._links[frozenset((a, b))] = spec
        self._link_bucket(a, b).set_rate(rate_bps)
        self._link_bucket(b, a).set_rate(rate_bps)
        self._install(a, b)

    def shape_node(
        self,
        name: str,
        *,
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
        loss: float = 0.0,
        rto_s: float = DEFAULT_RTO_S,
        rate_bps: float | None = None,
    ) -> None:
        """``shape_link(name, other, ...)`` for every other node: a slow or lossy node. For a
        cap on everything the node sends or receives together, see ``cap_uplink``."""
        for other in self._others(name):
            self.shape_link(
                name,
                other,
                delay_s=delay_s,
                jitter_s=jitter_s,
                loss=loss,
                rto_s=rto_s,
                rate_bps=rate_bps,
            )

    def cap_uplink(self, name: str, rate_bps: float | None) -> None:
        """Cap everything ``name`` sends, over all its connections (bytes/s); None lifts it."""
        self._uplink(name).set_rate(rate_bps)
        for other in self._others(name):
            self._install(name, other)

    def cap_downlink(self, name: str, rate_bps: float | None) -> None:
        """Cap everything ``name`` receives, over all its connections (bytes/s); None lifts it."""
        self._downlink(name).set_rate(rate_bps)
        for other in self._others(name):
            self._install(name, other)

    def _others(self, name: str) -> list[str]:
        self._check_names((name,))
        return [m.name for m in self.members if m.name != name]

    def _install(self, a: str, b: str) -> None:
        """Hand both proxies of the link ``a``–``b`` its current shaping."""
        for dialled, dialler in ((a, b), (b, a)):
            self.member(dialled).proxy.shape_link(
                dialler,
                to_target=self._direction(dialler, dialled),
                to_client=self._direction(dialled, dialler),
            )

    def _direction(self, sender: str, receiver: str) -> LinkShape:
        """The shaping of what ``sender`` sends ``receiver``, on either proxy of their link."""
        spec = self._links.get(frozenset((sender, receiver)), _PLAIN)
        buckets = (
            self._link_bucket(sender, receiver),
            self._uplink(sender),
            self._downlink(receiver),
        )
        return LinkShape(
            delay_s=spec.delay_s,
            jitter_s=spec.jitter_s,
            loss=spec.loss,
            rto_s=spec.rto_s,
            buckets=buckets,
        )

    def _link_bucket(self, sender: str, receiver: str) -> TokenBucket:
        return self._link_buckets.setdefault((sender, receiver), TokenBucket())

    def _uplink(self, name: str) -> TokenBucket:
        return self._uplinks.setdefault(name, TokenBucket())

    def _downlink(self, name: str) -> TokenBucket:
        return self._downlinks.setdefault(name, TokenBucket())


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)
