"""The Event Service's JSON shapes (API.md, "Event Service"): request bodies in, event lines out.

Parsing checks everything once and returns typed values, so the log never sees malformed input;
every problem is a ``BadRequest`` with a message for the client. Payloads are stored as compact JSON
text and written into event lines verbatim, never parsed again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

from protocol.eventchain import EventRecord
from protocol.messages_base import MAX_PAYLOAD_LEN, MAX_STREAM_NAME_LEN
from swarmnode.ports import NewEvent, Order, Subscription

__all__ = [
    "BadRequest",
    "QueryRequest",
    "SubscribeRequest",
    "compact_json",
    "error_line",
    "event_line",
    "parse_body",
    "parse_publish",
    "parse_query",
    "parse_subscribe",
]

ORDERS: tuple[str, ...] = get_args(Order)
# Offsets are SQLite integers; anything above cannot name a stored event.
MAX_OFFSET = 2**63 - 1

_string = json.JSONEncoder(ensure_ascii=False).encode


class BadRequest(ValueError):
    """The request body is not what the API accepts (answered with 400)."""


@dataclass(frozen=True, slots=True)
class QueryRequest:
    subscriptions: list[Subscription]
    lower_bound: dict[str, int] | None
    upper_bound: dict[str, int]
    order: Order


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    subscriptions: list[Subscription]
    lower_bound: dict[str, int] | None


def _no_constants(name: str) -> Any:
    raise BadRequest(f"{name} is not JSON")


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except BadRequest:
        raise
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


def compact_json(value: Any) -> str:
    """Compact JSON text of ``value`` as it is stored (UTF-8 encodable, no NaN)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (ValueError, RecursionError) as exc:  # lone surrogates, too deep
        raise BadRequest(f"payload cannot be stored as JSON: {exc}") from None
    return text


def _name(entry: Mapping[str, Any], key: str, index: int) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"data[{index}].{key} must be a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"data[{index}].{key} is not valid Unicode") from None
    if size > MAX_STREAM_NAME_LEN:
        # Longer names could be stored here but never replicated (SPEC.md, Limits).
        raise BadRequest(f"data[{index}].{key} is longer than {MAX_STREAM_NAME_LEN} bytes")
    return value


def parse_publish(body: Mapping[str, Any]) -> list[NewEvent]:
    """``{"data": [{"semantics", "name", "payload"}, ...]}`` → events to publish."""
    data = body.get("data")
    if not isinstance(data, list):
        raise BadRequest("data must be a list of events")
    events = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise BadRequest(f"data[{index}] must be an object")
        semantics = _name(entry, "semantics", index)
        name = _name(entry, "name", index)
        if "payload" not in entry:
            raise BadRequest(f"data[{index}].payload is missing")
        payload = compact_json(entry["payload"])
        if len(payload.encode("utf-8")) > MAX_PAYLOAD_LEN:
            # One event must fit one replication frame (SPEC.md, Limits).
            raise BadRequest(
                f"data[{index}].payload is larger than {MAX_PAYLOAD_LEN} bytes as JSON"
            )
        events.append(NewEvent(semantics=semantics, name=name, payload=payload))
    return events


def _any(entry: Mapping[str, Any], key: str, index: int) -> str | None:
    value = entry.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"subscriptions[{index}].{key} must be a string or null")
    return value


def _subscriptions(body: Mapping[str, Any]) -> list[Subscription]:
    value = body.get("subscriptions")
    if not isinstance(value, list):
        raise BadRequest("subscriptions must be a list")
    subscriptions = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise BadRequest(f"subscriptions[{index}] must be an object")
        subscriptions.append(
            Subscription(
                semantics=_any(entry, "semantics", index),
                name=_any(entry, "name", index),
                source=_any(entry, "source", index),
            )
        )
    return subscriptions


def _offset_map(value: Any, field: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object of source to offset")
    offsets: dict[str, int] = {}
    for source, offset in value.items():
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise BadRequest(f"{field}[{source!r}] must be an integer offset")
        if not -1 <= offset <= MAX_OFFSET:
            raise BadRequest(f"{field}[{source!r}] must be between -1 and {MAX_OFFSET}")
        offsets[source] = offset
    return offsets


def _lower_bound(body: Mapping[str, Any]) -> dict[str, int] | None:
    value = body.get("lowerBound")
    return None if value is None else _offset_map(value, "lowerBound")


def parse_query(body: Mapping[str, Any]) -> QueryRequest:
    if "upperBound" not in body:
        raise BadRequest("upperBound is required")
    order = body.get("order")
    if order not in ORDERS:
        raise BadRequest("order must be one of " + ", ".join(ORDERS))
    return QueryRequest(
        subscriptions=_subscriptions(body),
        lower_bound=_lower_bound(body),
        upper_bound=_offset_map(body["upperBound"], "upperBound"),
        order=order,
    )


def parse_subscribe(body: Mapping[str, Any]) -> SubscribeRequest:
    return SubscribeRequest(subscriptions=_subscriptions(body), lower_bound=_lower_bound(body))


def event_line(r: EventRecord) -> bytes:
    """One event as a compact JSON line ending in CRLF; the stored payload goes in verbatim."""
    return (
        '{"stream":{"semantics":'
        + _string(r.semantics)
        + ',"name":'
        + _string(r.name)
        + ',"source":'
        + _string(r.source)
        + '},"timestamp":'
        + str(r.timestamp)
        + ',"lamport":'
        + str(r.lamport)
        + ',"offset":'
        + str(r.offset)
        + ',"payload":'
        + r.payload
        + "}\r\n"
    ).encode("utf-8")


def error_line(message: str) -> bytes:
    """The last line of a stream that failed midway (API.md)."""
    return (json.dumps({"error": message, "errorCode": 500}) + "\r\n").encode("utf-8")
