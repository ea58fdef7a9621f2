"""netsim's invariant checks: each holds on a consistent end state and fails, naming the break,
on one that violates it."""

from __future__ import annotations

from typing import Any

from netsim.invariants import (
    History,
    acknowledged_events_everywhere,
    gapless_subscriptions,
    identical_events,
)

A, B = "a" * 43, "b" * 43


def _event(source: str, offset: int, ident: str, lamport: int = 0) -> dict[str, Any]:
    return {
        "stream": {"source": source},
        "offset": offset,
        "lamport": lamport,
        "payload": {"id": ident},
    }


def _state() -> tuple[History, dict[str, list[dict[str, Any]]]]:
    history = History()
    history.acked(A, ["a0", "a1"])
    history.acked(B, ["b0"])
    events = [_event(A, 0, "a0"), _event(A, 1, "a1"), _event(B, 0, "b0")]
    return history, {"n0": list(events), "n1": list(events)}


def test_a_consistent_end_state_passes_every_check() -> None:
    history, held = _state()
    for node in ("n0", "n1"):
        for event in held[node]:
            history.delivered(node, event["stream"]["source"], event["offset"])
    assert acknowledged_events_everywhere(history, held).ok
    assert identical_events(held).ok
    assert gapless_subscriptions(history).ok
    assert history.upper_bounds() == {A: 1, B: 0}


def test_a_lost_acknowledged_event_is_named() -> None:
    history, held = _state()
    held["n1"] = held["n1"][:1] + held["n1"][2:]  # n1 lost a1
    check = acknowledged_events_everywhere(history, held)
    assert not check.ok
    assert "n1 lacks 1" in check.detail
    assert "a1" in check.detail


def test_an_event_held_twice_is_named() -> None:
    history, held = _state()
    held["n0"].append(_event(A, 2, "a1"))  # the same acknowledged event under a second offset
    assert not acknowledged_events_everywhere(history, held).ok


def test_nodes_that_differ_at_one_offset_are_not_identical() -> None:
    _, held = _state()
    held["n1"][1] = _event(A, 1, "a1", lamport=7)  # same key, other content
    check = identical_events(held)
    assert not check.ok
    assert "differ at 1 events" in check.detail


def test_nodes_that_hold_different_sets_are_not_identical() -> None:
    _, held = _state()
    held["n1"].append(_event(B, 1, "b1"))
    check = identical_events(held)
    assert not check.ok
    assert "1 events only on n1" in check.detail


def test_a_gap_a_repeat_or_a_late_start_in_a_subscription_is_named() -> None:
    for offsets in ([0, 2], [0, 1, 1], [1, 2]):
        history = History()
        for offset in offsets:
            history.delivered("n0#0", A, offset)
        history.delivered("n0#0", B, 0)
        check = gapless_subscriptions(history)
        assert not check.ok, offsets
        assert "n0#0" in check.detail
