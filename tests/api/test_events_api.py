"""The Event Service over HTTP (API.md), in process with aiohttp's TestServer/TestClient."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from protocol.eventchain import EventRecord
from swarmnode.api.events_app import make_events_app
from swarmnode.config import Config
from swarmnode.events.cursor import PAGE
from swarmnode.events.log import EventLog
from swarmnode.ports import NewEvent, Order, Subscription
from tests.helpers.events_chain import identity_from_seed

BASE = "/api/v1/events"


class TrackingLog:
    """The real log, plus an event set when a subscription's iterator is closed."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.subscription_closed = asyncio.Event()
        self.delivered = 0  # records handed to the HTTP layer by subscriptions

    @property
    def node_id(self) -> str:
        return self.log.node_id

    async def publish(self, events: Sequence[NewEvent]) -> list[EventRecord]:
        return await self.log.publish(events)

    def offsets(self) -> dict[str, int]:
        return self.log.offsets()

    def query(
        self,
        subscriptions: Sequence[Subscription],
        lower_bound: Mapping[str, int] | None,
        upper_bound: Mapping[str, int],
        order: Order,
    ) -> AsyncIterator[EventRecord]:
        return self.log.query(subscriptions, lower_bound, upper_bound, order)

    async def subscribe(
        self, subscriptions: Sequence[Subscription], lower_bound: Mapping[str, int] | None
    ) -> AsyncIterator[EventRecord]:
        try:
            async for record in self.log.subscribe(subscriptions, lower_bound):
                self.delivered += 1
                yield record
        finally:
            self.subscription_closed.set()


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EventLog]:
    event_log = EventLog(tmp_path / "events.sqlite", identity_from_seed(0))
    await event_log.start()
    try:
        yield event_log
    finally:
        await event_log.stop()


@pytest.fixture
async def tracking(log: EventLog) -> TrackingLog:
    return TrackingLog(log)


async def _client(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client(tracking: TrackingLog) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    c = await _client(make_events_app(tracking, Config(max_event_body_bytes=64 * 1024)))
    try:
        yield c
    finally:
        await c.close()


Client = TestClient[web.Request, web.Application]


def _publish_body(n: int, name: str = "n", start: int = 0) -> dict[str, Any]:
    return {
        "data": [
            {"semantics": "sem", "name": name, "payload": {"i": i}} for i in range(start, start + n)
        ]
    }


async def _publish(client: Client, n: int, **kw: Any) -> None:
    resp = await client.post(f"{BASE}/publish", json=_publish_body(n, **kw))
    assert resp.status == 201
    assert await resp.read() == b""


async def _lines(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    raw = await resp.read()
    assert raw.endswith(b"\r\n") or raw == b""
    return [json.loads(line) for line in raw.split(b"\r\n") if line]


async def _read_line(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    async with asyncio.timeout(10):
        line = await resp.content.readline()
    assert line.endswith(b"\r\n")
    parsed: dict[str, Any] = json.loads(line)
    return parsed


async def test_node_id_and_offsets(client: Client, log: EventLog) -> None:
    resp = await client.get(f"{BASE}/node_id")
    assert resp.status == 200
    assert await resp.json() == {"nodeId": log.node_id}
    resp = await client.get(f"{BASE}/offsets")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.content_type == "application/json"
    assert await resp.json() == {}
    await _publish(client, 3)
    resp = await client.get(f"{BASE}/offsets")
    assert await resp.json() == {log.node_id: 2}


async def test_publish_then_query_shows_the_events(client: Client, log: EventLog) -> None:
    await _publish(client, 2)
    await _publish(client, 1, name="other", start=2)
    resp = await client.post(
        f"{BASE}/query",
        json={"subscriptions": [{}], "upperBound": {log.node_id: 2}, "order": "lamport"},
    )
    assert resp.status == 200
    assert resp.content_type == "application/x-ndjson"
    events = await _lines(resp)
    assert [e["offset"] for e in events] == [0, 1, 2]
    first = events[0]
    assert set(first) == {"stream", "timestamp", "lamport", "offset", "payload"}
    assert first["stream"] == {"semantics": "sem", "name": "n", "source": log.node_id}
    assert first["payload"] == {"i": 0}
    assert isinstance(first["timestamp"], int)
    assert first["timestamp"] > 1_600_000_000_000_000  # µs since the epoch
    assert events[2]["stream"]["name"] == "other"
    assert [e["lamport"] for e in events] == sorted(e["lamport"] for e in events)


async def test_query_orders_bounds_and_filters(client: Client, log: EventLog) -> None:
    await _publish(client, 3)
    await _publish(client, 3, name="x", start=3)
    source = log.node_id

    async def offsets(body: dict[str, Any]) -> list[int]:
        resp = await client.post(f"{BASE}/query", json=body)
        assert resp.status == 200
        return [e["offset"] for e in await _lines(resp)]

    upper = {source: 4}
    assert await offsets(
        {"subscriptions": [{}], "upperBound": upper, "order": "lamport-reverse"}
    ) == [
        4,
        3,
        2,
        1,
        0,
    ]
    assert await offsets(
        {
            "subscriptions": [{}],
            "lowerBound": {source: 1},
            "upperBound": upper,
            "order": "source-ordered",
        }
    ) == [2, 3, 4]
    assert await offsets(
        {
            "subscriptions": [{"name": "x", "semantics": None, "source": ""}],
            "upperBound": upper,
            "order": "lamport",
        }
    ) == [3, 4]
    assert await offsets({"subscriptions": [{}], "upperBound": {}, "order": "lamport"}) == []
    assert (
        await offsets(
            {
                "subscriptions": [{}],
                "lowerBound": None,
                "upperBound": {source: -1},
                "order": "lamport",
            }
        )
        == []
    )


async def test_query_payload_is_served_verbatim(client: Client) -> None:
    payload = {"text": "grüße ✓", "n": 12345678901234567890, "f": 1.5, "nested": [None, True, {}]}
    resp = await client.post(
        f"{BASE}/publish", json={"data": [{"semantics": "s", "name": "n", "payload": payload}]}
    )
    assert resp.status == 201
    resp = await client.get(f"{BASE}/offsets")
    upper = await resp.json()
    resp = await client.post(
        f"{BASE}/query", json={"subscriptions": [{}], "upperBound": upper, "order": "lamport"}
    )
    raw = await resp.read()
    assert (
        '"payload":{"text":"grüße ✓","n":12345678901234567890,"f":1.5,"nested":[null,true,{}]}}\r\n'
        in raw.decode()
    )


async def test_query_waits_for_upper_bound_then_completes(client: Client, log: EventLog) -> None:
    await _publish(client, 1)
    resp = await client.post(
        f"{BASE}/query",
        json={"subscriptions": [{}], "upperBound": {log.node_id: 2}, "order": "lamport"},
    )
    assert resp.status == 200  # headers arrive before the events exist
    first = await _read_line(resp)
    assert first["offset"] == 0
    await _publish(client, 2, start=1)
    async with asyncio.timeout(10):
        rest = await _lines(resp)
    assert [e["offset"] for e in rest] == [1, 2]


async def test_subscribe_headers_first_then_live_events_each_in_its_own_chunk(
    client: Client, log: EventLog
) -> None:
    async with asyncio.timeout(10):
        resp = await client.post(f"{BASE}/subscribe", json={"subscriptions": [{}]})
    assert resp.status == 200
    assert resp.content_type == "application/x-ndjson"
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    await _publish(client, 3)
    chunks: list[bytes] = []
    async with asyncio.timeout(10):
        while len(chunks) < 3:
            data, end_of_chunk = await resp.content.readchunk()
            assert end_of_chunk
            chunks.append(data)
    assert all(c.endswith(b"\r\n") and c.count(b"\r\n") == 1 for c in chunks)
    assert [json.loads(c)["offset"] for c in chunks] == [0, 1, 2]
    resp.close()


async def test_subscribe_lower_bound_is_exclusive(client: Client, log: EventLog) -> None:
    await _publish(client, 4)
    resp = await client.post(
        f"{BASE}/subscribe", json={"subscriptions": [{}], "lowerBound": {log.node_id: 1}}
    )
    assert [(await _read_line(resp))["offset"] for _ in range(2)] == [2, 3]
    resp.close()


async def test_disconnect_frees_the_subscription(client: Client, tracking: TrackingLog) -> None:
    resp = await client.post(f"{BASE}/subscribe", json={"subscriptions": [{}]})
    await _publish(client, 1)
    assert (await _read_line(resp))["offset"] == 0
    resp.close()  # the client goes away while the subscription waits for new events
    async with asyncio.timeout(10):
        await tracking.subscription_closed.wait()
    async with asyncio.timeout(10):
        await _publish(client, 1)  # the node carries on
    assert tracking.log.statistics().buffered_records == 0


async def test_slow_subscriber_does_not_block_publishing(
    client: Client, log: EventLog, tracking: TrackingLog
) -> None:
    resp = await client.post(f"{BASE}/subscribe", json={"subscriptions": [{}]})
    assert resp.status == 200
    # The subscriber reads nothing while ~16 MB of events are published.
    payload = "x" * 800
    body = {"data": [{"semantics": "s", "name": "n", "payload": payload} for _ in range(50)]}
    async with asyncio.timeout(60):
        for _ in range(400):
            r = await client.post(f"{BASE}/publish", json=body)
            assert r.status == 201
    assert log.offsets() == {log.node_id: 19_999}
    # The stream really is stalled on the unread connection, and holds at most a page.
    assert tracking.delivered < 19_000
    assert log.statistics().buffered_records <= PAGE
    # Catching up later yields every event, in order.
    async with asyncio.timeout(60):
        for expected in range(20_000):
            line = await resp.content.readline()
            assert json.loads(line)["offset"] == expected
    resp.close()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'"text"',
        b'{"data": {}}',
        b'{"data": [1]}',
        b'{"data": [{"semantics": "", "name": "n", "payload": 1}]}',
        b'{"data": [{"semantics": "   ", "name": "n", "payload": 1}]}',
        b'{"data": [{"semantics": "s", "name": "", "payload": 1}]}',
        b'{"data": [{"semantics": "s", "name": 5, "payload": 1}]}',
        b'{"data": [{"name": "n", "payload": 1}]}',
        b'{"data": [{"semantics": "s", "name": "n"}]}',
        b'{"data": [{"semantics": "s", "name": "n", "payload": NaN}]}',
        b'{"data": [{"semantics": "s", "name": "n", "payload": "\\ud800"}]}',
        b"\xff\xfe\x00",
        # Past the per-event limits that keep every event replicable (SPEC.md, Limits).
        b'{"data": [{"semantics": "%s", "name": "n", "payload": 1}]}' % (b"s" * 4097),
        b'{"data": [{"semantics": "s", "name": "%s", "payload": 1}]}' % (b"n" * 4097),
    ],
)
async def test_publish_rejects_invalid_bodies(client: Client, log: EventLog, body: bytes) -> None:
    resp = await client.post(
        f"{BASE}/publish", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    error = await resp.json()
    assert error["errorCode"] == 400
    assert isinstance(error["error"], str)
    assert error["error"]
    assert log.offsets() == {}


@pytest.mark.parametrize(
    "body",
    [
        {"upperBound": {}, "order": "lamport"},
        {"subscriptions": {}, "upperBound": {}, "order": "lamport"},
        {"subscriptions": [1], "upperBound": {}, "order": "lamport"},
        {"subscriptions": [{"name": 3}], "upperBound": {}, "order": "lamport"},
        {"subscriptions": [{}], "order": "lamport"},
        {"subscriptions": [{}], "upperBound": [], "order": "lamport"},
        {"subscriptions": [{}], "upperBound": {"a": "1"}, "order": "lamport"},
        {"subscriptions": [{}], "upperBound": {"a": 1.5}, "order": "lamport"},
        {"subscriptions": [{}], "upperBound": {"a": True}, "order": "lamport"},
        {"subscriptions": [{}], "upperBound": {"a": -2}, "order": "lamport"},
        {"subscriptions": [{}], "upperBound": {"a": 2**63}, "order": "lamport"},
        {"subscriptions": [{}], "upperBound": {}, "lowerBound": 5, "order": "lamport"},
        {"subscriptions": [{}], "upperBound": {}, "order": "random"},
        {"subscriptions": [{}], "upperBound": {}},
    ],
)
async def test_query_rejects_invalid_bodies(client: Client, body: dict[str, Any]) -> None:
    resp = await client.post(f"{BASE}/query", json=body)
    assert resp.status == 400
    assert (await resp.json())["errorCode"] == 400


@pytest.mark.parametrize(
    "body",
    [{}, {"subscriptions": "all"}, {"subscriptions": [{}], "lowerBound": {"a": "x"}}],
)
async def test_subscribe_rejects_invalid_bodies(client: Client, body: dict[str, Any]) -> None:
    resp = await client.post(f"{BASE}/subscribe", json=body)
    assert resp.status == 400
    assert (await resp.json())["errorCode"] == 400


async def test_unknown_path_and_wrong_method(client: Client) -> None:
    resp = await client.get(f"{BASE}/nope")
    assert resp.status == 404
    assert (await resp.json())["errorCode"] == 404
    for method, path in [
        ("GET", "publish"),
        ("POST", "offsets"),
        ("PUT", "query"),
        ("GET", "subscribe"),
    ]:
        resp = await client.request(method, f"{BASE}/{path}")
        assert resp.status == 405, (method, path)
        assert (await resp.json())["errorCode"] == 405


async def test_body_over_the_limit_is_413(client: Client, log: EventLog) -> None:
    big = {"data": [{"semantics": "s", "name": "n", "payload": "x" * (70 * 1024)}]}
    resp = await client.post(f"{BASE}/publish", json=big)
    assert resp.status == 413
    assert (await resp.json())["errorCode"] == 413
    assert log.offsets() == {}


async def test_cors_preflight_and_header(client: Client) -> None:
    resp = await client.options(
        f"{BASE}/publish",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    resp = await client.get(f"{BASE}/offsets", headers={"Origin": "http://app.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.post(
        f"{BASE}/subscribe", json={"subscriptions": [{}]}, headers={"Origin": "http://app.example"}
    )
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp.close()


async def test_foreign_host_is_refused(client: Client) -> None:
    resp = await client.get(f"{BASE}/offsets", headers={"Host": "evil.example.com"})
    assert resp.status == 403
    assert (await resp.json())["errorCode"] == 403
    resp = await client.get(f"{BASE}/offsets", headers={"Host": "localhost:4454"})
    assert resp.status == 200


class FailingLog(TrackingLog):
    """Serves one event of a query, then fails."""

    def query(
        self,
        subscriptions: Sequence[Subscription],
        lower_bound: Mapping[str, int] | None,
        upper_bound: Mapping[str, int],
        order: Order,
    ) -> AsyncIterator[EventRecord]:
        async def failing() -> AsyncIterator[EventRecord]:
            async for record in self.log.query(subscriptions, lower_bound, upper_bound, order):
                yield record
                raise RuntimeError("disk on fire")

        return failing()


async def test_stream_failing_midway_ends_with_an_error_line(log: EventLog) -> None:
    await log.publish([NewEvent(semantics="s", name="n", payload=str(i)) for i in range(3)])
    client = await _client(make_events_app(FailingLog(log), Config()))
    try:
        resp = await client.post(
            f"{BASE}/query",
            json={"subscriptions": [{}], "upperBound": log.offsets(), "order": "lamport"},
        )
        assert resp.status == 200
        lines = await _lines(resp)
    finally:
        await client.close()
    assert lines[0]["offset"] == 0
    assert lines[1] == {"error": "disk on fire", "errorCode": 500}
    assert len(lines) == 2


async def test_shutdown_ends_open_subscriptions(log: EventLog) -> None:
    client = await _client(make_events_app(log, Config()))
    try:
        resp = await client.post(f"{BASE}/subscribe", json={"subscriptions": [{}]})
        assert resp.status == 200
        async with asyncio.timeout(5):
            await client.server.runner.shutdown()  # type: ignore[union-attr]
        assert log.statistics().subscriptions == 0
        resp.close()
    finally:
        await client.close()


async def test_publish_rejects_a_payload_too_large_to_replicate(log: EventLog) -> None:
    """An event whose payload could not fit one replication frame is refused with 400 (SPEC.md)."""
    client = await _client(make_events_app(log, Config()))
    try:
        big = b'{"data": [{"semantics": "s", "name": "n", "payload": "%s"}]}' % (b"p" * 512 * 1024)
        resp = await client.post(
            f"{BASE}/publish", data=big, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 400
        assert "payload" in (await resp.json())["error"]
        assert log.offsets() == {}
        fits = b'{"data": [{"semantics": "s", "name": "n", "payload": "%s"}]}' % (b"p" * 1000)
        resp = await client.post(
            f"{BASE}/publish", data=fits, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 201
    finally:
        await client.close()
