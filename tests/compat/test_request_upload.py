"""The ActyxOS guide's blob upload with npm ``request`` multipart, and its GET, on a live node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest

from netsim.nodeproc import NodeProcess
from tests.compat.conftest import run_js
from tests.helpers.blobfiles import PIECE, write_random_file

pytestmark = pytest.mark.compat


def _handle_of(path: Path) -> str:
    hasher = blake3.blake3()
    hasher.update_mmap(path)
    return "blake3:" + hasher.hexdigest()


async def _metadata(node: NodeProcess, handle: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{node.blobs_url}?metadata-{handle}") as resp,
    ):
        assert resp.status == 200, await resp.text()
        meta: dict[str, Any] = await resp.json()
        return meta


@pytest.mark.parametrize(
    ("style", "filename", "content_type", "size"),
    [
        # fs.createReadStream: form-data takes filename and type from the path (.jpg → image/jpeg).
        ("stream", "photo.jpg", "image/jpeg", 5 * PIECE + 12345),
        # {value, options: {filename, contentType}}
        ("value", "notes.txt", "text/plain", 777),
    ],
)
async def test_request_multipart_upload_then_get(
    js_dir: Path,
    node: NodeProcess,
    tmp_path: Path,
    style: str,
    filename: str,
    content_type: str,
    size: int,
) -> None:
    path = tmp_path / filename
    expected = write_random_file(path, size)
    out_path = tmp_path / ("copy-" + filename)
    retention = {"policy": "keepForever"}
    config = {
        "blobsUrl": node.blobs_url,
        "path": str(path),
        "style": style,
        "filename": filename,
        "contentType": content_type,
        "semantics": "com.example.photos",
        "retentionPolicy": retention,
        "outPath": str(out_path),
    }
    result = await run_js(js_dir, "upload.js", json.dumps(config))

    upload = result["upload"]
    assert upload["status"] == 201, upload
    assert upload["contentType"].startswith("application/json")
    assert json.loads(upload["body"]) == {"handle": expected}

    download = result["download"]
    assert download["status"] == 200
    assert download["etag"] == f'"{expected}"'
    assert int(download["contentLength"]) == size
    assert download["contentType"].split(";")[0] == content_type
    assert out_path.stat().st_size == size
    assert _handle_of(out_path) == expected, "the GET must return the uploaded bytes exactly"

    meta = await _metadata(node, expected)
    assert meta["handle"] == expected
    assert meta["bytes"] == size
    assert meta["filename"] == filename
    assert meta["contentType"].split(";")[0] == content_type
    assert meta["semantics"] == "com.example.photos"
    assert meta["retentionPolicy"] == retention
    assert meta["source"] == node.info.node_id
    assert meta["local"] is True
