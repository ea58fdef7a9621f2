"""Blob metadata: what the client uploads, and the metadata event payload (API.md, Blob Service).

The payload is the blob's announcement to the swarm::

    {"handle", "createdOn" (µs), "source", "semantics", "bytes", "retentionPolicy", "sourceApp",
     "contentType", "filename", "chunkSize", "outlineRoot"}

``chunkSize`` and ``outlineRoot`` (hex) let a replica check every chunk it fetches (DESIGN.md,
"Data model"). Parsing is strict for what the client sends (a bad upload gets a 400) and
strict-but-total for what arrives from the swarm: a malformed announcement is rejected whole,
identically on every node.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from protocol.eventchain import EventRecord
from swarmnode.store.retention import (
    Announcement,
    KeepForever,
    KeepUntilNext,
    KeepUntilTime,
    RetentionPolicy,
)

__all__ = [
    "MAX_METADATA_BYTES",
    "METADATA_NAME",
    "METADATA_SEMANTICS",
    "ClientMetadata",
    "MetadataError",
    "MetadataEvent",
    "build_payload",
    "encode_payload",
    "handle_from_digest",
    "hex_of_handle",
    "is_handle",
    "parse_client_metadata",
    "parse_metadata_event",
    "policy_from_json",
    "policy_to_json",
]

METADATA_SEMANTICS = "com.actyx.os.blobs.metadata"
METADATA_NAME = "ActyxOS-BlobService-Metadata"
HANDLE_PREFIX = "blake3:"
# The metadata part is a small JSON object; 64 KiB is far above any real one and bounds our buffer.
MAX_METADATA_BYTES = 64 * 1024

_HANDLE_RE = re.compile(r"blake3:[0-9a-f]{64}")
_HEX32_RE = re.compile(r"[0-9a-f]{64}")


class MetadataError(ValueError):
    """Metadata that does not follow API.md; the message is shown to the client."""


def is_handle(text: str) -> bool:
    """True for ``blake3:`` + 64 lowercase hex digits."""
    return _HANDLE_RE.fullmatch(text) is not None


def handle_from_digest(digest: bytes) -> str:
    return HANDLE_PREFIX + digest.hex()


def hex_of_handle(handle: str) -> str:
    """The 64 hex digits of a valid handle (the blob's file name)."""
    if not is_handle(handle):
        raise ValueError(f"not a blob handle: {handle!r}")
    return handle[len(HANDLE_PREFIX) :]


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MetadataError(f"{where}.{key} must be a string")
    return value


def policy_from_json(obj: object, *, now: float | None) -> RetentionPolicy:
    """Parse a ``retentionPolicy``; ``None``/missing is keepForever.

    With ``now`` given (a client upload), a ``keepUntilTime`` already in the past is an error;
    replicated announcements pass ``now=None`` because their time may well have passed by the time
    they arrive.
    """
    if obj is None:
        return KeepForever()
    if not isinstance(obj, dict):
        raise MetadataError("retentionPolicy must be an object")
    policy = obj.get("policy")
    if policy == "keepForever":
        return KeepForever()
    if policy == "keepUntilTime":
        until = obj.get("until")
        if (
            not isinstance(until, int | float)
            or isinstance(until, bool)
            or not math.isfinite(until)
        ):
            raise MetadataError("retentionPolicy.until must be a number of Unix seconds")
        if now is not None and until < now:
            raise MetadataError("retentionPolicy.until is already past")
        return KeepUntilTime(until=until)
    if policy == "keepUntilNext":
        return KeepUntilNext(
            semantics=_optional_str(obj, "semantics", "retentionPolicy"),
            source=_optional_str(obj, "source", "retentionPolicy"),
            source_app=_optional_str(obj, "sourceApp", "retentionPolicy"),
        )
    raise MetadataError(
        "retentionPolicy.policy must be one of keepForever, keepUntilTime, keepUntilNext"
    )


def policy_to_json(policy: RetentionPolicy) -> dict[str, Any]:
    """The canonical JSON form: only the properties the policy has."""
    match policy:
        case KeepForever():
            return {"policy": "keepForever"}
        case KeepUntilTime(until=until):
            return {"policy": "keepUntilTime", "until": until}
        case KeepUntilNext():
            given = {
                "semantics": policy.semantics,
                "source": policy.source,
                "sourceApp": policy.source_app,
            }
            return {"policy": "keepUntilNext"} | {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientMetadata:
    """The validated ``metadata`` part of an upload."""

    semantics: str
    policy: RetentionPolicy
    source_app: str | None


def parse_client_metadata(text: bytes | str, *, now: float) -> ClientMetadata:
    """Validate the upload's metadata JSON: ``{"semantics", "retentionPolicy"?, "sourceApp"?}``."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MetadataError("metadata must be a JSON object")
    semantics = obj.get("semantics")
    if not isinstance(semantics, str) or not semantics.strip():
        raise MetadataError("metadata.semantics must be a non-empty string")
    return ClientMetadata(
        semantics=semantics,
        policy=policy_from_json(obj.get("retentionPolicy"), now=now),
        source_app=_optional_str(obj, "sourceApp", "metadata"),
    )


def build_payload(
    *,
    handle: str,
    created_on_us: int,
    source: str,
    meta: ClientMetadata,
    size: int,
    content_type: str,
    filename: str | None,
    chunk_size: int,
    outline_root: bytes,
) -> dict[str, Any]:
    """The metadata event payload for a blob stored on this node."""
    return {
        "handle": handle,
        "createdOn": created_on_us,
        "source": source,
        "semantics": meta.semantics,
        "bytes": size,
        "retentionPolicy": policy_to_json(meta.policy),
        "sourceApp": meta.source_app,
        "contentType": content_type,
        "filename": filename,
        "chunkSize": chunk_size,
        "outlineRoot": outline_root.hex(),
    }


def encode_payload(payload: dict[str, Any]) -> str:
    """Compact JSON text, as events carry it."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetadataEvent:
    """One parsed metadata event, from this node or from anywhere in the swarm."""

    source: str
    offset: int
    lamport: int
    handle: str
    size: int
    chunk_size: int
    outline_root: bytes
    semantics: str
    source_app: str | None
    content_type: str
    filename: str | None
    policy: RetentionPolicy
    payload: str

    def announcement(self) -> Announcement:
        return Announcement(
            handle=self.handle,
            lamport=self.lamport,
            source=self.source,
            semantics=self.semantics,
            source_app=self.source_app,
            policy=self.policy,
        )


def _require_int(obj: dict[str, Any], key: str, *, minimum: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MetadataError(f"{key} must be an integer >= {minimum}")
    return value


def parse_metadata_event(record: EventRecord) -> MetadataEvent:
    """Parse a metadata event; raises MetadataError when it cannot describe a verifiable blob.

    The announcing node is the event's ``source`` (authenticated), whatever the payload's
    ``source`` says.
    """
    try:
        obj = json.loads(record.payload)
    except ValueError as exc:
        raise MetadataError(f"payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MetadataError("payload must be an object")
    handle = obj.get("handle")
    if not isinstance(handle, str) or not is_handle(handle):
        raise MetadataError("handle must be blake3:<64 lowercase hex>")
    size = _require_int(obj, "bytes", minimum=0)
    chunk_size = _require_int(obj, "chunkSize", minimum=1)
    root = obj.get("outlineRoot")
    if not isinstance(root, str) or _HEX32_RE.fullmatch(root) is None:
        raise MetadataError("outlineRoot must be 64 lowercase hex digits")
    semantics = obj.get("semantics")
    if not isinstance(semantics, str):
        raise MetadataError("semantics must be a string")
    content_type = obj.get("contentType")
    if not isinstance(content_type, str) or not content_type:
        content_type = "application/octet-stream"
    filename = obj.get("filename")
    return MetadataEvent(
        source=record.source,
        offset=record.offset,
        lamport=record.lamport,
        handle=handle,
        size=size,
        chunk_size=chunk_size,
        outline_root=bytes.fromhex(root),
        semantics=semantics,
        source_app=_optional_str(obj, "sourceApp", "payload"),
        content_type=content_type,
        filename=filename if isinstance(filename, str) else None,
        policy=policy_from_json(obj.get("retentionPolicy"), now=None),
        payload=record.payload,
    )
