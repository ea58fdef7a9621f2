"""Process plumbing for bench.blob_transfer: nodes with their own environment (and a proxy in
front), uploads, what a node says about a blob, CPU and RSS of a process, and the raw-TCP
baselines (``bench.blob_baselines``, one process per side).

Nodes run through the test harness's ``NodeProcess``. It takes no environment of its own, but it
copies ``os.environ`` when it spawns, so ``node`` sets the per-node variables (e.g.
``SWARMNODE_ADVERTISE``) just around the spawn; nodes are started one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.pagecache import MIB, make_input, recycle_memory, warm
from bench.procstats import cpu_seconds, rss_growth
from bench.swarm_procs import SWARM_KEY
from netsim.nodeproc import REPO_ROOT, NodeProcess
from netsim.proxy import TcpProxy

__all__ = [
    "MIB",
    "behind_proxy",
    "blob_fetched",
    "cpu_seconds",
    "file_baseline",
    "make_input",
    "many_baseline",
    "metadata",
    "node",
    "raw_pair",
    "recycle_memory",
    "rss_growth",
    "status",
    "upload_bytes",
    "upload_file",
    "upload_many",
    "warm",
]

_BASELINE_TIMEOUT_S = 600.0
UPLOAD_CONCURRENCY = 16
ADVERTISE_ENV = "SWARMNODE_ADVERTISE"


@contextlib.asynccontextmanager
async def node(
    root: Path,
    name: str,
    peers: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    log_level: str = "WARNING",
) -> AsyncIterator[NodeProcess]:
    """A started node (``--peers`` = ``peers``), killed and reaped on exit."""
    args = ["--swarm-key", SWARM_KEY, "--log-level", log_level]
    if peers:
        args += ["--peers", ",".join(peers)]
    proc = NodeProcess(root / name, extra_args=args)
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        await proc.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield proc
    finally:
        await proc.aclose()


async def status(session: aiohttp.ClientSession, proc: NodeProcess) -> dict[str, Any]:
    async with session.get(f"http://{proc.info.events_api}/api/v1/node/status") as resp:
        resp.raise_for_status()
        body: dict[str, Any] = await resp.json()
        return body


async def metadata(
    session: aiohttp.ClientSession, proc: NodeProcess, handle: str
) -> dict[str, Any] | None:
    """The blob's metadata as ``proc`` knows it; None while it answers 404."""
    async with session.get(f"{proc.blobs_url}?metadata-{handle}") as resp:
        if resp.status == 404:
            await resp.read()
            return None
        resp.raise_for_status()
        body: dict[str, Any] = await resp.json()
        return body


async def upload_file(proc: NodeProcess, path: Path) -> str:
    """Multipart upload of ``path`` with curl (streams any size); returns the handle."""
    cmd = [
        "curl", "-sS", "--fail-with-body", "-F", f"blob=@{path};type=application/octet-stream",
        "-F", 'metadata={"semantics":"bench"};type=application/json', proc.blobs_url,
    ]  # fmt: skip
    curl = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await curl.communicate()
    if curl.returncode != 0:
        raise RuntimeError(f"upload failed ({curl.returncode}): {out[:200]!r} {err[:200]!r}")
    return str(json.loads(out)["handle"])


async def upload_bytes(session: aiohttp.ClientSession, proc: NodeProcess, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("blob", data, filename="b.bin", content_type="application/octet-stream")
    form.add_field("metadata", '{"semantics":"bench"}', content_type="application/json")
    async with session.post(proc.blobs_url, data=form) as resp:
        body = await resp.read()
        if resp.status != 201:
            raise RuntimeError(f"upload answered {resp.status}: {body[:200]!r}")
        return str(json.loads(body)["handle"])


def blob_fetched(proc: NodeProcess, handle: str | None = None) -> list[dict[str, Any]]:
    """The current run's ``blob.fetched`` log records (of ``handle`` if given)."""
    return [
        r
        for r in proc.log_records()
        if r.get("event") == "blob.fetched" and (handle is None or r.get("handle") == handle)
    ]


async def _line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    raw = await proc.stdout.readline()
    if not raw:
        raise RuntimeError(f"baseline process {proc.pid} exited without a result")
    body: dict[str, Any] = json.loads(raw)
    return body


async def raw_pair(recv_args: Sequence[str], send_args: Sequence[str]) -> dict[str, Any]:
    """Run ``bench.blob_baselines`` receiver then sender (the sender gets the port as its first
    argument); returns seconds (sender start to receiver end), bytes, and each side's CPU s."""
    base = [sys.executable, "-m", "bench.blob_baselines"]
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with asyncio.timeout(_BASELINE_TIMEOUT_S):
            recv = await asyncio.create_subprocess_exec(
                *base, *recv_args, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT
            )
            procs.append(recv)
            port = (await _line(recv))["port"]
            send = await asyncio.create_subprocess_exec(
                *base, send_args[0], str(port), *send_args[1:],
                stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT,
            )  # fmt: skip
            procs.append(send)
            out: dict[str, float] = {}
            with rss_growth(recv.pid, out):
                sent, got = await asyncio.gather(_line(send), _line(recv))
            for p in procs:
                if await p.wait() != 0:
                    raise RuntimeError(f"baseline process exited with {p.returncode}")
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    if sent["bytes"] != got["bytes"]:
        raise RuntimeError(f"baseline sent {sent['bytes']} bytes, received {got['bytes']}")
    return {
        "seconds": got["end"] - sent["start"],
        "bytes": got["bytes"],
        "cpu_sender_s": round(sent["cpu"], 3),
        "cpu_receiver_s": round(got["cpu"], 3),
        "rss_growth_receiver_mib": out["rss_growth_mib"],
    }


async def file_baseline(work: Path, src: Path, size: int) -> dict[str, Any]:
    """Raw TCP copy of ``src`` into a new file in ``work`` (recycled memory, warm input)."""
    out = work / "baseline.bin"
    recycle_memory(work / "recycle.bin", size)
    warm(src)
    try:
        return await raw_pair(["recv-file", str(out)], ["send-file", str(src)])
    finally:
        out.unlink(missing_ok=True)


async def many_baseline(work: Path, blobs: list[bytes], *, keep: bool = False) -> dict[str, Any]:
    """``blobs`` from files over one raw TCP connection into one fsynced file each. ``keep``
    leaves the files under ``work`` for the caller to delete (see ``bench_small``)."""
    src, dst = work / "small-src", work / "small-dst"
    src.mkdir()
    dst.mkdir()
    try:
        for i, data in enumerate(blobs):
            (src / f"{i:06d}").write_bytes(data)
        got = await raw_pair(["recv-many", str(dst), str(len(blobs))], ["send-many", str(src)])
    finally:
        if not keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(dst, ignore_errors=True)
    got["blobs_per_s"] = round(len(blobs) / got["seconds"], 1)
    return got


async def upload_many(
    session: aiohttp.ClientSession, proc: NodeProcess, blobs: list[bytes]
) -> set[str]:
    gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def one(data: bytes) -> str:
        async with gate:
            return await upload_bytes(session, proc, data)

    return set(await asyncio.gather(*(one(b) for b in blobs)))


def _proxy(rate_bps: float | None) -> TcpProxy:
    """A proxy with no target yet (set once its node listens), capped both ways at ``rate_bps``."""
    # The bucket is shared by all of the proxy's connections: one node's uplink and downlink.
    return TcpProxy(("127.0.0.1", 1), rate_to_client_bps=rate_bps, rate_to_target_bps=rate_bps)


async def behind_proxy(
    stack: contextlib.AsyncExitStack, root: Path, name: str, peers: list[str], rate: float | None,
    log_level: str = "WARNING",
) -> tuple[NodeProcess, TcpProxy]:  # fmt: skip
    """A node announcing its own proxy; ``rate=None``: a proxy that refuses everyone."""
    proxy = await stack.enter_async_context(_proxy(rate))
    env = {ADVERTISE_ENV: proxy.address}
    proc = await stack.enter_async_context(node(root, name, peers, env=env, log_level=log_level))
    if rate is None:
        proxy.cut("reset")
    else:
        host, _, port = proc.info.swarm.rpartition(":")
        proxy.target = (host, int(port))
    return proc, proxy
