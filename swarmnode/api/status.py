"""``GET /api/v1/node/status`` on the events port, and its readable rendering for the CLI.

The handler only serialises a snapshot the swarm driver builds (``SwarmDriver.status``): node id,
swarm address, peers (membership state, view, incarnation, addresses, last seen as Unix seconds,
replication lag = events we hold that the peer's last offset map lacked), our offsets, and
counters. ``render_status`` turns that JSON into the table ``python -m swarmnode status`` prints.

Long poll: ``?after=G`` answers once the snapshot's ``generation`` passed ``G`` (the driver acted:
a message, a timer, a connection), or after ``wait`` seconds (default 10, at most 60), so tools
and tests wait for a state change without polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol

from aiohttp import web

from swarmnode.api.common import ApiError

__all__ = ["STATUS_PATH", "StatusSource", "add_status_route", "render_status"]

STATUS_PATH: Final = "/api/v1/node/status"
# A long poll holds a request open at most this long: below common proxy/client idle timeouts.
MAX_WAIT_S: Final = 60.0
DEFAULT_WAIT_S: Final = 10.0


class StatusSource(Protocol):
    """What the status endpoint reads (``SwarmDriver``)."""

    def status(self) -> Mapping[str, Any]: ...

    async def wait_changed(self, after: int) -> None: ...


_SOURCE: Final = web.AppKey("node_status", StatusSource)


def add_status_route(app: web.Application, source: StatusSource) -> None:
    """Mount the status endpoint on ``app`` (before the app starts)."""
    app[_SOURCE] = source
    app.router.add_get(STATUS_PATH, _status)


def _number(request: web.Request, name: str, default: float | None) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number") from None


async def _status(request: web.Request) -> web.Response:
    source = request.app[_SOURCE]
    after = _number(request, "after", None)
    wait = _number(request, "wait", DEFAULT_WAIT_S)
    assert wait is not None
    if after is not None:
        try:
            async with asyncio.timeout(min(max(wait, 0.0), MAX_WAIT_S)):
                await source.wait_changed(int(after))
        except TimeoutError:
            pass  # answer with the unchanged snapshot
    return web.json_response(dict(source.status()), headers={"Cache-Control": "no-store"})


def render_status(status: Mapping[str, Any], *, now: float | None = None) -> str:
    """A readable multi-line summary of a status snapshot."""
    now = time.time() if now is None else now
    offsets: Mapping[str, int] = status.get("offsets", {})
    lines = [
        f"node    {status.get('nodeId')}",
        f"swarm   {status.get('swarm')}",
        f"events  {sum(o + 1 for o in offsets.values())} from {len(offsets)} sources",
        "",
        f"{'PEER':<16} {'STATE':<8} {'VIEW':<8} {'INC':>4} {'SEEN':>7} {'LAG':>7}  ADDRESSES",
    ]
    for p in status.get("peers", []):
        seen = p.get("lastSeen")
        lag = p.get("lag")
        lines.append(
            f"{p['nodeId']:<16} {p['state']:<8} {p.get('view') or '-':<8} "
            f"{p['incarnation']:>4} {'-' if seen is None else f'{now - seen:.1f}s':>7} "
            f"{'-' if lag is None else lag:>7}  {', '.join(p.get('addresses', []))}"
        )
    if not status.get("peers"):
        lines.append("(no peers known)")
    lines.append("")
    lines.append("offsets:")
    lines.extend(f"  {source:<16} {offset}" for source, offset in sorted(offsets.items()))
    lines.extend(_render_transfers(status))
    counters: Mapping[str, int] = status.get("counters", {})
    if counters:
        lines.append("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return "\n".join(lines)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f}"


def _render_transfers(status: Mapping[str, Any]) -> list[str]:
    """Blob downloads in flight (bytes stored of size, rate, peers) and the totals."""
    if "transfers" not in status:
        return []  # a node without blob transfer
    transfers: list[Mapping[str, Any]] = status["transfers"]
    totals: Mapping[str, Any] = status.get("transferTotals", {})
    lines = [""]
    if status.get("diskFull"):
        lines.append(f"fetching PAUSED: disk full ({status.get('diskError') or 'no space'})")
    lines.append(f"{'BLOB':<22} {'STATE':<8} {'MiB':>15} {'MiB/s':>7}  PEERS")
    for t in transfers:
        done = f"{_mib(t.get('storedBytes', 0))}/{_mib(t.get('size', 0))}"
        lines.append(
            f"{t['handle'][:21] + '…':<22} {t.get('state', '?'):<8} {done:>15} "
            f"{_mib(t.get('rateBytesPerS', 0.0)):>7}  {', '.join(t.get('peersUsed', [])) or '-'}"
        )
    if not transfers:
        lines.append("(no downloads in flight)")
    if totals:
        lines.append(
            f"blobs fetched {totals.get('completed', 0)}, "
            f"received {_mib(totals.get('bytesReceived', 0))} MiB "
            f"({_mib(totals.get('duplicateBytes', 0))} duplicate), "
            f"served {_mib(totals.get('bytesServed', 0))} MiB, "
            f"bad chunks {totals.get('badChunks', 0)}, queued {totals.get('queued', 0)}"
        )
    return lines
