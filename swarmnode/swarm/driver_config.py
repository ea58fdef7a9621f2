"""The swarm driver's settings: the machines' configs plus its own policy, and the one
environment override.

``SWARMNODE_PROBE_PERIOD`` (seconds, environment; read by ``config_from_env``, which the node
calls) scales SWIM's protocol period and the timers derived from it (ack and indirect timeouts,
join retries). It exists for tests and demos that need failure detection in seconds instead of
tens of seconds; the defaults (``MembershipConfig``) are for real LANs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from swarmnode.swarm.membership import MembershipConfig
from swarmnode.swarm.plumtree import DisseminationConfig
from swarmnode.swarm.transport import TransportConfig

__all__ = ["PROBE_PERIOD_ENV", "DriverConfig", "config_from_env"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverConfig:
    """The machines' configs and the driver's own policy."""

    membership: MembershipConfig = field(default_factory=MembershipConfig)
    dissemination: DisseminationConfig = field(default_factory=DisseminationConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    # A Hello is the first frame after the handshake; a peer that sends none within the
    # handshake's own budget holds a connection slot for nothing.
    hello_timeout_s: float = 5.0
    # First refusal after an offence, doubling per offence up to the cap: long enough that a
    # broken peer cannot make us re-verify its garbage in a loop, short enough that a peer fixed
    # by a restart returns within minutes.
    penalty_initial_s: float = 10.0
    penalty_max_s: float = 600.0


PROBE_PERIOD_ENV: Final = "SWARMNODE_PROBE_PERIOD"


def config_from_env(environ: Mapping[str, str]) -> DriverConfig:
    """The default config, with membership timers scaled to ``SWARMNODE_PROBE_PERIOD`` if set
    (module docstring); ``ValueError`` for a value that is not a positive number."""
    raw = environ.get(PROBE_PERIOD_ENV)
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
        join_backoff_initial=period,
        join_backoff_max=max(period, 30.0 * period),
    )
    return DriverConfig(membership=membership)
