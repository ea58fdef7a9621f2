"""The CLI as an operator uses it: ``python -m swarmnode`` in a real process (its flag contract)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from pathlib import Path

import pytest

from netsim.nodeproc import NodeProcess, run_cli

HEX64 = re.compile(r"[0-9a-f]{64}")
NODE_ID = re.compile(r"[a-z0-9]{1,15}")


def _port_is_closed(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    with socket.socket() as sock:
        sock.settimeout(2.0)
        return sock.connect_ex((host, int(port))) != 0


async def test_keygen_prints_a_fresh_64_hex_digit_key() -> None:
    code1, out1, _ = await run_cli("keygen")
    code2, out2, _ = await run_cli("keygen")
    assert (code1, code2) == (0, 0)
    assert HEX64.fullmatch(out1.strip()), out1
    assert HEX64.fullmatch(out2.strip()), out2
    assert out1 != out2, "keygen must draw a new key each time"


async def test_help_lists_every_flag_of_the_contract() -> None:
    code, out, _ = await run_cli("--help")
    assert code == 0
    for flag in (
        "--data-dir",
        "--listen",
        "--events-api",
        "--blobs-api",
        "--peers",
        "--swarm-key",
        "--log-level",
        "keygen",
    ):
        assert flag in out, f"{flag} missing from --help:\n{out}"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--listen", "nonsense"], ["HOST:PORT"]),
        (["--listen", "127.0.0.1:99999"], ["port"]),
        (["--events-api", "127.0.0.1:http"], ["port"]),
        (["--swarm-key", "abc"], ["swarm key", "64"]),
        (["--swarm-key", "z" * 64], ["hex"]),
        (["--peers", "10.0.0.1"], ["HOST:PORT"]),
        (["--peers", "127.0.0.1:4001,127.0.0.1:x"], ["port"]),
        (["--peers", "127.0.0.1:0"], ["port"]),
        (["--log-level", "LOUD"], ["log-level"]),
        (["--no-such-flag"], ["unrecognized"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
async def test_bad_flags_exit_2_with_a_clear_error_and_touch_nothing(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    data_dir = tmp_path / "data"
    code, out, err = await run_cli("--data-dir", str(data_dir), *args)
    assert code == 2, (out, err)
    assert "error:" in err
    for word in words:
        assert word.lower() in err.lower(), err
    assert not data_dir.exists(), "a rejected command line must not create a data dir"


async def test_unreadable_swarm_key_file_exits_2(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    missing = tmp_path / "no-such.key"
    code, _, err = await run_cli("--data-dir", str(data_dir), "--swarm-key", f"@{missing}")
    assert code == 2
    assert "error:" in err
    assert str(missing) in err, err
    # A directory is not a key file either.
    code, _, err = await run_cli("--data-dir", str(data_dir), "--swarm-key", f"@{tmp_path}")
    assert code == 2
    assert "swarm key" in err.lower(), err
    # Nor is a file of the wrong content.
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    code, _, err = await run_cli("--data-dir", str(data_dir), "--swarm-key", f"@{bad}")
    assert code == 2
    assert "swarm key" in err.lower(), err
    assert not data_dir.exists()


async def test_identity_and_node_id_are_stable_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with NodeProcess(data_dir) as node:
        first = node.info
        assert NODE_ID.fullmatch(first.node_id), first.node_id
        identity = (data_dir / "identity.key").read_bytes()
        assert len(identity) == 32
        mode = (data_dir / "identity.key").stat().st_mode
        assert mode & 0o077 == 0, "identity.key must be private"
        second = await node.restart()
        assert second.pid != first.pid
        assert second.node_id == first.node_id
        assert (data_dir / "identity.key").read_bytes() == identity
    # A different data dir is a different node.
    async with NodeProcess(tmp_path / "other") as other:
        assert other.info.node_id != first.node_id


async def test_swarm_key_is_created_once_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with NodeProcess(data_dir) as node:
        key_file = data_dir / "swarm.key"
        text = key_file.read_text().strip()
        assert HEX64.fullmatch(text), text
        created = [r for r in node.log_records() if r.get("event") == "swarm_key.created"]
        assert len(created) == 1, node.stderr_text()
        # The log tells the operator how to give other nodes the same key.
        assert "--swarm-key" in str(created[0]), created[0]
        await node.restart()
        assert key_file.read_text().strip() == text
        assert not [r for r in node.log_records() if r.get("event") == "swarm_key.created"]


async def test_swarm_key_given_as_hex_or_file_is_used_instead_of_creating_one(
    tmp_path: Path,
) -> None:
    code, key, _ = await run_cli("keygen")
    assert code == 0
    key = key.strip()
    key_file = tmp_path / "swarm.key"
    key_file.write_text(key + "\n")
    for i, flag in enumerate((key, f"@{key_file}")):
        data_dir = tmp_path / f"data{i}"
        async with NodeProcess(data_dir, extra_args=["--swarm-key", flag]) as node:
            assert NODE_ID.fullmatch(node.info.node_id)
            assert not (data_dir / "swarm.key").exists(), "a given key must not be replaced"
            assert not [r for r in node.log_records() if r.get("event") == "swarm_key.created"]


async def test_peers_are_parsed_and_reported(tmp_path: Path) -> None:
    peers = "127.0.0.1:4101, 127.0.0.2:4102,[::1]:4103"
    async with NodeProcess(tmp_path / "data", extra_args=["--peers", peers]) as node:
        started = [r for r in node.log_records() if r.get("event") == "node.started"]
        assert len(started) == 1, node.stderr_text()
        assert started[0]["peers"] == ["127.0.0.1:4101", "127.0.0.2:4102", "[::1]:4103"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_shuts_down_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    async with NodeProcess(tmp_path / "data") as node:
        info = node.info
        assert node.node_file.exists()
        assert not await asyncio.to_thread(_port_is_closed, info.events_api)
        code = await node.stop(sig)
        assert code == 0, node.stderr_text()
        assert not node.node_file.exists(), "node.json must be removed on clean shutdown"
        assert await asyncio.to_thread(_port_is_closed, info.events_api)
        assert await asyncio.to_thread(_port_is_closed, info.blobs_api)
        events = [r.get("event") for r in node.log_records()]
        assert "node.stopped" in events, node.stderr_text()
        assert not [r for r in node.log_records() if r.get("level") == "ERROR"], node.stderr_text()


async def test_logs_are_json_lines_on_stderr(tmp_path: Path) -> None:
    async with NodeProcess(tmp_path / "data") as node:
        await node.stop()
        lines = [line for line in node.stderr_text().splitlines() if line.strip()]
        assert lines
        assert len(node.log_records()) == len(lines), node.stderr_text()
        for record in node.log_records():
            assert {"ts", "level", "logger", "event"} <= record.keys(), record
