"""The official ``@actyx/os-sdk`` 0.3.1 against a live node: publish, offsets, query, subscribe.

The JS side (``js/sdk_events.js``) only reports what the SDK saw; every check is here, against what
the node answers over plain HTTP and against the inputs chosen here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from netsim.nodeproc import NodeProcess, http_offsets, http_publish, http_query
from tests.compat.conftest import run_js

pytestmark = pytest.mark.compat

SEMANTICS = "com.example.compat"
OTHER = "com.example.unrelated"


def _base_url(node: NodeProcess) -> str:
    """The SDK's BaseUrl for this node (it appends ``v1/events/...``)."""
    return f"http://{node.info.events_api}/api/"


def _from_sdk(event: dict[str, Any]) -> dict[str, Any]:
    """An SDK event back in the wire shape, so it compares with what the node sends over HTTP."""
    stream = event["stream"]
    return {
        "stream": {
            "semantics": stream["streamSemantics"],
            "name": stream["streamName"],
            "source": stream["source"],
        },
        "timestamp": event["timestamp"],
        "lamport": event["lamport"],
        "offset": event["offset"],
        "payload": event["payload"],
    }


def _offsets(events: list[dict[str, Any]]) -> list[int]:
    return [e["offset"] for e in events]


async def test_sdk_publish_offsets_and_query_in_every_order(
    js_dir: Path, node: NodeProcess
) -> None:
    source = node.info.node_id
    batches: list[list[dict[str, Any]]] = [
        [
            {"name": "m1", "payload": {"temp": 71.5, "i": 0}},
            {"name": "m2", "payload": [1, "two", None, True]},
            {"name": "m1", "payload": "plain text"},
        ],
        [{"name": "m2", "payload": {"nested": {"x": [1, 2, 3]}}}],
        [{"name": "m1", "payload": 42}, {"name": "m3", "payload": {"unicode": "grüße ✓"}}],
    ]
    published = [e for batch in batches for e in batch]
    async with aiohttp.ClientSession() as http:
        # One event of another semantics first: the SDK's wildcard subscription must not see it.
        other = [{"semantics": OTHER, "name": "x", "payload": {"other": True}}]
        assert await http_publish(http, node, other) == 201
        config = {"baseUrl": _base_url(node), "semantics": SEMANTICS, "batches": batches}
        result = await run_js(js_dir, "sdk_events.js", "publish-query", json.dumps(config))
        http_offsets_now = await http_offsets(http, node)
        wire = await http_query(
            http,
            node,
            {
                "subscriptions": [{"semantics": SEMANTICS}],
                "upperBound": http_offsets_now,
                "order": "lamport",
            },
        )

    assert result["nodeId"] == {"status": 200, "body": {"nodeId": source}}
    # offsets: before = the one unrelated event; after = every SDK publish, numbered on from it.
    assert result["before"] == {source: 0}
    assert result["after"] == {source: len(published)}
    assert http_offsets_now == result["after"]

    lamport = [_from_sdk(e) for e in result["full"]["lamport"]]
    assert lamport == wire, "the SDK must see exactly what the node serves over HTTP"
    assert _offsets(lamport) == list(range(1, len(published) + 1))
    assert [e["payload"] for e in lamport] == [e["payload"] for e in published]
    assert [e["stream"]["name"] for e in lamport] == [e["name"] for e in published]
    assert all(
        e["stream"] == {**e["stream"], "semantics": SEMANTICS, "source": source} for e in lamport
    )
    lamports = [e["lamport"] for e in lamport]
    assert lamports == sorted(lamports)
    assert len(set(lamports)) == len(lamports)

    reverse = [_from_sdk(e) for e in result["full"]["lamport-reverse"]]
    assert reverse == lamport[::-1]
    source_ordered = [_from_sdk(e) for e in result["full"]["source-ordered"]]
    assert source_ordered == lamport  # one source: ascending offsets
    assert [_from_sdk(e) for e in result["stream"]] == lamport  # queryStream agrees with query

    # lowerBound is exclusive, upperBound inclusive: (after-4, after-1].
    last = len(published)
    assert result["lowerBound"] == {source: last - 4}
    assert result["upperBound"] == {source: last - 1}
    window = list(range(last - 3, last))
    assert _offsets(result["bounded"]["lamport"]) == window
    assert _offsets(result["bounded"]["source-ordered"]) == window
    assert _offsets(result["bounded"]["lamport-reverse"]) == window[::-1]
    by_offset = {e["offset"]: e for e in lamport}
    assert [_from_sdk(e) for e in result["bounded"]["lamport"]] == [by_offset[o] for o in window]

    wanted_name = batches[0][0]["name"]
    assert [_from_sdk(e) for e in result["byName"]] == [
        e for e in lamport if e["stream"]["name"] == wanted_name
    ]
    assert result["empty"] == []


async def test_sdk_subscribe_with_and_without_lower_bound(js_dir: Path, node: NodeProcess) -> None:
    source = node.info.node_id
    history: list[dict[str, Any]] = [
        {"semantics": SEMANTICS, "name": "h", "payload": {"h": i}} for i in range(3)
    ]
    live_stream = [{"name": "s", "payload": {"live": "stream", "i": i}} for i in range(2)]
    live_callback = [{"name": "c", "payload": {"live": "callback", "i": i}} for i in range(2)]
    async with aiohttp.ClientSession() as http:
        assert await http_publish(http, node, history) == 201
        noise = [{"semantics": OTHER, "name": "x", "payload": None}]
        assert await http_publish(http, node, noise) == 201
        config = {
            "baseUrl": _base_url(node),
            "semantics": SEMANTICS,
            "liveStream": live_stream,
            "liveCallback": live_callback,
            "expectedHistory": len(history),
        }
        result = await run_js(js_dir, "sdk_events.js", "subscribe", json.dumps(config))
        final_offsets = await http_offsets(http, node)

    # Without lowerBound: the history first, then what was published after the subscription opened.
    stream = [_from_sdk(e) for e in result["streamEvents"]]
    assert [e["payload"] for e in stream] == [e["payload"] for e in history] + [
        e["payload"] for e in live_stream
    ]
    offsets = _offsets(stream)
    assert offsets == [0, 1, 2, 4, 5], "history 0..2, unrelated 3, then the two live events"
    assert all(e["stream"]["semantics"] == SEMANTICS for e in stream)
    assert all(e["stream"]["source"] == source for e in stream)

    # With lowerBound = the offsets at subscribe time: exactly the events published afterwards.
    lower = result["lowerBound"]
    assert lower == {source: offsets[-1]}
    callback = [_from_sdk(e) for e in result["callbackEvents"]]
    assert [e["payload"] for e in callback] == [e["payload"] for e in live_callback]
    assert _offsets(callback) == [lower[source] + 1, lower[source] + 2]
    assert result["callbackDone"] is True, "stopping a subscription must end it with onDone"
    assert result["offsetsAfter"] == final_offsets == {source: lower[source] + 2}
