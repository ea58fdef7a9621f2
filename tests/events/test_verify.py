"""verify_batch: only records that continue the chain up to a verified signed head are taken."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from protocol.eventchain import EventRecord
from swarmnode.events.verify import EMPTY_HEAD, SourceHead, Verdict, verify_batch
from tests.helpers.events_chain import RemoteSource, identity_from_seed, resign


def _events(n: int) -> list[tuple[str, str, str]]:
    return [("sem", "name", str(i)) for i in range(n)]


def _problem(verdict: Verdict) -> str:
    assert verdict.problem is not None
    return verdict.problem


def _head(r: EventRecord) -> SourceHead:
    return SourceHead(offset=r.offset, lamport=r.lamport, chain=r.chain)


def test_signed_batch_is_accepted_whole() -> None:
    remote = RemoteSource(identity_from_seed(1))
    batch = remote.batch(_events(5))
    verdict = verify_batch(remote.public_key, EMPTY_HEAD, batch)
    assert verdict.accepted == batch
    assert verdict.problem is None


def test_unsigned_tail_is_dropped() -> None:
    remote = RemoteSource(identity_from_seed(1))
    signed = remote.batch(_events(3))
    unsigned = remote.batch(_events(2), sign=False)
    verdict = verify_batch(remote.public_key, EMPTY_HEAD, signed + unsigned)
    assert verdict.accepted == signed
    assert verdict.problem == "unsigned tail"


def test_tampered_payload_breaks_the_chain() -> None:
    remote = RemoteSource(identity_from_seed(1))
    first = remote.batch(_events(2))
    second = remote.batch(_events(2))
    forged = [*first, replace(second[0], payload='"evil"'), second[1]]
    verdict = verify_batch(remote.public_key, EMPTY_HEAD, forged)
    assert verdict.accepted == first
    assert "chain" in _problem(verdict)


def test_tampered_payload_with_recomputed_chain_fails_the_signature() -> None:
    remote = RemoteSource(identity_from_seed(1))
    # Anyone can recompute a chain over altered content, but a relay can only sign with its own key.
    forger = RemoteSource(identity_from_seed(1))
    relay = identity_from_seed(2)
    original = remote.batch(_events(2))
    rebuilt = forger.batch([("sem", "name", "0"), ("sem", "name", '"evil"')])
    forged = [original[0], resign(relay, rebuilt[1])]
    verdict = verify_batch(remote.public_key, EMPTY_HEAD, forged)
    assert verdict.accepted == []
    assert "signature" in _problem(verdict)


def test_wrong_key_takes_nothing() -> None:
    remote = RemoteSource(identity_from_seed(1))
    batch = remote.batch(_events(3))
    verdict = verify_batch(identity_from_seed(2).public_key, EMPTY_HEAD, batch)
    assert verdict.accepted == []
    assert verdict.problem == "record of another source"


def test_gap_is_refused() -> None:
    remote = RemoteSource(identity_from_seed(1))
    first = remote.batch(_events(2))
    second = remote.batch(_events(2))
    verdict = verify_batch(remote.public_key, _head(first[-1]), second[1:])
    assert verdict.accepted == []
    assert "offset" in _problem(verdict)


def test_replay_is_skipped_as_duplicates() -> None:
    remote = RemoteSource(identity_from_seed(1))
    batch = remote.batch(_events(4))
    verdict = verify_batch(remote.public_key, _head(batch[-1]), batch)
    assert verdict.accepted == []
    assert verdict.duplicates == 4
    assert verdict.problem is None


def test_overlap_with_held_events_continues_after_them() -> None:
    remote = RemoteSource(identity_from_seed(1))
    first = remote.batch(_events(2))
    second = remote.batch(_events(3))
    verdict = verify_batch(remote.public_key, _head(first[-1]), first + second)
    assert verdict.accepted == second
    assert verdict.duplicates == 2


def test_lamport_must_rise_within_the_source() -> None:
    remote = RemoteSource(identity_from_seed(1))
    batch = remote.batch(_events(2), lamport_steps=[5, 0])
    verdict = verify_batch(remote.public_key, EMPTY_HEAD, batch)
    assert verdict.accepted == []
    assert "lamport" in _problem(verdict)


def test_payload_that_is_not_json_is_refused() -> None:
    remote = RemoteSource(identity_from_seed(1))
    batch = remote.batch([("sem", "name", "{not json")])
    verdict = verify_batch(remote.public_key, EMPTY_HEAD, batch)
    assert verdict.accepted == []
    assert "malformed" in _problem(verdict)


def test_short_public_key_takes_nothing() -> None:
    remote = RemoteSource(identity_from_seed(1))
    verdict = verify_batch(b"short", EMPTY_HEAD, remote.batch(_events(1)))
    assert verdict.accepted == []


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=4),
    victim=st.integers(min_value=0),
    field=st.sampled_from(["payload", "lamport", "timestamp", "name", "chain", "signature"]),
)
def test_any_single_alteration_stops_the_batch_before_it(
    sizes: list[int], victim: int, field: str
) -> None:
    remote = RemoteSource(identity_from_seed(3))
    records = [r for size in sizes for r in remote.batch(_events(size))]
    index = victim % len(records)
    target = records[index]
    altered = {
        "payload": replace(target, payload='"x"' if target.payload != '"x"' else '"y"'),
        "lamport": replace(target, lamport=target.lamport + 1000),
        "timestamp": replace(target, timestamp=target.timestamp + 1),
        "name": replace(target, name=target.name + "x"),
        "chain": replace(target, chain=bytes(32)),
        "signature": replace(target, signature=bytes(64)),
    }[field]
    if field == "signature" and target.signature is None:
        altered = replace(target, signature=bytes(64))
    forged = [*records[:index], altered, *records[index + 1 :]]
    verdict = verify_batch(remote.public_key, EMPTY_HEAD, forged)
    # Everything accepted is genuine, and nothing at or after the altered record is accepted.
    assert verdict.accepted == records[: len(verdict.accepted)]
    assert len(verdict.accepted) <= index
    assert verdict.problem is not None
