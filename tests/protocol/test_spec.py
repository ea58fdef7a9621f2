"""protocol/SPEC.md documents what the code does: every message (name, tag, field layout), every
error code and every limit with its value."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from protocol import codec, framing, messages_base
from protocol import messages as m
from protocol.errors import ErrorCode

SPEC = (Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md").read_text(encoding="utf-8")
CLASSES = sorted(m.MESSAGE_TYPES.values(), key=lambda cls: cls.TAG)


def _limit_constants() -> dict[str, int]:
    """Every MAX_/MIN_ constant, the batch budget, the ignorable-tag boundary, msgpack limits."""
    return {
        name: value
        for module in (messages_base, framing, codec)
        for name, value in vars(module).items()
        if type(value) is int
        and (
            name.startswith(("MAX_", "MIN_", "MSGPACK_MAX_"))
            or name in {"EVENT_BATCH_BUDGET", "IGNORABLE_TAG_MIN"}
        )
    }


LIMITS = _limit_constants()


def _section(number: str) -> str:
    match = re.search(rf"^## {number} .*?(?=^## )", SPEC, re.MULTILINE | re.DOTALL)
    assert match, f"SPEC.md has no section {number}"
    return match.group(0)


def _layout(cls: type[m.SendableMessage]) -> str:
    """The layout line in the code block under the message's heading."""
    heading = re.search(
        rf"^#+ [\d.]+ `{cls.__name__}` \(tag {cls.TAG}\)\n+```\n(.*?)\n```", SPEC, re.MULTILINE
    )
    assert heading, f"SPEC.md has no heading '`{cls.__name__}` (tag {cls.TAG})' with a layout"
    return heading.group(1)


def _top_level_fields(layout: str) -> list[str]:
    """Names of the fields in ``[tag, name: type, ...]``, splitting only at depth-0 commas."""
    assert layout.startswith("["), layout
    assert layout.endswith("]"), layout
    parts, depth, current = [], 0, ""
    for char in layout[1:-1]:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [part.split(":")[0].strip() for part in parts]


def test_the_limit_scan_finds_the_limits() -> None:
    assert {"MAX_FRAME_SIZE", "MAX_PAYLOAD_LEN", "MSGPACK_MAX_ARRAY_LEN"} <= set(LIMITS)
    assert len(LIMITS) >= 30


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_message_is_specified_with_its_tag_and_fields(cls: type[m.SendableMessage]) -> None:
    names = _top_level_fields(_layout(cls))
    assert names[0] == str(cls.TAG)
    assert names[1:] == [field.name for field in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_message_is_in_the_tag_table(cls: type[m.SendableMessage]) -> None:
    assert re.search(rf"\| {cls.TAG} \| `{cls.__name__}` \|", _section("7"))


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.name)
def test_every_error_code_is_in_the_table(code: ErrorCode) -> None:
    assert re.search(rf"^\| {code.value} \| `{code.name}` \| \S", _section("10"), re.MULTILINE)


def test_the_error_table_has_no_code_the_code_lacks() -> None:
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", _section("10"), re.MULTILINE)
    assert {(int(value), name) for value, name in rows} == {(c.value, c.name) for c in ErrorCode}


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_every_limit_is_in_the_table_with_its_value(name: str) -> None:
    row = re.search(rf"^\| `{name}` \| (\d+) \|", _section("11"), re.MULTILINE)
    assert row, f"§11 has no row for {name}"
    assert int(row.group(1)) == LIMITS[name]


def test_the_limit_table_has_no_stale_rows() -> None:
    rows = re.findall(r"^\| `(\w+)` \| \d+ \|", _section("11"), re.MULTILINE)
    assert set(rows) == set(LIMITS)


def test_the_field_parser_splits_only_at_the_top_level() -> None:
    assert _top_level_fields("[7, a: [T]≤3, b: (x, y), c: [[u, v]]?]") == ["7", "a", "b", "c"]
