"""The asyncio driver of the swarm machines: membership and dissemination on real connections.

Three triggers feed the pure machines (STYLE.md §3): a frame from a peer, the one timer, and
events published here. Each ends in ``_pump``, which drains both machines the way netsim's
``SwarmNode`` does (membership's ``ActivePeerAdded``/``Removed`` become dissemination's neighbour
up/down), then dials, sends, hangs up, publishes notices and re-arms one ``loop.call_at`` handle
only when the deadline moved.

What stays here, being about connections rather than protocol state:

- The session layer (SPEC §7.1): both sides send ``Hello`` first; a peer's first frame must be its
  ``Hello`` with the node id its channel authenticated, else the connection is closed. Only then
  does membership hear ``handle_connected`` with the peer's ``PeerInfo``.
- Duplicate connections between two nodes (both dialled at once, or a seed address and a known
  peer dialled separately): the one dialled by the smaller node id wins, and among connections
  dialled by the same node the first to finish its Hello. Only a connection's dialler closes it
  as a loser, so the two ends never close both; the acceptor keeps spares and promotes one
  silently when its current connection closes.
- Penalties: undecodable frames, a bad Hello, or ``PeerMisbehaved`` from dissemination close that
  peer's connections with the code, log a WARNING, and refuse the peer (dials and accepts) for a
  backoff that doubles per offence.
- Disk reads: a ``RequestRange``/``Graft`` for a span the ``LogStore`` holds only on disk is
  parked per peer (in order) until ``LogStore.prefetch`` returns, then handed to the machine.

Settings (and the ``SWARMNODE_PROBE_PERIOD`` override) live in ``driver_config.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from protocol.codec import decode, encode
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.eventchain import EventRecord
from protocol.messages import (
    PROTOCOL_VERSION,
    Error,
    EventBatch,
    EventIds,
    Graft,
    Hello,
    Message,
    OffsetMap,
    Prune,
    RequestRange,
    SendableMessage,
)
from protocol.messages_base import Address, PeerInfo
from swarmnode.config import HostPort
from swarmnode.events.log import EventLog
from swarmnode.identity import Identity
from swarmnode.ports import Subscription
from swarmnode.swarm.driver_config import PROBE_PERIOD_ENV, DriverConfig, config_from_env
from swarmnode.swarm.effects import Effects
from swarmnode.swarm.logstore import LogStore
from swarmnode.swarm.membership import (
    Membership,
    PeerAlive,
    PeerDead,
    PeerLeft,
    PeerSuspect,
)
from swarmnode.swarm.plumtree import Dissemination, PeerMisbehaved
from swarmnode.swarm.transport import PeerConnection, SwarmTransport
from swarmnode.swarm.views import ActivePeerAdded, ActivePeerRemoved

__all__ = [
    "PROBE_PERIOD_ENV",
    "REPLICATION_MESSAGES",
    "DriverConfig",
    "SwarmDriver",
    "config_from_env",
]

log = logging.getLogger(__name__)

REPLICATION_MESSAGES: Final = (EventBatch, EventIds, Graft, Prune, OffsetMap, RequestRange)
"""Message types for the dissemination machine (SPEC §7.4); the rest go to membership."""

AGENT: Final = "swarmnode/0.1.0"


def _spans(msg: object) -> list[tuple[str, int, int]]:
    """The ``(source, first, last)`` spans a serving request makes the machine read."""
    match msg:
        case RequestRange(source=source, first=first, last=last):
            return [(source, first, last)]
        case Graft(ranges=ranges):
            return [(r.source, r.first, r.last) for r in ranges]
    return []


@dataclass(slots=True)
class _Link:
    """One authenticated connection on its way through the Hello exchange."""

    conn: PeerConnection
    ready: asyncio.Future[bool]
    timer: asyncio.TimerHandle | None = None
    hello: Hello | None = None


class SwarmDriver:
    """Runs the swarm machines for one node. Implements ``PeerHandler`` for its transport.

    ``await start(listen, seeds)`` once the transport listens, ``await stop()`` before it closes.
    """

    def __init__(
        self,
        *,
        swarm_key: bytes,
        identity: Identity,
        event_log: EventLog,
        config: DriverConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or DriverConfig()
        self.identity = identity
        self.node_id = identity.node_id
        self.event_log = event_log
        self.store = LogStore(event_log, own_key=identity.public_key)
        self.transport = SwarmTransport(
            swarm_key=swarm_key, identity=identity, handler=self, config=self.config.transport
        )
        self._rng = rng or random.Random()
        self._membership: Membership | None = None
        self._dissemination: Dissemination | None = None
        self._hello: list[bytes] = []
        self._links: dict[PeerConnection, _Link] = {}
        self._peers: dict[str, list[PeerConnection]] = {}
        self._dialing: set[object] = set()
        self._penalties: dict[str, tuple[float, float]] = {}  # peer → (until, next backoff)
        self._parked: dict[str, deque[Message]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._local: list[EventRecord] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._running = False
        self._changed = asyncio.Event()
        self.generation = 0
        """Rises whenever the driver acted (a pump, a dial outcome, a disconnect)."""
        self.counters: dict[str, int] = defaultdict(int)
        self._routes: tuple[tuple[tuple[type, ...], Callable[[PeerConnection, Any], None]], ...] = (
            ((Hello,), self._on_second_hello),
            ((Error,), self._on_error),
            (REPLICATION_MESSAGES, self._to_dissemination),
            ((object,), self._to_membership),
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def start(self, listen: HostPort, seeds: Sequence[HostPort] = ()) -> None:
        """Start the machines on ``listen`` (the bound swarm address) and dial ``seeds``."""
        await self.store.load()
        me = PeerInfo(
            node_id=self.node_id, addresses=(Address(host=listen.host, port=listen.port),)
        )
        self._hello = [
            encode(
                Hello(
                    version=PROTOCOL_VERSION,
                    node_id=self.node_id,
                    features=(),
                    listen=me.addresses,
                    agent=AGENT,
                )
            )
        ]
        self._membership = Membership(
            self.config.membership, self_info=me, rng=random.Random(self._rng.random())
        )
        self._dissemination = Dissemination(
            self.config.dissemination,
            node_id=self.node_id,
            store=self.store,
            rng=random.Random(self._rng.random()),
        )
        self._running = True
        self._spawn(self._follow_local())
        now = self.loop.time()
        self._membership.join(now, [Address(host=s.host, port=s.port) for s in seeds])
        self._pump()
        log.info("swarm.started", extra={"node_id": self.node_id, "seeds": [str(s) for s in seeds]})

    async def stop(self) -> None:
        """Stop reacting, end the driver's tasks, and wait for replicated events to commit."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for link in self._links.values():
            if link.timer is not None:
                link.timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def membership(self) -> Membership:
        assert self._membership is not None, "the driver is not started"
        return self._membership

    @property
    def dissemination(self) -> Dissemination:
        assert self._dissemination is not None, "the driver is not started"
        return self._dissemination

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; re-checked whenever the driver acted (tools and tests
        wrap this in their own deadline)."""
        while True:
            self._changed.clear()
            if predicate():
                return
            await self._changed.wait()

    async def wait_changed(self, after: int) -> None:
        """Wait until ``generation`` passes ``after`` (status long-polls use it)."""
        await self.wait_for(lambda: self.generation > after)

    def _touch(self) -> None:
        self.generation += 1
        self._changed.set()

    def connected_peers(self) -> list[str]:
        """Peers with a connection past the Hello exchange."""
        return sorted(self._peers)

    # ---- PeerHandler -------------------------------------------------------------------------

    def peer_connected(self, conn: PeerConnection) -> None:
        peer = conn.peer_node_id
        if not self._running:
            conn.close(ErrorCode.NO_ERROR)
            return
        if self._penalised(peer):
            self.counters["refused"] += 1
            conn.close(ErrorCode.RESOURCE_LIMIT)
            return
        link = _Link(conn, self.loop.create_future())
        link.timer = self.loop.call_later(self.config.hello_timeout_s, self._hello_timed_out, conn)
        self._links[conn] = link
        conn.send_frames(self._hello)

    def frame_received(self, conn: PeerConnection, body: bytes | bytearray) -> None:
        link = self._links.get(conn)
        if link is None or not self._running:
            return
        self.counters["frames_in"] += 1
        try:
            msg = decode(body)
        except RemoteProtocolError as exc:
            self._penalise(conn.peer_node_id, exc.code, str(exc))
            return
        if link.hello is None:
            self._on_first(link, msg)
        else:
            for kinds, route in self._routes:
                if isinstance(msg, kinds):
                    route(conn, msg)
                    break
        self._pump()

    def peer_disconnected(self, conn: PeerConnection, code: ErrorCode | int | None) -> None:
        link = self._links.pop(conn, None)
        if link is None:
            return
        if link.timer is not None:
            link.timer.cancel()
        if not link.ready.done():
            link.ready.set_result(False)
        peer = conn.peer_node_id
        conns = self._peers.get(peer)
        self._touch()
        if conns is None or conn not in conns:
            return
        conns.remove(conn)
        if conns or not self._running:
            if not conns:
                del self._peers[peer]
            return
        del self._peers[peer]
        log.info("peer.down", extra={"node_id": peer, "code": None if code is None else int(code)})
        self.membership.handle_disconnected(self.loop.time(), peer)
        self._pump()

    # ---- session -----------------------------------------------------------------------------

    def _on_first(self, link: _Link, msg: Message) -> None:
        conn, peer = link.conn, link.conn.peer_node_id
        if not isinstance(msg, Hello):
            self._penalise(peer, ErrorCode.PROTOCOL_VIOLATION, "first message is not Hello")
            return
        if msg.node_id != peer:
            self._penalise(peer, ErrorCode.HANDSHAKE_FAILED, "Hello node id differs from key")
            return
        if msg.version != PROTOCOL_VERSION:
            conn.close(ErrorCode.UNSUPPORTED_VERSION)
            return
        link.hello = msg
        if link.timer is not None:
            link.timer.cancel()
            link.timer = None
        info = PeerInfo(node_id=peer, addresses=_reachable(msg.listen, conn.remote))
        conns = self._peers.setdefault(peer, [])
        conns.append(conn)
        conns.sort(key=self._rank)
        link.ready.set_result(True)
        if len(conns) == 1:
            log.info("peer.up", extra={"node_id": peer, "remote": str(conn.remote)})
            self.membership.handle_connected(self.loop.time(), peer, info)
            return
        # A duplicate: the dialler of each losing connection closes it (module docstring).
        for loser in conns[1:]:
            if not loser.inbound:
                self.counters["duplicates_closed"] += 1
                loser.close(ErrorCode.NO_ERROR)

    def _rank(self, conn: PeerConnection) -> bool:
        """Sort key of a peer's connections: the one dialled by the smaller id first, then the
        order their Hellos arrived (kept by the stable sort)."""
        dialler = conn.peer_node_id if conn.inbound else self.node_id
        return dialler != min(self.node_id, conn.peer_node_id)

    def _on_second_hello(self, conn: PeerConnection, msg: Hello) -> None:
        del msg
        self._penalise(conn.peer_node_id, ErrorCode.PROTOCOL_VIOLATION, "second Hello")

    def _on_error(self, conn: PeerConnection, msg: Error) -> None:
        log.warning(
            "peer.error_received",
            extra={"node_id": conn.peer_node_id, "code": msg.code, "text": msg.message},
        )
        conn.close(ErrorCode.NO_ERROR)

    def _hello_timed_out(self, conn: PeerConnection) -> None:
        link = self._links.get(conn)
        if link is not None and link.hello is None:
            self._penalise(conn.peer_node_id, ErrorCode.PROTOCOL_VIOLATION, "no Hello in time")

    # ---- routing -----------------------------------------------------------------------------

    def _to_membership(self, conn: PeerConnection, msg: Any) -> None:
        self.membership.handle_message(self.loop.time(), conn.peer_node_id, msg)

    def _to_dissemination(self, conn: PeerConnection, msg: Message) -> None:
        peer = conn.peer_node_id
        parked = self._parked.get(peer)
        if parked is not None:
            parked.append(msg)  # keep this peer's serving requests in order behind a disk read
            return
        if any(self.store.needs_read(s, first - 1) for s, first, _ in _spans(msg)):
            self._parked[peer] = deque([msg])
            self._spawn(self._serve_parked(peer))
            return
        self.dissemination.handle_message(self.loop.time(), peer, msg)

    async def _serve_parked(self, peer: str) -> None:
        """Read parked requests' spans from disk, then hand them to the machine, in order."""
        parked = self._parked[peer]
        limit_cap = self.config.dissemination.max_serve_events
        try:
            while parked and self._running:
                msg = parked[0]
                for source, first, last in _spans(msg):
                    if self.store.needs_read(source, first - 1):
                        limit = min(last - first + 1, limit_cap)
                        self.counters["disk_reads"] += 1
                        await self.store.prefetch(source, first - 1, limit)
                parked.popleft()
                if self._running:
                    self.dissemination.handle_message(self.loop.time(), peer, msg)
                    self._pump()
        finally:
            self._parked.pop(peer, None)

    # ---- local events ------------------------------------------------------------------------

    async def _follow_local(self) -> None:
        """Every event committed under our own source, in order, whoever published it."""
        me = self.node_id
        head = self.store.head(me)
        events = self.event_log.subscribe(
            [Subscription(source=me)], {me: head} if head >= 0 else None
        )
        async with contextlib.aclosing(events):
            async for record in events:
                if not self._local:
                    self.loop.call_soon(self._flush_local)
                self._local.append(record)

    def _flush_local(self) -> None:
        records, self._local = self._local, []
        if not records or not self._running:
            return
        self.store.add_local(records)
        self.dissemination.handle_local_events(self.loop.time(), records)
        self._pump()

    # ---- the pump ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Drain both machines and carry out their effects (Effects field order)."""
        if not self._running:
            return
        membership, dissemination = self.membership, self.dissemination
        fx = membership.drain()
        now = self.loop.time()
        for notice in fx.notices:
            match notice:
                case ActivePeerAdded(peer=peer):
                    dissemination.handle_neighbor_up(now, peer)
                case ActivePeerRemoved(peer=peer):
                    dissemination.handle_neighbor_down(now, peer)
        fx.merge(dissemination.drain())
        self._perform(fx)
        self._touch()

    def _perform(self, fx: Effects) -> None:
        for target in fx.dials:
            self._dial(target)
        by_peer: dict[str, list[bytes]] = {}
        for peer, msg in fx.sends:
            body = self._encode(msg)
            if body is not None:
                by_peer.setdefault(peer, []).append(body)
        for peer, bodies in by_peer.items():
            self._send(peer, bodies)
        for peer in fx.hangups:
            for conn in list(self._peers.get(peer, ())):
                conn.close(ErrorCode.NO_ERROR)
        for notice in fx.notices:
            self._on_notice(notice)
        self._arm(fx.deadline)

    def _encode(self, msg: SendableMessage) -> bytes | None:
        try:
            return encode(msg)
        except LocalProtocolError:
            log.exception("swarm.encode_failed", extra={"kind": type(msg).__name__})
            return None

    def _send(self, peer: str, bodies: list[bytes]) -> None:
        conns = self._peers.get(peer)
        if not conns:
            self.counters["unconnected_sends"] += len(bodies)
            return
        try:
            conns[0].send_frames(bodies)
        except ConnectionError:
            self.counters["failed_sends"] += len(bodies)
            return
        self.counters["frames_out"] += len(bodies)

    def _on_notice(self, notice: object) -> None:
        match notice:
            case PeerAlive(node_id=node_id, incarnation=inc):
                log.info("peer.alive", extra={"node_id": node_id, "incarnation": inc})
            case PeerSuspect(node_id=node_id, incarnation=inc):
                log.info("peer.suspect", extra={"node_id": node_id, "incarnation": inc})
            case PeerDead(node_id=node_id, incarnation=inc):
                log.info("peer.dead", extra={"node_id": node_id, "incarnation": inc})
            case PeerLeft(node_id=node_id, incarnation=inc):
                log.info("peer.left", extra={"node_id": node_id, "incarnation": inc})
            case PeerMisbehaved(peer=peer, reason=reason):
                self._penalise(peer, ErrorCode.BAD_SIGNATURE, reason)

    def _arm(self, deadline: float | None) -> None:
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        deadline, self._timer, self._timer_at = self._timer_at, None, None
        if not self._running:
            return
        now = max(self.loop.time(), deadline or 0.0)  # call_at may fire a hair early
        self.membership.handle_timer(now)
        self.dissemination.handle_timer(now)
        self._pump()

    # ---- dialling ----------------------------------------------------------------------------

    def _dial(self, target: Address | PeerInfo) -> None:
        key: object = target.node_id if isinstance(target, PeerInfo) else target
        if isinstance(target, PeerInfo) and (
            target.node_id in self._peers or target.node_id == self.node_id
        ):
            return  # already connected: nothing new to announce (netsim's contract)
        if key in self._dialing:
            return
        if isinstance(target, PeerInfo) and self._penalised(target.node_id):
            self.loop.call_soon(self._dial_failed, target)
            return
        self._dialing.add(key)
        self.counters["dials"] += 1
        self._spawn(self._dial_task(key, target))

    async def _dial_task(self, key: object, target: Address | PeerInfo) -> None:
        addresses = target.addresses if isinstance(target, PeerInfo) else (target,)
        reached: str | None = None
        try:
            for address in addresses:
                try:
                    conn = await self.transport.connect(address.host, address.port)
                except (OSError, TimeoutError) as exc:
                    log.debug(
                        "peer.dial_failed", extra={"address": _fmt(address), "error": str(exc)}
                    )
                    continue
                link = self._links.get(conn)
                if link is not None and await link.ready:
                    reached = conn.peer_node_id
                    break
        finally:
            self._dialing.discard(key)
        if reached is None:
            self.counters["dial_failures"] += 1
            self._touch()
        if isinstance(target, PeerInfo) and reached != target.node_id:
            self._dial_failed(target)

    def _dial_failed(self, target: PeerInfo) -> None:
        if self._running and target.node_id not in self._peers:
            self.membership.handle_disconnected(self.loop.time(), target.node_id)
            self._pump()

    # ---- penalties ---------------------------------------------------------------------------

    def _penalised(self, peer: str) -> bool:
        entry = self._penalties.get(peer)
        return entry is not None and self.loop.time() < entry[0]

    def _penalise(self, peer: str, code: ErrorCode | int, reason: str) -> None:
        """Close every connection to ``peer`` with ``code`` and refuse it for a while."""
        _, backoff = self._penalties.get(peer, (0.0, self.config.penalty_initial_s))
        self._penalties[peer] = (
            self.loop.time() + backoff,
            min(backoff * 2, self.config.penalty_max_s),
        )
        self.counters["penalties"] += 1
        log.warning(
            "peer.misbehaved",
            extra={"node_id": peer, "code": int(code), "reason": reason, "refused_for_s": backoff},
        )
        for conn in [c for c in self._links if c.peer_node_id == peer]:
            conn.close(code)

    # ---- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for ``GET /api/v1/node/status``."""
        if self._membership is None or self._dissemination is None:
            return {"nodeId": self.node_id, "generation": self.generation, "peers": []}
        now, wall = self.loop.time(), time.time()
        dstats = self.dissemination.statistics()
        peers = [
            {
                "nodeId": m.node_id,
                "state": m.state.name.lower(),
                "view": m.view or None,
                "connected": m.node_id in self._peers,
                "incarnation": m.incarnation,
                "addresses": [_fmt(a) for a in m.addresses],
                "lastSeen": None if m.last_seen is None else wall - (now - m.last_seen),
                "lag": dstats.lag.get(m.node_id),
            }
            for m in sorted(self.membership.members(), key=lambda m: m.node_id)
        ]
        counters = dict(self.counters)
        counters.update(
            commits_pending=self.store.pending_commits,
            events_committed=self.store.committed,
            commit_failures=self.store.commit_failures,
        )
        return {
            "nodeId": self.node_id,
            "generation": self.generation,
            "swarm": None if self.transport.address is None else str(self.transport.address),
            "peers": peers,
            "offsets": self.store.offsets(),
            "lag": dict(dstats.lag),
            "membership": self.membership.statistics(),
            "dissemination": {k: v for k, v in dataclasses.asdict(dstats).items() if k != "lag"},
            "counters": counters,
        }


def _fmt(address: Address) -> str:
    return str(HostPort(address.host, address.port))


def _reachable(listen: tuple[Address, ...], remote: HostPort) -> tuple[Address, ...]:
    """The peer's listen addresses, an unspecified host (``0.0.0.0``, ``::``) replaced by the
    host we reached it from (SPEC §7.1.1: prefer the address actually used)."""
    out = []
    for address in listen:
        try:
            unspecified = ipaddress.ip_address(address.host).is_unspecified
        except ValueError:
            unspecified = False
        if unspecified and remote.port:
            out.append(Address(host=remote.host, port=address.port))
        else:
            out.append(address)
    return tuple(dict.fromkeys(out))
