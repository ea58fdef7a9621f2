"""The CLI: ``python -m swarmnode [options]``, ``python -m swarmnode keygen``,
``python -m swarmnode status [--events-api HOST:PORT]``.

The flags are a contract other tooling depends on: keep them stable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from swarmnode.config import Config, parse_host_port, parse_peers
from swarmnode.identity import SwarmKeyError, generate_swarm_key, parse_swarm_key
from swarmnode.logs import setup_logging

log = logging.getLogger("swarmnode")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmnode",
        description="Run a swarmnode: ActyxOS 1.x Event and Blob Services, shared by a swarm.",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("swarm-data"), help="default ./swarm-data"
    )
    parser.add_argument(
        "--listen", default="0.0.0.0:4001", help="swarm address (default 0.0.0.0:4001)"
    )
    parser.add_argument("--events-api", default="127.0.0.1:4454", help="default 127.0.0.1:4454")
    parser.add_argument("--blobs-api", default="127.0.0.1:4455", help="default 127.0.0.1:4455")
    parser.add_argument("--peers", default="", help="HOST:PORT,... of nodes to join")
    parser.add_argument(
        "--swarm-key", default=None, help="HEX or @FILE (default: <data-dir>/swarm.key)"
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="default INFO"
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("keygen", help="print a new 64-hex-digit swarm key")
    status = sub.add_parser("status", help="print a running node's swarm status")
    status.add_argument(
        "--events-api",
        dest="status_events_api",
        default=None,
        help="the node's events API (default: from <data-dir>/node.json, else 127.0.0.1:4454)",
    )
    return parser


def _status(args: argparse.Namespace) -> int:
    """Fetch ``GET /api/v1/node/status`` and print it readably (exit 1 if unreachable)."""
    import json
    import urllib.error
    import urllib.request

    from swarmnode.api.status import STATUS_PATH, render_status

    where = args.status_events_api
    if where is None:
        with contextlib.suppress(OSError, ValueError):
            where = json.loads((args.data_dir / "node.json").read_text())["eventsApi"]
    where = parse_host_port(where or args.events_api)
    url = f"http://{where}{STATUS_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            status = json.load(resp)
    except (OSError, ValueError) as exc:
        print(f"swarmnode status: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    print(render_status(status))
    return 0


def config_from_args(args: argparse.Namespace) -> Config:
    """Turn parsed flags into a Config; raises ValueError with a user-facing message."""
    swarm_key = parse_swarm_key(args.swarm_key) if args.swarm_key is not None else None
    return Config(
        data_dir=args.data_dir,
        listen=parse_host_port(args.listen, default_host="0.0.0.0"),
        events_api=parse_host_port(args.events_api),
        blobs_api=parse_host_port(args.blobs_api),
        peers=parse_peers(args.peers),
        swarm_key=swarm_key,
        log_level=args.log_level,
    )


async def _run(config: Config) -> None:
    from swarmnode.node import Node  # imported late so `keygen` and `--help` stay fast

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = Node(config)
    await node.start()
    try:
        await stop.wait()
        log.info("node.stopping", extra={"reason": "signal"})
    finally:
        await node.stop()


def _run_loop(config: Config) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_run(config))
    else:
        uvloop.run(_run(config))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "keygen":
        print(generate_swarm_key())
        return 0
    if args.command == "status":
        return _status(args)
    try:
        config = config_from_args(args)
    except (ValueError, SwarmKeyError) as exc:
        parser.error(str(exc))
    setup_logging(config.log_level)
    try:
        _run_loop(config)
    except OSError as exc:
        log.error("node.failed", extra={"error": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
