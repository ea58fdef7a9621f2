"""Runs the real node as a subprocess (``python -m swarmnode``): for netsim, integration and crash
tests, and the benchmarks.

An in-process app test cannot show what an operator or an app sees: the CLI, signals, the files in
the data dir, what survives ``kill -9``. ``NodeProcess`` starts the node on ephemeral ports, learns
the bound addresses from ``<data-dir>/node.json`` (written by the node after binding), and always
cleans up: leaving its ``async with`` kills and reaps whatever still runs, even when a test failed.

The node's stderr (JSON log lines) goes to a file per run; every failure message includes its tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp

__all__ = [
    "REPO_ROOT",
    "NodeInfo",
    "NodeProcess",
    "NodeStartError",
    "http_offsets",
    "http_publish",
    "http_query",
    "node_command",
    "run_cli",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

# A cold start imports aiohttp, cryptography and SQLite: seconds on a loaded 2-core machine.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
# How long a start waits for the process to exit before looking for node.json again. Waiting on the
# process (not a bare sleep) means a crash at start-up is noticed at once.
_POLL_S = 0.02
_STDERR_TAIL = 4000


class NodeStartError(AssertionError):
    """The node died or did not write node.json in time; the message carries its stderr."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The contents of ``node.json``: where a running node listens."""

    pid: int
    node_id: str
    events_api: str
    blobs_api: str
    swarm: str

    @property
    def events_url(self) -> str:
        return f"http://{self.events_api}/api/v1/events"

    @property
    def blobs_url(self) -> str:
        return f"http://{self.blobs_api}/api/v1/blobs"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NodeInfo:
        return cls(
            pid=int(raw["pid"]),
            node_id=str(raw["nodeId"]),
            events_api=str(raw["eventsApi"]),
            blobs_api=str(raw["blobsApi"]),
            swarm=str(raw["swarm"]),
        )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env.pop("PYTHONWARNINGS", None)
    return env


def _child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The harness's environment with a node's ``overrides`` on top. A ``PYTHONPATH`` among them
    goes in front of the harness's rather than replacing it (e.g. netsim's clock skew hook)."""
    base = _env()
    env = {**base, **overrides}
    if overrides.get("PYTHONPATH"):
        env["PYTHONPATH"] = overrides["PYTHONPATH"] + os.pathsep + base["PYTHONPATH"]
    return env


def node_command(data_dir: Path, extra_args: Sequence[str] = ()) -> list[str]:
    """The command line the harness runs: every listener on an ephemeral loopback port."""
    return [
        sys.executable,
        "-m",
        "swarmnode",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--events-api",
        "127.0.0.1:0",
        "--blobs-api",
        "127.0.0.1:0",
        "--log-level",
        "DEBUG",
        *extra_args,
    ]


async def run_cli(
    *args: str, within: float = 30.0, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run ``python -m swarmnode ARGS`` to completion; returns ``(exit code, stdout, stderr)``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "swarmnode",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd or REPO_ROOT,
        env=_env(),
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class NodeProcess:
    """One node on one data dir, started and stopped as often as a test likes (same identity).

    ``start()`` → ``NodeInfo``; ``stop(sig)`` → exit code; ``kill()`` = ``kill -9``; ``restart()``.
    Use it as ``async with NodeProcess(dir) as node:`` so it is always reaped.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.extra_args = tuple(extra_args)
        # Over this process's environment, for this node only (PYTHONPATH: put in front).
        self.env = dict(env or {})
        self.log_dir = log_dir or data_dir.parent / (data_dir.name + "-logs")
        self.runs = 0
        # Told the pid of every run as soon as it exists, before the node is ready: the node
        # dials its seeds while it starts, and netsim must know whose connections those are.
        self.on_spawn: Callable[[int], None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: IO[bytes] | None = None
        self._info: NodeInfo | None = None

    # -- state -----------------------------------------------------------------------------------

    @property
    def info(self) -> NodeInfo:
        assert self._info is not None, "node is not running"
        return self._info

    @property
    def events_url(self) -> str:
        return self.info.events_url

    @property
    def blobs_url(self) -> str:
        return self.info.blobs_url

    @property
    def pid(self) -> int:
        assert self._proc is not None, "node was never started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def node_file(self) -> Path:
        return self.data_dir / "node.json"

    @property
    def stderr_path(self) -> Path:
        """The stderr file of the current (or last) run."""
        return self.log_dir / f"stderr-{self.runs}.log"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The current run's JSON log lines (lines that are not JSON are skipped)."""
        records = []
        for line in self.stderr_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def _tail(self) -> str:
        text = self.stderr_text()
        return text[-_STDERR_TAIL:] if text else "<no stderr>"

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, *, within: float = START_TIMEOUT_S) -> NodeInfo:
        """Launch the node and wait until it has written node.json with its own pid."""
        assert not self.running, "node is already running"
        self._close_stderr()
        self.runs += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stderr = self.stderr_path.open("wb")
        self._info = None
        self._proc = await asyncio.create_subprocess_exec(
            *node_command(self.data_dir, self.extra_args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=REPO_ROOT,
            env=_child_env(self.env),
        )
        if self.on_spawn is not None:
            self.on_spawn(self._proc.pid)
        try:
            self._info = await self._wait_for_node_file(within)
        except BaseException:
            await self.kill()
            raise
        return self._info

    async def _wait_for_node_file(self, within: float) -> NodeInfo:
        proc = self._proc
        assert proc is not None
        try:
            async with asyncio.timeout(within):
                while True:
                    info = self._read_node_file()
                    # A kill -9'd earlier run leaves its node.json behind: only ours counts.
                    if info is not None and info.pid == proc.pid:
                        return info
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), _POLL_S)
                    if proc.returncode is not None:
                        raise NodeStartError(
                            f"node exited with {proc.returncode} before writing node.json;"
                            f" stderr:\n{self._tail()}"
                        )
        except TimeoutError:
            raise NodeStartError(
                f"node did not write node.json within {within}s; stderr:\n{self._tail()}"
            ) from None

    def _read_node_file(self) -> NodeInfo | None:
        try:
            raw = json.loads(self.node_file.read_text())
        except (FileNotFoundError, ValueError):
            return None  # not there yet, or caught between write and rename
        return NodeInfo.from_json(raw)

    async def stop(self, sig: int = signal.SIGTERM, *, within: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` and wait for exit; returns the exit code. A hang is killed, then fails."""
        proc = self._proc
        assert proc is not None, "node was never started"
        if proc.returncode is None:
            proc.send_signal(sig)
            try:
                async with asyncio.timeout(within):
                    await proc.wait()
            except TimeoutError:
                await self.kill()
                raise AssertionError(
                    f"node ignored signal {sig} for {within}s; stderr:\n{self._tail()}"
                ) from None
        self._close_stderr()
        assert proc.returncode is not None
        return proc.returncode

    async def kill(self) -> int:
        """``kill -9`` and reap; returns the exit code (-9 unless it had exited already)."""
        proc = self._proc
        assert proc is not None, "node was never started"
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self._close_stderr()
        assert proc.returncode is not None
        return proc.returncode

    async def restart(self, *, within: float = START_TIMEOUT_S) -> NodeInfo:
        """Stop cleanly if running (SIGTERM), then start again on the same data dir."""
        if self.running:
            code = await self.stop()
            assert code == 0, f"clean stop exited with {code}; stderr:\n{self._tail()}"
        return await self.start(within=within)

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    async def aclose(self) -> None:
        """Kill and reap anything still running; idempotent."""
        if self._proc is not None:
            await self.kill()
        self._close_stderr()

    async def __aenter__(self) -> NodeProcess:
        if self._proc is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- talking to a node over real HTTP (aiohttp) -----------------------------------------------


async def http_offsets(session: aiohttp.ClientSession, node: NodeProcess) -> dict[str, int]:
    """``GET offsets`` of a running node; asserts 200."""
    async with session.get(node.events_url + "/offsets") as resp:
        assert resp.status == 200, await resp.text()
        offsets: dict[str, int] = await resp.json()
        return offsets


async def http_publish(
    session: aiohttp.ClientSession, node: NodeProcess, data: list[dict[str, Any]]
) -> int:
    """``POST publish`` with ``{"data": data}``; returns the status (201 on success)."""
    async with session.post(node.events_url + "/publish", json={"data": data}) as resp:
        await resp.read()
        return resp.status


async def http_query(
    session: aiohttp.ClientSession, node: NodeProcess, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """``POST query``; asserts 200 NDJSON and returns the event lines, parsed."""
    async with session.post(node.events_url + "/query", json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/x-ndjson", resp.content_type
        text = await resp.text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
