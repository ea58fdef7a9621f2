"""EventLog writes: gapless atomic publish, durability, recovery, ingest of replicated events."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.eventchain import GENESIS_CHAIN, EventRecord, record_chain, verify_head
from swarmnode.events.log import EventLog, LogClosedError
from swarmnode.events.writer import SIGN_EVERY
from swarmnode.ports import NewEvent, Subscription
from tests.helpers.events_chain import RemoteSource, identity_from_seed
from tests.strategies import new_events

ALL = [Subscription()]


def _events(n: int, name: str = "n") -> list[NewEvent]:
    return [NewEvent(semantics="sem", name=name, payload=str(i)) for i in range(n)]


async def _everything(log: EventLog) -> list[EventRecord]:
    upper = log.offsets()
    return [r async for r in log.query(ALL, None, upper, "lamport")]


def _check_chain(records: list[EventRecord], public_key: bytes) -> None:
    """Offsets from 0, chain recomputes from genesis, every signature verifies, last one signed."""
    previous = GENESIS_CHAIN
    for expected_offset, r in enumerate(records):
        assert r.offset == expected_offset
        previous = record_chain(previous, r)
        assert r.chain == previous
        if r.signature is not None:
            assert verify_head(public_key, r.source, r.offset, r.chain, r.signature)
    assert records[-1].signature is not None


async def test_publish_assigns_gapless_offsets_and_rising_lamports(event_log: EventLog) -> None:
    first = await event_log.publish(_events(3))
    second = await event_log.publish(_events(2))
    records = first + second
    assert [r.offset for r in records] == [0, 1, 2, 3, 4]
    assert [r.lamport for r in records] == sorted({r.lamport for r in records})
    assert {r.source for r in records} == {event_log.node_id}
    assert event_log.offsets() == {event_log.node_id: 4}
    # Last event of every batch is signed; the others are covered by the chain.
    assert [r.signature is not None for r in records] == [False, False, True, False, True]


async def test_empty_log_reports_no_offsets(event_log: EventLog) -> None:
    assert event_log.offsets() == {}
    assert await event_log.publish([]) == []
    assert event_log.offsets() == {}


async def test_huge_batch_is_signed_at_least_every_1024_events(event_log: EventLog) -> None:
    records = await event_log.publish(_events(2 * SIGN_EVERY + 5))
    signed = [r.offset for r in records if r.signature is not None]
    assert signed == [SIGN_EVERY - 1, 2 * SIGN_EVERY - 1, 2 * SIGN_EVERY + 4]
    identity = identity_from_seed(0)
    _check_chain(records, identity.public_key)


async def test_concurrent_publishes_are_each_consecutive(event_log: EventLog) -> None:
    sizes = [1, 5, 3, 7, 2, 4, 6, 1]
    batches = await asyncio.gather(
        *(event_log.publish(_events(n, name=f"batch{i}")) for i, n in enumerate(sizes))
    )
    for batch, size in zip(batches, sizes, strict=True):
        offsets = [r.offset for r in batch]
        assert offsets == list(range(offsets[0], offsets[0] + size))
        assert [r.payload for r in batch] == [str(i) for i in range(size)]
    stored = await _everything(event_log)
    assert [r.offset for r in stored] == list(range(sum(sizes)))
    _check_chain(stored, identity_from_seed(0).public_key)


async def test_a_failing_batch_stores_nothing_and_spares_its_group(event_log: EventLog) -> None:
    bad = [*_events(3), NewEvent(semantics="sem", name="n", payload='"\ud800"')]
    results = await asyncio.gather(
        event_log.publish(_events(2)),
        event_log.publish(bad),
        event_log.publish(_events(2)),
        return_exceptions=True,
    )
    assert isinstance(results[1], Exception)
    good = [r for result in (results[0], results[2]) for r in result]  # type: ignore[union-attr]
    stored = await _everything(event_log)
    assert stored == sorted(good, key=lambda r: r.offset)
    assert [r.offset for r in stored] == [0, 1, 2, 3]
    _check_chain(stored, identity_from_seed(0).public_key)


async def test_acknowledged_publish_is_committed_to_disk(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    log = EventLog(path, identity_from_seed(0))
    await log.start()
    try:
        await log.publish(_events(7))
        # A fresh connection (another process would see the same) finds the batch committed.
        conn = sqlite3.connect(path)
        try:
            count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()
        assert count == 7
        assert mode == "wal"
    finally:
        await log.stop()


async def test_reopen_keeps_offsets_lamport_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    identity = identity_from_seed(0)
    log = EventLog(path, identity)
    await log.start()
    before = await log.publish(_events(4))
    await log.stop()

    log = EventLog(path, identity)
    await log.start()
    try:
        assert log.offsets() == {identity.node_id: 3}
        after = await log.publish(_events(2))
        assert [r.offset for r in after] == [4, 5]
        assert after[0].lamport > before[-1].lamport
        stored = await _everything(log)
        assert stored[:4] == before
        _check_chain(stored, identity.public_key)
    finally:
        await log.stop()


async def test_log_of_another_identity_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    log = EventLog(path, identity_from_seed(0))
    await log.start()
    await log.stop()
    # Same file, different key that claims the stored node id: simulate by rewriting the key row.
    conn = sqlite3.connect(path)
    try:
        conn.execute("UPDATE sources SET public_key = ?", (bytes(32),))
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(ValueError, match="another identity"):
        await EventLog(path, identity_from_seed(0)).start()


async def test_ingest_stores_verified_events_and_advances_lamport(event_log: EventLog) -> None:
    remote = RemoteSource(identity_from_seed(1))
    batch = remote.batch([("sem", "n", "1"), ("sem", "n", "2")], lamport_steps=[500, 500])
    assert await event_log.ingest(remote.public_key, batch) == 2
    assert event_log.offsets() == {remote.source: 1}
    assert event_log.public_key(remote.source) == remote.public_key
    own = await event_log.publish(_events(1))
    # max(own, seen) + 1 on receipt, then +1 for the new event.
    assert own[0].lamport > 1000
    stored = await _everything(event_log)
    assert stored[:2] == batch


async def test_ingest_rejects_forgeries_and_leaves_the_store_unchanged(event_log: EventLog) -> None:
    remote = RemoteSource(identity_from_seed(1))
    first = remote.batch([("sem", "n", "1"), ("sem", "n", "2")])
    assert await event_log.ingest(remote.public_key, first) == 2
    second = remote.batch([("sem", "n", "3"), ("sem", "n", "4")])
    before = await _everything(event_log)
    offsets = event_log.offsets()

    tampered = [replace(second[0], payload='"evil"'), second[1]]
    wrong_key = identity_from_seed(2).public_key
    attempts = [
        (remote.public_key, tampered),  # altered payload
        (wrong_key, second),  # someone else's key
        (remote.public_key, second[1:]),  # gap
        (remote.public_key, first),  # replay
        (remote.public_key, [replace(second[0], signature=None), second[1]][:1]),  # unsigned
    ]
    for key, records in attempts:
        assert await event_log.ingest(key, records) == 0
    assert event_log.offsets() == offsets
    assert await _everything(event_log) == before
    # The genuine continuation is still accepted afterwards.
    assert await event_log.ingest(remote.public_key, second) == 2


async def test_ingest_of_own_source_is_refused(event_log: EventLog) -> None:
    mine = RemoteSource(identity_from_seed(0))
    assert await event_log.ingest(mine.public_key, mine.batch([("sem", "n", "1")])) == 0
    assert event_log.offsets() == {}


async def test_ingest_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    identity = identity_from_seed(0)
    remote = RemoteSource(identity_from_seed(1))
    log = EventLog(path, identity)
    await log.start()
    await log.ingest(remote.public_key, remote.batch([("s", "n", "1")], lamport_steps=[10_000]))
    await log.stop()
    log = EventLog(path, identity)
    await log.start()
    try:
        assert log.public_key(remote.source) == remote.public_key
        assert log.offsets() == {remote.source: 0}
        own = await log.publish(_events(1))
        assert own[0].lamport > 10_000
        more = remote.batch([("s", "n", "2")])
        assert await log.ingest(remote.public_key, more) == 1
    finally:
        await log.stop()


async def test_read_range_ends_on_a_signed_head(event_log: EventLog) -> None:
    await event_log.publish(_events(10))
    await event_log.publish(_events(10))
    source = event_log.node_id
    page = await event_log.read_range(source, -1, 3)
    assert [r.offset for r in page] == list(range(10))
    assert page[-1].signature is not None
    rest = await event_log.read_range(source, 9, 100)
    assert [r.offset for r in rest] == list(range(10, 20))
    assert await event_log.read_range(source, 19, 100) == []
    assert await event_log.read_range("unknown", -1, 100) == []
    # What read_range serves, another log can ingest and verify whole.
    other = EventLog(Path(str(event_log._path) + ".peer"), identity_from_seed(5))
    await other.start()
    try:
        assert await other.ingest(identity_from_seed(0).public_key, page + rest) == 20
    finally:
        await other.stop()


async def test_calls_after_stop_fail_clearly(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.sqlite", identity_from_seed(0))
    await log.start()
    await log.stop()
    with pytest.raises(LogClosedError):
        await log.publish(_events(1))
    with pytest.raises(LogClosedError):
        log.offsets()


@settings(max_examples=25)
@given(batches=st.lists(st.lists(new_events, min_size=1, max_size=6), min_size=1, max_size=6))
def test_property_batches_are_atomic_consecutive_and_verifiable(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[NewEvent]]
) -> None:
    async def scenario() -> None:
        identity = identity_from_seed(0)
        log = EventLog(tmp_path_factory.mktemp("log") / "events.sqlite", identity)
        await log.start()
        try:
            results = await asyncio.gather(*(log.publish(b) for b in batches))
            for batch, stored in zip(batches, results, strict=True):
                assert [(r.semantics, r.name, r.payload) for r in stored] == [
                    (e.semantics, e.name, e.payload) for e in batch
                ]
                assert [r.offset for r in stored] == list(
                    range(stored[0].offset, stored[0].offset + len(batch))
                )
                assert stored[-1].signature is not None
            everything = await _everything(log)
            assert len(everything) == sum(map(len, batches))
            _check_chain(everything, identity.public_key)
            # A peer verifies and stores the whole log as replicated.
            peer = EventLog(
                tmp_path_factory.mktemp("peer") / "events.sqlite", identity_from_seed(9)
            )
            await peer.start()
            try:
                assert await peer.ingest(identity.public_key, everything) == len(everything)
            finally:
                await peer.stop()
        finally:
            await log.stop()

    asyncio.run(scenario())
