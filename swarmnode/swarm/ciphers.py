"""Which channel ciphers this node offers, in preference order (protocol/SPEC.md §2.2).

ChaChaPoly is offered by every node: it is fast in software on edge CPUs without AES instructions.
AES-256-GCM is offered first only where the CPU has AES instructions, where it measured ~3× faster
(DESIGN.md, "Performance stance"); a node without them does not offer it at all, so a faster peer
cannot push a slow cipher on it (the initiator's first choice that the responder offers wins).
"""

from __future__ import annotations

import platform
from pathlib import Path

from protocol.noise import CipherName

__all__ = ["cpu_has_aes", "default_ciphers"]

_CPUINFO = Path("/proc/cpuinfo")


def cpu_has_aes(cpuinfo: str | None = None) -> bool:
    """True when the CPU advertises AES instructions (x86 ``aes`` flag, Arm ``aes`` feature)."""
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text(errors="replace")
        except OSError:
            return platform.machine().lower() in ("arm64",)  # macOS on Apple silicon has AES
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and "aes" in value.split():
            return True
    return False


def default_ciphers(cpuinfo: str | None = None) -> tuple[CipherName, ...]:
    if cpu_has_aes(cpuinfo):
        return ("AESGCM", "ChaChaPoly")
    return ("ChaChaPoly",)
