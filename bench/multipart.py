"""Benchmark: swarmnode's streaming multipart reader against a raw body read and aiohttp's reader.

Run: ``python -m bench.multipart [--size-mib 1024] [--piece-kib 1024] [--loop asyncio|uvloop]``

Part 1 (in memory): the same multipart stream, fed as ``--piece-kib`` pieces through
  - raw: the pieces read from an aiohttp StreamReader, each touched once (``bytes.find``),
  - core: swarmnode's sans-IO parser alone,
  - reader: swarmnode's MultipartReader on a StreamReader (the driver path the API uses),
  - aiohttp: aiohttp's MultipartReader / BodyPartReader.read_chunk on the same StreamReader,
  once bare and once hashing every body byte with BLAKE3 (the blob store's cost).
Part 2 (HTTP, in process): an aiohttp app that streams the upload into BLAKE3 and a sink
(``--sink null`` = /dev/null, ``file`` = a temp file), with curl as the client:
  raw body (``curl -T file``, Content-Length; ``--data-binary @file`` refuses files of 1 GiB)
  read with readchunk/readany/read(n)/iter_chunked,
  against ``curl -F blob=@file -F metadata=...`` read raw (form-raw: what curl -F costs the
  client, no parsing), by swarmnode's reader and by aiohttp's.
Each figure is the median of ``--repeat`` runs; ratios are against the raw readchunk baseline.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import blake3
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol

from swarmnode.api.multipart import MultipartReader, boundary_from_content_type
from swarmnode.api.multipart_core import MultipartParser, PartData

BOUNDARY = b"------------------------bench7e1f0c2a9d3b"
# The raw pass scans each piece once for an absent needle as long as the delimiter: the least
# work any boundary search must do, so "core / raw" is the parser's own overhead.
ABSENT = b"\r\n--" + BOUNDARY[::-1]
MIB = 1024 * 1024


class _Protocol(BaseProtocol):
    """No transport: flow control is a no-op, the reader is always "connected"."""

    @property
    def connected(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def _pieces(size: int, piece: int) -> tuple[list[bytes], int]:
    """A multipart stream of one ``size``-byte blob part plus metadata, as ``piece``-sized
    pieces that share one random block (no GiB of memory), and the blob's byte count."""
    block = os.urandom(piece)
    assert b"\r\n--" + BOUNDARY not in block
    assert ABSENT not in block
    head = (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="blob"; filename="blob.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    tail = (
        b"\r\n--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="metadata"\r\n\r\n{"semantics": "bench"}\r\n'
        b"--" + BOUNDARY + b"--\r\n"
    )
    count = max(1, size // piece)
    return [head + block[: piece - len(head)], *[block] * (count - 1), tail], count * piece - len(
        head
    )


def _stream(pieces: list[bytes]) -> StreamReader:
    loop = asyncio.get_running_loop()
    stream = StreamReader(_Protocol(loop), 2**16, loop=loop)
    for piece in pieces:
        stream.feed_data(piece)
    stream.feed_eof()
    return stream


Consume = Callable[[memoryview | bytes], object]


async def _mem_raw(pieces: list[bytes], consume: Consume) -> int:
    stream = _stream(pieces)
    n = 0
    while True:
        data, more = await stream.readchunk()
        if not data and not more:
            return n
        data.find(ABSENT)
        consume(data)
        n += len(data)


async def _mem_core(pieces: list[bytes], consume: Consume) -> int:
    parser = MultipartParser(BOUNDARY)
    n = 0
    for piece in pieces:
        for event in parser.feed(piece):
            if isinstance(event, PartData):
                consume(event.data)
                n += len(event.data)
    parser.feed_eof()
    return n


async def _mem_reader(pieces: list[bytes], consume: Consume) -> int:
    reader = MultipartReader(_stream(pieces), BOUNDARY)
    n = 0
    while (part := await reader.next_part()) is not None:
        async for chunk in part.chunks():
            consume(chunk)
            n += len(chunk)
    return n


async def _aiohttp_parts(reader: aiohttp.MultipartReader, consume: Consume) -> int:
    n = 0
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader)
        while chunk := await part.read_chunk(256 * 1024):
            consume(chunk)
            n += len(chunk)
    return n


async def _mem_aiohttp(pieces: list[bytes], consume: Consume) -> int:
    headers = {"Content-Type": "multipart/form-data; boundary=" + BOUNDARY.decode()}
    return await _aiohttp_parts(aiohttp.MultipartReader(headers, _stream(pieces)), consume)


def _warm(path: Path) -> None:
    """Re-read the file so curl reads it from page cache (this VM drops idle cache quickly)."""
    with path.open("rb") as f:
        while f.read(4 * MIB):
            pass


def _median_rate(times: list[float], size: int) -> float:
    return size / statistics.median(times) / 1e9


async def bench_memory(size: int, piece: int, repeat: int) -> list[dict[str, Any]]:
    pieces, blob_bytes = _pieces(size, piece)
    total = sum(map(len, pieces))
    results = []
    modes: dict[str, Callable[[list[bytes], Consume], Awaitable[int]]] = {
        "raw": _mem_raw,
        "core": _mem_core,
        "reader": _mem_reader,
        "aiohttp": _mem_aiohttp,
    }
    for hashing in (False, True):
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(repeat):
            for mode, run in modes.items():
                hasher = blake3.blake3()
                consume: Consume = hasher.update if hashing else (lambda _b: None)
                start = time.perf_counter()
                n = await run(pieces, consume)
                times[mode].append(time.perf_counter() - start)
                expected = total if mode == "raw" else blob_bytes + len(b'{"semantics": "bench"}')
                assert n == expected, (mode, n, expected)
        base = _median_rate(times["raw"], total)
        for mode in modes:
            rate = _median_rate(times[mode], total)
            results.append(
                {
                    "part": "memory",
                    "mode": mode + ("+blake3" if hashing else ""),
                    "gb_s": round(rate, 3),
                    "ratio": round(rate / base, 3),
                }
            )
    return results


# --- HTTP ------------------------------------------------------------------------------------


class _Sink:
    def __init__(self, kind: str, directory: Path) -> None:
        self.path = Path(os.devnull) if kind == "null" else directory / "sink.bin"

    def open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


async def _http_raw(request: web.Request, mode: str, consume: Consume) -> int:
    stream = request.content
    n = 0
    if mode == "readchunk":
        while True:
            data, more = await stream.readchunk()
            if not data and not more:
                return n
            consume(data)
            n += len(data)
    if mode == "readany":
        while data := await stream.readany():
            consume(data)
            n += len(data)
        return n
    if mode == "read":
        while data := await stream.read(MIB):
            consume(data)
            n += len(data)
        return n
    async for data in stream.iter_chunked(MIB):
        consume(data)
        n += len(data)
    return n


async def _http_ours(request: web.Request, coalesce: int, consume: Consume) -> int:
    boundary = boundary_from_content_type(request.headers["Content-Type"])
    reader = MultipartReader(request.content, boundary)
    n = 0
    while (part := await reader.next_part()) is not None:
        if part.name == "blob":
            async for chunk in part.chunks(coalesce=coalesce):
                consume(chunk)
                n += len(chunk)
        else:
            await part.read(65536)
    return n


async def _http_aiohttp(request: web.Request, consume: Consume) -> int:
    reader = await request.multipart()
    n = 0
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader)
        if part.name == "blob":
            while chunk := await part.read_chunk(256 * 1024):
                consume(chunk)
                n += len(chunk)
        else:
            await part.read()
    return n


async def bench_http(
    blob: Path, expected_hash: str, sink: _Sink, repeat: int
) -> list[dict[str, Any]]:
    size = await asyncio.to_thread(lambda: blob.stat().st_size)
    state: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        mode = request.match_info["mode"]
        hasher = blake3.blake3()
        fd = sink.open()

        def consume(chunk: memoryview | bytes) -> None:
            hasher.update(chunk)
            os.write(fd, chunk)

        try:
            start = time.perf_counter()
            if mode.startswith(("raw-", "form-raw-")):
                n = await _http_raw(request, mode.rpartition("-")[2], consume)
            elif mode == "ours":
                n = await _http_ours(request, 256 * 1024, consume)
            elif mode == "ours-nocoalesce":
                n = await _http_ours(request, 0, consume)
            else:
                n = await _http_aiohttp(request, consume)
            state["server_s"] = time.perf_counter() - start
        finally:
            os.close(fd)
        if mode.startswith("form-raw-"):  # the whole multipart body, hashed as one
            if n <= size:
                return web.Response(status=500, text=f"short upload {n}")
        elif n != size or hasher.hexdigest() != expected_hash:
            return web.Response(status=500, text=f"bad upload {n}")
        return web.Response(status=201, text="ok")

    app = web.Application(client_max_size=2**40)
    app.router.add_post("/{mode}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    modes = [
        "raw-readchunk",
        "raw-readany",
        "raw-read",
        "raw-iter_chunked",
        "form-raw-readchunk",
        "ours",
        "ours-nocoalesce",
        "aiohttp",
    ]
    wall: dict[str, list[float]] = {m: [] for m in modes}
    server: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for _ in range(repeat):
            for mode in modes:
                await asyncio.to_thread(_warm, blob)
                url = f"http://127.0.0.1:{port}/{mode}"
                if mode.startswith("raw-"):
                    args = ["-X", "POST", "-T", str(blob)]
                else:
                    args = ["-F", f"blob=@{blob}", "-F", 'metadata={"semantics": "b"}']
                args += ["-H", "Expect:"]
                start = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(
                    "curl",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    *args,
                    url,
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await proc.communicate()
                wall[mode].append(time.perf_counter() - start)
                server[mode].append(state.pop("server_s"))
                assert out == b"201", (mode, out)
    finally:
        await runner.cleanup()
    base = _median_rate(wall["raw-readchunk"], size)
    return [
        {
            "part": "http",
            "mode": mode,
            "gb_s": round(_median_rate(wall[mode], size), 3),
            "ratio": round(_median_rate(wall[mode], size) / base, 3),
            "server_gb_s": round(_median_rate(server[mode], size), 3),
        }
        for mode in modes
    ]


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    size = args.size_mib * MIB
    results = []
    if not args.skip_memory:
        results += await bench_memory(size, args.piece_kib * 1024, args.repeat)
    if args.skip_http:
        return results
    with tempfile.TemporaryDirectory(prefix="bench-multipart-") as tmp:
        blob = Path(tmp) / "blob.bin"
        hasher = blake3.blake3()
        with blob.open("wb") as f:
            for _ in range(args.size_mib):
                block = os.urandom(MIB)
                hasher.update(block)
                f.write(block)
        results += await bench_http(
            blob, hasher.hexdigest(), _Sink(args.sink, Path(tmp)), args.repeat
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--piece-kib", type=int, default=1024, help="in-memory piece size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--sink", choices=["null", "file"], default="null")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        results = uvloop.run(main_async(args))
    else:
        results = asyncio.run(main_async(args))
    print(f"{'part':8} {'mode':22} {'GB/s':>7} {'ratio':>6} {'server GB/s':>11}")
    for r in results:
        server = f"{r['server_gb_s']:11.3f}" if "server_gb_s" in r else ""
        print(f"{r['part']:8} {r['mode']:22} {r['gb_s']:7.3f} {r['ratio']:6.3f} {server}")
    info = {k: getattr(args, k) for k in ("size_mib", "piece_kib", "repeat", "loop", "sink")}
    print(json.dumps({"bench": "multipart", **info, "results": results}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
