"""Retention decisions: the efficient function against a direct model of API.md's rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarmnode.store.retention import (
    Announcement,
    KeepForever,
    KeepUntilNext,
    KeepUntilTime,
    RetentionPolicy,
    retained_handles,
)

HANDLES = [f"blake3:{i:064x}" for i in range(5)]
SOURCES = ["nodea", "nodeb", "nodec"]
SEMANTICS = ["s1", "s2"]
APPS = [None, "app1", "app2"]


def model(announcements: list[Announcement], now: float) -> set[str]:
    """API.md literally: a handle stays while any of its announcements keeps it."""

    def keeps(a: Announcement) -> bool:
        match a.policy:
            case KeepForever():
                return True
            case KeepUntilTime(until=until):
                return now <= until
            case KeepUntilNext() as policy:
                return not any(b.order > a.order and policy.matches(b) for b in announcements)

    return {a.handle for a in announcements if keeps(a)}


policies: st.SearchStrategy[RetentionPolicy] = st.one_of(
    st.builds(KeepForever),
    st.builds(KeepUntilTime, until=st.integers(0, 20).map(float)),
    st.builds(
        KeepUntilNext,
        semantics=st.sampled_from([None, *SEMANTICS]),
        source=st.sampled_from([None, *SOURCES]),
        source_app=st.sampled_from([None, "app1", "app2"]),
    ),
)

announcements = st.lists(
    st.builds(
        Announcement,
        handle=st.sampled_from(HANDLES),
        lamport=st.integers(0, 12),
        source=st.sampled_from(SOURCES),
        semantics=st.sampled_from(SEMANTICS),
        source_app=st.sampled_from(APPS),
        policy=policies,
    ),
    max_size=25,
)


@given(announcements, st.integers(0, 20).map(float))
def test_matches_model(anns: list[Announcement], now: float) -> None:
    assert retained_handles(anns, now) == model(anns, now)


@given(announcements, st.integers(0, 20).map(float), st.randoms())
def test_arrival_order_does_not_matter(anns: list[Announcement], now: float, rnd: object) -> None:
    shuffled = list(anns)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert retained_handles(shuffled, now) == retained_handles(anns, now)


@given(announcements, st.integers(0, 19).map(float))
def test_time_only_removes(anns: list[Announcement], now: float) -> None:
    assert retained_handles(anns, now + 1) <= retained_handles(anns, now)


def ann(handle: int, lamport: int, policy: RetentionPolicy, **kw: str | None) -> Announcement:
    return Announcement(
        handle=HANDLES[handle],
        lamport=lamport,
        source=kw.get("source") or "nodea",
        semantics=kw.get("semantics") or "s1",
        source_app=kw.get("source_app"),
        policy=policy,
    )


def test_keep_until_time_boundary() -> None:
    a = [ann(0, 1, KeepUntilTime(until=10.0))]
    assert retained_handles(a, 10.0) == {HANDLES[0]}
    assert retained_handles(a, 10.5) == set()


def test_keep_until_next_needs_every_named_property() -> None:
    old = ann(0, 1, KeepUntilNext(semantics="s1", source_app="app1"), source_app="app1")
    other_app = ann(1, 2, KeepForever(), semantics="s1", source_app="app2")
    assert HANDLES[0] in retained_handles([old, other_app], 0.0)
    same = ann(2, 3, KeepForever(), semantics="s1", source_app="app1", source="nodeb")
    assert HANDLES[0] not in retained_handles([old, other_app, same], 0.0)


def test_newer_is_lamport_then_source() -> None:
    # Same lamport: the higher source id is newer, on every node.
    a = ann(0, 5, KeepUntilNext(), source="nodea")
    b = ann(1, 5, KeepUntilNext(), source="nodeb")
    assert retained_handles([b, a], 0.0) == {HANDLES[1]}


def test_reannouncement_keeps_bytes_while_any_announcement_does() -> None:
    first = ann(0, 1, KeepForever())
    again = ann(0, 2, KeepUntilTime(until=1.0))
    assert retained_handles([first, again], 100.0) == {HANDLES[0]}
