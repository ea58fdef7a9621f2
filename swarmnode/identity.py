"""The node's Ed25519 identity and the swarm key, both kept in the data dir across restarts."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.ids import node_id_from_public_key

__all__ = [
    "SWARM_KEY_BYTES",
    "Identity",
    "SwarmKeyError",
    "generate_swarm_key",
    "load_or_create_identity",
    "load_or_create_swarm_key",
    "parse_swarm_key",
]

log = logging.getLogger(__name__)

SWARM_KEY_BYTES = 32
IDENTITY_FILE = "identity.key"
SWARM_KEY_FILE = "swarm.key"


class SwarmKeyError(ValueError):
    """A swarm key given on the command line or in a file is not 64 hex digits."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The node's signing key; its public key determines the node id (= event source id)."""

    private_key: Ed25519PrivateKey
    public_key: bytes
    node_id: str

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        key = Ed25519PrivateKey.from_private_bytes(raw)
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private_key=key, public_key=public, node_id=node_id_from_public_key(public))

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def _write_secret(path: Path, data: bytes) -> None:
    """Write a secret file atomically with mode 0600 (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_or_create_identity(data_dir: Path) -> Identity:
    """Load ``identity.key`` (32 raw bytes) or create it on first start."""
    path = data_dir / IDENTITY_FILE
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != 32:
            raise ValueError(f"{path} is damaged: expected 32 bytes, found {len(raw)}")
        return Identity.from_private_bytes(raw)
    raw = secrets.token_bytes(32)
    _write_secret(path, raw)
    identity = Identity.from_private_bytes(raw)
    log.info("identity.created", extra={"node_id": identity.node_id, "path": str(path)})
    return identity


def generate_swarm_key() -> str:
    """A new random swarm key as 64 lowercase hex digits."""
    return secrets.token_hex(SWARM_KEY_BYTES)


def parse_swarm_key(text: str) -> bytes:
    """Parse ``HEX`` or ``@FILE`` (a file holding the hex key) into 32 bytes."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="ascii")
        except OSError as exc:
            raise SwarmKeyError(f"cannot read swarm key file {text[1:]}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise SwarmKeyError(f"swarm key file {text[1:]} is not hex text") from exc
    text = text.strip()
    if len(text) != 2 * SWARM_KEY_BYTES:
        raise SwarmKeyError(f"a swarm key is {2 * SWARM_KEY_BYTES} hex digits, got {len(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise SwarmKeyError("a swarm key is hex digits only") from exc


def load_or_create_swarm_key(data_dir: Path) -> tuple[bytes, bool]:
    """Load ``swarm.key`` or create one; returns ``(key, created)``."""
    path = data_dir / SWARM_KEY_FILE
    if path.exists():
        return parse_swarm_key("@" + str(path)), False
    text = generate_swarm_key()
    _write_secret(path, (text + "\n").encode("ascii"))
    return bytes.fromhex(text), True
