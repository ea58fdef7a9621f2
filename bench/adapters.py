"""Turn the reports of the benchmark modules written before the common format (``bench.figures``)
into figures and plot series, with the goals the earlier issues set.

Each adapter gets the raw JSON of every invocation of its module, in order, and returns
``(figures, series)``. The modules keep their own detailed JSON (they are also run by hand);
these functions only read it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench.figures import Goal, figure, series

__all__ = ["ADAPTERS", "Adapted"]

MIB = 1 << 20
Raw = dict[str, Any]
Adapted = tuple[list[dict[str, Any]], list[dict[str, Any]]]


def _gbps(size: int, seconds: list[float]) -> list[float]:
    return [size / s / 1e9 for s in seconds if s > 0]


def _mib(size: int) -> str:
    return f"{size // MIB} MiB" if size < 1 << 30 else f"{size / (1 << 30):g} GiB"


def _largest(raws: list[Raw], key: str = "size_bytes") -> Raw:
    return max(raws, key=lambda r: int(r[key]))


def http(raws: list[Raw]) -> Adapted:
    """``bench.http_blobs`` at several sizes: the largest gives the figures, all give the plots."""
    figures: list[dict[str, Any]] = []
    top = _largest(raws)
    size = int(top["size_bytes"])
    common = {"size_bytes": size, "client": "curl", "runs": top["runs"]}
    for kind, base_name, goal in (
        ("upload", "plain aiohttp handler, raw body → disk + fsync", 0.7),
        ("download", "plain aiohttp FileResponse", 0.85),
    ):
        row = top[kind]
        what = (
            "multipart, BLAKE3, fsync, catalog, metadata event"
            if kind == "upload"
            else "GET, streamed from the store"
        )
        figures.append(
            figure(
                f"http.{kind}",
                group="HTTP Blob Service",
                name=f"{kind} {_mib(size)} ({what})",
                unit="GB/s",
                runs=_gbps(size, row["node"]["runs_seconds"]),
                baseline=base_name,
                baseline_runs=_gbps(size, row["baseline"]["runs_seconds"]),
                goal=Goal(">=", goal, source="issue 2"),
                params=common,
            )
        )
    for kind in ("upload", "download"):
        node, base = top[kind]["node"], top[kind]["baseline"]
        figures.append(
            figure(
                f"memory.http_{kind}",
                group="Memory",
                name=f"node RSS growth during an HTTP {kind} of {_mib(size)}",
                unit="MiB",
                better="lower",
                runs=[node["rss_growth_mib"]],
                baseline=f"the plain aiohttp {kind} handler's growth",
                baseline_runs=[max(base["rss_growth_mib"], 0.1)],
                goal=Goal("<=", 64, on="value", source="issue 2: within 64 MiB of idle"),
                params={"size_bytes": size, "idle_rss_mib": round(node["rss_idle_mib"], 1)},
                note="peak over the transfer, sampled every 10 ms; max over the runs",
            )
        )
    ordered = sorted(raws, key=lambda r: int(r["size_bytes"]))
    xs = [int(r["size_bytes"]) / MIB for r in ordered]

    def line(kind: str, who: str) -> list[float]:
        return [size_of(r) / r[kind][who]["seconds"] / 1e9 for r in ordered]

    def size_of(r: Raw) -> int:
        return int(r["size_bytes"])

    plot = [
        series("throughput_vs_size", "HTTP upload (node)", xs, line("upload", "node")),
        series(
            "throughput_vs_size",
            "HTTP upload baseline (aiohttp raw → disk)",
            xs,
            line("upload", "baseline"),
            style="baseline",
        ),
        series("throughput_vs_size", "HTTP download (node)", xs, line("download", "node")),
        series(
            "throughput_vs_size",
            "HTTP download baseline (FileResponse)",
            xs,
            line("download", "baseline"),
            style="baseline",
        ),
        series(
            "rss_vs_size",
            "node, HTTP upload",
            xs,
            [r["upload"]["node"]["rss_growth_mib"] for r in ordered],
        ),
        series(
            "rss_vs_size",
            "node, HTTP download",
            xs,
            [r["download"]["node"]["rss_growth_mib"] for r in ordered],
        ),
        series(
            "rss_vs_size",
            "aiohttp raw-to-disk handler, upload",
            xs,
            [r["upload"]["baseline"]["rss_growth_mib"] for r in ordered],
            style="baseline",
        ),
    ]
    return figures, plot


def node_to_node(raws: list[Raw]) -> Adapted:
    """``bench.blob_transfer node`` at several sizes."""
    ok = [r["node"] for r in raws if r.get("node", {}).get("node")]
    if not ok:
        errors = [e for r in raws for e in r.get("node", {}).get("node_errors", [])]
        raise RuntimeError(f"node→node not measured: {'; '.join(errors) or 'no runs'}")
    top = _largest(ok)
    size = int(top["size_bytes"])
    node_runs = [r["seconds"] for r in top["node"]["runs"]]
    base_runs = [r["seconds"] for r in top["baseline"]["runs"]]
    figures = [
        figure(
            "node.transfer",
            group="Node → node",
            name=f"{_mib(size)} A's upload 201 → B holds it (verified, encrypted, fsynced)",
            unit="GB/s",
            runs=_gbps(size, node_runs),
            baseline="raw TCP into a new file + fsync (blocking sockets, a process per side)",
            baseline_runs=_gbps(size, base_runs),
            goal=Goal(">=", 0.8, source="issue 5"),
            params={
                "size_bytes": size,
                "cpu_sender_s": top["node"].get("cpu_sender_s"),
                "cpu_receiver_s": top["node"].get("cpu_receiver_s"),
                "errors": top.get("node_errors", []),
            },
        ),
        figure(
            "memory.node_fetch",
            group="Memory",
            name=f"receiving node's RSS growth while fetching {_mib(size)}",
            unit="MiB",
            better="lower",
            runs=[r["rss_growth_receiver_mib"] for r in top["node"]["runs"]],
            baseline="raw TCP receiver's growth",
            baseline_runs=[max(r["rss_growth_receiver_mib"], 0.1) for r in top["baseline"]["runs"]],
            goal=Goal("<=", 64, on="value", source="issue 2's bound, applied to fetches"),
            params={"size_bytes": size},
        ),
    ]
    ordered = sorted(ok, key=lambda r: int(r["size_bytes"]))
    xs = [int(r["size_bytes"]) / MIB for r in ordered]
    plot = [
        series(
            "throughput_vs_size",
            "node → node (node)",
            xs,
            [int(r["size_bytes"]) / r["node"]["seconds"] / 1e9 for r in ordered],
        ),
        series(
            "throughput_vs_size",
            "node → node baseline (raw TCP → file)",
            xs,
            [int(r["size_bytes"]) / r["baseline"]["seconds"] / 1e9 for r in ordered],
            style="baseline",
        ),
        series(
            "rss_vs_size",
            "node, fetching from a peer",
            xs,
            [max(x["rss_growth_receiver_mib"] for x in r["node"]["runs"]) for r in ordered],
        ),
    ]
    return figures, plot


def channel(raws: list[Raw]) -> Adapted:
    """``bench.channel``: the node's encrypted transport against raw TCP, and handshakes/s."""
    raw = raws[0]
    size = int(raw["size_bytes"])
    modes = raw["modes"]
    figures = []
    for name, label in (
        ("transport-AESGCM", "AES-256-GCM (the default where the CPU has AES)"),
        ("transport-ChaChaPoly", "ChaCha20-Poly1305"),
    ):
        if name not in modes:
            continue
        figures.append(
            figure(
                f"channel.{name}",
                group="Encrypted channel",
                name=f"{_mib(size)} one way over the node's transport, {label}",
                unit="GB/s",
                runs=modes[name]["runs"],
                baseline="raw TCP, blocking sendall/recv_into, 1 MiB buffers",
                baseline_runs=modes["raw"]["runs"],
                goal=Goal(">=", 0.5, source="issue 3"),
                params={
                    "size_bytes": size,
                    "frame_bytes": raw["frame_bytes"],
                    "handshakes_per_s_one_core": {
                        c: round(r) for c, r in raw["handshakes_per_s"].items()
                    },
                    "sender_cpu_s_per_gib": round(modes[name]["sender_cpu_s_per_gib"], 3),
                    "receiver_cpu_s_per_gib": round(modes[name]["receiver_cpu_s_per_gib"], 3),
                },
            )
        )
    return figures, []


def providers(raws: list[Raw]) -> Adapted:
    """``bench.blob_transfer providers``: three capped providers against one."""
    raw = raws[0]["providers"]
    if not raw.get("runs"):
        raise RuntimeError(raw.get("error") or "; ".join(raw.get("errors", [])) or "no runs")
    cap = raw["rate_cap_mib_s"]
    triple = [r["triple"]["rate_mib_s"] / cap for r in raw["runs"]]
    single = [r["single"]["rate_mib_s"] / cap for r in raw["runs"]]
    params = {"size_bytes": raw["size_bytes"], "cap_R_mib_s": cap}
    return [
        figure(
            "providers.rate",
            group="Multi-provider fetch",
            name=f"{_mib(raw['size_bytes'])} from 3 providers, each uplink capped at R",
            unit="× R",
            runs=triple,
            baseline="one provider capped at R, same run",
            baseline_runs=single,
            goal=Goal(">=", 2.5, on="value", source="issue 5"),
            params=params,
        ),
        figure(
            "providers.duplicates",
            group="Multi-provider fetch",
            name="duplicate bytes received from 3 providers",
            unit="% of size",
            better="lower",
            runs=[100 * r["triple"]["duplicate_fraction"] for r in raw["runs"]],
            goal=Goal("<=", 2.0, on="value", source="issue 5"),
            params=params,
        ),
    ], []


def small(raws: list[Raw]) -> Adapted:
    """``bench.blob_transfer small``: many 4 KiB blobs to a node started after the uploads."""
    raw = raws[0]["small"]
    if not raw.get("node"):
        raise RuntimeError("; ".join(raw.get("node_errors", [])) or "no runs")
    count = raw["count"]
    return [
        figure(
            "small.blobs",
            group="Many small blobs",
            name=f"{count} × {raw['blob_bytes'] // 1024} KiB blobs replicated to a fresh node",
            unit="blobs/s",
            runs=[r["blobs_per_s_from_ready"] for r in raw["node"]["runs"]],
            baseline="raw TCP, one new file + fsync per blob",
            baseline_runs=[r["blobs_per_s"] for r in raw["baseline"]["runs"]],
            goal=Goal(">=", 1000, on="value", source="issue 5"),
            params={"count": count, "from": "the node being up (store open, listening)"},
            note=f"counting the node's interpreter start: {raw['node']['blobs_per_s']:.0f}/s",
        )
    ], []


def events(raws: list[Raw]) -> Adapted:
    """``bench.events_log``, repeated: publish and query throughput against SQLite and aiohttp."""
    names = {
        "publish 1/call x64 vs raw commit/event": (
            "events.publish_concurrent",
            "publish, 1 event per call, 64 concurrent callers (group commit)",
            "raw SQLite, one durable commit per event",
        ),
        "publish 100/batch vs raw executemany": (
            "events.publish_batches",
            "publish, 100-event batches (hash chain, signature, durable commit)",
            "raw SQLite executemany, one commit per batch",
        ),
        "HTTP publish 1/request x16 vs bare 201 handler": (
            "events.http_publish",
            "HTTP publish, 1 event per request, 16 clients",
            "bare aiohttp handler answering 201",
        ),
        "HTTP query stream vs bare chunk-per-line handler": (
            "events.http_query",
            "HTTP query, streaming every event",
            "bare aiohttp handler writing pre-built lines",
        ),
    }
    figures = []
    for key, (fid, name, base) in names.items():
        rows = [r[key] for r in raws if key in r]
        if not rows:
            continue
        figures.append(
            figure(
                fid,
                group="Events",
                name=name,
                unit="events/s",
                runs=[r["ours_per_s"] for r in rows],
                baseline=base,
                baseline_runs=[r["baseline_per_s"] for r in rows],
                params={"events": rows[0]["events"]},
            )
        )
    return figures, []


def convergence(raws: list[Raw]) -> Adapted:
    """``bench.swarm`` convergence: a chain of N real nodes."""
    figures = []
    for c in raws[0]["convergence"]:
        n = c["nodes"]
        params = {"nodes": n, "events_per_round": c["events_per_round"]}
        figures += [
            figure(
                f"swarm.copies_{n}",
                group="Swarm (real processes)",
                name=f"{n} nodes: payload copies received per node per event (each round of "
                f"{c['events_per_round']:,} concurrent publishes reached every node in "
                f"{statistics.median(c['event_rounds_s']):.2f} s)",
                unit="copies",
                better="lower",
                runs=c["copies_per_node_event_rounds"],
                baseline="a perfect spanning tree (1 copy)",
                baseline_runs=[1.0],
                goal=Goal("<=", 1.3, on="value", source="issue 4"),
                params=params
                | {
                    "warmup_copies": c["warmup_copies_per_node_event"],
                    "round_s": c["event_rounds_s"],
                    "join_s": c["join_s"],
                    "max_hops": c["max_hops"],
                },
                note="after one warm-up round (every Plumtree link starts eager)",
            ),
        ]
    return figures, []


def catchup(raws: list[Raw]) -> Adapted:
    """``bench.swarm`` catch-up, repeated: a stopped node restarts and pulls what it missed."""
    rows = [r["catchup"] for r in raws]
    events = rows[0]["events"]
    goal_s = rows[0]["goal_s"]
    return [
        figure(
            "swarm.catchup",
            group="Swarm (real processes)",
            name=f"catch-up of {events:,} events by a restarted node, from its process start",
            unit="s",
            better="lower",
            runs=[r["catchup_s"] for r in rows],
            baseline="raw SQLite inserts of the same rows (WAL, synchronous=FULL)",
            baseline_runs=[s for r in rows for s in r.get("baseline_runs_s", [r["baseline_s"]])],
            goal=Goal("<=", goal_s, on="value", source="issue 4: 100,000 in ≤ 10 s"),
            params={"events": events},
            note="from the node being up: "
            + ", ".join(f"{r['catchup_after_ready_s']:.2f}" for r in rows)
            + " s",
        )
    ], []


def dissemination(raws: list[Raw]) -> Adapted:
    """``python -m netsim sim`` per N and seed: the node's own swarm state machines (membership,
    views, Plumtree) on a simulated network, warm trees measured apart from a source's first
    events; the seeds of one N are its runs."""
    by_n: dict[int, list[Raw]] = {}
    for raw in raws:
        by_n.setdefault(int(raw["nodes"]), []).append(raw)
    figures = []
    for n, sims in sorted(by_n.items()):
        measured = [s["dissemination"]["measured"] for s in sims]
        cold = [s["dissemination"].get("cold_sources", {}).get("p99") for s in sims]
        detection = [s.get("detection") or {} for s in sims]
        bound = int(sims[0]["hop_bound"])
        seeds = [s["seed"] for s in sims]
        figures += [
            figure(
                f"dissemination.hops_p99_{n}",
                group="Dissemination (simulation)",
                name=f"{n} nodes: hops for an event to reach a node, p99 (warm trees; p50 "
                f"{statistics.median(m['p50'] for m in measured):g}, max "
                f"{max(m['max'] for m in measured)})",
                unit="hops",
                better="lower",
                runs=[m["p99"] for m in measured],
                baseline="1 + ⌈log₄ N⌉",
                baseline_runs=[bound],
                goal=Goal("<=", bound, on="value", source="issue 6, set for N = 1,000"),
                params={
                    "nodes": n,
                    "seeds": seeds,
                    "events_per_seed": measured[0]["events"],
                    "first_events_of_new_sources_p99": cold,
                    "histograms": [m["histogram"] for m in measured],
                    "wall_s": [s["wall_s"] for s in sims],
                },
                note="a run per seed; a new source's first events flood along every eager link "
                "before its tree prunes",
            ),
            figure(
                f"dissemination.copies_{n}",
                group="Dissemination (simulation)",
                name=f"{n} nodes: payload copies received per node per event",
                unit="copies",
                better="lower",
                runs=[m["copies_per_node_event"] for m in measured],
                baseline="a perfect spanning tree (1 copy)",
                baseline_runs=[1.0],
                goal=Goal("<=", 1.3, on="value", source="issues 4 and 6"),
                params={
                    "nodes": n,
                    "seeds": seeds,
                    "warmup_copies": [
                        s["dissemination"]["warmup"]["copies_per_node_event"] for s in sims
                    ],
                    "crash_detected_by_all_s": [
                        d.get("all_dead_s", {}).get("max") for d in detection
                    ],
                    "false_suspicions": [d.get("false_suspicions") for d in detection],
                },
            ),
        ]
    xs = sorted(by_n)

    def median_of(key: str) -> list[float]:
        return [statistics.median(s["dissemination"]["measured"][key] for s in by_n[n]) for n in xs]

    plot = [
        series("hops_vs_n", "hops p99 (warm trees)", xs, median_of("p99")),
        series("hops_vs_n", "hops p50 (warm trees)", xs, median_of("p50")),
        series(
            "hops_vs_n",
            "1 + ⌈log₄ N⌉",
            xs,
            [int(by_n[n][0]["hop_bound"]) for n in xs],
            style="bound",
        ),
        series(
            "hops_vs_n", "payload copies per node per event", xs, median_of("copies_per_node_event")
        ),
    ]
    return figures, plot


def passthrough(raws: list[Raw]) -> Adapted:
    """Modules that already write ``bench.figures`` reports."""
    figures = [f for r in raws for f in r.get("figures", [])]
    plot = [s for r in raws for s in r.get("series", [])]
    return figures, plot


ADAPTERS: dict[str, Callable[[list[Raw]], Adapted]] = {
    "http": http,
    "node_to_node": node_to_node,
    "channel": channel,
    "providers": providers,
    "small": small,
    "events": events,
    "convergence": convergence,
    "catchup": catchup,
    "dissemination": dissemination,
    "passthrough": passthrough,
}
