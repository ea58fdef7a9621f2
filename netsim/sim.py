"""The deterministic simulation kernel: many pure swarm machines on one virtual clock.

This is the second driver of the machines' shape (STYLE.md §2, §3, §8), beside the asyncio
driver. Inputs wait in one heap of ``(time, seq, kind, node, ...)``; ``seq`` is a global counter,
so ties at the same instant run in the order they were scheduled. Loss, latency and jitter come
from one ``random.Random(seed)``: the same seed and the same machines give the same run, byte for
byte. Nothing here reads a clock, opens a socket or imports asyncio.

Note for machine authors (membership, plumtree) — the contract this driver keeps:

* A node is built by ``factory(node_id, now, rng)``; its first ``drain()`` is taken right away,
  so a machine may queue dials and set ``deadline`` in its constructor. ``rng`` is a seeded
  ``random.Random`` private to that node and incarnation.
* ``handle_timer(now)`` is called once ``now >= deadline`` (never early), with ``now`` the
  virtual time; a deadline in the past fires at once.
* Every ``Effects.dials`` entry (``Address``, ``PeerInfo`` or a node id) to a peer not yet
  connected ends in exactly one of ``handle_connected(now, peer_id)`` (after a round trip) or
  ``handle_dial_failed(now, target)``
  with the same ``target`` object (refused after a round trip when the node is down, after
  ``dial_timeout`` when it is unreachable or unknown). The accepting side gets
  ``handle_connected(now, dialer_id)`` half a round trip earlier. Dialing a peer that is
  already connected is a no-op (nothing is announced twice). Per peer, a machine sees
  ``handle_disconnected`` only after a ``handle_connected``.
* ``hangups``: both sides get ``handle_disconnected(now, peer)``, the one that hung up at once
  and the other after the link latency (as a transport's connection_lost fires on both ends). A
  crash of a peer, or a cut that outlives ``connection_timeout``, disconnects both sides' live
  machines.
* A send to a peer without a connection is delivered anyway unless ``strict_connections=True``
  (then it is dropped and counted in ``NodeMetrics.unconnected_sends`` either way). Messages on
  one directed link arrive in send order (TCP), each after that link's latency.
* A crashed node loses its machine; ``restart`` calls the factory again. What a real node keeps
  on disk (its event store) is the factory's to keep and hand to the new machine.

``Membership`` has no ``handle_dial_failed`` and takes the peer's ``PeerInfo`` (from its Hello) in
``handle_connected``: the adapter ``netsim.simnode.SwarmNode`` maps a failed dial of a known peer
to ``handle_disconnected`` and looks the ``PeerInfo`` up, as the asyncio driver will.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from netsim.network import LatencyFn, Network
from netsim.program import Delivery, NodeMetrics, Program, SimulationError, VirtualClock
from protocol.messages_base import Address, PeerInfo

__all__ = [
    "DEFAULT_CONNECTION_TIMEOUT",
    "DEFAULT_DIAL_TIMEOUT",
    "Delivery",
    "Factory",
    "NodeMetrics",
    "SimulationError",
    "Simulator",
    "VirtualClock",
]

# A dial into a partition hangs until the OS gives up on the SYN; real kernels wait far longer,
# but swarm timers are seconds: a few seconds keeps the behaviour (slow failure), runs short.
DEFAULT_DIAL_TIMEOUT: Final = 3.0
# How long a TCP connection across a cut survives before keepalive/write timeouts close it.
DEFAULT_CONNECTION_TIMEOUT: Final = 10.0

P = TypeVar("P", bound=Program)
Factory = Callable[[str, float, random.Random], P]


@dataclass(slots=True)
class _Node(Generic[P]):
    factory: Factory[P]
    address: Address
    program: P | None = None
    epoch: int = 0
    timer_at: float | None = None
    peers: dict[str, int] = field(default_factory=dict)  # peer -> connection id
    told: set[str] = field(default_factory=set)  # peers the machine was told are connected


# Heap entry kinds.
_DELIVER: Final = 0
_TIMER: Final = 1
_ACCEPT: Final = 2
_CONNECTED: Final = 3
_DIAL_FAILED: Final = 4
_DISCONNECTED: Final = 5
_CHECK_CONN: Final = 6
_CALL: Final = 7

_Entry = tuple[float, int, int, str, int, Any, Any]
"""``(time, seq, kind, node, node epoch when scheduled, a, b)``."""


class Simulator(Generic[P]):
    """Routes machines' effects between nodes on virtual time, with faults.

    Inputs: ``add_node``/``crash``/``restart``, link and partition settings, ``poke`` (call into a
    machine now) and ``at`` (call a function later). Outputs: the machines' inputs, the
    ``on_deliver``/``on_notice`` hooks and ``metrics``. Work per event is O(log heap) plus the
    number of active partition rules, never O(nodes).
    """

    def __init__(
        self,
        seed: int,
        *,
        latency: tuple[float, float] | LatencyFn = (0.001, 0.005),
        loss: float = 0.0,
        dial_timeout: float = DEFAULT_DIAL_TIMEOUT,
        connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT,
        strict_connections: bool = False,
        sizer: Callable[[Any], int] | None = None,
        start: float = 0.0,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = VirtualClock(start)
        self.net = Network(self.rng, latency=latency, loss=loss)
        self.dial_timeout = dial_timeout
        self.connection_timeout = connection_timeout
        self.strict_connections = strict_connections
        self.sizer = sizer
        self.metrics: dict[str, NodeMetrics] = {}
        self.on_deliver: list[Callable[[Delivery], None]] = []
        self.on_notice: list[Callable[[float, str, object], None]] = []
        self._nodes: dict[str, _Node[P]] = {}
        self._by_address: dict[Address, str] = {}
        self._heap: list[_Entry] = []
        self._seq = 0
        self._last_arrival: dict[tuple[str, str], float] = {}
        self._conn_seq = 0
        self.steps = 0

    # -- nodes ---------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    def add_node(self, node_id: str, factory: Factory[P], *, address: Address | None = None) -> P:
        """Start a node now; ``address`` (default ``<node_id>.sim:4001``) is what dials resolve."""
        if node_id in self._nodes:
            raise SimulationError(f"node {node_id!r} exists")
        addr = address or Address(host=node_id + ".sim", port=4001)
        if addr in self._by_address:
            raise SimulationError(f"address {addr} is taken")
        self._nodes[node_id] = _Node(factory=factory, address=addr)
        self._by_address[addr] = node_id
        self.metrics[node_id] = NodeMetrics()
        return self._boot(node_id)

    def address_of(self, node_id: str) -> Address:
        return self._node(node_id).address

    def peer_info(self, node_id: str) -> PeerInfo:
        return PeerInfo(node_id=node_id, addresses=(self._node(node_id).address,))

    @property
    def node_ids(self) -> list[str]:
        return list(self._nodes)

    def is_up(self, node_id: str) -> bool:
        return self._node(node_id).program is not None

    def live_nodes(self) -> list[str]:
        return [n for n, node in self._nodes.items() if node.program is not None]

    def program(self, node_id: str) -> P:
        """The running machine of ``node_id``; ``SimulationError`` while it is crashed."""
        program = self._node(node_id).program
        if program is None:
            raise SimulationError(f"node {node_id!r} is down")
        return program

    def connections(self, node_id: str) -> set[str]:
        return set(self._node(node_id).peers)

    def crash(self, node_id: str) -> None:
        """Kill the node (``kill -9``): its machine, timers, connections and inbox are gone.

        Connected peers see the connection drop after one link latency (the OS resets it).
        """
        node = self._node(node_id)
        if node.program is None:
            return
        node.program = None
        node.epoch += 1
        node.timer_at = None
        self.metrics[node_id].crashes += 1
        for peer in sorted(node.peers):
            del self._nodes[peer].peers[node_id]
            self._schedule_disconnect(node_id, peer)
        node.peers.clear()
        node.told.clear()

    def restart(self, node_id: str) -> P:
        """Start a crashed node again with a fresh machine from its factory."""
        node = self._node(node_id)
        if node.program is not None:
            raise SimulationError(f"node {node_id!r} is running")
        return self._boot(node_id)

    def node_rng(self, node_id: str) -> random.Random:
        """A Random for one incarnation of a node, derived from the seed (stable across runs)."""
        return random.Random(f"{self.seed}/{node_id}/{self._node(node_id).epoch}")

    def _node(self, node_id: str) -> _Node[P]:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise SimulationError(f"unknown node {node_id!r}") from None

    def _boot(self, node_id: str) -> P:
        node = self._nodes[node_id]
        program = node.factory(node_id, self.now, self.node_rng(node_id))
        node.program = program
        self._pump(node_id, node)
        return program

    # -- links and partitions (netsim.network); cuts also close connections across them ------

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
        self._node(src)
        self._node(dst)
        self.net.set_link(src, dst, latency=latency, loss=loss, down=down, both=both)
        if down:
            self._cut_connections()

    def block(self, frm: Iterable[str], to: Iterable[str]) -> int:
        """Asymmetric cut (see ``Network.block``); returns a rule id for ``heal``."""
        rule = self.net.block(frm, to)
        self._cut_connections()
        return rule

    def partition(self, *groups: Iterable[str]) -> list[int]:
        """Symmetric cut between every two groups; nodes in no group keep reaching everyone."""
        rules = self.net.partition(*groups)
        self._cut_connections()
        return rules

    def bridge(self, left: Iterable[str], right: Iterable[str], via: Iterable[str]) -> list[int]:
        """``left`` and ``right`` cannot reach each other; the ``via`` nodes reach both."""
        rules = self.net.bridge(left, right, via)
        self._cut_connections()
        return rules

    def heal(self, *rule_ids: int) -> None:
        """Remove the given rules, or every rule and link outage when none is given."""
        self.net.heal(*rule_ids)

    def reachable(self, src: str, dst: str) -> bool:
        return self.net.reachable(src, dst)

    def _cut_connections(self) -> None:
        """Connections across a new cut close after ``connection_timeout`` unless healed by then."""
        for a, node in self._nodes.items():
            for b, conn in node.peers.items():
                if a < b and not (self.reachable(a, b) and self.reachable(b, a)):
                    delay = self.now + self.connection_timeout
                    self._push(delay, _CHECK_CONN, a, node.epoch, b, conn)

    # -- scheduling from tests -----------------------------------------------------------------

    def poke(self, node_id: str, fn: Callable[[P, float], object]) -> object:
        """Call ``fn(program, now)`` on a running node now, then carry out its effects."""
        node = self._node(node_id)
        result = fn(self.program(node_id), self.now)
        self._pump(node_id, node)
        return result

    def at(self, t: float, fn: Callable[[], object]) -> None:
        """Run ``fn()`` at virtual time ``t`` (e.g. a crash or a publish in a scenario)."""
        if t < self.now:
            raise SimulationError(f"cannot schedule at {t}, it is already {self.now}")
        self._push(t, _CALL, "", 0, fn, None)

    # -- running -------------------------------------------------------------------------------

    def step(self) -> bool:
        """Process the earliest input; ``False`` when nothing is scheduled."""
        if not self._heap:
            return False
        entry = heapq.heappop(self._heap)
        self.clock.advance_to(entry[0])
        self.steps += 1
        self._dispatch(entry)
        return True

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def run_until(self, t: float) -> None:
        """Process every input due at or before ``t``, then set the clock to ``t``."""
        heap = self._heap
        while heap and heap[0][0] <= t:
            self.step()
        self.clock.advance_to(t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_quiet(self, max_t: float) -> bool:
        """Run until nothing is scheduled (``True``) or ``max_t`` is reached (``False``)."""
        heap = self._heap
        while heap and heap[0][0] <= max_t:
            self.step()
        if heap:
            self.clock.advance_to(max_t)
            return False
        return True

    def run_until_true(
        self, condition: Callable[[], bool], max_t: float, *, check_every: float = 0.5
    ) -> float | None:
        """Run until ``condition()`` holds, checked every ``check_every`` virtual seconds (a
        check costs what the condition costs, so not after every step). Returns the time it first
        held, or ``None`` when ``max_t`` came first."""
        while True:
            if condition():
                return self.now
            if self.now >= max_t:
                return None
            self.run_until(min(max_t, self.now + check_every))

    # -- the pump ------------------------------------------------------------------------------

    def _push(self, t: float, kind: int, node: str, epoch: int, a: Any, b: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, node, epoch, a, b))

    def _link_latency(self, src: str, dst: str) -> float:
        return self.net.latency(src, dst)

    def _pump(self, node_id: str, node: _Node[P]) -> None:
        """Carry out one drain's effects in the Effects field order: dial, send, hang up,
        notices, timer."""
        assert node.program is not None
        fx = node.program.drain()
        for target in fx.dials:
            self._dial(node_id, node, target)
        for peer, msg in fx.sends:
            self._send(node_id, peer, msg)
        for peer in fx.hangups:
            self._hangup(node_id, node, peer)
        if fx.notices and self.on_notice:
            for notice in fx.notices:
                for hook in self.on_notice:
                    hook(self.now, node_id, notice)
        deadline = fx.deadline
        if deadline != node.timer_at:
            node.timer_at = deadline
            if deadline is not None:
                self._push(max(deadline, self.now), _TIMER, node_id, node.epoch, deadline, None)

    def _send(self, src: str, dst: str, msg: Any) -> None:
        metrics = self.metrics[src]
        metrics.sent += 1
        size = self.sizer(msg) if self.sizer is not None else 0
        metrics.bytes_sent += size
        target = self._nodes.get(dst)
        if target is None or target.program is None:
            metrics.dropped_dead += 1  # unknown or down: refused at once
            return
        if dst not in self._nodes[src].peers:
            metrics.unconnected_sends += 1
            if self.strict_connections:
                return
        if not self.reachable(src, dst):
            metrics.dropped_blocked += 1
            return
        if self.net.lost(src, dst):
            metrics.dropped_loss += 1
            return
        arrival = self.now + self._link_latency(src, dst)
        last = self._last_arrival.get((src, dst))
        if last is not None and arrival < last:
            arrival = last  # one directed link is FIFO, like the TCP stream it stands for
        self._last_arrival[src, dst] = arrival
        self._push(arrival, _DELIVER, dst, target.epoch, (src, self.now, size), msg)

    def _resolve(self, target: Any) -> str | None:
        if isinstance(target, PeerInfo):
            if target.node_id in self._nodes:
                return target.node_id
            return next(
                (self._by_address[a] for a in target.addresses if a in self._by_address), None
            )
        if isinstance(target, Address):
            return self._by_address.get(target)
        if isinstance(target, str) and target in self._nodes:
            return target
        return None

    def _dial(self, src: str, node: _Node[P], target: Any) -> None:
        self.metrics[src].dials += 1
        dst = self._resolve(target)
        if dst is None or dst == src or not (self.reachable(src, dst) and self.reachable(dst, src)):
            self._push(self.now + self.dial_timeout, _DIAL_FAILED, src, node.epoch, target, None)
            return
        leg = self._link_latency(src, dst)
        self._push(self.now + leg, _ACCEPT, dst, -1, (src, node.epoch), target)

    def _hangup(self, src: str, node: _Node[P], peer: str) -> None:
        if node.peers.pop(peer, None) is None:
            return
        del self._nodes[peer].peers[src]
        self._push(self.now, _DISCONNECTED, src, node.epoch, peer, None)
        self._schedule_disconnect(src, peer)

    def _schedule_disconnect(self, gone: str, peer: str) -> None:
        """``peer`` learns its connection to ``gone`` closed, one link latency from now."""
        t = self.now + self._link_latency(gone, peer)
        self._push(t, _DISCONNECTED, peer, self._nodes[peer].epoch, gone, None)

    def _dispatch(self, entry: _Entry) -> None:
        t, _seq, kind, node_id, epoch, a, b = entry
        if kind == _CALL:
            a()
            return
        node = self._nodes[node_id]
        program = node.program
        if kind == _ACCEPT:
            self._accept(node_id, node, a, b)
            return
        if program is None or epoch != node.epoch:
            if kind == _DELIVER:
                self.metrics[a[0]].dropped_dead += 1
            return
        if kind == _DELIVER:
            src, sent_at, size = a
            if not self.reachable(src, node_id):
                self.metrics[src].dropped_blocked += 1  # the cut came while it was in flight
                return
            metrics = self.metrics[node_id]
            metrics.received += 1
            metrics.bytes_received += size
            if self.on_deliver:
                delivery = Delivery(t, sent_at, src, node_id, b, size)
                for hook in self.on_deliver:
                    hook(delivery)
            program.handle_message(t, src, b)
        elif kind == _TIMER:
            if node.timer_at != a:
                return  # superseded by a later drain
            node.timer_at = None
            self.metrics[node_id].timers += 1
            program.handle_timer(t)
        elif kind == _CONNECTED:
            conn, target = b
            if node.peers.get(a) == conn:
                self._tell_connected(node_id, node, a)
            else:  # closed again before the handshake finished on this side
                self.metrics[node_id].dial_failures += 1
                program.handle_dial_failed(t, target)
        elif kind == _DIAL_FAILED:
            self.metrics[node_id].dial_failures += 1
            program.handle_dial_failed(t, a)
        elif kind == _DISCONNECTED:
            if a in node.peers or a not in node.told:
                return  # a newer connection is up, or the machine never saw this one
            node.told.discard(a)
            self.metrics[node_id].disconnects += 1
            program.handle_disconnected(t, a)
        elif kind == _CHECK_CONN:
            self._check_conn(node_id, node, a, b)
        else:  # pragma: no cover - kinds are module constants
            raise SimulationError(f"unknown input kind {kind}")
        self._pump(node_id, node)

    def _accept(self, dst: str, node: _Node[P], dialer: tuple[str, int], target: Any) -> None:
        """The dial reached ``dst``: connect both ends, or refuse when ``dst`` is down."""
        src, src_epoch = dialer
        src_node = self._nodes[src]
        if src_node.program is None or src_node.epoch != src_epoch:
            return  # the dialer died meanwhile; nobody is left to tell
        if not (self.reachable(src, dst) and self.reachable(dst, src)):
            self._push(self.now + self.dial_timeout, _DIAL_FAILED, src, src_epoch, target, None)
            return
        back = self.now + self._link_latency(dst, src)
        if node.program is None:
            self._push(back, _DIAL_FAILED, src, src_epoch, target, None)  # connection refused
            return
        conn = node.peers.get(src)
        if conn is not None:
            return  # already connected: nothing new to announce
        self._conn_seq += 1
        conn = self._conn_seq
        node.peers[src] = conn
        src_node.peers[dst] = conn
        self._tell_connected(dst, node, src)
        self._pump(dst, node)
        self._push(back, _CONNECTED, src, src_epoch, dst, (conn, target))

    def _tell_connected(self, node_id: str, node: _Node[P], peer: str) -> None:
        assert node.program is not None
        node.told.add(peer)
        self.metrics[node_id].connects += 1
        node.program.handle_connected(self.now, peer)

    def _check_conn(self, a: str, node: _Node[P], b: str, conn: int) -> None:
        if node.peers.get(b) != conn or (self.reachable(a, b) and self.reachable(b, a)):
            return
        del node.peers[b]
        del self._nodes[b].peers[a]
        for x, y in ((a, b), (b, a)):
            self._push(self.now, _DISCONNECTED, y, self._nodes[y].epoch, x, None)
