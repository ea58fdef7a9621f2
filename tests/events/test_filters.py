"""Subscription filters: the SQL and the Python form select the same events as ``Subscription``."""

from __future__ import annotations

import sqlite3

from hypothesis import given
from hypothesis import strategies as st

from swarmnode.events.filters import source_filter
from swarmnode.ports import Subscription
from tests.strategies import NAMES, SEMANTICS, subscriptions

SOURCES = ["srca", "srcb"]


def _events() -> list[tuple[str, str, str]]:
    return [(src, sem, name) for src in SOURCES for sem in SEMANTICS for name in NAMES]


@given(subs=subscriptions(SOURCES))
def test_filter_agrees_with_subscription_semantics(subs: list[Subscription]) -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE events (source TEXT, semantics TEXT, name TEXT)")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?)", _events())
        for source in SOURCES:
            selected = source_filter(subs, source)
            expected = {
                (sem, name)
                for src, sem, name in _events()
                if src == source and any(s.matches(sem, name, src) for s in subs)
            }
            in_python = {
                (sem, name)
                for src, sem, name in _events()
                if src == source and selected.matches(sem, name)
            }
            condition, params = selected.sql()
            rows = conn.execute(
                "SELECT semantics, name FROM events WHERE source = ?"
                + (" AND " + condition if condition else ""),
                [source, *params],
            ).fetchall()
            assert in_python == expected
            assert set(rows) == expected
            assert selected.nothing == (not expected)
    finally:
        conn.close()


def test_empty_subscription_list_selects_nothing() -> None:
    assert source_filter([], "srca").nothing


def test_entry_without_conditions_selects_everything() -> None:
    selected = source_filter([Subscription(name="n1"), Subscription()], "srca")
    assert selected.everything


@given(st.sampled_from(SOURCES))
def test_entry_for_another_source_drops_out(source: str) -> None:
    other = next(s for s in SOURCES if s != source)
    assert source_filter([Subscription(source=other)], source).nothing
    assert source_filter([Subscription(source=source)], source).everything
