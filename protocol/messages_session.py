"""Session messages: hello, goodbye, error (SPEC.md §7.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocol.messages_base import (
    MAX_AGENT_LEN,
    MAX_FEATURES,
    MAX_TEXT_LEN,
    Address,
    check_addresses,
    check_bool,
    check_feature,
    check_node_id,
    check_str,
    check_tuple,
    check_uint,
    fail,
)

__all__ = ["Error", "Goodbye", "Hello"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """First message on every connection, both ways, right after the handshake (SPEC §7.1.1).

    Says what the sender speaks and where it listens, so the peer can negotiate features and pass
    the address on in peer exchange. ``node_id`` must equal the id bound to the channel's static
    key.
    """

    TAG: ClassVar[int] = 1
    version: int
    """Highest message-set version the sender speaks (PROTOCOL_VERSION)."""
    node_id: str
    features: tuple[str, ...]
    """Optional features the sender supports; the connection uses the intersection (SPEC §8)."""
    listen: tuple[Address, ...]
    """Addresses the sender accepts swarm connections on; empty for a node that only dials."""
    agent: str | None = None
    """Free-form software name and version, for logs only."""

    def __post_init__(self) -> None:
        check_uint("version", self.version, 0xFFFF, 1)
        check_node_id("node_id", self.node_id)
        features = check_tuple("features", self.features, MAX_FEATURES)
        for feature in features:
            check_feature(feature)
        if len(set(features)) != len(features):
            fail("features must be unique")
        check_addresses(self.listen)
        if self.agent is not None:
            check_str("agent", self.agent, MAX_AGENT_LEN)


@dataclass(frozen=True, slots=True, kw_only=True)
class Goodbye:
    """Graceful close: the sender closes after it (SPEC §7.1.2).

    ``leaving`` means the node leaves the swarm for good (peers mark it LEFT, not DEAD, and stop
    re-probing); otherwise only this connection ends (view maintenance, shutdown for restart).
    """

    TAG: ClassVar[int] = 2
    leaving: bool
    reason: str = ""

    def __post_init__(self) -> None:
        check_bool("leaving", self.leaving)
        check_str("reason", self.reason, MAX_TEXT_LEN)


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """Fatal error report: the sender closes the connection after it (SPEC §7.1.3, §10).

    ``code`` is an ``ErrorCode`` value; a code this version does not know is kept as a plain int and
    treated like PROTOCOL_VIOLATION.
    """

    TAG: ClassVar[int] = 3
    code: int
    message: str = ""

    def __post_init__(self) -> None:
        check_uint("code", self.code, 0xFFFF)
        check_str("message", self.message, MAX_TEXT_LEN)
