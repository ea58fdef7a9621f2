"""Raw-TCP-into-files baselines for bench.blob_transfer, each side in its own process.

    python -m bench.blob_baselines recv-file OUT          # prints {"port"}, then its result
    python -m bench.blob_baselines send-file PORT SRC
    python -m bench.blob_baselines recv-many DIR COUNT    # one file + one fsync per blob
    python -m bench.blob_baselines send-many PORT SRCDIR

What a persisted transfer costs without any protocol: ``send-file`` reads the source with 1 MiB
``readinto`` and ``sendall``s it over one loopback connection (1 MiB socket buffers);
``recv-file`` ``recv_into``s a reused 1 MiB buffer, writes it to a new file and fsyncs at the end.
``*-many`` send each blob as a 4-byte length plus bytes; the receiver writes each into its own new
file and fsyncs it before the next. Each side prints one JSON line with its CLOCK_MONOTONIC start
or end (comparable across processes on Linux) and its CPU seconds, so the parent computes
end - start without counting process start-up.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["BUFFER", "main"]

BUFFER = 1 << 20  # DESIGN.md: blocking sockets with 1 MiB buffers reach ~4.5 GB/s on loopback
_LEN = 4


def _emit(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


def _listen() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    _emit({"port": listener.getsockname()[1]})
    return listener


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    return sock


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view``; False on a clean end of stream before its first byte."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return False
            raise ConnectionError("sender closed mid-blob")
        got += n
    return True


def recv_file(out: Path) -> None:
    listener = _listen()
    sock, _ = listener.accept()
    cpu0 = time.process_time()
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    total = 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        while n := sock.recv_into(view):
            chunk = view[:n]
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]
            total += n
        os.fsync(fd)
    finally:
        os.close(fd)
        sock.close()
        listener.close()
    _emit({"end": time.monotonic(), "cpu": time.process_time() - cpu0, "bytes": total})


def send_file(port: int, src: Path) -> None:
    start = time.monotonic()
    cpu0 = time.process_time()
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    total = 0
    with _connect(port) as sock, open(src, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            sock.sendall(view[:n])
            total += n
    _emit({"start": start, "cpu": time.process_time() - cpu0, "bytes": total})


def recv_many(directory: Path, count: int) -> None:
    listener = _listen()
    sock, _ = listener.accept()
    cpu0 = time.process_time()
    header = bytearray(_LEN)
    buf = bytearray(BUFFER)
    total = 0
    try:
        for i in range(count):
            if not _recv_exact(sock, memoryview(header)):
                raise ConnectionError(f"sender stopped after {i} of {count} blobs")
            size = int.from_bytes(header, "big")
            if size > BUFFER:
                raise ValueError(f"blob of {size} bytes exceeds the {BUFFER}-byte buffer")
            body = memoryview(buf)[:size]
            _recv_exact(sock, body)
            fd = os.open(directory / f"{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                while body:
                    body = body[os.write(fd, body) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            total += size
    finally:
        sock.close()
        listener.close()
    _emit({"end": time.monotonic(), "cpu": time.process_time() - cpu0, "bytes": total})


def send_many(port: int, src: Path) -> None:
    files = sorted(src.iterdir())
    start = time.monotonic()
    cpu0 = time.process_time()
    total = 0
    with _connect(port) as sock:
        for path in files:
            data = path.read_bytes()
            sock.sendall(len(data).to_bytes(_LEN, "big") + data)
            total += len(data)
    _emit({"start": start, "cpu": time.process_time() - cpu0, "bytes": total})


def main(argv: list[str]) -> int:
    match argv:
        case ["recv-file", out]:
            recv_file(Path(out))
        case ["send-file", port, src]:
            send_file(int(port), Path(src))
        case ["recv-many", directory, count]:
            recv_many(Path(directory), int(count))
        case ["send-many", port, src]:
            send_many(int(port), Path(src))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
