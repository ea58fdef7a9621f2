"""The Event Service HTTP API on :4454 (API.md, "Event Service"), thin over ``EventLogPort``.

Handlers validate (``events/wire.py``), call one log method and map the result. Streams send their
headers at once, then one chunk per event line, and nothing else; a stream that fails midway ends
with one error line. Streaming handlers are tracked so the app's shutdown ends them instead of
waiting for clients that never hang up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from aiohttp import web

from protocol.eventchain import EventRecord
from swarmnode.api.common import ApiError, new_app
from swarmnode.config import Config
from swarmnode.events import wire
from swarmnode.ports import EventLogPort

__all__ = ["make_events_app"]

log = logging.getLogger(__name__)

BASE = "/api/v1/events"
NDJSON = "application/x-ndjson"

_LOG = web.AppKey("event_log", EventLogPort)
_STREAMS: web.AppKey[set[asyncio.Task[object]]] = web.AppKey("event_streams")


def make_events_app(log: EventLogPort, config: Config) -> web.Application:
    """The Event Service application for ``log``."""
    app = new_app(
        cors_origins=config.cors_origins,
        allowed_hosts=config.allowed_hosts,
        client_max_size=config.max_event_body_bytes,
    )
    app[_LOG] = log
    app[_STREAMS] = set()
    app.router.add_get(f"{BASE}/node_id", _node_id)
    app.router.add_get(f"{BASE}/offsets", _offsets)
    app.router.add_post(f"{BASE}/publish", _publish)
    app.router.add_post(f"{BASE}/query", _query)
    app.router.add_post(f"{BASE}/subscribe", _subscribe)
    app.on_shutdown.append(_end_streams)
    return app


async def _body(request: web.Request) -> dict[str, object]:
    raw = await request.read()  # raises 413 past client_max_size
    try:
        return wire.parse_body(raw)
    except wire.BadRequest as exc:
        raise ApiError(400, str(exc)) from None


async def _node_id(request: web.Request) -> web.Response:
    return web.json_response({"nodeId": request.app[_LOG].node_id})


async def _offsets(request: web.Request) -> web.Response:
    return web.json_response(request.app[_LOG].offsets(), headers={"Cache-Control": "no-store"})


async def _publish(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        events = wire.parse_publish(body)
    except wire.BadRequest as exc:
        raise ApiError(400, str(exc)) from None
    await request.app[_LOG].publish(events)
    return web.Response(status=201)


async def _query(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    try:
        q = wire.parse_query(body)
    except wire.BadRequest as exc:
        raise ApiError(400, str(exc)) from None
    records = request.app[_LOG].query(q.subscriptions, q.lower_bound, q.upper_bound, q.order)
    return await _stream(request, records)


async def _subscribe(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    try:
        s = wire.parse_subscribe(body)
    except wire.BadRequest as exc:
        raise ApiError(400, str(exc)) from None
    records = request.app[_LOG].subscribe(s.subscriptions, s.lower_bound)
    return await _stream(request, records)


async def _stream(request: web.Request, records: AsyncIterator[EventRecord]) -> web.StreamResponse:
    """Write each record as its own chunk; headers go out before the first event."""
    streams = request.app[_STREAMS]
    task = asyncio.current_task()
    assert task is not None
    response = web.StreamResponse(status=200, headers={"Cache-Control": "no-store"})
    response.content_type = NDJSON
    response.enable_chunked_encoding()
    streams.add(task)
    try:
        async with contextlib.aclosing(_closing(records)) as lines:
            await response.prepare(request)
            try:
                async for record in lines:
                    await response.write(wire.event_line(record))
            except ConnectionError:
                return response  # the client went away; nothing more to say
            except Exception as exc:
                log.exception("events.stream_failed", extra={"path": request.path})
                with contextlib.suppress(ConnectionError):
                    await response.write(wire.error_line(_describe(exc)))
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
    finally:
        streams.discard(task)


async def _closing(records: AsyncIterator[EventRecord]) -> AsyncGenerator[EventRecord, None]:
    """``records`` as an async generator whose ``aclose`` also closes ``records``."""
    try:
        async for record in records:
            yield record
    finally:
        close = getattr(records, "aclose", None)
        if close is not None:
            await close()


def _describe(exc: Exception) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


async def _end_streams(app: web.Application) -> None:
    """On shutdown, end open query and subscribe streams (subscriptions never end by themselves)."""
    streams: set[asyncio.Task[object]] = app[_STREAMS]
    tasks = list(streams)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=2.0)
    log.debug("events.streams_ended", extra={"count": len(tasks)})
