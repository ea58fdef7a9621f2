"""Benchmark: the Blob Service over HTTP (a real node) against plain aiohttp handlers, with curl.

Run: ``python -m bench.http_blobs [--size-mib 1024] [--runs 3] [--json FILE]``

In one run it starts
  - a real node: ``python -m swarmnode --data-dir ... --blobs-api 127.0.0.1:0 ...`` (uvloop),
  - a baseline server (this module with ``--serve-baseline``, same loop as the node) with
      ``POST /raw``: the raw request body written to a new file (``iter_any``), then fsync,
      ``GET /file``: ``web.FileResponse`` of a file of the same size,
and times, with curl as the client, alternating baseline and node each run (before each upload
a scratch file of the blob's size is written and deleted: see ``bench.pagecache``):
  - upload: ``curl -F blob=@file -F metadata=...`` to the node (multipart, streamed to disk while
    hashed, fsync, rename, catalog commit, metadata event) against ``curl -T file -X POST`` to
    ``/raw`` (``--data-binary @file`` loads the whole file into curl's memory and refuses 1 GiB);
    the input file changes in its first bytes every run, so every node upload is a new blob;
  - download: ``curl -o file`` of the blob from the node against ``/file``; both files are read
    once right before (warm page cache).
Throughput is size / curl's ``time_total``; each figure is the median of ``--runs``. The servers'
RSS is sampled from /proc/<pid>/status during each transfer: peak minus the idle value before it.
Goals: upload >= 0.7 of raw-to-disk, download >= 0.85 of FileResponse, RSS growth <= 64 MiB.
Progress goes to stderr; the JSON result to stdout (or ``--json FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.pagecache import blake3_file, make_input, recycle_memory, warm
from bench.procstats import rss_growth

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
WORK_PARENT = ROOT / "bench" / "results" / "tmp"
START_TIMEOUT = 30.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the baseline server --------------------------------------------------------------------------


def _baseline_app(directory: Path) -> web.Application:
    uploads = 0

    async def raw(request: web.Request) -> web.Response:
        # A new file per upload, kept, as the node keeps every blob: rewriting one file would
        # reuse its page-cache pages, while new pages cost a slow first touch on this VM.
        nonlocal uploads
        uploads += 1
        path = directory / f"upload-{uploads}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        total = 0
        try:
            async for chunk in request.content.iter_any():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                total += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        return web.json_response({"bytes": total}, status=201)

    async def file(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(directory / "download.bin")

    app = web.Application()
    app.router.add_post("/raw", raw)
    app.router.add_get("/file", file)
    return app


async def _serve_baseline(directory: Path) -> None:
    runner = web.AppRunner(_baseline_app(directory), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server  # the only way to learn the port 0 chose (asyncio or uvloop server)
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    (directory / "port.tmp").write_text(str(port))
    (directory / "port.tmp").replace(directory / "port")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def _run_baseline(directory: Path) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_baseline(directory))
    else:
        uvloop.run(_serve_baseline(directory))


# -- measuring ------------------------------------------------------------------------------------


def _curl(args: list[str]) -> tuple[int, float]:
    """Run curl; returns (HTTP status, time_total seconds)."""
    done = subprocess.run(
        ["curl", "-sS", "-w", "%{http_code} %{time_total}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    code, seconds = done.stdout.split()[-2:]
    return int(code), float(seconds)


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before writing {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)


def _gbps(size: int, seconds: float) -> float:
    return size / seconds / 1e9


def _median_run(runs: list[dict[str, float]], size: int) -> dict[str, Any]:
    seconds = statistics.median(r["seconds"] for r in runs)
    return {
        "seconds": seconds,
        "gb_per_s": _gbps(size, seconds),
        "rss_growth_mib": max(r["rss_growth_mib"] for r in runs),
        "rss_idle_mib": statistics.median(r["rss_idle_mib"] for r in runs),
        "runs_seconds": [r["seconds"] for r in runs],
    }


# -- the benchmark --------------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, size: int) -> None:
        self.work = work
        self.size = size
        self.src = work / "input.bin"
        self.out = work / "output.bin"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        _log(f"writing a {self.size // MIB} MiB input file")
        make_input(self.src, self.size)
        node_dir = self.work / "node"
        self.node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "swarmnode",
                "--data-dir",
                str(node_dir),
                "--events-api",
                "127.0.0.1:0",
                "--blobs-api",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
        )
        self.procs.append(self.node)
        base_dir = self.work / "baseline"
        base_dir.mkdir()
        self.baseline = subprocess.Popen(
            [sys.executable, "-m", "bench.http_blobs", "--serve-baseline", str(base_dir)],
            cwd=ROOT,
        )
        self.procs.append(self.baseline)
        _wait_for_file(node_dir / "node.json", self.node)
        _wait_for_file(base_dir / "port", self.baseline)
        info = json.loads((node_dir / "node.json").read_text())
        self.node_url = f"http://{info['blobsApi']}/api/v1/blobs"
        self.node_data = node_dir / "blobs" / "data"
        self.base_url = f"http://127.0.0.1:{(base_dir / 'port').read_text()}"
        self.base_file = base_dir / "download.bin"
        _log(f"node at {self.node_url} (pid {self.node.pid}), baseline pid {self.baseline.pid}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _vary_input(self, run: int) -> None:
        with open(self.src, "r+b") as f:
            f.write(run.to_bytes(8, "little") + os.urandom(8))

    def upload_baseline(self) -> dict[str, float]:
        recycle_memory(self.work / "recycle.bin", self.size)
        warm(self.src)
        out: dict[str, float] = {}
        with rss_growth(self.baseline.pid, out):
            code, seconds = _curl(
                ["-o", os.devnull, "-T", str(self.src), "-X", "POST", f"{self.base_url}/raw"]
            )
        assert code == 201, code
        out["seconds"] = seconds
        return out

    def upload_node(self) -> tuple[dict[str, float], str]:
        recycle_memory(self.work / "recycle.bin", self.size)
        warm(self.src)
        out: dict[str, float] = {}
        response = self.work / "response.json"
        with rss_growth(self.node.pid, out):
            code, seconds = _curl(
                [
                    "-o",
                    str(response),
                    "-F",
                    f"blob=@{self.src};type=application/octet-stream",
                    "-F",
                    'metadata={"semantics":"bench"};type=application/json',
                    self.node_url,
                ]
            )
        assert code == 201, (code, response.read_text())
        out["seconds"] = seconds
        return out, str(json.loads(response.read_text())["handle"])

    def download(self, url: str, served: Path, pid: int) -> dict[str, float]:
        # curl writes the download into new page cache: without recycled pages, whichever
        # server went first after an upload paid the first touch (0.35 against 1.4 GB/s).
        self.out.unlink(missing_ok=True)
        recycle_memory(self.work / "recycle.bin", self.size)
        warm(served)
        out: dict[str, float] = {}
        with rss_growth(pid, out):
            code, seconds = _curl(["-o", str(self.out), url])
        assert code == 200, code
        assert self.out.stat().st_size == self.size
        out["seconds"] = seconds
        return out

    def run(self, runs: int) -> dict[str, Any]:
        uploads: dict[str, list[dict[str, float]]] = {"baseline": [], "node": []}
        handle = ""
        for run in range(runs):
            self._vary_input(run)
            uploads["baseline"].append(self.upload_baseline())
            node_upload, handle = self.upload_node()
            uploads["node"].append(node_upload)
            expected = "blake3:" + blake3_file(self.src)
            assert handle == expected, (handle, expected)
            raw = uploads["baseline"][-1]["seconds"]
            _log(
                f"upload run {run + 1}/{runs}: raw {_gbps(self.size, raw):.2f} GB/s,"
                f" node {_gbps(self.size, node_upload['seconds']):.2f} GB/s"
            )
        shutil.copyfile(self.src, self.base_file)
        node_blob = self.node_data / handle.removeprefix("blake3:")
        downloads: dict[str, list[dict[str, float]]] = {"baseline": [], "node": []}
        for run in range(runs):
            base = self.download(f"{self.base_url}/file", self.base_file, self.baseline.pid)
            downloads["baseline"].append(base)
            node = self.download(f"{self.node_url}?{handle}", node_blob, self.node.pid)
            if run == 0:
                assert "blake3:" + blake3_file(self.out) == handle
            downloads["node"].append(node)
            _log(
                f"download run {run + 1}/{runs}: FileResponse"
                f" {_gbps(self.size, base['seconds']):.2f} GB/s,"
                f" node {_gbps(self.size, node['seconds']):.2f} GB/s"
            )
        result: dict[str, Any] = {"size_bytes": self.size, "runs": runs}
        for name, table in (("upload", uploads), ("download", downloads)):
            base_m = _median_run(table["baseline"], self.size)
            node_m = _median_run(table["node"], self.size)
            result[name] = {
                "baseline": base_m,
                "node": node_m,
                "ratio": base_m["seconds"] / node_m["seconds"],
            }
        result["goals"] = {
            "upload_ratio_min": 0.7,
            "download_ratio_min": 0.85,
            "rss_growth_mib_max": 64,
            "met": result["upload"]["ratio"] >= 0.7
            and result["download"]["ratio"] >= 0.85
            and result["upload"]["node"]["rss_growth_mib"] <= 64
            and result["download"]["node"]["rss_growth_mib"] <= 64,
        }
        return result


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'transfer':<10}{'server':<14}{'GB/s':>8}{'ratio':>8}{'RSS +MiB':>10}"]
    for name, base_name in (("upload", "raw-to-disk"), ("download", "FileResponse")):
        row = result[name]
        lines.append(
            f"{name:<10}{base_name:<14}{row['baseline']['gb_per_s']:>8.2f}{1.0:>8.2f}"
            f"{row['baseline']['rss_growth_mib']:>10.1f}"
        )
        lines.append(
            f"{'':<10}{'node':<14}{row['node']['gb_per_s']:>8.2f}{row['ratio']:>8.2f}"
            f"{row['node']['rss_growth_mib']:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_blobs", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="blob size (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median; default 3)")
    parser.add_argument("--json", dest="json_path", default=None, help="write the JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--serve-baseline", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline is not None:
        _run_baseline(args.serve_baseline)
        return 0
    if shutil.which("curl") is None:
        parser.error("curl is required")
    WORK_PARENT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="http_blobs-", dir=WORK_PARENT))
    bench = Bench(work, args.size_mib * MIB)
    try:
        bench.start()
        result = bench.run(args.runs)
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    _log(_table(result))
    text = json.dumps(result, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
