"""The whole benchmark suite: which modules ``python -m bench all`` runs, at which sizes, and how.

Every module runs in its own interpreter (``python -m bench.<module> ... --json FILE``), so one
benchmark's memory, threads and event loop cannot colour the next one's figures, and a module
that fails or hangs costs its own entry, not the run. Its progress lines are relayed with the
benchmark's name and the time so far; its JSON goes through an adapter into figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bench.adapters import ADAPTERS
from bench.machine import describe, describe_commit, load_average

__all__ = ["BENCHMARKS", "Benchmark", "merge", "run_suite"]

ROOT = Path(__file__).resolve().parent.parent
WORK_PARENT = ROOT / "bench" / "results" / "tmp"
Argv = list[str]
CHANNEL_MODES = "raw,transport-AESGCM,transport-ChaChaPoly"


@dataclass(frozen=True)
class Benchmark:
    """One entry of the suite: the invocations of its module, full and quick, and its adapter."""

    name: str
    title: str
    adapter: str
    full: list[Argv]
    quick: list[Argv]
    timeout_s: float = 900.0
    quick_timeout_s: float = 120.0
    json_flag: str = "--json"  # the option the module writes its report to

    def invocations(self, quick: bool) -> list[Argv]:
        return self.quick if quick else self.full


def _sizes(argv: Argv, sizes: Sequence[tuple[int, int]], extra: Argv | None = None) -> list[Argv]:
    """One invocation per (MiB, runs); ``extra`` is added to the largest (e.g. a warm-up run)."""
    largest = max(s for s, _ in sizes)
    out = []
    for size, runs in sizes:
        more = extra if extra and size == largest else []
        out.append([*argv, "--size-mib", str(size), "--runs", str(runs), *more])
    return out


def _swarm(nodes: str, events: int, sim: str, rounds: int = 3) -> Argv:
    counts = ["--events", str(events), "--rounds", str(rounds)]
    return ["bench.swarm", "--nodes", nodes, "--sim", sim, *counts]


BENCHMARKS: list[Benchmark] = [
    Benchmark(
        "http",
        "HTTP upload and download against plain aiohttp handlers (curl), at several sizes",
        "http",
        full=_sizes(["bench.http_blobs"], [(16, 3), (64, 3), (256, 3), (1024, 7)]),
        quick=_sizes(["bench.http_blobs"], [(8, 1), (32, 1)]),
    ),
    Benchmark(
        "node_to_node",
        "Node → node transfer against raw TCP into a file, at several sizes",
        "node_to_node",
        full=_sizes(
            ["bench.blob_transfer", "node"], [(16, 3), (64, 3), (256, 3), (1024, 5)], ["--warmup"]
        ),
        quick=_sizes(["bench.blob_transfer", "node"], [(32, 1)]),
    ),
    Benchmark(
        "channel",
        "Encrypted channel against raw TCP, and handshakes per second",
        "channel",
        full=[["bench.channel", "--size-mib", "1024", "--repeat", "3", "--modes", CHANNEL_MODES]],
        quick=[["bench.channel", "--size-mib", "64", "--modes", "raw,transport-AESGCM"]],
    ),
    Benchmark(
        "providers",
        "Multi-provider fetch, every provider's uplink capped at R",
        "providers",
        full=[["bench.blob_transfer", "providers", "--size-mib", "256", "--runs", "3"]],
        quick=[["bench.blob_transfer", "providers", "--size-mib", "16", "--runs", "1"]],
    ),
    Benchmark(
        "blob_swarm",
        "A blob to all N nodes, every uplink capped at R",
        "passthrough",
        full=[["bench.blob_swarm"]],
        quick=[["bench.blob_swarm", "--quick"]],
    ),
    Benchmark(
        "small",
        "Many small blobs replicated to a fresh node",
        "small",
        full=[["bench.blob_transfer", "small", "--count", "1000", "--runs", "3"]],
        quick=[["bench.blob_transfer", "small", "--count", "200", "--runs", "1"]],
    ),
    Benchmark(
        "peers",
        "1 GiB between two local instances: swarmnode, Syncthing, libtorrent, iroh-blobs",
        "passthrough",
        full=[["bench.peers_transfer"]],
        quick=[["bench.peers_transfer", "--quick"]],
    ),
    Benchmark(
        "events",
        "Event publish and query throughput against raw SQLite and bare aiohttp",
        "events",
        full=[["bench.events_log", "--events", "20000"]] * 3,
        quick=[["bench.events_log", "--events", "2000"]],
    ),
    Benchmark(
        "latency",
        "Subscribe latency, local and across the swarm",
        "passthrough",
        full=[["bench.event_latency"]],
        quick=[["bench.event_latency", "--quick"]],
    ),
    Benchmark(
        "catchup",
        "Catch-up of a node that missed events (stopped, then restarted)",
        "catchup",
        full=[_swarm("", 100_000, "")] * 3,
        quick=[_swarm("", 10_000, "")],
    ),
    Benchmark(
        "convergence",
        "Concurrent publishes on a chain of real nodes reaching every node",
        "convergence",
        full=[_swarm("5,20", 0, "")],
        quick=[_swarm("4", 0, "", rounds=2)],
    ),
    Benchmark(
        "membership",
        "Membership: converge and detect a killed agent, swarmnode against Serf",
        "passthrough",
        full=[["bench.membership"]],
        quick=[["bench.membership", "--quick"]],
    ),
    Benchmark(
        "dissemination",
        "Dissemination hops and copies against N (simulation of the node's state machines)",
        "dissemination",
        full=[
            ["netsim", "sim", "--nodes", str(n), "--seed", str(seed)]
            for n, seeds in ((20, 3), (100, 3), (300, 2), (1000, 1))
            for seed in range(1, seeds + 1)
        ],
        quick=[["netsim", "sim", "--nodes", "20", "--seed", "1"]],
        timeout_s=2400.0,
        json_flag="--report",
    ),
]


@dataclass
class Outcome:
    """What one benchmark gave: its figures and series, or why it has none."""

    name: str
    title: str
    status: str = "ok"  # ok | failed
    seconds: float = 0.0
    error: str = ""
    figures: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    started: str = ""
    commit: str = ""
    load_before: float = 0.0
    load_after: float = 0.0
    invocations: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_suite(
    *,
    quick: bool,
    only: Sequence[str] | None = None,
    out: TextIO = sys.stderr,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmarks in order; after each, ``save`` gets the report so far."""
    chosen = [b for b in BENCHMARKS if not only or b.name in only]
    WORK_PARENT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe(WORK_PARENT),
        "benchmarks": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-all-", dir=WORK_PARENT) as tmp:
        for index, bench in enumerate(chosen, 1):
            tag = f"[{index}/{len(chosen)} {bench.name}]"
            print(f"{tag} {bench.title}", file=out, flush=True)
            outcome = _run_one(bench, quick, Path(tmp), tag, started, out)
            status = "ok" if outcome.status == "ok" else f"FAILED: {outcome.error[-300:]}"
            print(f"{tag} done in {outcome.seconds:.1f} s: {status}", file=out, flush=True)
            report["benchmarks"].append(outcome.as_json())
            report["duration_s"] = round(time.monotonic() - started, 1)
            if save is not None:
                save(report)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return report


def _run_one(
    bench: Benchmark, quick: bool, tmp: Path, tag: str, started: float, out: TextIO
) -> Outcome:
    outcome = Outcome(bench.name, bench.title, load_before=load_average())
    outcome.started = datetime.now(UTC).isoformat(timespec="seconds")
    outcome.commit = describe_commit()
    begin = time.monotonic()
    raws: list[dict[str, Any]] = []
    timeout = bench.quick_timeout_s if quick else bench.timeout_s
    try:
        for i, argv in enumerate(bench.invocations(quick)):
            path = tmp / f"{bench.name}-{i}.json"
            outcome.invocations.append("python -m " + shlex.join(argv))
            raws.append(_invoke([*argv, bench.json_flag], path, timeout, tag, started, out))
        figures, plot = ADAPTERS[bench.adapter](raws)
    except (
        RuntimeError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        subprocess.SubprocessError,
    ) as exc:
        outcome.status, outcome.error = "failed", f"{type(exc).__name__}: {exc}"
    else:
        outcome.figures, outcome.series = figures, plot
        outcome.skipped = {k: v for r in raws for k, v in r.get("skipped", {}).items()}
    outcome.seconds = round(time.monotonic() - begin, 1)
    outcome.load_after = load_average()
    return outcome


def _invoke(
    argv: Argv, path: Path, timeout: float, tag: str, started: float, out: TextIO
) -> dict[str, Any]:
    """Run one module invocation to completion, relaying its progress; return its JSON."""
    command = [sys.executable, "-m", *argv, str(path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        with _killed_after(proc, timeout) as expired:
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    tail = [*tail[-19:], line]
                    elapsed = _clock(time.monotonic() - started)
                    print(f"{tag} {elapsed} {line}", file=out, flush=True)
            code = proc.wait()
    if expired.is_set():
        raise RuntimeError(f"{argv[0]} did not finish within {timeout:.0f} s")
    if code != 0:
        raise RuntimeError(f"{argv[0]} exited with {code}: " + " | ".join(tail[-5:]))
    if not path.exists():
        raise RuntimeError(f"{argv[0]} wrote no report")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@contextlib.contextmanager
def _killed_after(proc: subprocess.Popen[str], timeout: float) -> Iterator[threading.Event]:
    """Stop the module's whole process group (its nodes too) if it overruns ``timeout``; a
    module's own SIGTERM handling stops its nodes, SIGKILL follows if it does not go."""
    expired = threading.Event()

    def stop() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, stop)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    except BaseException:
        stop()
        raise
    finally:
        timer.cancel()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def merge(earlier: dict[str, Any], rerun: dict[str, Any]) -> dict[str, Any]:
    """``earlier`` with the benchmarks of ``rerun`` put in place of their namesakes, in suite
    order: one benchmark measured again (a fix to its method, a failed step) without running
    the rest. Each entry keeps its own start time and commit; the report says which were rerun."""
    if earlier["mode"] != rerun["mode"]:
        raise ValueError(f"cannot merge a {rerun['mode']} run into a {earlier['mode']} report")
    fresh = {b["name"]: b for b in rerun["benchmarks"]}
    entries = {b["name"]: b for b in earlier["benchmarks"]} | fresh
    order = [b.name for b in BENCHMARKS if b.name in entries]
    merged = dict(earlier)
    merged["benchmarks"] = [entries[name] for name in order]
    merged["rerun"] = sorted(set(earlier.get("rerun", [])) | set(fresh))
    merged["duration_s"] = round(sum(b["seconds"] for b in merged["benchmarks"]), 1)
    return merged
