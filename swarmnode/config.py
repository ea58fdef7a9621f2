"""Node settings: one frozen dataclass, built from the CLI (or directly by tests and netsim)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Config", "HostPort", "parse_host_port", "parse_peers"]


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, *, default_host: str = "127.0.0.1") -> HostPort:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or ``:PORT``; port 0 means "any free port"."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r}: expected 0..65535")
    return HostPort(host or default_host, int(port_text))


def parse_peers(text: str) -> tuple[HostPort, ...]:
    """Parse ``HOST:PORT,HOST:PORT,...`` (empty entries ignored); port 0 is not a dialable peer."""
    peers = []
    for item in text.split(","):
        if item.strip():
            peer = parse_host_port(item)
            if peer.port == 0:
                raise ValueError(f"peer {item.strip()!r} needs a real port")
            peers.append(peer)
    return tuple(peers)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a node needs to start. Defaults match the README and API.md."""

    data_dir: Path = Path("swarm-data")
    listen: HostPort = HostPort("0.0.0.0", 4001)
    events_api: HostPort = HostPort("127.0.0.1", 4454)
    blobs_api: HostPort = HostPort("127.0.0.1", 4455)
    peers: tuple[HostPort, ...] = ()
    swarm_key: bytes | None = None  # None: load or create <data_dir>/swarm.key
    log_level: str = "INFO"
    cors_origins: tuple[str, ...] = ("*",)
    # Host names accepted besides loopback names (DNS-rebinding guard, API.md "Both APIs").
    allowed_hosts: tuple[str, ...] = ()
    max_blob_bytes: int = 64 * 1024**3
    max_event_body_bytes: int = 16 * 1024**2
    retention_interval_s: float = 5.0
    extra: dict[str, str] = field(default_factory=dict)
