"""``render_status``: what ``python -m swarmnode status`` prints, transfers included."""

from __future__ import annotations

from typing import Any

from swarmnode.api.status import render_status

HANDLE = "blake3:" + "ab" * 32


def status(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nodeId": "aaaaaaaaaaaaaaa",
        "swarm": "127.0.0.1:4001",
        "peers": [],
        "offsets": {"aaaaaaaaaaaaaaa": 4},
    }
    body.update(extra)
    return body


def test_a_download_in_flight_shows_progress_rate_and_peers() -> None:
    out = render_status(
        status(
            transfers=[
                {
                    "handle": HANDLE,
                    "size": 64 << 20,
                    "storedBytes": 16 << 20,
                    "rateBytesPerS": 8 << 20,
                    "peersUsed": ["bbbbbbbbbbbbbbb", "ccccccccccccccc"],
                    "state": "fetching",
                }
            ],
            transferTotals={"completed": 3, "bytesReceived": 5 << 20, "badChunks": 1},
            diskFull=False,
        )
    )
    row = next(line for line in out.splitlines() if line.startswith(HANDLE[:21]))
    assert "fetching" in row
    assert "16.0/64.0" in row
    assert "8.0" in row
    assert "bbbbbbbbbbbbbbb, ccccccccccccccc" in row
    assert "blobs fetched 3" in out
    assert "bad chunks 1" in out
    assert "PAUSED" not in out


def test_a_full_disk_is_shown_with_its_error() -> None:
    out = render_status(
        status(transfers=[], transferTotals={}, diskFull=True, diskError="No space left")
    )
    assert "fetching PAUSED: disk full (No space left)" in out
    assert "(no downloads in flight)" in out


def test_a_node_without_transfer_fields_renders_as_before() -> None:
    out = render_status(status())
    assert "BLOB" not in out
    assert "offsets:" in out
