"""The swarm driver's settings: the machines' configs plus its own policy, and the one
environment override.

``SWARMNODE_PROBE_PERIOD`` (seconds, environment; read by ``config_from_env``, which the node
calls) scales SWIM's protocol period and the timers derived from it (ack and indirect timeouts,
join retries). It exists for tests and demos that need failure detection in seconds instead of
tens of seconds; the defaults (``MembershipConfig``) are for real LANs.

``SWARMNODE_ADVERTISE`` (``HOST:PORT``) is the swarm address this node tells peers in its Hello
instead of the address it bound: for a node reached through a port forward or a proxy. The
partition tests use it to put a cuttable proxy in front of every node, so that the addresses peers
learn (Hello, peer exchange) also lead through the proxy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from swarmnode.config import HostPort, parse_host_port
from swarmnode.swarm.membership import MembershipConfig
from swarmnode.swarm.plumtree import DisseminationConfig
from swarmnode.swarm.transport import TransportConfig

__all__ = ["ADVERTISE_ENV", "PROBE_PERIOD_ENV", "DriverConfig", "config_from_env"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverConfig:
    """The machines' configs and the driver's own policy."""

    membership: MembershipConfig = field(default_factory=MembershipConfig)
    dissemination: DisseminationConfig = field(default_factory=DisseminationConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    # A Hello is the first frame after the handshake; a peer that sends none within the
    # handshake's own budget holds a connection slot for nothing.
    hello_timeout_s: float = 5.0
    # The swarm address announced to peers; None: the bound listen address (module docstring).
    advertise: HostPort | None = None
    # First refusal after an offence, doubling per offence up to the cap: long enough that a
    # broken peer cannot make us re-verify its garbage in a loop, short enough that a peer fixed
    # by a restart returns within minutes.
    penalty_initial_s: float = 10.0
    penalty_max_s: float = 600.0
    # A peer whose refusal ended this long ago is forgotten (its next offence starts the backoff
    # again): the table then holds only recent offenders, not every peer ever penalised.
    penalty_forget_s: float = 600.0
    # Per-connection send queue (outbox.py), on top of the transport's write buffer (4 MiB high
    # water). Past serve_pause_bytes we stop answering that peer's RequestRange/Graft until the
    # queue drains to serve_resume_bytes: two high-water marks keep a fast reader busy between
    # wakeups, and a slow one costs us no more than that plus one answer (max_serve_events of
    # 512 KiB batches can be a few MiB more). Past outbox_max_bytes even gossip and membership
    # cannot go out: the peer does not read, and the connection is closed.
    serve_pause_bytes: int = 8 << 20
    serve_resume_bytes: int = 2 << 20
    outbox_max_bytes: int = 64 << 20
    # Requests held back per peer while its queue is congested or a disk read runs: an honest
    # peer keeps request_window (4) in flight; the rest are dropped, and it re-asks on timeout.
    max_parked_requests: int = 32


PROBE_PERIOD_ENV: Final = "SWARMNODE_PROBE_PERIOD"
ADVERTISE_ENV: Final = "SWARMNODE_ADVERTISE"


def config_from_env(environ: Mapping[str, str]) -> DriverConfig:
    """The default config, with membership timers scaled to ``SWARMNODE_PROBE_PERIOD`` and the
    announced address from ``SWARMNODE_ADVERTISE`` if set (module docstring); ``ValueError`` for
    a period that is not a positive number or an address that is not a dialable ``HOST:PORT``."""
    config = _probe_config(environ.get(PROBE_PERIOD_ENV))
    advertise = environ.get(ADVERTISE_ENV)
    if advertise:
        where = parse_host_port(advertise)
        if where.port == 0:
            raise ValueError(f"{ADVERTISE_ENV} needs a real port, got {advertise!r}")
        config = dataclasses.replace(config, advertise=where)
    return config


def _probe_config(raw: str | None) -> DriverConfig:
    if not raw:
        return DriverConfig()
    period = float(raw)
    if not 0.0 < period <= 60.0:
        raise ValueError(f"{PROBE_PERIOD_ENV} must be in (0, 60] seconds, got {raw!r}")
    membership = dataclasses.replace(
        MembershipConfig(),
        protocol_period=period,
        ack_timeout=period / 2,
        indirect_timeout=period,
        gossip_interval=period / 5,
        join_backoff_initial=period,
        join_backoff_max=max(period, 30.0 * period),
    )
    return DriverConfig(membership=membership)
