"""iroh-blobs (n0's BLAKE3-verified blob transfer) as a peer system: one file from node A to node
B, each node its own process with its own on-disk store, on loopback.

    python -m bench.iroh_peer --size-mib N [--runs R]

Driven through the ``iroh`` PyPI bindings (iroh-ffi). Only the 0.x bindings carry iroh-blobs
(``Iroh.persistent_with_options``, ``Iroh.blobs()``); from 1.0 they hold the QUIC endpoint
alone, so this needs ``iroh==0.35.0``, the last release with blobs.

What is timed (both nodes already started; not timed):

- **add**: A imports the file (``blobs().add_from_path``, copied into A's store, BLAKE3 and
  outboard computed) until iroh reports all done;
- **transfer**: B asks A for the hash, A dialled at its loopback address (no relay URL, no
  discovery), until B's download reports all done: the blob is complete and verified in B's
  store, which fsyncs it (``seconds`` ends here, like swarmnode's ``local: true``);
- **export**: B copies the blob out of its store to a plain file (``blobs().export``, not
  fsynced by iroh), reported beside as ``seconds_exported``.

The spans are stamped by the children on ``time.monotonic`` (one clock for every process on
Linux). B's exported copy is checked against the source's BLAKE3 (iroh's hash is the file's
BLAKE3), its store against the size, and its connection to A must be direct. The 0.35 bindings
cannot turn relays off: each node keeps trying n0's default relays (unreachable here) while the
blob moves over the direct path. Progress on stderr, figures on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from bench.figures import progress
from bench.pagecache import MIB, blake3_file, make_input, recycle_memory, warm

__all__ = ["iroh_version", "main", "run_iroh", "unusable_reason"]

WORK_PARENT = Path(__file__).resolve().parent / "results" / "tmp"
ROLES = ("serve", "fetch")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
# Loopback only; port 0 lets the OS pick, as each run starts fresh nodes.
BIND_V4 = "127.0.0.1:0"
BIND_V6 = "[::1]:0"
READ_CHUNK = 1 << 16
MIN_TIMEOUT_S = 30.0
MIN_RATE_BPS = 10 * MIB


# -- parent: two child processes and the figures ---------------------------------------------------


@functools.cache
def iroh_version() -> str | None:
    """The installed bindings' version, or None when they cannot run this bench (missing, or a
    release without the blobs API)."""
    try:
        module = importlib.import_module("iroh")
    except ImportError:
        return None
    if not hasattr(module, "Iroh"):
        return None
    return metadata.version("iroh")


def unusable_reason() -> str:
    """Why ``iroh_version`` said None, for the error a caller reports."""
    try:
        importlib.import_module("iroh")
    except ImportError as exc:
        return f"iroh cannot be imported ({exc}); pip install 'iroh==0.35.0'"
    return (
        f"iroh {metadata.version('iroh')} has no blobs API (the bindings dropped iroh-blobs "
        "after 0.35); pip install 'iroh==0.35.0'"
    )


@dataclass
class _Child:
    """One node process: JSON commands on its stdin, JSON lines back on its stdout."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    pending: bytes = field(default=b"")

    def send(self, message: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(message).encode() + b"\n")
        stdin.flush()

    def receive(self, deadline: float) -> dict[str, Any]:
        """The next line, or RuntimeError on the child's error, death or the deadline."""
        while b"\n" not in self.pending:
            self.pending += self._read(deadline)
        line, self.pending = self.pending.split(b"\n", 1)
        body: dict[str, Any] = json.loads(line)
        if "error" in body:
            raise RuntimeError(f"iroh {self.name}: {body['error']}")
        return body

    def _read(self, deadline: float) -> bytes:
        stdout = self.proc.stdout
        assert stdout is not None
        left = deadline - time.monotonic()
        ready = left > 0 and select.select([stdout], [], [], left)[0]
        if not ready:
            raise RuntimeError(f"iroh {self.name}: timed out{self._tail()}")
        chunk = os.read(stdout.fileno(), READ_CHUNK)
        if not chunk:
            self.proc.wait()
            raise RuntimeError(f"iroh {self.name} exited ({self.proc.returncode}){self._tail()}")
        return chunk

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = [s for s in self.log.read_text(errors="replace").splitlines() if s.strip()]
            if lines:
                return f": {lines[-1][:300]}"
        return ""

    def stop(self) -> None:
        """Close its stdin (it exits on EOF), then SIGTERM, then SIGKILL; always reaped."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        for signal_it in (self.proc.terminate, self.proc.kill):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                signal_it()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT_S)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def _spawn(role: str, root: Path) -> Iterator[_Child]:
    """A node process with its store in ``root/role`` (its stderr in a log beside it), stopped
    on the way out whatever happened."""
    log = root / f"{role}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.iroh_peer", role, str(root / role)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=Path(__file__).resolve().parent.parent,
            # Its own session: a Ctrl-C reaches only us, and we stop it in order.
            start_new_session=True,
        )
    child = _Child(role, proc, log)
    try:
        yield child
    finally:
        child.stop()


def run_iroh(src: Path, work: Path, timeout_s: float) -> dict[str, Any]:
    """Move ``src`` from a fresh node A to a fresh node B (module docstring); RuntimeError when
    iroh cannot run here, fails, or misses ``timeout_s`` (whole run, start-up included)."""
    if iroh_version() is None:
        raise RuntimeError(unusable_reason())
    deadline = time.monotonic() + timeout_s
    root = Path(tempfile.mkdtemp(prefix="iroh-", dir=work))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        serve, fetch = [cleanup.enter_context(_spawn(role, root)) for role in ROLES]
        result = _transfer(serve, fetch, src, root / "export" / src.name, deadline)
    return result


def _transfer(a: _Child, b: _Child, src: Path, copy: Path, deadline: float) -> dict[str, Any]:
    """Add on A, fetch and export on B, then check B's copy (outside the timed spans)."""
    a_ready = a.receive(min(deadline, time.monotonic() + START_TIMEOUT_S))
    b.receive(min(deadline, time.monotonic() + START_TIMEOUT_S))
    a.send({"add": str(src)})
    added = a.receive(deadline)
    copy.parent.mkdir()
    b.send(
        {
            "hash": added["hash"],
            "size": added["size"],
            "node_id": a_ready["node_id"],
            "addrs": a_ready["addrs"],
            "out": str(copy),
        }
    )
    fetched = b.receive(deadline)
    if fetched["conn"] != "DIRECT":
        raise RuntimeError(f"iroh fetch: connection to A was {fetched['conn']}, not direct")
    _verify(src, copy, added["hash"])
    return _figures(added, fetched)


def _verify(src: Path, copy: Path, iroh_hash: str) -> None:
    """iroh's hash must be the source's BLAKE3, and B's exported copy must hash to it."""
    if blake3_file(src) != iroh_hash:
        raise RuntimeError("iroh serve: its hash is not the source's BLAKE3")
    if not copy.is_file() or blake3_file(copy) != iroh_hash:
        raise RuntimeError("iroh fetch: B's exported copy differs from the source")


def _figures(added: dict[str, Any], fetched: dict[str, Any]) -> dict[str, Any]:
    t0 = added["t_start"]
    return {
        "seconds": fetched["t_stored"] - t0,
        "add_s": added["t_done"] - t0,
        "transfer_s": fetched["t_stored"] - fetched["t_start"],
        "seconds_exported": fetched["t_exported"] - t0,
        "export_s": fetched["t_exported"] - fetched["t_stored"],
        "bytes": added["size"],
        "verified": True,
    }


# -- children: one iroh node each ---------------------------------------------------------------


def _iroh() -> Any:
    """The bindings, untyped (generated code with partial annotations)."""
    return importlib.import_module("iroh")


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Commands:
    """The parent's commands, read by a thread; EOF (the parent is gone or done) ends the
    process at once, whatever the node is doing."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._loop = loop
        threading.Thread(target=self._read, args=(sys.stdin.buffer,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, json.loads(line))
        sys.stdout.flush()
        os._exit(0)

    async def next(self) -> dict[str, Any]:
        return await self._queue.get()


class _Progress:
    """An iroh progress callback that resolves at its terminal event, stamped on arrival."""

    def __init__(self, all_done: Any, abort: Any) -> None:
        self._all_done = all_done
        self._abort = abort
        self.done: asyncio.Future[tuple[float, Any]] = asyncio.get_running_loop().create_future()

    async def progress(self, event: Any) -> None:
        kind = event.type()
        if self.done.done():
            return
        if kind == self._all_done:
            self.done.set_result((time.monotonic(), event))
        elif kind == self._abort:
            self.done.set_exception(RuntimeError(event.as_abort().error))

    def result(self) -> tuple[float, Any]:
        """When all was done, and that event; RuntimeError if the call returned without it."""
        if not self.done.done():
            raise RuntimeError("iroh returned before reporting all done")
        return self.done.result()


async def _start_node(data: Path) -> Any:
    """A node with a persistent store in ``data``, bound to loopback, no discovery, no GC."""
    iroh = _iroh()
    iroh.iroh_ffi.uniffi_set_event_loop(asyncio.get_running_loop())
    options = iroh.NodeOptions(
        gc_interval_millis=0,
        node_discovery=iroh.NodeDiscoveryConfig.NONE,
        ipv4_addr=BIND_V4,
        ipv6_addr=BIND_V6,
    )
    return await iroh.Iroh.persistent_with_options(str(data), options)


async def _serve(node: Any, commands: _Commands) -> None:
    """A: announce the address, import the file named by the command, report its hash."""
    iroh = _iroh()
    addr = await node.net().node_addr()
    addrs = [a for a in addr.direct_addresses() if a.startswith("127.")]
    _say({"node_id": await node.net().node_id(), "addrs": addrs})
    path = (await commands.next())["add"]
    size = os.stat(path).st_size
    done = _Progress(iroh.AddProgressType.ALL_DONE, iroh.AddProgressType.ABORT)
    t_start = time.monotonic()
    await node.blobs().add_from_path(
        path, False, iroh.SetTagOption.auto(), iroh.WrapOption.no_wrap(), done
    )
    t_done, event = done.result()
    blob = event.as_all_done().hash
    await _check_stored(node, blob, size)
    _say({"hash": blob.to_hex(), "size": size, "t_start": t_start, "t_done": t_done})


async def _fetch(node: Any, commands: _Commands) -> None:
    """B: download the hash from A's direct address, confirm the store has it, export it."""
    iroh = _iroh()
    _say({"ready": True})
    order = await commands.next()
    blob = iroh.Hash.from_string(order["hash"])
    peer = iroh.PublicKey.from_string(order["node_id"])
    source = iroh.NodeAddr(peer, None, order["addrs"])
    options = iroh.BlobDownloadOptions(iroh.BlobFormat.RAW, [source], iroh.SetTagOption.auto())
    done = _Progress(iroh.DownloadProgressType.ALL_DONE, iroh.DownloadProgressType.ABORT)
    t_start = time.monotonic()
    await node.blobs().download(blob, options, done)
    t_stored, _ = done.result()
    await node.blobs().export(
        blob, order["out"], iroh.BlobExportFormat.BLOB, iroh.BlobExportMode.COPY
    )
    t_exported = time.monotonic()
    await _check_stored(node, blob, order["size"])
    info = await node.net().remote_info(peer)
    conn = "NONE" if info is None else info.conn_type.type().name
    _say({"t_start": t_start, "t_stored": t_stored, "t_exported": t_exported, "conn": conn})


async def _check_stored(node: Any, blob: Any, size: int) -> None:
    """The node's store holds the whole blob, of the file's size."""
    if not await node.blobs().has(blob):
        raise RuntimeError("the store does not hold the whole blob")
    if await node.blobs().size(blob) != size:
        raise RuntimeError("the stored blob has the wrong size")


async def _child(role: str, data: Path) -> None:
    commands = _Commands(asyncio.get_running_loop())
    node = await _start_node(data)
    await (_serve if role == "serve" else _fetch)(node, commands)
    await commands.next()  # Until the parent closes our stdin (then _Commands exits).


def _child_main(role: str, data: Path) -> int:
    try:
        asyncio.run(_child(role, data))
    except Exception as exc:  # Every failure goes to the parent, as a line.
        _say({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


# -- CLI ------------------------------------------------------------------------------------------


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.iroh_peer", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    return parser.parse_args(argv)


def _timeout(size: int) -> float:
    """Generous against the slowest plausible rate, so a stall shows as an error."""
    return MIN_TIMEOUT_S + size / MIN_RATE_BPS


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] and args[0] in ROLES:
        return _child_main(args[0], Path(args[1]))
    opts = _parse(args)
    size = opts.size_mib * MIB
    WORK_PARENT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="iroh_peer-", dir=WORK_PARENT) as tmp:
        work = Path(tmp)
        src = work / "input.bin"
        make_input(src, size)
        runs = [_measured_run(src, work, size, run, opts.runs) for run in range(opts.runs)]
    _print_summary(runs, size, iroh_version())
    return 0


def _measured_run(src: Path, work: Path, size: int, run: int, runs: int) -> dict[str, Any]:
    """Recycled page-cache memory for A's and B's copies and the export (with room for the
    outboards and databases), a warm source."""
    recycle_memory(work / "recycle.bin", 4 * size)
    warm(src)
    result = run_iroh(src, work, _timeout(size))
    progress(
        f"iroh run {run + 1}/{runs}: {result['seconds']:.3f} s end to end "
        f"(add {result['add_s']:.3f} s, transfer {result['transfer_s']:.3f} s), "
        f"{result['seconds_exported']:.3f} s with export"
    )
    return result


def _print_summary(runs: list[dict[str, Any]], size: int, version: str | None) -> None:
    print(f"iroh {version}: {size // MIB} MiB, {len(runs)} runs, median (GB/s = bytes / s / 1e9)")
    for key in ("seconds", "add_s", "transfer_s", "export_s", "seconds_exported"):
        values = [r[key] for r in runs]
        median = statistics.median(values)
        rate = size / median / 1e9 if median > 0 else float("inf")
        every = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {key:<17} {median:8.3f} s  {rate:6.2f} GB/s   [{every}]")


if __name__ == "__main__":
    sys.exit(main())
