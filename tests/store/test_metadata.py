"""Upload metadata validation and metadata-event parsing (API.md, "Blob Service")."""

from __future__ import annotations

import json

import pytest

from protocol.eventchain import GENESIS_CHAIN, EventRecord
from swarmnode.store.metadata import (
    MetadataError,
    parse_client_metadata,
    parse_metadata_event,
    policy_from_json,
    policy_to_json,
)
from swarmnode.store.retention import KeepForever, KeepUntilNext, KeepUntilTime

NOW = 1_000.0


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"semantics": 5}',
        b'{"semantics": "  "}',
        b'{"semantics": "s", "retentionPolicy": "keepForever"}',
        b'{"semantics": "s", "retentionPolicy": {"policy": "keepSometimes"}}',
        b'{"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime"}}',
        b'{"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime", "until": "soon"}}',
        b'{"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime", "until": true}}',
        b'{"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime", "until": 999}}',
        b'{"semantics": "s", "retentionPolicy": {"policy": "keepUntilNext", "source": 1}}',
        b'{"semantics": "s", "sourceApp": 1}',
        b"\xff\xfe",
    ],
)
def test_bad_client_metadata(text: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_client_metadata(text, now=NOW)


def test_good_client_metadata() -> None:
    meta = parse_client_metadata(b'{"semantics": "s", "sourceApp": "app"}', now=NOW)
    assert meta.policy == KeepForever()
    assert meta.source_app == "app"
    until = parse_client_metadata(
        b'{"semantics": "s", "retentionPolicy": {"policy": "keepUntilTime", "until": 1000}}',
        now=NOW,
    )
    assert until.policy == KeepUntilTime(until=1000)
    nxt = parse_client_metadata(
        b'{"semantics": "s", "retentionPolicy": {"policy": "keepUntilNext", "sourceApp": "a"}}',
        now=NOW,
    )
    assert nxt.policy == KeepUntilNext(source_app="a")


@pytest.mark.parametrize(
    "policy",
    [KeepForever(), KeepUntilTime(until=5.5), KeepUntilNext(), KeepUntilNext(semantics="x")],
)
def test_policy_json_round_trip(policy: object) -> None:
    assert policy_from_json(policy_to_json(policy), now=None) == policy  # type: ignore[arg-type]


def record(payload: object) -> EventRecord:
    return EventRecord(
        source="src",
        offset=3,
        lamport=9,
        timestamp=0,
        semantics="com.actyx.os.blobs.metadata",
        name="ActyxOS-BlobService-Metadata",
        payload=json.dumps(payload),
        chain=GENESIS_CHAIN,
    )


GOOD = {
    "handle": "blake3:" + "a" * 64,
    "bytes": 3,
    "chunkSize": 262144,
    "outlineRoot": "b" * 64,
    "semantics": "s",
    "source": "someone-else",
    "retentionPolicy": {"policy": "keepUntilTime", "until": 1},
}


def test_metadata_event_uses_the_event_source() -> None:
    ev = parse_metadata_event(record(GOOD))
    assert ev.source == "src"
    assert (ev.offset, ev.lamport, ev.size) == (3, 9, 3)
    assert ev.policy == KeepUntilTime(until=1)  # past times are fine for replicated events


@pytest.mark.parametrize(
    "change",
    [
        {"handle": "blake3:" + "A" * 64},
        {"bytes": -1},
        {"bytes": True},
        {"chunkSize": 0},
        {"outlineRoot": "zz"},
        {"semantics": None},
        {"retentionPolicy": {"policy": "nope"}},
    ],
)
def test_bad_metadata_event(change: dict[str, object]) -> None:
    with pytest.raises(MetadataError):
        parse_metadata_event(record({**GOOD, **change}))
