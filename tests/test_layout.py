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


# Pure swarm machines (STYLE.md §2, §9): fed (time, message), so netsim can run them on virtual
# time. They may name ``random.Random`` (an injected rng) but call no module-level random function.
PURE_SWARM_MODULES = [
    "effects.py",
    "membership.py",
    "membership_types.py",
    "views.py",
    "plumtree.py",
    "antientropy.py",
    "fetcher.py",
    "fetcher_blob.py",
    "fetcher_schedule.py",
    "fetcher_types.py",
]
FORBIDDEN_IN_PURE_SWARM = {"asyncio", "socket", "selectors", "time", "sqlite3", "logging"}


def _module_random_uses(path: Path) -> set[str]:
    return {
        node.attr
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "random"
        and node.attr != "Random"
    }


@pytest.mark.parametrize("name", PURE_SWARM_MODULES)
def test_pure_swarm_module_is_sans_io(name: str) -> None:
    path = ROOT / "swarmnode" / "swarm" / name
    assert not (_imported_roots(path) & FORBIDDEN_IN_PURE_SWARM)
    assert _module_random_uses(path) == set()


def test_checker_sees_a_module_random_call(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import random\nimport time\nx = random.random(); r = random.Random(1)\n")
    assert _module_random_uses(bad) == {"random"}
    assert _imported_roots(bad) & FORBIDDEN_IN_PURE_SWARM == {"time"}
