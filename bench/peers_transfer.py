"""Swarmnode against real peer-to-peer systems on the same work in the same run (issue 7): one
file (1 GiB, 64 MiB with ``--quick``) from instance A to instance B, both on loopback, end to end.

    python -m bench.peers_transfer [--quick] [--size-mib N] [--runs N] [--json FILE]
                                   [--systems swarmnode,syncthing,libtorrent,iroh,floor]

What each system's time covers (instances already started and connected; not timed):

- **swarmnode**: two nodes, B ``--peers`` A. From the start of the multipart upload to A (curl,
  from the file) until B holds the blob (the wall-clock stamp of B's ``blob.fetched`` log record,
  written once its catalog says ``local: true``; durable, BLAKE3-verified). The transfer alone
  (A's 201 → B local) is reported beside it.
- **Syncthing** (``/usr/bin/syncthing``): two instances, one folder (A send-only, B receive-only),
  discovery, relays, NAT, STUN, reporting and upgrades off, the file watcher off. The file is
  hard-linked into A's folder (no copy: the upload swarmnode pays has no counterpart here); from
  ``POST /rest/db/scan`` on A (Syncthing hashes at scan time, as swarmnode hashes at upload)
  until B's ``ItemFinished`` event for the file (its timestamp); B's folder status must then show
  ``needBytes`` 0 and the file its full size. Syncthing fsyncs what it receives.
- **libtorrent** (PyPI, ``high_performance_seed`` settings, TCP only, DHT/LSD/UPnP/NAT-PMP off):
  a seeding session (A) and a downloading session (B), each its own process (hidden
  ``--libtorrent-seed`` / ``--libtorrent-fetch`` subcommands). From A being told to create the
  .torrent (hashing the file: v1 pieces, SHA-1, the cheapest kind) until B's torrent is finished
  *and* its file fsynced (so B's copy is as durable as the other two's); B dials A directly.

- **iroh-blobs** (PyPI ``iroh`` 0.35, the last bindings that include it; ``bench.iroh_peer``):
  two nodes with persistent stores, each its own process; from A's import of the file (a copy,
  BLAKE3 + outboard) until B's download reports the blob stored; B dials A's loopback address.
- **floor**: no system at all: a durable local copy (read, write, fsync), then raw TCP into a new
  file + fsync: what ingesting and then moving the file costs with no protocol, hashing or
  encryption, measured to show how much of each system's time is the machine's.

Every receiver writes to the same filesystem (this module's work dir). Before each measured run:
recycled page-cache memory and a warm source file (``bench.pagecache``, as ``bench.blob_transfer``
does); each run changes the file (new content address) and starts fresh instances; the systems'
order rotates from run to run. Every B copy is checked against the source's BLAKE3 (swarmnode's
own store checks it). A system that cannot run (missing binary or module, a failure, a timeout)
is reported as skipped with the reason. Progress on stderr, a table on stdout, ``--json FILE``
for the ``bench.figures`` report (``"skipped"`` lists what did not run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import aiohttp

from bench.blob_procs import MIB, make_input, raw_pair, recycle_memory, warm
from bench.blob_transfer import node_pair_once
from bench.figures import Goal, figure, progress, write_report
from bench.iroh_peer import iroh_version, run_iroh
from bench.iroh_peer import unusable_reason as iroh_unusable_reason
from bench.pagecache import blake3_file
from bench.swarm_procs import wait_until
from netsim.nodeproc import REPO_ROOT

WORK_PARENT = Path(__file__).resolve().parent / "results" / "tmp"
SYSTEMS = ("swarmnode", "syncthing", "libtorrent", "iroh", "floor")
GOAL = Goal("<=", 0.25, on="ratio", source="issue 7: ≥ 4× faster end to end")
GROUP = "Peer systems: one file between two local instances"
SYNCTHING = "/usr/bin/syncthing"
FOLDER_ID = "bench"
FILE_NAME = "input.bin"
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0
# A transfer's deadline: generous against the slowest plausible rate, so a stall shows as an error.
MIN_RATE_BPS = 10 * MIB
MIN_DEADLINE_S = 30.0
POLL_S = 0.05

RunFn = Callable[[Path, Path, int, int], Awaitable[dict[str, float]]]


class Unavailable(RuntimeError):
    """The system cannot run here at all (binary or module missing): skip it, do not retry."""


def _deadline(size: int) -> float:
    return max(MIN_DEADLINE_S, size / MIN_RATE_BPS)


def _verify(copy: Path, expected: str, what: str) -> None:
    if not copy.is_file():
        raise RuntimeError(f"{what}: {copy.name} missing on B")
    if blake3_file(copy) != expected:
        raise RuntimeError(f"{what}: B's copy differs from the source")


def _prepare(work: Path, src: Path, size: int) -> None:
    """Page cache as every system finds it: recycled memory for the writes (A's and B's copies,
    with room to spare as in ``bench.blob_transfer``) and the source file in cache."""
    recycle_memory(work / "recycle.bin", 3 * size)
    warm(src)


def _error(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def _free_port() -> int:
    """A loopback port free right now (Syncthing needs its ports spelled out in its config)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it lingers; always reaped."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_DEADLINE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()


# -- swarmnode ------------------------------------------------------------------------------------


async def swarmnode_once(work: Path, src: Path, size: int, run: int) -> dict[str, float]:
    """Upload to A → B holds the blob (module docstring): ``bench.blob_transfer``'s node pair,
    its upload counted in."""
    pair = await node_pair_once(work, src, size, run)
    return {
        "seconds": pair["upload_seconds"] + pair["seconds"],
        "upload_seconds": pair["upload_seconds"],
        "transfer_seconds": pair["seconds"],
    }


def swarmnode_version() -> str:
    return metadata.version("swarmnode")


# -- iroh-blobs ----------------------------------------------------------------------------------


async def iroh_once(work: Path, src: Path, size: int, run: int) -> dict[str, float]:
    """Two iroh nodes, each its own process (``bench.iroh_peer``): from A's import of the file
    until B's store holds the whole blob (BLAKE3-verified, fsynced by iroh-blobs)."""
    _prepare(work, src, size)
    result = await asyncio.to_thread(run_iroh, src, work, _deadline(size) + START_DEADLINE_S)
    return {
        "seconds": result["seconds"],
        "upload_seconds": result["add_s"],
        "transfer_seconds": result["transfer_s"],
        "seconds_exported": result["seconds_exported"],
    }


def iroh_peer_version() -> str:
    version = iroh_version()
    if version is None:
        raise Unavailable(iroh_unusable_reason())
    return version


# -- the physical floor ----------------------------------------------------------------------------


def _durable_copy(src: Path, out: Path) -> None:
    """The ingest any system pays at least: read the file, write a new one, fsync it."""
    buf = bytearray(MIB)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(out, "wb", buffering=0) as fout:
        while n := fin.readinto(buf):
            fout.write(view[:n])
        os.fsync(fout.fileno())


async def floor_once(work: Path, src: Path, size: int, run: int) -> dict[str, float]:
    """The least this work costs with no protocol at all: a durable local copy on A (what an
    upload must do), then raw TCP into a new file on B + fsync (``bench.blob_baselines``, one
    process per side), one after the other as swarmnode's upload and fetch are."""
    root = work / f"floor-run{run}"
    root.mkdir()
    try:
        _prepare(work, src, size)
        ingest = root / "ingest.bin"
        start = time.perf_counter()
        await asyncio.to_thread(_durable_copy, src, ingest)
        ingest_s = time.perf_counter() - start
        moved = await raw_pair(["recv-file", str(root / "b.bin")], ["send-file", str(ingest)])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "seconds": ingest_s + moved["seconds"],
        "upload_seconds": ingest_s,
        "transfer_seconds": moved["seconds"],
    }


def floor_version() -> str:
    return ""


# -- Syncthing ------------------------------------------------------------------------------------


def syncthing_version() -> str:
    """E.g. "1.19.2-ds1"; ``Unavailable`` when the binary is missing or does not answer."""
    if not os.access(SYNCTHING, os.X_OK):
        raise Unavailable(f"{SYNCTHING} not installed")
    try:
        out = subprocess.run(
            [SYNCTHING, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"syncthing --version failed: {exc}") from None
    words = out.split()
    return words[1].removeprefix("v") if len(words) > 1 else out.strip()


@dataclass
class Syncthing:
    """One instance: its home (config, keys, database), folder, ports and API key."""

    home: Path
    folder: Path
    gui_port: int = field(default_factory=_free_port)
    listen_port: int = field(default_factory=_free_port)
    api_key: str = field(default_factory=lambda: secrets.token_hex(16))
    device_id: str = ""
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gui_port}/rest"

    async def rest(
        self, session: aiohttp.ClientSession, method: str, path: str, **params: str
    ) -> Any:
        headers = {"X-API-Key": self.api_key}
        async with session.request(method, self.url + path, params=params, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"syncthing {method} {path}: {resp.status} {body[:200]!r}")
            return json.loads(body) if body.strip() else None


async def _generate(inst: Syncthing) -> None:
    """Keys and a default config in the instance's home; learns its device ID."""
    proc = await asyncio.create_subprocess_exec(
        SYNCTHING, "generate", "--home", str(inst.home), "--no-default-folder",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"syncthing generate failed: {out[-300:]!r}")
    device = ET.parse(inst.home / "config.xml").getroot().find("device")
    if device is None:
        raise RuntimeError("syncthing generate wrote no device")
    inst.device_id = device.attrib["id"]


_OPTIONS = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "stunKeepaliveStartS": "0",
    "urAccepted": "-1",
    "crashReportingEnabled": "false",
    "autoUpgradeIntervalH": "0",
    "startBrowser": "false",
    # Its default lowers its own CPU priority: swarmnode runs at normal priority.
    "setLowPriority": "false",
    "reconnectionIntervalS": "1",
}


def _set(parent: ET.Element, tag: str, text: str) -> None:
    child = parent.find(tag)
    if child is None:
        child = ET.SubElement(parent, tag)
    child.text = text


def _configure(inst: Syncthing, peer: Syncthing, folder_type: str) -> None:
    """Loopback only, nothing phoning home, the peer at its explicit address, one folder."""
    path = inst.home / "config.xml"
    tree = ET.parse(path)
    root = tree.getroot()
    options, gui = root.find("options"), root.find("gui")
    assert options is not None
    assert gui is not None
    for tag, text in {**_OPTIONS, "listenAddress": f"tcp://127.0.0.1:{inst.listen_port}"}.items():
        _set(options, tag, text)
    _set(gui, "address", f"127.0.0.1:{inst.gui_port}")
    _set(gui, "apikey", inst.api_key)
    device = ET.SubElement(root, "device", id=peer.device_id, name="peer", compression="metadata")
    _set(device, "address", f"tcp://127.0.0.1:{peer.listen_port}")
    folder = ET.SubElement(root, "folder", id=FOLDER_ID, label=FOLDER_ID, path=str(inst.folder))
    folder.attrib |= {"type": folder_type, "rescanIntervalS": "0", "fsWatcherEnabled": "false"}
    for device_id in (inst.device_id, peer.device_id):
        ET.SubElement(folder, "device", id=device_id)
    tree.write(path)
    inst.folder.mkdir(parents=True)
    (inst.folder / ".stfolder").mkdir()


def _log(inst: Syncthing) -> IO[bytes]:
    return open(inst.home.with_suffix(".log"), "wb")


async def _start(inst: Syncthing, session: aiohttp.ClientSession) -> None:
    env = os.environ | {"STNOUPGRADE": "1", "STNORESTART": "1", "STNODEFAULTFOLDER": "1"}
    with _log(inst) as log:
        inst.proc = await asyncio.create_subprocess_exec(
            SYNCTHING, "serve", "--home", str(inst.home), "--no-browser", "--no-restart",
            "--no-upgrade", stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
        )  # fmt: skip

    async def pong() -> bool:
        assert inst.proc is not None
        if inst.proc.returncode is not None:
            tail = inst.home.with_suffix(".log").read_text(errors="replace")[-300:]
            raise RuntimeError(f"syncthing exited with {inst.proc.returncode}: {tail}")
        with contextlib.suppress(aiohttp.ClientError):
            return bool(await inst.rest(session, "GET", "/system/ping"))
        return False

    await wait_until(pong, START_DEADLINE_S, "syncthing answers", poll=POLL_S)


@contextlib.asynccontextmanager
async def syncthing_pair(
    root: Path, session: aiohttp.ClientSession
) -> AsyncIterator[tuple[Syncthing, Syncthing]]:
    """Two configured, started and connected instances (A send-only, B receive-only), both
    stopped on exit whatever happens."""
    a = Syncthing(root / "a", root / "a-folder")
    b = Syncthing(root / "b", root / "b-folder")
    try:
        for inst in (a, b):
            await _generate(inst)
        _configure(a, b, "sendonly")
        _configure(b, a, "receiveonly")
        for inst in (a, b):
            await _start(inst, session)
        await wait_until(lambda: _ready(session, a, b), START_DEADLINE_S, "syncthing A-B ready")
        yield a, b
    finally:
        for inst in (a, b):
            if inst.proc is not None:
                await _stop(inst.proc)


async def _ready(session: aiohttp.ClientSession, a: Syncthing, b: Syncthing) -> bool:
    """Connected to each other and both folders idle (their first, empty scan done)."""
    for me, peer in ((a, b), (b, a)):
        conns = (await me.rest(session, "GET", "/system/connections"))["connections"]
        if not conns.get(peer.device_id, {}).get("connected"):
            return False
        state = await me.rest(session, "GET", "/db/status", folder=FOLDER_ID)
        if state.get("state") != "idle":
            return False
    return True


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _event_time(stamp: str) -> float:
    """Unix time of a Syncthing event (RFC 3339 with nanoseconds: cut to microseconds)."""
    return datetime.fromisoformat(_FRACTION.sub(r"\1", stamp).replace("Z", "+00:00")).timestamp()


async def _last_event(session: aiohttp.ClientSession, inst: Syncthing) -> int:
    """The ID of B's latest ItemFinished event; the first call also starts Syncthing buffering
    that kind of event for the REST API."""
    events = await inst.rest(
        session, "GET", "/events", events="ItemFinished", limit="1", timeout="0"
    )
    return int(events[-1]["id"]) if events else 0


async def _item_finished(
    session: aiohttp.ClientSession, inst: Syncthing, since: int, within: float
) -> float:
    """Long-polls B's events until the file's ``ItemFinished``; returns the event's time."""
    async with asyncio.timeout(within):
        while True:
            events = await inst.rest(
                session, "GET", "/events", events="ItemFinished", since=str(since), timeout="10"
            )
            for event in events or []:
                since = max(since, int(event["id"]))
                data = event.get("data") or {}
                if data.get("item") == FILE_NAME and data.get("folder") == FOLDER_ID:
                    if data.get("error"):
                        raise RuntimeError(f"syncthing B: {data['error']}")
                    return _event_time(event["time"])


async def _in_sync(session: aiohttp.ClientSession, inst: Syncthing, size: int) -> bool:
    state = await inst.rest(session, "GET", "/db/status", folder=FOLDER_ID)
    on_disk = inst.folder / FILE_NAME
    return (
        state.get("needBytes") == 0
        and state.get("localBytes") == size
        and state.get("state") == "idle"
        and on_disk.is_file()
        and on_disk.stat().st_size == size
    )


async def syncthing_once(work: Path, src: Path, size: int, run: int) -> dict[str, float]:
    """File hard-linked into A's folder → scan → B's ItemFinished (module docstring)."""
    root = work / f"syncthing-run{run}"
    root.mkdir()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
            syncthing_pair(root, session) as (a, b),
        ):
            since = await _last_event(session, b)
            os.link(src, a.folder / FILE_NAME)
            _prepare(work, src, size)
            wall0 = time.time()
            await a.rest(session, "POST", "/db/scan", folder=FOLDER_ID)
            scanned = time.time()
            end = await _item_finished(session, b, since, _deadline(size))
            checked = lambda: _in_sync(session, b, size)  # noqa: E731
            await wait_until(checked, _deadline(size), "syncthing B in sync", poll=POLL_S)
            in_sync = time.time()
            _verify(b.folder / FILE_NAME, blake3_file(src), "syncthing")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "seconds": end - wall0,
        "scan_seconds": scanned - wall0,
        "transfer_seconds": end - scanned,
        "status_in_sync_seconds": in_sync - wall0,
    }


# -- libtorrent -----------------------------------------------------------------------------------


def libtorrent_version() -> str:
    if importlib.util.find_spec("libtorrent") is None:
        raise Unavailable("Python module libtorrent not installed")
    out = subprocess.run(
        [sys.executable, "-c", "import libtorrent; print(libtorrent.__version__)"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise Unavailable(f"import libtorrent failed: {out.stderr.strip()[-200:]}")
    return out.stdout.strip()


class Helper:
    """A libtorrent side in its own process, spoken to in JSON lines over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def read(self, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            raw = await self.proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"libtorrent helper exited ({await self.proc.wait()})")
        body: dict[str, Any] = json.loads(raw)
        if "error" in body:
            raise RuntimeError(f"libtorrent helper: {body['error']}")
        return body

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")


@contextlib.asynccontextmanager
async def _helper(*args: str) -> AsyncIterator[Helper]:
    """``python -m bench.peers_transfer ARGS``, stopped and reaped on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.peers_transfer", *args, cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Helper(proc)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        await _stop(proc)


async def libtorrent_once(work: Path, src: Path, size: int, run: int) -> dict[str, float]:
    """Create the .torrent on A and seed → B finished and fsynced (module docstring)."""
    root = work / f"libtorrent-run{run}"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    try:
        seed_file = root / "a" / FILE_NAME
        os.link(src, seed_file)
        torrent = root / "input.torrent"
        async with (
            _helper("--libtorrent-seed", str(seed_file), str(torrent)) as seeder,
            _helper("--libtorrent-fetch", str(root / "b")) as fetcher,
        ):
            port = (await seeder.read(START_DEADLINE_S))["port"]
            await fetcher.read(START_DEADLINE_S)
            _prepare(work, src, size)
            wall0 = time.time()
            seeder.send({"go": True})
            seeding = await seeder.read(_deadline(size))
            fetcher.send({"torrent": str(torrent), "port": port, "within": _deadline(size)})
            done = await fetcher.read(_deadline(size) + 5)
        _verify(root / "b" / FILE_NAME, blake3_file(src), "libtorrent")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "seconds": done["synced"] - wall0,
        "hash_seconds": seeding["seeding"] - wall0,
        "transfer_seconds": done["synced"] - seeding["seeding"],
        "finished_seconds": done["finished"] - wall0,
    }


def _lt_session() -> Any:
    """A session tuned for throughput, loopback only, TCP only, nothing that finds peers."""
    import libtorrent as lt

    pack = lt.high_performance_seed()
    pack.update(
        {
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "alert_mask": lt.alert_category.status | lt.alert_category.error,
        }
    )
    return lt.session(pack)


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def _heard() -> dict[str, Any]:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(0)
    body: dict[str, Any] = json.loads(line)
    return body


def seed_main(file: Path, torrent: Path) -> None:
    """Hidden ``--libtorrent-seed``: on "go", hash ``file`` into ``torrent`` and seed it until
    stdin closes."""
    import libtorrent as lt

    ses = _lt_session()
    _say({"port": ses.listen_port(), "version": lt.__version__})
    _heard()
    maker = lt.create_torrent(lt.list_files(str(file)), 0, lt.create_torrent.v1_only)
    lt.set_piece_hashes(maker, str(file.parent))
    data = lt.bencode(maker.generate())
    torrent.write_bytes(data)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(data)
    params.save_path = str(file.parent)
    params.flags |= lt.torrent_flags.seed_mode  # just hashed: no second check
    ses.add_torrent(params)
    _say({"seeding": time.time()})
    sys.stdin.read()


def fetch_main(save: Path) -> None:
    """Hidden ``--libtorrent-fetch``: given a .torrent and the seeder's port, download into
    ``save`` from that peer only, fsync, report wall-clock times; idle until stdin closes."""
    import libtorrent as lt

    ses = _lt_session()
    _say({"ready": True})
    order = _heard()
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(order["torrent"])
    params.save_path = str(save)
    handle = ses.add_torrent(params)
    handle.connect_peer(("127.0.0.1", int(order["port"])))
    deadline = time.monotonic() + float(order["within"])
    while not handle.status().is_seeding:
        if time.monotonic() > deadline:
            _say({"error": f"not finished in {order['within']} s: {handle.status().progress:.3f}"})
            return
        ses.wait_for_alert(100)
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.torrent_error_alert):
                _say({"error": alert.message()})
                return
    finished = time.time()
    fd = os.open(save / params.ti.name(), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _say({"finished": finished, "synced": time.time()})
    sys.stdin.read()


# -- runs and report ------------------------------------------------------------------------------


@dataclass
class System:
    """One system under test: how to run it once, its version, what it did so far."""

    name: str
    label: str
    once: RunFn
    version: str = ""
    runs: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str = ""


def _systems(wanted: Sequence[str]) -> list[System]:
    """The systems asked for, each with its version, or skipped with the reason."""
    out: list[System] = []
    probes: dict[str, tuple[str, str, RunFn, Callable[[], str]]] = {
        "swarmnode": ("swarmnode", "two nodes", swarmnode_once, swarmnode_version),
        "syncthing": ("Syncthing", "two instances", syncthing_once, syncthing_version),
        "libtorrent": ("libtorrent", "two sessions", libtorrent_once, libtorrent_version),
        "iroh": ("iroh-blobs", "two nodes (Python bindings)", iroh_once, iroh_peer_version),
        "floor": ("physical floor", "durable copy, then raw TCP", floor_once, floor_version),
    }
    for name in wanted:
        title, what, once, version = probes[name]
        system = System(name, title, once)
        try:
            system.version = version()
        except Unavailable as exc:
            system.skipped = str(exc)
            progress(f"{name}: skipped: {exc}")
        system.label = f"{title} {system.version}".strip() + f", {what} on loopback"
        out.append(system)
    return out


def _vary(path: Path, run: int) -> None:
    """New content each run: no system may find the previous run's data."""
    with open(path, "r+b") as f:
        f.write(run.to_bytes(8, "little") + os.urandom(8))


async def _one(system: System, work: Path, src: Path, size: int, run: int, runs: int) -> None:
    try:
        async with asyncio.timeout(_deadline(size) + 2 * START_DEADLINE_S):
            result = await system.once(work, src, size, run)
    except (TimeoutError, RuntimeError, OSError, aiohttp.ClientError, AssertionError) as exc:
        system.errors.append(_error(exc))
        progress(f"  run {run + 1}/{runs}: {system.name} failed: {system.errors[-1]}")
        return
    system.runs.append(result)
    detail = ", ".join(f"{k} {v:.3f}" for k, v in result.items() if k != "seconds")
    progress(
        f"  run {run + 1}/{runs}: {system.name} {result['seconds']:.3f} s end to end"
        f" ({_gbps(size, result['seconds'])} GB/s; {detail})"
    )


async def measure(work: Path, size: int, runs: int, systems: list[System]) -> None:
    """``runs`` rounds, each system once per round, the order rotating between rounds."""
    progress(f"peers: writing a {size // MIB} MiB input file")
    src = work / "input.bin"
    make_input(src, size)
    live = [s for s in systems if not s.skipped]
    for run in range(runs):
        _vary(src, run)
        shift = run % len(live) if live else 0
        for system in live[shift:] + live[:shift]:
            await _one(system, work, src, size, run, runs)
    src.unlink()
    for system in live:
        if not system.runs:
            system.skipped = "; ".join(dict.fromkeys(system.errors))


def _size(size: int) -> str:
    return f"{size / (1 << 30):g} GiB" if size >= 1 << 30 else f"{size // MIB} MiB"


def _gbps(size: int, seconds: float) -> float:
    return round(size / seconds / 1e9, 3)


def _seconds(system: System) -> list[float]:
    return [r["seconds"] for r in system.runs]


def _figures(systems: list[System], size: int) -> list[dict[str, Any]]:
    """Per peer: swarmnode's end-to-end seconds against the peer's; per system: GB/s."""
    by_name = {s.name: s for s in systems if s.runs}
    swarm = by_name.get("swarmnode")
    params: dict[str, Any] = {"size_mib": size // MIB, "runs": len(swarm.runs) if swarm else 0}
    params["versions"] = {s.name: s.version for s in systems if s.version}
    out: list[dict[str, Any]] = []
    for peer in (s for s in systems if s.runs and s.name != "swarmnode"):
        if swarm is None:
            break
        out.append(
            figure(
                f"peers.{peer.name}", group=GROUP, unit="s", better="lower",
                name=f"{_size(size)} A→B end to end, swarmnode against {peer.label.split(',')[0]}",
                runs=_seconds(swarm), baseline=peer.label, baseline_runs=_seconds(peer),
                goal=None if peer.name == "floor" else GOAL, params=params,
                note=_NOTES[peer.name],
            )
        )  # fmt: skip
    floor = by_name.get("floor")
    for system in by_name.values():
        if system is floor:
            continue
        out.append(
            figure(
                f"peers.gbps.{system.name}", group=GROUP, unit="GB/s", better="higher",
                name=f"{_size(size)} A→B end to end, {system.label}",
                runs=[_gbps(size, s) for s in _seconds(system)],
                baseline=floor.label if floor else None,
                baseline_runs=[_gbps(size, s) for s in _seconds(floor)] if floor else None,
                params=params, note=_NOTES[system.name],
            )
        )  # fmt: skip
    return out


_NOTES = {
    "swarmnode": (
        "swarmnode: curl multipart upload to A starts → B's blob.fetched (local, durable)."
    ),
    "syncthing": (
        "Syncthing: file hard-linked into A's folder (untimed), POST /rest/db/scan on A (hashes)"
        " → B's ItemFinished event; B then in sync, needBytes 0; Syncthing fsyncs."
    ),
    "iroh": (
        "iroh: iroh 0.35 (the last Python bindings with iroh-blobs), persistent stores; A"
        " imports the file (copy, BLAKE3 + outboard) → B's download reports all done (stored,"
        " fsynced); B dials A's loopback address directly (relays unreachable, discovery off)."
        " The bindings deliver a progress callback into Python every 16 KiB, which costs the"
        " fetching process CPU that native iroh would not spend."
    ),
    "floor": (
        "Floor: a durable local copy (read, write, fsync), then raw TCP into a new file +"
        " fsync: ingesting then moving the file with no protocol, hashing or encryption."
    ),
    "libtorrent": (
        "libtorrent: create the v1 .torrent on A (hashes, SHA-1) and seed → B finished, file"
        " fsynced; TCP, high_performance_seed settings, B dials A directly."
    ),
}


def _table(systems: list[System], size: int) -> str:
    lines = [f"peers: {size // MIB} MiB from A to B on loopback, end to end (median, min-max)"]
    swarm = next((s for s in systems if s.name == "swarmnode" and s.runs), None)
    for system in systems:
        if not system.runs:
            lines.append(f"  {system.label:48} skipped: {system.skipped}")
            continue
        secs = _seconds(system)
        med = statistics.median(secs)
        parts = f"{med:7.3f} s ({min(secs):.3f}-{max(secs):.3f})  {_gbps(size, med):.3f} GB/s"
        transfer = statistics.median(r["transfer_seconds"] for r in system.runs)
        parts += f"  transfer part {transfer:.3f} s"
        if swarm is not None and system is not swarm:
            ratio = statistics.median(_seconds(swarm)) / med
            parts += f"  swarmnode/this {ratio:.3f}"
            if system.name != "floor":
                verdict = "met" if GOAL.met(0.0, ratio) else "NOT met"
                parts += f" ({GOAL.text()}: {verdict})"
        lines.append(f"  {system.label:48} {parts}")
    return "\n".join(lines)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers_transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=int, default=None, help="default 1024 (quick: 64)")
    parser.add_argument("--runs", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument(
        "--libtorrent-seed", nargs=2, metavar=("FILE", "TORRENT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--libtorrent-fetch", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size_mib = args.size_mib or (64 if args.quick else 1024)
    args.runs = args.runs or (1 if args.quick else 3)
    args.systems = [s for s in args.systems.split(",") if s]
    if unknown := set(args.systems) - set(SYSTEMS):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    return args


async def _main(args: argparse.Namespace, work: Path, systems: list[System]) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await measure(work, args.size_mib * MIB, args.runs, systems)


def _helper_main(args: argparse.Namespace) -> int:
    """The hidden libtorrent subcommands; any failure goes to the parent as an error line."""
    try:
        if args.libtorrent_seed:
            seed_main(Path(args.libtorrent_seed[0]), Path(args.libtorrent_seed[1]))
        else:
            fetch_main(Path(args.libtorrent_fetch))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole group: the parent cleans up
        return 130
    except Exception as exc:  # the parent reports it; a traceback on its stderr helps no one
        _say({"error": _error(exc)})
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.libtorrent_seed or args.libtorrent_fetch:
        return _helper_main(args)
    if shutil.which("curl") is None:
        progress("curl is required")
        return 2
    size = args.size_mib * MIB
    systems = _systems(args.systems)
    WORK_PARENT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="peers_transfer-", dir=WORK_PARENT))
    try:
        asyncio.run(_main(args, work, systems))
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("interrupted: instances stopped, work dir removed")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(_table(systems, size))
    skipped = {s.name: s.skipped for s in systems if not s.runs}
    raw = {s.name: {"runs": s.runs, "errors": s.errors} for s in systems}
    write_report(args.json, _figures(systems, size), skipped=skipped, raw=raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
