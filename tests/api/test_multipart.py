"""multipart/form-data reader: sans-IO core round trips and totality, header parsing, the aiohttp
driver on a hand-fed StreamReader, and real HTTP uploads (aiohttp client, curl)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import io
import itertools
import json
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import FormData, StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import assume, example, given
from hypothesis import strategies as st

from swarmnode.api.multipart import (
    COALESCE_BYTES,
    MultipartError,
    MultipartReader,
    boundary_from_content_type,
)
from swarmnode.api.multipart_core import (
    MAX_EPILOGUE_BYTES,
    MAX_PREAMBLE_BYTES,
    Epilogue,
    Event,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
)
from swarmnode.api.multipart_headers import parse_part_headers

BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "


# --- reference encoder and decoder ----------------------------------------------------------


@dataclass(frozen=True)
class RefPart:
    name: str
    filename: str | None
    content_type: str | None
    body: bytes


def _quote(text: str) -> str:
    """Quoted-string as browsers/curl would send it: backslash-escape, HTML-escape CR/LF."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r", "%0D").replace("\n", "%0A") + '"'


def encode(
    parts: Sequence[RefPart],
    boundary: bytes,
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"\r\n",
    padding: bytes = b"",
    extended_filename: bool = False,
) -> bytes:
    """A plain RFC 2046/7578 encoder, written independently of the parser under test."""
    out = [preamble + b"\r\n" if preamble else b""]
    for part in parts:
        out.append(b"--" + boundary + padding + b"\r\n")
        disposition = "form-data; name=" + _quote(part.name)
        if part.filename is not None:
            if extended_filename:
                disposition += "; filename=\"fallback\"; filename*=UTF-8''" + quote(
                    part.filename, safe=""
                )
            else:
                disposition += "; filename=" + _quote(part.filename)
        out.append(b"Content-Disposition: " + disposition.encode() + b"\r\n")
        if part.content_type is not None:
            out.append(b"Content-Type: " + part.content_type.encode() + b"\r\n")
        out.append(b"\r\n" + part.body + b"\r\n")
    out.append(b"--" + boundary + b"--" + epilogue)
    return b"".join(out)


def decode(pieces: Sequence[bytes | bytearray], boundary: bytes, **limits: int) -> list[RefPart]:
    """Feed pieces through the core; rebuild the parts (raises MultipartError)."""
    parser = MultipartParser(boundary, **limits)
    events: list[Event] = []
    for piece in pieces:
        # PartData views are only valid until the next feed: copy them now.
        events.extend(_copied(parser.feed(piece)))
    events.extend(parser.feed_eof())
    return _collect(events, complete=True)


def _copied(events: Sequence[Event]) -> list[Event]:
    return [PartData(memoryview(bytes(e.data))) if isinstance(e, PartData) else e for e in events]


def _collect(events: Sequence[Event], *, complete: bool) -> list[RefPart]:
    parts: list[RefPart] = []
    current: tuple[PartStart, bytearray] | None = None
    closed = False
    for event in events:
        assert not closed, "events after the closing delimiter"
        if isinstance(event, PartStart):
            assert current is None
            current = (event, bytearray())
        elif isinstance(event, PartData):
            assert current is not None
            assert len(event.data) > 0
            current[1].extend(event.data)
        elif isinstance(event, PartEnd):
            assert current is not None
            info = current[0].info
            parts.append(RefPart(info.name, info.filename, info.content_type, bytes(current[1])))
            current = None
        else:
            assert isinstance(event, Epilogue)
            assert current is None
            closed = True
    if complete:
        assert closed
    return parts


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- strategies ---------------------------------------------------------------------------


boundaries = (
    st.text(alphabet=BCHARS, min_size=1, max_size=70)
    .filter(lambda b: not b.endswith(" "))
    .map(lambda b: b.encode("ascii"))
)

header_text = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cs", "Cc")),
        st.sampled_from('"\\\r\n\t;=%'),
    ),
    max_size=20,
).filter(lambda t: not any(s in t.upper() for s in ("%22", "%0D", "%0A")))

content_types = st.none() | st.sampled_from(
    ["application/octet-stream", "text/plain; charset=utf-8", "application/json", "image/png"]
)


@st.composite
def bodies(draw: st.DrawFn, boundary: bytes) -> bytes:
    """Bodies rich in near-delimiter sequences: CR, LF, dashes and boundary prefixes."""
    tokens = st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", b"\r\n-", b"\n--"]),
        st.integers(0, len(boundary) - 1).map(lambda k: b"\r\n--" + boundary[:k]),
        st.integers(0, len(boundary)).map(lambda k: b"--" + boundary[:k]),
        st.just(b"\n--" + boundary),  # a bare-LF "delimiter" is data
    )
    return b"".join(draw(st.lists(tokens, max_size=12)))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[RefPart], bytes]:
    boundary = draw(boundaries)
    parts = draw(
        st.lists(
            st.builds(
                RefPart,
                name=header_text,
                filename=st.none() | header_text,
                content_type=content_types,
                body=bodies(boundary),
            ),
            max_size=5,
        )
    )
    delimiter = b"\r\n--" + boundary
    for part in parts:
        assume(delimiter not in part.body)
    preamble = draw(st.sampled_from([b"", b"This is a preamble.", b"x\r\n--"]))
    assume(delimiter not in b"\r\n" + preamble)
    epilogue = draw(st.sampled_from([b"", b"\r\n", b"\r\nepilogue\r\n--" + boundary + b"--"]))
    padding = draw(st.sampled_from([b"", b" ", b" \t "]))
    data = encode(parts, boundary, preamble=preamble, epilogue=epilogue, padding=padding)
    return data, parts, boundary


# --- the sans-IO core ---------------------------------------------------------------------


@given(streams(), st.lists(st.integers(min_value=0), max_size=20))
def test_round_trip_any_split(stream: tuple[bytes, list[RefPart], bytes], cuts: list[int]) -> None:
    data, parts, boundary = stream
    assert decode(split(data, cuts), boundary) == parts


@given(streams())
def test_round_trip_one_byte_pieces(stream: tuple[bytes, list[RefPart], bytes]) -> None:
    data, parts, boundary = stream
    assert decode([data[i : i + 1] for i in range(len(data))], boundary) == parts


@given(streams())
def test_round_trip_bytearray_input(stream: tuple[bytes, list[RefPart], bytes]) -> None:
    data, parts, boundary = stream
    assert decode([bytearray(data)], boundary) == parts


@given(
    st.lists(
        st.builds(
            RefPart,
            name=header_text,
            filename=header_text,
            content_type=content_types,
            body=st.binary(max_size=50),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_rfc5987_filenames(parts: list[RefPart]) -> None:
    boundary = b"xyz-boundary-0123456789"
    assume(all(b"\r\n--" + boundary not in p.body for p in parts))
    data = encode(parts, boundary, extended_filename=True)
    assert decode([data], boundary) == parts


def test_data_is_a_view_of_the_fed_buffer() -> None:
    body = bytes(range(256)) * 4096
    data = encode([RefPart("blob", "b.bin", None, body)], b"zz")
    parser = MultipartParser(b"zz")
    views = [e.data for e in parser.feed(data) if isinstance(e, PartData)]
    assert len(views) == 1
    assert views[0].obj is data  # no copy of the body
    assert views[0] == body


def test_holdback_is_bounded_by_the_delimiter() -> None:
    """A piece ending in a delimiter prefix releases all but that prefix."""
    boundary = b"0123456789"
    head = encode([RefPart("a", None, None, b"")], boundary).split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    parser = MultipartParser(boundary)
    assert [type(e) for e in parser.feed(head)] == [PartStart]
    (data,) = parser.feed(b"x" * 100 + b"\r\n--01234")
    assert isinstance(data, PartData)
    assert bytes(data.data) == b"x" * 100
    events = parser.feed(b"5678X")  # not the delimiter after all: the prefix is data
    assert b"".join(bytes(e.data) for e in events if isinstance(e, PartData)) == (
        b"\r\n--012345678X"
    )
    assert [type(e) for e in parser.feed(b"\r\n--0123456789--")] == [PartEnd, Epilogue]
    assert parser.feed_eof() == []


SMALL = encode(
    [
        RefPart("blob", "f.txt", "text/plain", b"ab\r\n-\r\ncd"),
        RefPart("metadata", None, None, b"{}"),
    ],
    b"bnd",
)


@pytest.mark.parametrize("cut", range(len(SMALL) + 1))
def test_truncated_at_every_offset(cut: int) -> None:
    """A truncated stream fails at EOF; parts completed before the cut are exactly right."""
    closed_at = SMALL.index(b"\r\n--bnd--") + len(b"\r\n--bnd--")
    expected = [
        RefPart("blob", "f.txt", "text/plain", b"ab\r\n-\r\ncd"),
        RefPart("metadata", None, None, b"{}"),
    ]
    parser = MultipartParser(b"bnd")
    events = [
        PartData(memoryview(bytes(e.data))) if isinstance(e, PartData) else e
        for e in parser.feed(SMALL[:cut])
    ]
    completed = _collect(events, complete=False)
    assert completed == expected[: len(completed)]
    if cut >= closed_at:
        assert parser.feed_eof() == []
        assert completed == expected
    else:
        with pytest.raises(MultipartError):
            parser.feed_eof()


@given(st.binary(max_size=300), boundaries, st.lists(st.integers(min_value=0), max_size=8))
@example(b"--a\r\n\r\n", b"a", [])
@example(b"--a\r\nContent-Disposition: form-data\r\n\r\n", b"a", [3])
def test_core_is_total(data: bytes, boundary: bytes, cuts: list[int]) -> None:
    """Any input gives events or MultipartError, never another exception."""
    parser = MultipartParser(boundary, max_header_bytes=64, max_parts=3)
    try:
        for piece in split(data, cuts):
            parser.feed(piece)
        parser.feed_eof()
    except MultipartError:
        pass


@given(streams(), st.data())
def test_mutated_streams_are_total(
    stream: tuple[bytes, list[RefPart], bytes], draw: st.DataObject
) -> None:
    data, _parts, boundary = stream
    mutable = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        if not mutable:
            break
        at = draw.draw(st.integers(0, len(mutable) - 1))
        op = draw.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            mutable[at] ^= draw.draw(st.integers(1, 255))
        elif op == "insert":
            mutable[at:at] = draw.draw(st.sampled_from([b"\r", b"\n", b"-", b"\r\n--", b":"]))
        else:
            del mutable[at]
    with contextlib.suppress(MultipartError):
        decode([bytes(mutable)], boundary)


def _one(headers: bytes, body: bytes = b"x", boundary: bytes = b"b") -> bytes:
    return b"--" + boundary + b"\r\n" + headers + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n"


CD = b'Content-Disposition: form-data; name="f"\r\n'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no boundary"),
        (b"garbage without any delimiter", "no boundary"),
        (_one(b""), "no Content-Disposition"),
        (_one(b"Content-Type: text/plain\r\n"), "no Content-Disposition"),
        (_one(b"Content-Disposition: attachment; name=f\r\n"), "must be form-data"),
        (_one(b"Content-Disposition: form-data; filename=a\r\n"), "has no name"),
        (_one(b"Content-Disposition: form-data; name=a; name=b\r\n"), "repeats the name"),
        (_one(b'Content-Disposition: form-data; name="a\r\n'), "unterminated"),
        (_one(b'Content-Disposition: form-data; name="a"x\r\n'), "after quoted"),
        (_one(b"Content-Disposition: form-data; name\r\n"), "without '='"),
        (_one(CD + b"no colon here\r\n"), "expected 'Name: value'"),
        (_one(CD + b" folded: line\r\n"), "folded"),
        (_one(CD + b"X-A: a\rb\r\n"), "control characters"),
        (_one(CD + b"X-A\x00: a\r\n"), "header name"),
        (_one(CD + b"Content-Type: a\r\nContent-Type: b\r\n"), "repeats the Content-Type"),
        (_one(CD + b"Content-Disposition: form-data; name=g\r\n"), "repeats the Content-Disp"),
        (
            _one(b"Content-Disposition: form-data; name=a; filename*=KOI8-R''x\r\n"),
            "filename*",
        ),
        (_one(b"Content-Disposition: form-data; name=a; filename*=UTF-8''%FF\r\n"), "UTF-8"),
        (b"--bX\r\n" + CD + b"\r\nx\r\n--b--", "boundary line"),
        (b"--b \t x\r\n" + CD + b"\r\nx\r\n--b--", "boundary line"),
        (b"--b-\r\n" + CD + b"\r\nx\r\n--b--", "boundary line"),
        (b"--b\r\n" + CD + b"\r\nx\r\n--bX\r\n", "boundary line"),
        (b"--b\r\n" + CD + b"\r\nx\n--b--\r\n", "before the closing boundary"),
        (b"--b\r\n" + CD + b"\r\nx\r\n--b\r\n", "before the closing boundary"),
        (b"--b\r\n" + CD, "before the closing boundary"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        with pytest.raises(MultipartError, match=message):
            decode(pieces, b"b")


def test_failed_parser_stays_failed() -> None:
    parser = MultipartParser(b"b")
    with pytest.raises(MultipartError):
        parser.feed(b"--bX")
    with pytest.raises(MultipartError, match="already failed"):
        parser.feed(b"--b--")
    with pytest.raises(MultipartError, match="already failed"):
        parser.feed_eof()


@pytest.mark.parametrize("limit", [53, 100, 1000])
def test_header_block_limit(limit: int) -> None:
    """A header block of exactly ``limit`` bytes passes; one more byte fails, in any split."""
    base = CD + b"X-Pad: \r\n\r\n"
    pad = limit - len(base)
    assert pad >= 0
    at_limit = b"--b\r\n" + CD + b"X-Pad: " + b"p" * pad + b"\r\n\r\nx\r\n--b--"
    assert decode([at_limit], b"b", max_header_bytes=limit)[0].body == b"x"
    over = at_limit.replace(b"X-Pad: ", b"X-Pad: p")
    for pieces in ([over], split(over, [7, 20])):
        with pytest.raises(MultipartError, match="headers longer than"):
            decode(pieces, b"b", max_header_bytes=limit)


def test_endless_header_fails_without_buffering_it() -> None:
    parser = MultipartParser(b"b", max_header_bytes=1024)
    parser.feed(b"--b\r\nX-Endless: ")
    fed = 0
    with pytest.raises(MultipartError, match="headers longer than"):  # noqa: PT012
        for _ in range(100):
            parser.feed(b"a" * 100)
            fed += 100
    assert fed <= 1024


def test_part_count_limit() -> None:
    parts = [RefPart(f"f{i}", None, None, b"v") for i in range(3)]
    assert decode([encode(parts, b"b")], b"b", max_parts=3) == parts
    with pytest.raises(MultipartError, match="too many parts"):
        decode([encode([*parts, parts[0]], b"b")], b"b", max_parts=3)


def test_preamble_and_epilogue_are_ignored_but_capped() -> None:
    part = RefPart("a", None, None, b"v")
    ok = encode([part], b"b", preamble=b"p" * 1000, epilogue=b"\r\n" + b"e" * 1000)
    assert decode([ok], b"b") == [part]
    with pytest.raises(MultipartError, match="preamble longer"):
        decode([encode([part], b"b", preamble=b"p" * (MAX_PREAMBLE_BYTES + 1))], b"b")
    with pytest.raises(MultipartError, match="epilogue longer"):
        decode([encode([part], b"b", epilogue=b"e" * (MAX_EPILOGUE_BYTES + 1))], b"b")


def test_lenient_but_safe_forms() -> None:
    """LF-only header lines and transport padding are accepted; zero parts is a valid body."""
    lf = b'--b\nContent-Disposition: form-data; name="a"\nContent-Type: text/plain\n\nv\r\n--b--'
    assert decode([lf], b"b") == [RefPart("a", None, "text/plain", b"v")]
    padded = b'--b \t\r\nContent-Disposition: form-data; name="a"\r\n\r\nv\r\n--b  \r\n' + (
        b"Content-Disposition: form-data; name=b\r\n\r\n\r\n--b--  \r\n"
    )
    assert decode([padded], b"b") == [RefPart("a", None, None, b"v"), RefPart("b", None, None, b"")]
    assert decode([b"--b--\r\n"], b"b") == []


@pytest.mark.parametrize("boundary", [b"", b"x" * 71, b"a\r", b"ends with space ", b"\xff"])
def test_invalid_boundary_rejected(boundary: bytes) -> None:
    with pytest.raises(MultipartError, match="boundary"):
        MultipartParser(boundary)


@pytest.mark.parametrize("module", ["multipart_core", "multipart_headers"])
def test_core_modules_are_sans_io(module: str) -> None:
    source = (Path(__file__).parents[2] / "swarmnode" / "api" / f"{module}.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "__future__" in imported  # the walk sees imports at all
    assert not imported & {"asyncio", "aiohttp", "socket", "time", "random"}


# --- header parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ("Multipart/Form-Data;boundary=abc", b"abc"),
        ('multipart/form-data; boundary="a b:c=d?"', b"a b:c=d?"),
        (
            "multipart/form-data; charset=utf-8; boundary=----WebKitFormBoundary7MA4",
            b"----WebKitFormBoundary7MA4",
        ),
        ("multipart/form-data; boundary=" + "x" * 70, b"x" * 70),
    ],
)
def test_boundary_from_content_type(content_type: str, boundary: bytes) -> None:
    assert boundary_from_content_type(content_type) == boundary


@pytest.mark.parametrize(
    "content_type",
    [
        "",
        "application/json",
        "multipart/mixed; boundary=abc",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=" + "x" * 71,
        'multipart/form-data; boundary="unterminated',
        "multipart/form-data; boundary=a; boundary=b",
        "multipart/form-data; boundary=ü",
        "multipart/form-data; boundary=a\x00b",
    ],
)
def test_bad_content_type(content_type: str) -> None:
    with pytest.raises(MultipartError):
        boundary_from_content_type(content_type)


def test_part_headers_details() -> None:
    info = parse_part_headers(
        b'content-disposition: Form-Data; NAME="blob"; filename="a\\"b%22c.txt"\r\n'
        b"CONTENT-TYPE:  image/png  \r\nX-Extra: \xe2\x82\xac"
    )
    assert (info.name, info.filename, info.content_type) == ("blob", 'a"b"c.txt', "image/png")
    assert info.headers["Content-Type"] == "image/png"
    assert info.headers["x-extra"] == "€"
    latin = parse_part_headers(b'Content-Disposition: form-data; name=f; filename="caf\xe9"')
    assert latin.filename == "café"
    ext = parse_part_headers(
        b"Content-Disposition: form-data; name=f; filename=x; filename*=utf-8'en'%E2%82%AC.txt"
    )
    assert ext.filename == "€.txt"
    literal = parse_part_headers(b'Content-Disposition: form-data; name=f; filename="100%25.txt"')
    assert literal.filename == "100%25.txt"


# --- the aiohttp driver on a hand-fed StreamReader --------------------------------------------


class _OpenProtocol(BaseProtocol):
    """A protocol without a transport: always connected, flow control is a no-op."""

    @property
    def connected(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def _stream(pieces: Sequence[bytes] = (), *, eof: bool = True) -> StreamReader:
    loop = asyncio.get_running_loop()
    stream = StreamReader(_OpenProtocol(loop), 2**16, loop=loop)
    for piece in pieces:
        stream.feed_data(piece)
    if eof:
        stream.feed_eof()
    return stream


async def test_reader_parts_and_auto_drain() -> None:
    parts = [
        RefPart("blob", "a.bin", "application/octet-stream", b"B" * 300_000),
        RefPart("skipped", None, None, b"S" * 1000),
        RefPart("metadata", None, "application/json", b'{"semantics": "x"}'),
    ]
    data = encode(parts, b"bb")
    reader = MultipartReader(_stream(split(data, range(0, len(data), 7000))), b"bb")
    async with asyncio.timeout(10):
        blob = await reader.next_part()
        assert blob is not None
        assert (blob.name, blob.filename, blob.content_type) == (
            "blob",
            "a.bin",
            parts[0].content_type,
        )
        assert blob.headers["content-disposition"].startswith("form-data")
        received = bytearray()
        async for chunk in blob.chunks():
            assert isinstance(chunk, memoryview)
            received += chunk
        assert received == parts[0].body
        skipped = await reader.next_part()
        assert skipped is not None
        assert skipped.name == "skipped"  # not consumed: next_part drains it
        meta = await reader.next_part()
        assert meta is not None
        assert json.loads(await meta.read(limit=100)) == {"semantics": "x"}
        assert await reader.next_part() is None
        assert await reader.next_part() is None


async def test_chunks_coalesce_small_pieces() -> None:
    body = bytes(range(256)) * 4000  # 1,024,000 bytes
    data = encode([RefPart("blob", "f", None, body)], b"bb")
    pieces = split(data, range(0, len(data), 10_000))  # 10 kB reads, like small HTTP chunks
    for coalesce, smallest in ((COALESCE_BYTES, COALESCE_BYTES), (0, 1)):
        reader = MultipartReader(_stream(pieces), b"bb")
        async with asyncio.timeout(10):
            part = await reader.next_part()
            assert part is not None
            sizes = []
            received = bytearray()
            async for chunk in part.chunks(coalesce=coalesce):
                sizes.append(len(chunk))
                received += chunk
        assert received == body
        assert min(sizes[:-1]) >= smallest
        if coalesce:
            assert max(sizes) <= coalesce
        else:
            assert max(sizes) <= 10_000


async def test_read_limit_and_abandoned_iteration() -> None:
    parts = [RefPart("a", None, None, b"x" * 5000), RefPart("b", None, None, b"y" * 10)]
    data = encode(parts, b"q")
    reader = MultipartReader(_stream(split(data, range(0, len(data), 100))), b"q")
    async with asyncio.timeout(10):
        first = await reader.next_part()
        assert first is not None
        async for _chunk in first.chunks(coalesce=0):
            break  # abandon midway
        second = await reader.next_part()
        assert second is not None
        assert second.name == "b"
        with pytest.raises(MultipartError, match="longer than 5"):
            await second.read(limit=5)
    reader = MultipartReader(_stream([data]), b"q")
    async with asyncio.timeout(10):
        first = await reader.next_part()
        assert first is not None
        assert await first.read(limit=5000) == b"x" * 5000


async def test_reader_errors_at_eof_and_on_bad_input() -> None:
    data = encode([RefPart("blob", None, None, b"z" * 1000)], b"bb")
    reader = MultipartReader(_stream([data[:-10]]), b"bb")
    async with asyncio.timeout(10):
        part = await reader.next_part()
        assert part is not None
        with pytest.raises(MultipartError, match="before the closing boundary"):
            await part.drain()
    reader = MultipartReader(_stream([b"--bb\r\nX: y\r\n\r\n"]), b"bb")
    async with asyncio.timeout(10):
        with pytest.raises(MultipartError, match="no Content-Disposition"):
            await reader.next_part()


async def test_reader_waits_for_data_as_it_arrives() -> None:
    data = encode([RefPart("blob", None, None, b"w" * 100_000)], b"bb")
    stream = _stream(eof=False)
    reader = MultipartReader(stream, b"bb")

    async def feed() -> None:
        for piece in split(data, range(0, len(data), 4096)):
            stream.feed_data(piece)
            await asyncio.sleep(0)
        stream.feed_eof()

    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        tg.create_task(feed())
        part = await reader.next_part()
        assert part is not None
        received = bytearray()
        async for chunk in part.chunks():
            received += chunk
        assert received == b"w" * 100_000
        assert await reader.next_part() is None


# --- real HTTP: aiohttp server, aiohttp client and curl ---------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _upload_handler(request: web.Request) -> web.Response:
    """Reports each part's name, filename, type and SHA-256 of its streamed bytes."""
    try:
        boundary = boundary_from_content_type(request.headers.get("Content-Type", ""))
        reader = MultipartReader(request.content, boundary)
        result = []
        while (part := await reader.next_part()) is not None:
            digest = hashlib.sha256()
            async for chunk in part.chunks():
                digest.update(chunk)
            result.append([part.name, part.filename, part.content_type, digest.hexdigest()])
    except MultipartError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(result, status=201)


@pytest.fixture
async def client() -> TestClient[web.Request, web.Application]:
    app = web.Application(client_max_size=2**40)
    app.router.add_post("/upload", _upload_handler)
    return TestClient(TestServer(app))


async def test_http_aiohttp_formdata(client: TestClient[web.Request, web.Application]) -> None:
    blob = bytes(range(256)) * 3000
    meta = b'{"semantics": "s"}'
    form = FormData()
    form.add_field("blob", io.BytesIO(blob), filename="data.bin", content_type="application/x-test")
    form.add_field("metadata", meta.decode(), content_type="application/json")
    async with asyncio.timeout(30), client:
        resp = await client.post("/upload", data=form)
        assert resp.status == 201
        assert await resp.json() == [
            ["blob", "data.bin", "application/x-test", _sha(blob)],
            ["metadata", None, "application/json", _sha(meta)],
        ]


async def test_http_chunked_curl_style_body(
    client: TestClient[web.Request, web.Application],
) -> None:
    """A curl-shaped body sent with chunked transfer encoding in odd-sized HTTP chunks."""
    boundary = b"------------------------d74496d66958873e"
    body = b"\r\n--" + boundary[:10] + b"\r\n" + bytes(range(256)) * 500
    data = encode(
        [
            RefPart("blob", "notes €.txt", "application/octet-stream", body),
            RefPart("metadata", None, None, b"{}"),
        ],
        boundary,
    )
    headers = {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}

    async def chunks() -> AsyncIterator[bytes]:
        for piece in split(data, range(0, len(data), 1009)):
            yield piece

    async with asyncio.timeout(30), client:
        resp = await client.post("/upload", data=chunks(), headers=headers)
        assert resp.status == 201
        assert await resp.json() == [
            ["blob", "notes €.txt", "application/octet-stream", _sha(body)],
            ["metadata", None, None, _sha(b"{}")],
        ]
        bad = await client.post("/upload", data=data[:-20], headers=headers)
        assert bad.status == 400
        assert "closing boundary" in (await bad.json())["error"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_http_real_curl(
    client: TestClient[web.Request, web.Application], tmp_path: Path
) -> None:
    blob = tmp_path / "blob file.bin"
    data = bytes(range(256)) * 2000
    blob.write_bytes(data)
    meta = b'{"semantics": "s"}'
    async with asyncio.timeout(30), client:
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "-F",
            f"blob=@{blob};type=image/png",
            "-F",
            f"metadata={meta.decode()};type=application/json",
            str(client.make_url("/upload")),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert json.loads(out) == [
            ["blob", "blob file.bin", "image/png", _sha(data)],
            ["metadata", None, "application/json", _sha(meta)],
        ]
