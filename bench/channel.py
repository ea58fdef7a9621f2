"""Channel throughput over loopback against raw TCP in the same run, plus handshakes per second.

    python -m bench.channel [--size-mib 1024] [--frame-kib 1024] [--json FILE]

Sender and receiver run in separate processes (one core each on a 2-core machine), so each side's
cost is its own. Modes, each moving ``--size-mib`` MiB one way over one connection:

- ``raw``: blocking sockets, ``sendall``/``recv_into`` with 1 MiB buffers: the baseline.
- ``channel-<cipher>``: the sans-IO ``SecureChannel`` over the same blocking sockets: the cost of
  handshake, records and frames with no event loop in the way.
- ``transport-<cipher>``: the node's real data path, ``SwarmTransport`` (BufferedProtocol) on
  uvloop, ``send_frame`` + ``drain`` on one side, a ``PeerHandler`` counting frames on the other.

For each: GB/s (receiver's first to last byte), ratio to raw, CPU seconds per GiB on each side
(``time.process_time`` in each process). Handshakes per second: full XXpsk3 handshakes with both
ends in one process on one core (so one side alone is about twice as fast).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.channel import FrameReceived, Role, SecureChannel
from protocol.errors import ErrorCode
from protocol.noise import CipherName
from swarmnode.identity import Identity
from swarmnode.swarm.transport import PeerConnection, SwarmTransport, TransportConfig

MIB = 1 << 20
GIB = 1 << 30
SWARM_KEY = bytes(range(32))
RECV_BUFFER = MIB


@dataclass(frozen=True)
class Job:
    mode: str  # raw | channel | transport
    cipher: CipherName
    total: int
    frame: int


def _make_channel(role: Role, cipher: CipherName) -> SecureChannel:
    identity = Identity.from_private_bytes(os.urandom(32))
    return SecureChannel(
        role,
        psk=SWARM_KEY,
        static_private=X25519PrivateKey.generate(),
        identity_public=identity.public_key,
        identity_sign=identity.sign,
        ephemeral_factory=X25519PrivateKey.generate,
        ciphers=(cipher,),
    )


def _blocking_handshake(sock: socket.socket, channel: SecureChannel, view: memoryview) -> int:
    """Run the handshake on a blocking socket; returns frame bytes that arrived along with it."""
    for data in channel.initiate():
        sock.sendall(data)
    got = 0
    while not channel.handshake_complete:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed during the handshake")
        for event in channel.receive_data(view[:n]):
            if isinstance(event, FrameReceived):
                got += len(event.body)
        for reply in channel.data_to_send():
            sock.sendall(reply)
    return got


# ---- receiver side (child process)


def _receive_blocking(job: Job, listener: socket.socket) -> dict[str, float]:
    sock, _ = listener.accept()
    buffer = bytearray(RECV_BUFFER)
    view = memoryview(buffer)
    with sock:
        channel = _make_channel(Role.RESPONDER, job.cipher) if job.mode == "channel" else None
        got = _blocking_handshake(sock, channel, view) if channel else 0
        cpu0 = time.process_time()
        first = last = 0.0
        while got < job.total:
            n = sock.recv_into(view)
            if n == 0:
                raise ConnectionError("sender closed early")
            if not first:
                first = time.perf_counter()
            if channel is None:
                got += n
            else:
                for event in channel.receive_data(view[:n]):
                    if isinstance(event, FrameReceived):
                        got += len(event.body)
        last = time.perf_counter()
        cpu = time.process_time() - cpu0
        # Tell the sender we have it all.
        sock.sendall(b"k" if channel is None else b"".join(channel.send_frame(b"k")))
    return {"seconds": last - first, "cpu": cpu}


class _Counter:
    def __init__(self, total: int) -> None:
        self.total = total
        self.got = 0
        self.first = 0.0
        self.cpu0 = 0.0
        self.done = asyncio.Event()
        self.conn: PeerConnection | None = None

    def peer_connected(self, conn: PeerConnection) -> None:
        self.conn = conn
        self.cpu0 = time.process_time()

    def frame_received(self, conn: PeerConnection, body: bytes | bytearray) -> None:
        if not self.first:
            self.first = time.perf_counter()
        self.got += len(body)
        if self.got >= self.total:
            conn.send_frame(b"k")
            self.done.set()

    def peer_disconnected(self, conn: PeerConnection, code: ErrorCode | int | None) -> None:
        self.done.set()


async def _receive_transport(job: Job, port_out: Connection) -> dict[str, float]:
    counter = _Counter(job.total)
    transport = SwarmTransport(
        swarm_key=SWARM_KEY,
        identity=Identity.from_private_bytes(os.urandom(32)),
        handler=counter,
        config=TransportConfig(ciphers=(job.cipher,)),
    )
    where = await transport.listen("127.0.0.1", 0)
    port_out.send(where.port)
    await counter.done.wait()
    last = time.perf_counter()
    cpu = time.process_time() - counter.cpu0
    await transport.close()
    return {"seconds": last - counter.first, "cpu": cpu}


def _receiver(job: Job, out: Connection) -> None:
    if job.mode == "transport":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            out.send(runner.run(_receive_transport(job, out)))
        return
    listener = socket.create_server(("127.0.0.1", 0))
    out.send(listener.getsockname()[1])
    with listener:
        out.send(_receive_blocking(job, listener))


# ---- sender side (child process)


def _send_blocking(job: Job, port: int) -> dict[str, float]:
    body = os.urandom(job.frame)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        view = memoryview(bytearray(RECV_BUFFER))
        channel = _make_channel(Role.INITIATOR, job.cipher) if job.mode == "channel" else None
        if channel is not None:
            _blocking_handshake(sock, channel, view)
        cpu0 = time.process_time()
        sent = 0
        while sent < job.total:
            if channel is None:
                sock.sendall(body)
            else:
                channel.send_frames_to((body,), sock.sendall)
            sent += len(body)
        cpu = time.process_time() - cpu0
        if channel is None:
            sock.recv(1)
        else:
            while not any(
                isinstance(e, FrameReceived) for e in channel.receive_data(sock.recv(65536))
            ):
                pass
    return {"cpu": cpu}


async def _send_transport(job: Job, port: int) -> dict[str, float]:
    acked = asyncio.Event()

    class Handler:
        def peer_connected(self, conn: PeerConnection) -> None:
            pass

        def frame_received(self, conn: PeerConnection, body: bytes | bytearray) -> None:
            acked.set()

        def peer_disconnected(self, conn: PeerConnection, code: ErrorCode | int | None) -> None:
            acked.set()

    transport = SwarmTransport(
        swarm_key=SWARM_KEY,
        identity=Identity.from_private_bytes(os.urandom(32)),
        handler=Handler(),
        config=TransportConfig(ciphers=(job.cipher,)),
    )
    conn = await transport.connect("127.0.0.1", port)
    body = os.urandom(job.frame)
    cpu0 = time.process_time()
    sent = 0
    while sent < job.total:
        conn.send_frame(body)
        await conn.drain()
        sent += len(body)
    cpu = time.process_time() - cpu0
    await acked.wait()
    await transport.close()
    return {"cpu": cpu}


def _sender(job: Job, port: int, out: Connection) -> None:
    if job.mode == "transport":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            out.send(runner.run(_send_transport(job, port)))
        return
    out.send(_send_blocking(job, port))


def _recv(conn: Connection, children: list[Any]) -> Any:
    """Wait for a child's answer; fail (instead of hanging) if a child died."""
    while not conn.poll(0.2):
        for child in children:
            if child.exitcode not in (None, 0):
                for other in children:
                    if other.is_alive():
                        other.kill()
                raise RuntimeError(f"benchmark process failed (exit code {child.exitcode})")
    return conn.recv()


def run_transfer(job: Job) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    r_parent, r_child = ctx.Pipe()
    s_parent, s_child = ctx.Pipe()
    receiver = ctx.Process(target=_receiver, args=(job, r_child))
    receiver.start()
    port = _recv(r_parent, [receiver])
    sender = ctx.Process(target=_sender, args=(job, port, s_child))
    sender.start()
    received = _recv(r_parent, [receiver, sender])
    sent = _recv(s_parent, [receiver, sender])
    receiver.join()
    sender.join()
    seconds = received["seconds"]
    return {
        "gb_per_s": job.total / seconds / 1e9,
        "seconds": seconds,
        "sender_cpu_s_per_gib": sent["cpu"] * GIB / job.total,
        "receiver_cpu_s_per_gib": received["cpu"] * GIB / job.total,
    }


def handshakes_per_second(cipher: CipherName, seconds: float = 2.0) -> float:
    """Complete handshakes (both ends, one process, one core) per second."""
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        initiator = _make_channel(Role.INITIATOR, cipher)
        responder = _make_channel(Role.RESPONDER, cipher)
        to_r = b"".join(initiator.initiate())
        to_i = b"".join(responder.initiate())
        while to_r or to_i:
            if to_r:
                responder.receive_data(to_r)
                to_r = b""
                to_i += b"".join(responder.data_to_send())
            if to_i:
                initiator.receive_data(to_i)
                to_i = b""
                to_r += b"".join(initiator.data_to_send())
        assert initiator.handshake_complete
        assert responder.handshake_complete
        count += 1
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.channel", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--size-mib", type=int, default=1024, help="MiB per transfer (default 1024)"
    )
    parser.add_argument(
        "--frame-kib", type=int, default=1024, help="frame body size (default 1024)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per mode; the median is reported"
    )
    parser.add_argument(
        "--modes",
        default="raw,channel-ChaChaPoly,channel-AESGCM,transport-ChaChaPoly,transport-AESGCM",
    )
    parser.add_argument("--json", dest="json_path", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    total = args.size_mib * MIB
    frame = args.frame_kib * 1024
    total -= total % frame
    results: dict[str, Any] = {
        "size_bytes": total,
        "frame_bytes": frame,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "modes": {},
    }
    modes = [m for m in args.modes.split(",") if m]
    if "raw" not in modes:
        modes.insert(0, "raw")
    for name in modes:
        mode, _, cipher = name.partition("-")
        job = Job(
            mode=mode, cipher=cast(CipherName, cipher or "ChaChaPoly"), total=total, frame=frame
        )
        runs = []
        for i in range(args.repeat):
            print(
                f"[bench.channel] {name}: run {i + 1}/{args.repeat} ({args.size_mib} MiB)...",
                flush=True,
            )
            runs.append(run_transfer(job))
        best = sorted(runs, key=lambda r: r["gb_per_s"])[len(runs) // 2]
        results["modes"][name] = best | {"runs": [r["gb_per_s"] for r in runs]}
    raw = results["modes"]["raw"]["gb_per_s"]
    for figures in results["modes"].values():
        figures["ratio_to_raw"] = figures["gb_per_s"] / raw
    print("[bench.channel] handshakes per second (both ends, one core)...", flush=True)
    results["handshakes_per_s"] = {c: handshakes_per_second(c) for c in ("ChaChaPoly", "AESGCM")}

    print()
    print(f"{'mode':<22} {'GB/s':>7} {'x raw':>7} {'send CPU-s/GiB':>15} {'recv CPU-s/GiB':>15}")
    for name, f in results["modes"].items():
        print(
            f"{name:<22} {f['gb_per_s']:>7.2f} {f['ratio_to_raw']:>7.2f} "
            f"{f['sender_cpu_s_per_gib']:>15.3f} {f['receiver_cpu_s_per_gib']:>15.3f}"
        )
    for cipher, rate in results["handshakes_per_s"].items():
        print(f"handshakes/s ({cipher}, both ends on one core): {rate:,.0f}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"[bench.channel] wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
