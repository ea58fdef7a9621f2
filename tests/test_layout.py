"""protocol/ stays sans-IO: it imports nothing from swarmnode/, asyncio or socket (DESIGN.md,
"Layout").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_PROTOCOL = {"swarmnode", "asyncio", "socket", "selectors", "time", "random", "sqlite3"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted((ROOT / "protocol").rglob("*.py")), ids=lambda p: p.name)
def test_protocol_module_is_sans_io(path: Path) -> None:
    assert not (_imported_roots(path) & FORBIDDEN_IN_PROTOCOL)


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom swarmnode.node import Node\n")
    assert _imported_roots(bad) & FORBIDDEN_IN_PROTOCOL == {"asyncio", "swarmnode"}
