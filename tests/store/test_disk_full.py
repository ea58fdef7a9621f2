"""A real full filesystem (a 2 MiB tmpfs): the upload fails cleanly and the store keeps working.

Needs root to mount; skipped otherwise (the injected-ENOSPC tests cover the logic everywhere).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmnode.store.errors import DiskFull
from tests.helpers.fake_events import FakeEventLog
from tests.helpers.tmpfs import mounted_tmpfs
from tests.store.helpers import Clock, make_service, upload


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with mounted_tmpfs(tmp_path / "mnt", "2m") as mount_point:
        yield mount_point


async def test_real_enospc(tiny_fs: Path) -> None:
    events = FakeEventLog()
    root = tiny_fs / "blobs"
    service = make_service(root, events, Clock())
    await service.start()
    try:
        small = await upload(service, b"fits")
        with pytest.raises(DiskFull):
            await upload(service, os.urandom(3 * 1024 * 1024))
        assert list((root / "tmp").iterdir()) == []
        assert [p.name for p in (root / "data").iterdir()] == [small.removeprefix("blake3:")]
        assert len(events.records) == 1
        # The space came back: the store still takes uploads.
        assert await upload(service, b"still works")
    finally:
        await service.stop()
