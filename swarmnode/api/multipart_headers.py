"""Pure parsing of the small text parts of multipart/form-data: the boundary and part headers.

Kept apart from the body scanner (``multipart_core``): this is careful per-part work on a few
hundred bytes, the scanner is the fast path over gigabytes. Every function here is total: any
input gives a result or ``MultipartError`` with a message fit for a 400 body.

Decisions (RFC 7578 leaves them to the receiver):
- Header lines may end in CRLF or a bare LF (hand-written clients send LF); a bare CR elsewhere
  is an error. Safe, because only the *body* delimiter decides where data ends, and it needs CRLF.
- Obsolete line folding (a line starting with SP/HT) is rejected: no form-data client sends it.
- Header values are UTF-8 when they decode as such (browsers, curl and npm ``form-data`` send raw
  UTF-8 filenames), else Latin-1, so any byte string decodes.
- Quoted ``name``/``filename`` values unescape ``\\x`` pairs (RFC 9110 quoted-pair), then the
  three percent-escapes of the HTML form-data algorithm (browsers, curl): ``%22``, ``%0D``,
  ``%0A``. Other ``%XX`` stay literal, as in aiohttp's and Go's readers. ``filename*``
  (RFC 5987, UTF-8 or ISO-8859-1) wins over ``filename``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "MAX_BOUNDARY_LEN",
    "MultipartError",
    "PartInfo",
    "boundary_from_content_type",
    "parse_part_headers",
    "validate_boundary",
]

# RFC 2046 §5.1.1: a boundary is 1 to 70 characters from bchars, and does not end in a space.
MAX_BOUNDARY_LEN = 70
_BCHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
# RFC 9110 §5.6.2 tchar.
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Control characters other than HTAB are never legitimate in a header value.
_CTL = frozenset(range(0x00, 0x20)) - {0x09} | {0x7F}
_HTML_ESCAPES = (("%22", '"'), ("%0D", "\r"), ("%0A", "\n"), ("%0d", "\r"), ("%0a", "\n"))
_RFC5987_CHARSETS = {"utf-8": "utf-8", "iso-8859-1": "latin-1"}


class MultipartError(ValueError):
    """The body is not valid multipart/form-data; the message is shown to the client (400)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartInfo:
    """What a part's header block says about it."""

    name: str
    """The form field name (Content-Disposition ``name``); may be empty but is always present."""
    filename: str | None
    """``filename*`` (decoded) or ``filename``; None when the part is not a file."""
    content_type: str | None
    """The part's Content-Type value as sent (stripped), or None."""
    headers: CIMultiDictProxy[str]
    """Every header of the part, case-insensitive, in order."""


def validate_boundary(boundary: bytes) -> bytes:
    """Return ``boundary`` if it is a legal RFC 2046 boundary, else raise MultipartError.

    The body scanner relies on this: bchars contain no CR, so a CR can only start a delimiter.
    """
    if not 1 <= len(boundary) <= MAX_BOUNDARY_LEN:
        raise MultipartError(f"multipart boundary must be 1 to {MAX_BOUNDARY_LEN} characters")
    if not _BCHARS.issuperset(boundary) or boundary.endswith(b" "):
        raise MultipartError("multipart boundary contains characters RFC 2046 does not allow")
    return boundary


def _unescape_quoted(text: str) -> str:
    """Undo quoted-pair escapes (``\\"`` → ``"``) inside a quoted-string body."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _split_params(value: str, what: str) -> tuple[str, list[tuple[str, str, bool]]]:
    """Split ``type; a=b; c="d"`` into the lowercased type and ``(key, value, quoted)`` triples.

    Keys are lowercased. An unquoted value runs to the next ``;`` (lenient: some clients send
    ``filename=a b.txt``). A quoted value must be closed and followed only by OWS before ``;``.
    """
    head, sep, rest = value.partition(";")
    params: list[tuple[str, str, bool]] = []
    i = 0 if sep else len(rest)
    n = len(rest)
    while i < n:
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == ";":  # empty parameter, e.g. a trailing ";;"
            i += 1
            continue
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise MultipartError(f"malformed {what} header: parameter without '='")
        key = rest[i:eq].strip().lower()
        if not key or not _TCHARS.issuperset(key):
            raise MultipartError(f"malformed {what} header: bad parameter name")
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            j = i + 1
            while j < n and rest[j] != '"':
                j += 2 if rest[j] == "\\" else 1
            if j >= n:
                raise MultipartError(f"malformed {what} header: unterminated quoted string")
            params.append((key, _unescape_quoted(rest[i + 1 : j]), True))
            i = j + 1
            while i < n and rest[i] in " \t":
                i += 1
            if i < n and rest[i] != ";":
                raise MultipartError(f"malformed {what} header: text after quoted string")
            i += 1
        else:
            semi = rest.find(";", i)
            end = n if semi < 0 else semi
            params.append((key, rest[i:end].strip(), False))
            i = end + 1
    return head.strip().lower(), params


def boundary_from_content_type(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, as bytes.

    Raises MultipartError when the type is something else or the boundary is missing or invalid.
    """
    media_type, params = _split_params(content_type, "Content-Type")
    if media_type != "multipart/form-data":
        raise MultipartError("expected a multipart/form-data request body")
    boundaries = [v for k, v, _ in params if k == "boundary"]
    if len(boundaries) != 1:
        raise MultipartError("multipart/form-data needs exactly one boundary parameter")
    try:
        raw = boundaries[0].encode("ascii")
    except UnicodeEncodeError:
        raise MultipartError("multipart boundary must be ASCII") from None
    return validate_boundary(raw)


def _decode_value(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _html_unescape(text: str) -> str:
    if "%" not in text:
        return text
    for escaped, plain in _HTML_ESCAPES:
        text = text.replace(escaped, plain)
    return text


def _decode_ext_value(value: str) -> str:
    """Decode an RFC 5987 ext-value ``charset'lang'pct-encoded``."""
    charset, sep1, rest = value.partition("'")
    _lang, sep2, encoded = rest.partition("'")
    codec = _RFC5987_CHARSETS.get(charset.strip().lower())
    if not (sep1 and sep2) or codec is None:
        raise MultipartError("malformed filename* in Content-Disposition (RFC 5987, UTF-8/Latin-1)")
    try:
        return unquote_to_bytes(encoded).decode(codec)
    except UnicodeDecodeError:
        raise MultipartError("filename* in Content-Disposition is not valid UTF-8") from None


def _parse_disposition(value: str) -> tuple[str, str | None]:
    disposition, params = _split_params(value, "Content-Disposition")
    if disposition != "form-data":
        raise MultipartError("part Content-Disposition must be form-data")
    found: dict[str, str] = {}
    for key, val, quoted in params:
        if key in found:
            raise MultipartError(f"Content-Disposition repeats the {key} parameter")
        found[key] = _html_unescape(val) if quoted else val
    if "name" not in found:
        raise MultipartError("part Content-Disposition has no name")
    extended = found.get("filename*")
    filename = _decode_ext_value(extended) if extended is not None else found.get("filename")
    return found["name"], filename


def parse_part_headers(block: bytes) -> PartInfo:
    """Parse one part's header block: the lines between the boundary line and the blank line.

    Raises MultipartError for a malformed line, a missing or non-form-data Content-Disposition,
    or a repeated Content-Disposition / Content-Type.
    """
    headers: CIMultiDict[str] = CIMultiDict()
    for raw_line in block.split(b"\n") if block else ():
        line = raw_line[:-1] if raw_line.endswith(b"\r") else raw_line
        if not line:
            raise MultipartError("malformed part headers: empty line inside the header block")
        if line[0] in b" \t":
            raise MultipartError("malformed part headers: folded header lines are not supported")
        colon = line.find(b":")
        if colon <= 0:
            raise MultipartError("malformed part header line (expected 'Name: value')")
        name_bytes = line[:colon]
        value_bytes = line[colon + 1 :].strip(b" \t")
        try:
            name = name_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise MultipartError("malformed part header name") from None
        if not _TCHARS.issuperset(name):
            raise MultipartError("malformed part header name")
        if not _CTL.isdisjoint(value_bytes):
            raise MultipartError("part header value contains control characters")
        headers.add(name, _decode_value(value_bytes))
    for unique in ("Content-Disposition", "Content-Type"):
        if len(headers.getall(unique, ())) > 1:
            raise MultipartError(f"part repeats the {unique} header")
    disposition = headers.get("Content-Disposition")
    if disposition is None:
        raise MultipartError("part has no Content-Disposition header")
    name, filename = _parse_disposition(disposition)
    content_type = headers.get("Content-Type")
    return PartInfo(
        name=name,
        filename=filename,
        content_type=content_type if content_type else None,
        headers=CIMultiDictProxy(headers),
    )
