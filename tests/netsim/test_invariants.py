"""netsim's invariant checks: each holds on a consistent end state and fails, naming the break,
on one that violates it."""

from __future__ import annotations

from typing import Any

import blake3

from netsim.blobs import BlobRead, BlobSpec
from netsim.invariants import (
    History,
    StateSeen,
    acknowledged_blobs_everywhere,
    acknowledged_events_everywhere,
    gapless_subscriptions,
    identical_events,
    never_marked_dead,
    served_bytes_match,
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


def test_upper_bounds_follow_what_a_source_held_after_its_writes() -> None:
    history, _ = _state()
    assert history.upper_bounds() == {A: 1, B: 0}
    history.reached(A, 3)  # a blob's metadata event took offset 2, the write offset 3
    history.reached(A, 2)  # an older observation never lowers it
    assert history.upper_bounds() == {A: 3, B: 0}


# -- blobs ---------------------------------------------------------------------------------------

SPEC = BlobSpec.make("netsim-test-blob", 3 * (1 << 20) + 17)


def _full_read(node: str, spec: BlobSpec = SPEC) -> BlobRead:
    digest = spec.handle.removeprefix("blake3:")
    return BlobRead(node, spec.handle, 200, spec.size, digest, True)


def test_blob_content_is_repeatable_and_its_prefixes_hash_like_its_bytes() -> None:
    again = BlobSpec.make(SPEC.name, SPEC.size)
    assert again.handle == SPEC.handle
    assert BlobSpec.make(SPEC.name + "x", SPEC.size).handle != SPEC.handle
    whole = b"".join(SPEC.pieces())
    assert len(whole) == SPEC.size

    assert "blake3:" + blake3.blake3(whole).hexdigest() == SPEC.handle
    assert SPEC.prefix_digest(1000) == blake3.blake3(whole[:1000]).hexdigest()


def test_blobs_read_whole_and_exact_everywhere_pass() -> None:
    history = History()
    history.blob_acked("n0", SPEC, SPEC.handle)
    reads = {"n0": [_full_read("n0")], "n1": [_full_read("n1")]}
    for rs in reads.values():
        history.reads.extend(rs)
    assert acknowledged_blobs_everywhere(history, reads).ok
    assert served_bytes_match(history).ok


def test_a_missing_short_or_wrong_blob_is_named() -> None:
    history = History()
    history.blob_acked("n0", SPEC, SPEC.handle)
    short = BlobRead("n1", SPEC.handle, 200, 10, SPEC.prefix_digest(10), False, "cut off")
    check = acknowledged_blobs_everywhere(history, {"n0": [], "n1": [short]})
    assert not check.ok
    assert "n0: netsim-test-blob was not read" in check.detail
    assert "n1: netsim-test-blob answered 200 cut off" in check.detail
    wrong = BlobRead("n1", SPEC.handle, 200, SPEC.size, "0" * 64, True)
    assert "wrong" in acknowledged_blobs_everywhere(history, {"n1": [wrong]}).detail
    missing = BlobRead("n1", SPEC.handle, 404, 0, "", True, "not found")
    assert "answered 404" in acknowledged_blobs_everywhere(history, {"n1": [missing]}).detail


def test_a_node_that_acknowledges_with_another_handle_fails_the_blob_check() -> None:
    history = History()
    history.blob_acked("n0", SPEC, "blake3:" + "1" * 64)
    assert not history.blobs
    check = acknowledged_blobs_everywhere(history, {"n0": []})
    assert not check.ok
    assert "n0 answered blake3:111" in check.detail


def test_a_read_cut_short_is_fine_when_its_bytes_are_the_blobs_own() -> None:
    history = History()
    history.blob_acked("n0", SPEC, SPEC.handle)
    history.read(BlobRead("n1", SPEC.handle, 200, 5000, SPEC.prefix_digest(5000), False, "reset"))
    assert served_bytes_match(history).ok
    history.read(BlobRead("n2", SPEC.handle, 200, 5000, SPEC.prefix_digest(4999), False, "reset"))
    check = served_bytes_match(history)
    assert not check.ok
    assert "n2 served netsim-test-blob's first 5000 bytes wrong" in check.detail
    history.read(BlobRead("n3", SPEC.handle, 200, SPEC.size + 1, "", True))
    assert "n3 served" in served_bytes_match(history).detail


def test_a_slow_node_seen_suspect_but_never_dead_passes() -> None:
    history = History()
    history.states += [
        StateSeen("n0", "slowid", "alive", 0.0),
        StateSeen("n0", "slowid", "suspect", 1.0),
        StateSeen("n0", "slowid", "alive", 1.5),
        StateSeen("n1", "other", "dead", 2.0),  # another node may die
    ]
    check = never_marked_dead(history, {"slowid": "n5"})
    assert check.ok
    assert "1 suspicions" in check.detail
    history.states.append(StateSeen("n1", "slowid", "dead", 3.0))
    check = never_marked_dead(history, {"slowid": "n5"})
    assert not check.ok
    assert "n1 marked n5 dead at +3.0 s" in check.detail
