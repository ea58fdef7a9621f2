"""One error family for the wire protocol, split by who is to blame (after h11 and h2).

``RemoteProtocolError``: the peer broke the protocol (close the connection, score the peer down).
``LocalProtocolError``: the caller misused the API (a bug in our own code). Each error carries an
``ErrorCode`` from SPEC.md's error table, so it can be sent in an error frame.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ErrorCode", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ErrorCode(IntEnum):
    """Wire error codes (SPEC.md, "Errors")."""

    NO_ERROR = 0
    PROTOCOL_VIOLATION = 1
    FRAME_TOO_LARGE = 2
    MALFORMED_MESSAGE = 3
    UNKNOWN_MESSAGE = 4
    HANDSHAKE_FAILED = 5
    DECRYPT_FAILED = 6
    UNSUPPORTED_VERSION = 7
    BAD_SIGNATURE = 8
    BAD_DATA = 9
    RESOURCE_LIMIT = 10
    INTERNAL_ERROR = 11


class ProtocolError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.code = code


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class LocalProtocolError(ProtocolError):
    """Our own code asked for something the protocol does not allow."""
