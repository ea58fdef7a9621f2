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
  backoff that doubles per offence; an entry quiet for ``penalty_forget_s`` is forgotten.
- Write back-pressure: sends go through a per-connection ``Outbox`` (``outbox.py``) whose task
  awaits the transport's ``drain()``; a peer whose outbox would pass its cap is closed as a slow
  consumer.
- Serving requests that must wait (``serving.py``): a ``RequestRange``/``Graft`` for a span the
  ``LogStore`` holds only on disk, or from a peer whose outbox is congested, is parked per peer
  (in order, capped) until ``LogStore.prefetch`` returns and the outbox drains, then handed to
  the machine: a slow reader gets no more replication than it reads.

Settings (and the ``SWARMNODE_PROBE_PERIOD`` override) live in ``driver_config.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

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
from protocol.messages_transfer import (
    Cancel,
    ChunkData,
    DontHave,
    HaveBitmap,
    HaveUpdate,
    Outline,
    RequestChunks,
    RequestOutline,
)
from swarmnode.config import HostPort
from swarmnode.events.log import EventLog
from swarmnode.identity import Identity
from swarmnode.ports import Subscription
from swarmnode.swarm.deadline import DeadlineTimer
from swarmnode.swarm.driver_config import PROBE_PERIOD_ENV, DriverConfig, config_from_env
from swarmnode.swarm.driver_status import fmt_address, reachable, snapshot
from swarmnode.swarm.effects import Effects
from swarmnode.swarm.logstore import LogStore
from swarmnode.swarm.membership import (
    Membership,
    PeerAlive,
    PeerDead,
    PeerLeft,
    PeerSuspect,
)
from swarmnode.swarm.outbox import Outbox, Outboxes
from swarmnode.swarm.penalties import Penalties
from swarmnode.swarm.plumtree import Dissemination, PeerMisbehaved
from swarmnode.swarm.serving import ServeQueue
from swarmnode.swarm.transport import PeerConnection, SwarmTransport
from swarmnode.swarm.views import ActivePeerAdded, ActivePeerRemoved

__all__ = [
    "PROBE_PERIOD_ENV",
    "REPLICATION_MESSAGES",
    "TRANSFER_MESSAGES",
    "DriverConfig",
    "SwarmDriver",
    "TransferHooks",
    "config_from_env",
]

log = logging.getLogger(__name__)

REPLICATION_MESSAGES: Final = (EventBatch, EventIds, Graft, Prune, OffsetMap, RequestRange)
"""Message types for the dissemination machine (SPEC §7.4); the rest go to membership."""

TRANSFER_MESSAGES: Final = (
    RequestOutline,
    Outline,
    RequestChunks,
    ChunkData,
    HaveBitmap,
    HaveUpdate,
    Cancel,
    DontHave,
)
"""Message types for blob transfer (SPEC §7.5)."""

AGENT: Final = "swarmnode/0.1.0"


class TransferHooks(Protocol):
    """Blob transfer as the driver sees it (``swarm/transfer.py``): connected peers and their
    transfer messages. A peer is up from its first connection past Hello until its last closes."""

    def peer_up(self, peer: str) -> None: ...

    def peer_down(self, peer: str) -> None: ...

    def handle_message(self, peer: str, msg: Message) -> None: ...

    def status(self) -> dict[str, Any]: ...


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
        self._penalties = Penalties(
            initial_s=self.config.penalty_initial_s,
            max_s=self.config.penalty_max_s,
            forget_s=self.config.penalty_forget_s,
        )
        self._outboxes = Outboxes(self._new_outbox, self._spawn)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._local: list[EventRecord] = []
        self._timer = DeadlineTimer(self._on_timer)
        self._running = False
        self._changed = asyncio.Event()
        self.generation = 0
        """Rises whenever the driver acted (a pump, a dial outcome, a disconnect)."""
        self.counters: dict[str, int] = defaultdict(int)
        self._serving = ServeQueue(
            store=self.store,
            max_parked=self.config.max_parked_requests,
            max_serve_events=self.config.dissemination.max_serve_events,
            outbox_of=self._outbox_of,
            deliver=self._serve_parked,
            spawn=self._spawn,
            counters=self.counters,
            touch=self._touch,
        )
        self.transfers: TransferHooks | None = None
        """Blob transfer, set before ``start`` (the node does); without it transfer messages are
        dropped."""
        self._routes: tuple[tuple[tuple[type, ...], Callable[[PeerConnection, Any], None]], ...] = (
            ((Hello,), self._on_second_hello),
            ((Error,), self._on_error),
            (REPLICATION_MESSAGES, self._to_dissemination),
            (TRANSFER_MESSAGES, self._to_transfers),
            ((object,), self._to_membership),
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def start(self, listen: HostPort, seeds: Sequence[HostPort] = ()) -> None:
        """Start the machines on ``listen`` (the bound swarm address) and dial ``seeds``."""
        await self.store.load()
        announced = self.config.advertise or listen
        me = PeerInfo(
            node_id=self.node_id, addresses=(Address(host=announced.host, port=announced.port),)
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
        self._timer.cancel()
        for link in self._links.values():
            if link.timer is not None:
                link.timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        try:
            conn.send_frames(self._hello)
        except (ConnectionError, LocalProtocolError):
            # The peer hung up during the handshake's last flight (it refuses us, or it is
            # going): its disconnect, which follows, cleans up.
            self.counters["closed_before_hello"] += 1

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
        self._outboxes.drop(conn)
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
        if self.transfers is not None:
            self.transfers.peer_down(peer)
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
        info = PeerInfo(node_id=peer, addresses=reachable(msg.listen, conn.remote))
        conns = self._peers.setdefault(peer, [])
        conns.append(conn)
        conns.sort(key=self._rank)
        link.ready.set_result(True)
        if len(conns) == 1:
            log.info("peer.up", extra={"node_id": peer, "remote": str(conn.remote)})
            self.membership.handle_connected(self.loop.time(), peer, info)
            if self.transfers is not None:
                self.transfers.peer_up(peer)
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
        if not self._serving.admit(peer, msg):
            self.dissemination.handle_message(self.loop.time(), peer, msg)

    def _to_transfers(self, conn: PeerConnection, msg: Message) -> None:
        if self.transfers is not None:
            self.transfers.handle_message(conn.peer_node_id, msg)

    def send_messages(self, peer: str, msgs: Sequence[SendableMessage]) -> None:
        """Send to ``peer`` through its outbox (dropped, counted, if it is not connected)."""
        bodies = [b for b in map(self._encode, msgs) if b is not None]
        if bodies and self._running:
            self._send(peer, bodies)

    def outbox_of(self, peer: str) -> Outbox | None:
        """The send queue towards ``peer`` (its ``congested`` flag gates bulk sends)."""
        return self._outbox_of(peer)

    def penalise(self, peer: str, code: ErrorCode | int, reason: str) -> None:
        """Close ``peer``'s connections and refuse it for a while (``penalties.py``)."""
        self._penalise(peer, code, reason)

    def _serve_parked(self, peer: str, msg: Message) -> None:
        """A parked serving request whose wait is over (``serving.py``)."""
        if self._running:
            self.dissemination.handle_message(self.loop.time(), peer, msg)
            self._pump()

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
        self._timer.arm(self.loop, fx.deadline)

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
        conn = conns[0]
        if conn.closed:
            self.counters["failed_sends"] += len(bodies)
            return
        if not self._outboxes.put(conn, bodies):
            self.counters["slow_consumers"] += 1
            log.warning(
                "peer.slow_consumer",
                extra={"node_id": peer, "cap": self.config.outbox_max_bytes},
            )
            conn.close(ErrorCode.RESOURCE_LIMIT)
            return
        self.counters["frames_out"] += len(bodies)
        self.counters["bytes_out"] += sum(map(len, bodies))

    def _outbox_of(self, peer: str) -> Outbox | None:
        """The send queue of the connection that carries our sends to ``peer``, if any."""
        conns = self._peers.get(peer)
        return self._outboxes.get(conns[0]) if conns else None

    def _new_outbox(self, conn: PeerConnection) -> Outbox:
        config = self.config
        return Outbox(
            conn,
            pause_bytes=config.serve_pause_bytes,
            resume_bytes=config.serve_resume_bytes,
            max_bytes=config.outbox_max_bytes,
            on_change=self._touch,
        )

    def parked_requests(self) -> dict[str, int]:
        """Serving requests held back per peer (congested outbox or disk read)."""
        return self._serving.backlog()

    def outbox_bytes(self) -> dict[str, int]:
        """Bytes queued per peer, not yet handed to the transport (status, tests)."""
        return self._outboxes.bytes_by_peer()

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

    def _on_timer(self, now: float) -> None:
        if not self._running:
            return
        self.expire_penalties(now)
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
                        "peer.dial_failed",
                        extra={"address": fmt_address(address), "error": str(exc)},
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
        return self._penalties.refused(peer, self.loop.time())

    def expire_penalties(self, now: float) -> None:
        """Forget peers whose refusal ended ``penalty_forget_s`` before ``now``."""
        self._penalties.expire(now)

    def penalised_peers(self) -> list[str]:
        """Peers with a penalty entry (refused now, or remembered for the backoff)."""
        return self._penalties.peers()

    def _penalise(self, peer: str, code: ErrorCode | int, reason: str) -> None:
        """Close every connection to ``peer`` with ``code`` and refuse it for a while."""
        backoff = self._penalties.add(peer, self.loop.time())
        self.counters["penalties"] += 1
        log.warning(
            "peer.misbehaved",
            extra={"node_id": peer, "code": int(code), "reason": reason, "refused_for_s": backoff},
        )
        for conn in [c for c in self._links if c.peer_node_id == peer]:
            conn.close(code)

    # ---- status ------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._membership is not None and self._dissemination is not None

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for ``GET /api/v1/node/status`` (``driver_status.py``)."""
        return snapshot(self)
