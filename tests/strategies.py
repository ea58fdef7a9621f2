"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from swarmnode.ports import NewEvent, Subscription

__all__ = [
    "NAMES",
    "SEMANTICS",
    "json_values",
    "new_events",
    "subscriptions",
]

# Few distinct names, so subscriptions select some events and miss others.
SEMANTICS = ("sem-a", "sem-b", "com.example.ü")
NAMES = ("n1", "n2")

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


new_events: st.SearchStrategy[NewEvent] = st.builds(
    NewEvent,
    semantics=st.sampled_from(SEMANTICS),
    name=st.sampled_from(NAMES),
    payload=json_values.map(_compact),
)


def subscriptions(sources: list[str]) -> st.SearchStrategy[list[Subscription]]:
    """Subscription lists over the test's names and the given sources (None = any)."""
    entry = st.builds(
        Subscription,
        semantics=st.none() | st.sampled_from(SEMANTICS),
        name=st.none() | st.sampled_from(NAMES),
        source=st.none() | st.sampled_from(sources) if sources else st.none(),
    )
    return st.lists(entry, min_size=0, max_size=3)
