"""Event log and Event Service throughput, each against a baseline measured in the same run.

    python -m bench.events_log [--events N] [--json PATH]

- publish, 1 event per call, 64 concurrent callers (group commit) vs raw sqlite3, one durable
  commit per event (WAL, synchronous=FULL) on a thread: what group commit buys.
- publish, 100-event batches vs raw sqlite3 executemany of the same rows, one commit per batch:
  the log's overhead (chain hashing, signing, thread hand-off) over bare inserts.
- HTTP publish (1 event per request, 16 concurrent clients) vs a bare aiohttp handler answering 201.
- HTTP query streaming of N events vs a bare aiohttp handler writing N pre-built lines, one chunk
  each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from swarmnode.api.events_app import make_events_app
from swarmnode.config import Config
from swarmnode.events.log import EventLog
from swarmnode.events.schema import SCHEMA
from swarmnode.identity import Identity
from swarmnode.ports import NewEvent

LINE = (
    b'{"stream":{"semantics":"sem","name":"n","source":"abcdefghijklmno"},"timestamp":1,'
    b'"lamport":1,"offset":1,"payload":{"i":1}}\r\n'
)


def _raw_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)
    return conn


def _row(i: int) -> tuple[Any, ...]:
    return ("src", i, i + 1, 0, "sem", "n", f'{{"i":{i}}}', bytes(32), None)


_INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def raw_single_commits(path: Path, n: int) -> None:
    conn = _raw_db(path)
    try:
        for i in range(n):
            conn.execute("BEGIN")
            conn.execute(_INSERT, _row(i))
            conn.execute("COMMIT")
    finally:
        conn.close()


def raw_batches(path: Path, n: int, batch: int) -> None:
    conn = _raw_db(path)
    try:
        for start in range(0, n, batch):
            conn.execute("BEGIN")
            conn.executemany(_INSERT, [_row(i) for i in range(start, start + batch)])
            conn.execute("COMMIT")
    finally:
        conn.close()


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def with_log(tmp: Path, name: str, fn: Callable[[EventLog], Awaitable[None]]) -> float:
    log = EventLog(tmp / f"{name}.sqlite", Identity.from_private_bytes(bytes(range(32))))
    await log.start()
    try:
        return await timed(lambda: fn(log))
    finally:
        await log.stop()


async def publish_concurrent(log: EventLog, n: int, callers: int) -> None:
    async def caller(k: int) -> None:
        for i in range(k, n, callers):
            await log.publish([NewEvent(semantics="sem", name="n", payload=f'{{"i":{i}}}')])

    await asyncio.gather(*(caller(k) for k in range(callers)))


async def publish_batches(log: EventLog, n: int, batch: int) -> None:
    for start in range(0, n, batch):
        await log.publish(
            [
                NewEvent(semantics="sem", name="n", payload=f'{{"i":{i}}}')
                for i in range(start, start + batch)
            ]
        )


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    port = server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def bare_app(n_lines: int) -> web.Application:
    async def publish(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201)

    async def query(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse()
        resp.content_type = "application/x-ndjson"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(n_lines):
            await resp.write(LINE)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/api/v1/events/publish", publish)
    app.router.add_post("/api/v1/events/query", query)
    return app


async def http_publish(base: str, n: int, clients: int) -> float:
    body = {"data": [{"semantics": "sem", "name": "n", "payload": {"i": 1}}]}
    async with aiohttp.ClientSession() as session:

        async def client(k: int) -> None:
            for _ in range(k, n, clients):
                async with session.post(f"{base}/api/v1/events/publish", json=body) as resp:
                    assert resp.status == 201

        return await timed(lambda: _gather(client, clients))


async def _gather(fn: Callable[[int], Awaitable[None]], k: int) -> None:
    await asyncio.gather(*(fn(i) for i in range(k)))


async def http_query(base: str, upper: dict[str, int], expect: int) -> float:
    body = {"subscriptions": [{}], "upperBound": upper, "order": "lamport"}
    async with aiohttp.ClientSession() as session:

        async def run() -> None:
            count = 0
            async with session.post(f"{base}/api/v1/events/query", json=body) as resp:
                async for _ in resp.content:
                    count += 1
            assert count == expect, count

        return await timed(run)


async def main(n: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        single = n // 5
        base = await asyncio.to_thread(
            lambda: _time_sync(lambda: raw_single_commits(tmp / "raw1.sqlite", single))
        )
        ours = await with_log(tmp, "conc", lambda log: publish_concurrent(log, single, 64))
        results["publish 1/call x64 vs raw commit/event"] = _pair(single, ours, base)

        base = await asyncio.to_thread(
            lambda: _time_sync(lambda: raw_batches(tmp / "raw2.sqlite", n, 100))
        )
        ours = await with_log(tmp, "batch", lambda log: publish_batches(log, n, 100))
        results["publish 100/batch vs raw executemany"] = _pair(n, ours, base)

        log = EventLog(tmp / "http.sqlite", Identity.from_private_bytes(bytes(range(32))))
        await log.start()
        ours_runner, ours_url = await serve(make_events_app(log, Config()))
        bare_runner, bare_url = await serve(bare_app(n))
        try:
            requests = n // 10
            base = await http_publish(bare_url, requests, 16)
            ours = await http_publish(ours_url, requests, 16)
            results["HTTP publish 1/request x16 vs bare 201 handler"] = _pair(requests, ours, base)
            await publish_batches(log, n - requests, 100)
            upper = log.offsets()
            base = await http_query(bare_url, {}, n)
            ours = await http_query(ours_url, upper, n)
            results["HTTP query stream vs bare chunk-per-line handler"] = _pair(n, ours, base)
        finally:
            await ours_runner.cleanup()
            await bare_runner.cleanup()
            await log.stop()
    return results


def _time_sync(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _pair(n: int, ours: float, base: float) -> dict[str, float]:
    return {
        "events": n,
        "ours_per_s": round(n / ours),
        "baseline_per_s": round(n / base),
        "ratio": round(base / ours, 3),
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = asyncio.run(main(args.events))
    width = max(map(len, results))
    print(f"{'case':<{width}}  {'events':>7}  {'ours/s':>9}  {'base/s':>9}  ratio")
    for case, r in results.items():
        print(
            f"{case:<{width}}  {r['events']:>7}  {r['ours_per_s']:>9}  "
            f"{r['baseline_per_s']:>9}  {r['ratio']:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    cli()
