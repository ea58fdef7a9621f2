"""A fetching node's memory does not grow with the blob's size (issue 5 Deliver 5, DESIGN
invariant 6), measured on real node processes.

The fetcher streams chunks to its partial file; nothing should hold a whole blob. We compare
the peak anonymous memory (``RssAnon`` sampled from ``/proc/<pid>/status``, plus the kernel's
``VmHWM`` for the record) a fresh fetcher gains while replicating 32 MiB and 256 MiB. File pages
a node maps to hash a stored file (``RssFile``) are page cache the kernel reclaims at will, so
they are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from netsim.nodeproc import NodeProcess
from tests.helpers.blob_transfer import upload_file, wait_local
from tests.helpers.blobfiles import write_random_file

SWARM_KEY = hashlib.blake2s(b"blob swarming test").hexdigest()
MIB = 1 << 20
DEADLINE = 90.0
SAMPLE_S = 0.02  # sampling period of the fetcher's memory while it fetches
KEEP = {"semantics": "s.mem", "retentionPolicy": {"policy": "keepForever"}}


def memory_kib(pid: int) -> dict[str, int]:
    """``RssAnon`` and ``VmHWM`` of a process, in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        yield session


async def fetch_growth(http: aiohttp.ClientSession, root: Path, size: int) -> tuple[int, int]:
    """Peak ``RssAnon`` gain and ``VmHWM`` gain (bytes) of a fresh node fetching ``size`` bytes."""
    source = root / "blob.bin"
    write_random_file(source, size)
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            NodeProcess(root / "a", extra_args=["--swarm-key", SWARM_KEY])
        )
        b = await stack.enter_async_context(
            NodeProcess(root / "b", extra_args=["--swarm-key", SWARM_KEY, "--peers", a.info.swarm])
        )
        before = memory_kib(b.pid)
        peak_anon = before["RssAnon"]
        handle = await upload_file(http, a, source, KEEP)
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak_anon
            while not done.is_set():
                peak_anon = max(peak_anon, memory_kib(b.pid)["RssAnon"])
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SAMPLE_S):
                        await done.wait()

        async with asyncio.timeout(DEADLINE), asyncio.TaskGroup() as tasks:
            tasks.create_task(sample())
            meta = await wait_local(http, b, handle)
            done.set()
        assert meta["local"] is True
        after = memory_kib(b.pid)
        assert (
            b.data_dir / "blobs" / "data" / handle.removeprefix("blake3:")
        ).stat().st_size == size
    return (peak_anon - before["RssAnon"]) * 1024, (after["VmHWM"] - before["VmHWM"]) * 1024


# What bounds the fetcher's memory: chunks arrived but not yet stored (FetcherConfig
# max_unstored_bytes, node-wide) plus socket and frame buffers, whatever the blob's size.


async def test_fetcher_memory_stays_far_below_a_large_blob(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    size = 256 * MIB
    anon, hwm = await fetch_growth(http, tmp_path, size)
    print("fetcher memory growth for 256 MiB:", {"anon_mib": anon / MIB, "hwm_mib": hwm / MIB})
    # Holding the blob (or a copy per layer) would cost >= 256 MiB.
    assert anon < size // 2, anon / MIB


async def test_fetcher_memory_growth_is_the_same_for_32_and_256_mib(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small_anon, small_hwm = await fetch_growth(http, tmp_path / "small", 32 * MIB)
    large_anon, large_hwm = await fetch_growth(http, tmp_path / "large", 256 * MIB)
    figures = {
        "small_anon_mib": small_anon / MIB,
        "large_anon_mib": large_anon / MIB,
        "small_hwm_mib": small_hwm / MIB,
        "large_hwm_mib": large_hwm / MIB,
    }
    # 8x the bytes: growth that depends on the blob's size shows as a gap between the two.
    assert large_anon - small_anon < 32 * MIB, figures
