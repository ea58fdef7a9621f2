"""N real, unmodified node processes, each behind a fault-injecting proxy of its own.

How every link is made controllable. Node ``i`` listens on an ephemeral loopback port and
announces its proxy's address (``SWARMNODE_ADVERTISE``); every seed is a proxy address. Peers learn
addresses only from Hello and peer exchange, which carry the announced address, so every
connection between two nodes runs through the proxy of the node that was dialled. A proxy cuts
some clients and not others by asking who dialled: ``process_of_port`` finds the node process
that owns the client socket through ``/proc``. Nothing in the node knows it is being tested.

Node ``i`` is seeded with node ``i - 1`` (node 0 with nobody), as an operator hands each new
device the address of one already running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from netsim.nodeproc import NodeProcess
from netsim.proxy import CutMode, TcpProxy, process_of_port
from swarmnode.swarm.driver_config import ADVERTISE_ENV

__all__ = ["Cluster", "Member"]


@dataclass(slots=True)
class Member:
    """One node of the cluster: its name (``n0``, ``n1``, ...), process and inbound proxy."""

    name: str
    proc: NodeProcess
    proxy: TcpProxy

    @property
    def node_id(self) -> str:
        return self.proc.info.node_id


class Cluster:
    """Start with ``async with Cluster(root, n, swarm_key=...)``; every node and proxy is
    stopped on exit, whatever happened."""

    def __init__(
        self,
        root: Path,
        count: int,
        *,
        swarm_key: str,
        env: dict[str, str] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("a cluster has at least one node")
        self.root = root
        self.count = count
        self.swarm_key = swarm_key
        self.env = dict(env or {})
        self.members: list[Member] = []
        self._names: dict[int, str] = {}  # pid → name, for the proxies' identify
        self._stack = contextlib.AsyncExitStack()

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
        await self._stack.aclose()

    async def _add(self, i: int) -> None:
        name = f"n{i}"
        proxy = TcpProxy(("127.0.0.1", 0), identify=self._identify_for(i))
        await self._stack.enter_async_context(proxy)
        args = ["--swarm-key", self.swarm_key, "--listen", "127.0.0.1:0"]
        if i:
            args += ["--peers", self.members[i - 1].proxy.address]
        proc = NodeProcess(
            self.root / name,
            extra_args=args,
            env={**self.env, ADVERTISE_ENV: proxy.address},
        )
        await self._stack.enter_async_context(proc)
        proxy.target = _host_port(proc.info.swarm)
        self._names[proc.pid] = name
        self.members.append(Member(name, proc, proxy))

    def _identify_for(self, i: int) -> Callable[[tuple[str, int]], str | None]:
        def identify(peer: tuple[str, int]) -> str | None:
            proxy = self.members[i].proxy if i < len(self.members) else None
            if proxy is None:
                return None
            pid = process_of_port(peer, proxy.port, list(self._names))
            return None if pid is None else self._names.get(pid)

        return identify

    # -- faults ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def partition(self, groups: Sequence[Collection[str]], mode: CutMode = "blackhole") -> None:
        """Split the nodes into ``groups`` of names: two nodes can talk when some group holds
        both. A node in no group is cut from everyone; a node in two groups bridges them."""
        reach: dict[str, set[str]] = {m.name: {m.name} for m in self.members}
        for group in groups:
            for name in group:
                reach[name] |= set(group)
        for m in self.members:
            m.proxy.cut(mode, sources={x.name for x in self.members if x.name not in reach[m.name]})

    def heal(self) -> None:
        """Let every link carry traffic again."""
        for m in self.members:
            m.proxy.heal()

    async def kill(self, name: str) -> None:
        """``kill -9`` the node (its proxy stays: the address is dead, not gone)."""
        await self.member(name).proc.kill()

    async def restart(self, name: str) -> None:
        """Start a killed or stopped node again on the same data dir and identity."""
        m = self.member(name)
        self._names = {pid: n for pid, n in self._names.items() if n != name}
        await m.proc.start()
        m.proxy.target = _host_port(m.proc.info.swarm)
        self._names[m.proc.pid] = m.name

    def live(self) -> list[Member]:
        return [m for m in self.members if m.proc.running]


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)
