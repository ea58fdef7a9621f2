"""The fetch scheduler driven through a fake swarm on virtual time (SPEC §7.5)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import blake3

from protocol.messages_transfer import (
    Cancel,
    ChunkData,
    DontHave,
    HaveBitmap,
    Outline,
    RequestChunks,
    RequestOutline,
)
from swarmnode.swarm.fetcher import (
    BlobSpec,
    FetchComplete,
    Fetcher,
    FetcherConfig,
    OutlineVerified,
    WriteChunk,
)
from swarmnode.swarm.fetcher_blob import bitmap_to_bits, bits_to_bitmap
from swarmnode.swarm.plumtree import PeerMisbehaved
from tests.swarm.fetcher_swarm import CHUNK, FakeBlob, FakeSwarm, Provider, bitmap, make_blob


def swarm_with(
    blob_count: int, names: list[str], config: FetcherConfig | None = None, **kw: Any
) -> tuple[FakeSwarm, FakeBlob]:
    blob = make_blob(blob_count, **kw)
    providers = [Provider(n) for n in names]
    for p in providers:
        p.holds(blob)
    sw = FakeSwarm(Fetcher(config), providers)
    sw.connect_all()
    return sw, blob


def requested_indices(sw: FakeSwarm, peer: str | None = None) -> list[int]:
    return [
        i
        for _, p, req in sw.requests
        if peer is None or p == peer
        for r in req.ranges
        for i in range(r.start, r.start + r.count)
    ]


def test_bitmap_codec_round_trips() -> None:
    states = bytearray([1, 0, 1, 1, 0, 0, 0, 1, 1, 2])
    bm = bits_to_bitmap(states, len(states))
    assert bm == bitmap({0, 2, 3, 7, 8}, 10)
    assert bitmap_to_bits(bm, 10) == bytearray([1, 0, 1, 1, 0, 0, 0, 1, 1, 0])


def test_one_provider_completes_and_reports_progress() -> None:
    sw, blob = swarm_with(40, ["a"], last=1000)
    f = sw.f
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert blob.spec.handle in sw.complete
    p = f.progress(blob.spec.handle)
    assert p is not None
    assert (p.chunk_count, p.stored_chunks, p.stored_bytes) == (40, 40, blob.spec.size)
    assert p.peers_used == ("a",)
    assert p.providers == ("a",)
    assert p.duplicate_bytes == 0
    assert p.bytes_received == blob.spec.size
    assert f.stored_bitmap(blob.spec.handle) == bitmap(set(range(40)), 40)
    assert sum(isinstance(n, OutlineVerified) for n in sw.notices) == 1
    assert f.active() == [blob.spec.handle]


def test_three_equal_providers_share_evenly_with_few_duplicates() -> None:
    cfg = FetcherConfig(max_inflight_bytes_per_peer=16 * CHUNK)  # pipelines << blob, as 1 GiB
    sw, blob = swarm_with(1024, ["a", "b", "c"], cfg)
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    p = sw.f.progress(blob.spec.handle)
    assert p is not None
    assert p.stored_chunks == 1024
    assert p.duplicate_bytes <= 0.02 * blob.spec.size
    served = Counter(peer for _, _, peer in sw.arrivals)
    for name in "abc":
        assert 0.25 < served[name] / 1024 < 0.42, served


def test_chunks_are_requested_only_from_peers_that_hold_them_rarest_first() -> None:
    blob = make_blob(64)
    a, b = Provider("a", latency=0.01), Provider("b")  # b's bitmap is known first
    a.holds(blob)
    b.holds(blob, set(range(0, 64, 2)))  # odd chunks are rare: only a holds them
    sw = FakeSwarm(Fetcher(FetcherConfig(max_inflight_bytes_per_peer=4 * CHUNK)), [a, b])
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert blob.spec.handle in sw.complete
    assert all(i % 2 == 0 for i in requested_indices(sw, "b"))  # plus FakeSwarm's bitmap check
    first_from_a = requested_indices(sw, "a")[:16]
    assert all(i % 2 == 1 for i in first_from_a), first_from_a


def _order_with_a_fellow(salt: bytes, *, fellow: bool) -> list[int]:
    """The chunks asked of the origin, in order, when a second connected peer lacks the blob
    (a fellow fetcher: every node replicates what it learns of) or when the origin is alone."""
    blob = make_blob(64)
    origin, other = Provider("a"), Provider("b")
    origin.holds(blob)
    peers = [origin, other] if fellow else [origin]
    sw = FakeSwarm(Fetcher(FetcherConfig(max_inflight_bytes_per_peer=4 * CHUNK), salt=salt), peers)
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert blob.spec.handle in sw.complete
    return requested_indices(sw, "a")


def test_alone_with_the_origin_chunks_are_asked_in_order() -> None:
    # In order: writes and the whole-blob hash stay sequential (the 1 GiB node-to-node case).
    assert _order_with_a_fellow(b"n1", fellow=False) == list(range(64))


def test_fellow_fetchers_each_take_the_origins_chunks_in_an_order_of_their_own() -> None:
    # All fetchers asking the one origin for 0, 1, 2, ... had nothing to give each other:
    # netsim's blob-swarm took as long as a lone source. Each node shuffles by its own salt.
    first = _order_with_a_fellow(b"n1", fellow=True)
    assert sorted(first) == list(range(64))
    assert first != list(range(64))
    assert _order_with_a_fellow(b"n1", fellow=True) == first  # the same node: the same order
    second = _order_with_a_fellow(b"n2", fellow=True)
    assert second != first
    # Different orders put different chunks at the front: little to race for at the origin.
    assert len(set(first[:8]) & set(second[:8])) < 8


def test_pipeline_respects_the_per_peer_cap() -> None:
    cfg = FetcherConfig(max_inflight_bytes_per_peer=8 * CHUNK)
    sw, blob = swarm_with(100, ["a"], cfg)
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: sw.requests)
    first = sw.requests[0][2]
    assert sum(r.count for r in first.ranges) == 8
    assert first.ranges[0].start == 0  # adjacent chunks grouped
    assert len(first.ranges) == 1
    sw.run_until(lambda: blob.spec.handle in sw.complete)  # FakeSwarm asserts the cap each drain
    assert blob.spec.handle in sw.complete


def test_single_chunk_fast_path_skips_the_outline() -> None:
    blob = make_blob(1, last=4096, origin="b")
    a, b = Provider("a"), Provider("b")
    a.holds(blob)
    b.holds(blob)
    sw = FakeSwarm(Fetcher(), [a, b])
    sw.check_bitmaps = False
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    verified = [n for n in sw.notices if isinstance(n, OutlineVerified)]
    assert verified == [OutlineVerified(blob.spec.handle, blob.spec.handle)]
    assert [(p, type(m)) for p, m in [(p, r) for _, p, r in sw.requests]] == [("b", RequestChunks)]
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert sw.arrivals == [(blob.spec.handle, 0, "b")]


def test_fast_path_moves_on_after_dont_have() -> None:
    blob = make_blob(1, last=4096, origin="a")
    a, b = Provider("a"), Provider("b")
    b.holds(blob)
    sw = FakeSwarm(Fetcher(), [a, b])
    sw.check_bitmaps = False
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete, limit=5)
    assert [p for _, p, _ in sw.requests] == ["a", "b"]
    assert sw.arrivals == [(blob.spec.handle, 0, "b")]


def test_many_small_blobs_are_pipelined_concurrently() -> None:
    blobs = [make_blob(1, last=4096, seed=s, origin="a") for s in range(200)]
    a = Provider("a", latency=0.01)
    for b in blobs:
        a.holds(b)
    sw = FakeSwarm(Fetcher(), [a])
    sw.check_bitmaps = False
    sw.connect_all()
    for b in blobs:
        sw.f.add(sw.now, b.spec)
    sw.pump()
    assert len(requested_indices(sw, "a")) == 200  # all in flight at once: 200 x 4 KiB < cap
    assert sw.f.inflight_bytes("a") == 200 * 4096
    sw.run_until(lambda: len(sw.complete) == 200)
    assert len(sw.complete) == 200
    assert sw.now < 0.1


def test_priority_blob_overtakes() -> None:
    cfg = FetcherConfig(max_inflight_bytes_per_peer=4 * CHUNK)
    x, y = make_blob(64, seed=1), make_blob(64, seed=2)
    a = Provider("a")
    a.holds(x)
    a.holds(y)
    sw = FakeSwarm(Fetcher(cfg), [a])
    sw.connect_all()
    sw.f.add(sw.now, x.spec)
    sw.f.add(sw.now, y.spec)
    sw.pump()
    sw.run_until(lambda: len(sw.arrivals) >= 8)
    sw.f.prioritize(sw.now, y.spec.handle)
    sw.pump()
    sw.run_until(lambda: sw.complete)
    assert sw.complete == {y.spec.handle}
    assert sw.f.progress(y.spec.handle).priority  # type: ignore[union-attr]
    px = sw.f.progress(x.spec.handle)
    assert px is not None
    assert px.stored_chunks < 16


def test_blobs_share_a_peer_round_robin() -> None:
    cfg = FetcherConfig(max_inflight_bytes_per_peer=4 * CHUNK)
    x, y = make_blob(64, seed=1), make_blob(64, seed=2)
    a = Provider("a")
    a.holds(x)
    a.holds(y)
    sw = FakeSwarm(Fetcher(cfg), [a])
    sw.connect_all()
    sw.f.add(sw.now, x.spec)
    sw.f.add(sw.now, y.spec)
    sw.pump()
    sw.run_until(lambda: len(sw.arrivals) >= 64)
    per_blob = Counter(h for h, _, _ in sw.arrivals)
    assert abs(per_blob[x.spec.handle] - per_blob[y.spec.handle]) <= 8


def test_range_prioritize_streams_from_first_index() -> None:
    cfg = FetcherConfig(max_inflight_bytes_per_peer=4 * CHUNK)
    blob = make_blob(64)
    a, b = Provider("a"), Provider("b")
    a.holds(blob)
    b.holds(blob, set(range(40, 64)))  # chunks 40.. are commoner; streaming ignores rarity
    sw = FakeSwarm(Fetcher(cfg), [a, b])
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.f.prioritize(sw.now, blob.spec.handle, 20)
    sw.pump()
    sw.run_until(lambda: len(sw.arrivals) >= 44)
    got = [i for _, i, _ in sw.arrivals[:44]]
    assert sorted(got) == list(range(20, 64)), got
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert blob.spec.handle in sw.complete


def test_corrupt_peer_is_misbehaved_and_chunks_come_from_a_good_one() -> None:
    blob = make_blob(16)
    bad, good = Provider("bad", corrupt=True), Provider("good", rate=10e6)
    bad.holds(blob)
    good.holds(blob)
    sw = FakeSwarm(Fetcher(), [bad, good])
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert blob.spec.handle in sw.complete
    assert "bad" in sw.misbehaved
    assert "good" not in sw.misbehaved
    assert {peer for _, _, peer in sw.arrivals} == {"good"}
    assert sw.f.progress(blob.spec.handle).peers_used == ("good",)  # type: ignore[union-attr]


def test_bad_outline_is_misbehaved_and_another_peer_supplies_it() -> None:
    blob = make_blob(8)
    bad, good = Provider("bad", bad_outline=True, latency=0.0001), Provider("good", latency=0.01)
    bad.holds(blob)
    good.holds(blob)
    sw = FakeSwarm(Fetcher(), [bad, good])
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert sw.misbehaved == ["bad"]
    assert blob.spec.handle in sw.complete


def test_outline_with_wrong_size_is_bad_data() -> None:
    blob = make_blob(4)
    f = Fetcher()
    f.peer_up(0.0, "a")
    f.add(0.0, blob.spec)
    f.drain()
    spec = blob.spec
    f.handle_message(
        0.1,
        "a",
        Outline(
            handle=spec.handle,
            size=spec.size + 1,
            chunk_size=spec.chunk_size,
            start=0,
            digests=blob.outline,
        ),
    )
    fx = f.drain()
    assert (
        PeerMisbehaved(peer="a", reason="outline size or chunk size differs from the metadata")
        in fx.notices
    )
    assert not any(isinstance(n, OutlineVerified) for n in fx.notices)


def test_paused_sends_no_chunk_requests_until_resumed() -> None:
    sw, blob = swarm_with(16, ["a"])
    sw.f.pause(sw.now)
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: False, limit=3.0)
    assert sw.requests == []
    assert sw.f.progress(blob.spec.handle).paused  # type: ignore[union-attr]
    sw.f.resume(sw.now)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete, limit=10.0)
    assert blob.spec.handle in sw.complete


def test_unstored_bytes_apply_back_pressure() -> None:
    cfg = FetcherConfig(max_unstored_bytes=8 * CHUNK, max_inflight_bytes_per_peer=4 * CHUNK)
    sw, blob = swarm_with(64, ["a"], cfg)
    sw.hold_writes = True
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: False, limit=2.0)
    assert len(requested_indices(sw)) == len(sw.held_writes) <= 8 + 4 + 1
    before = len(sw.requests)
    sw.run_until(lambda: False, limit=4.0)
    assert len(sw.requests) == before
    sw.hold_writes = False
    for n in sw.held_writes:
        sw.write(n)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete, limit=20.0)
    assert blob.spec.handle in sw.complete


def test_remove_sends_cancel_to_providers() -> None:
    sw, blob = swarm_with(64, ["a", "b"])
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: len(sw.arrivals) >= 4)
    sw.f.remove(sw.now, blob.spec.handle)
    fx = sw.f.drain()
    cancels = {(p, m) for p, m in fx.sends if isinstance(m, Cancel)}
    assert cancels == {(p, Cancel(handle=blob.spec.handle, ranges=())) for p in "ab"}
    assert sw.f.active() == []
    assert sw.f.progress(blob.spec.handle) is None
    assert sw.f.inflight_bytes("a") == sw.f.inflight_bytes("b") == 0


def test_empty_blob_completes_at_once() -> None:
    f = Fetcher()
    spec = BlobSpec(blake3.blake3(b"").digest(), 0, CHUNK, blake3.blake3(b"").digest())
    f.add(0.0, spec)
    assert f.drain().notices == [FetchComplete(spec.handle)]


def test_resume_from_outline_and_have_requests_only_the_rest() -> None:
    blob = make_blob(20)
    a = Provider("a")
    a.holds(blob)
    sw = FakeSwarm(Fetcher(), [a])
    sw.connect_all()
    have = bitmap(set(range(10)), 20)
    sw.f.add(sw.now, blob.spec, outline=blob.outline, have=have)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert sorted(requested_indices(sw)) == list(range(10, 20))
    assert not any(isinstance(n, OutlineVerified) for n in sw.notices)


def test_peer_down_requeues_to_the_other_provider() -> None:
    sw, blob = swarm_with(64, ["a", "b"])
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: len(sw.arrivals) >= 8)
    sw.down("a")
    assert sw.f.inflight_bytes("a") == 0
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert blob.spec.handle in sw.complete


def test_silent_peer_times_out_and_chunks_go_elsewhere() -> None:
    cfg = FetcherConfig(request_timeout_s=2.0, bad_data_strikes=3)
    blob = make_blob(32)
    slow, fast = Provider("slow", rate=1.0), Provider("fast")
    slow.holds(blob)
    fast.holds(blob)
    sw = FakeSwarm(Fetcher(cfg), [slow, fast])
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete, limit=60)
    assert blob.spec.handle in sw.complete
    assert sw.misbehaved == []  # one timeout is a strike, not misbehaviour
    assert sw.now < 10


def test_dont_have_ranges_requeue_elsewhere() -> None:
    blob = make_blob(16)
    a, b = Provider("a"), Provider("b")
    a.holds(blob)
    b.holds(blob)
    sw = FakeSwarm(Fetcher(), [a, b])
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: sw.f.progress(blob.spec.handle).providers == ("a", "b"))  # type: ignore[union-attr]
    b.have[blob.spec.handle] = set()  # b lost it (retention): it answers DontHave(ranges)
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    assert {peer for _, _, peer in sw.arrivals} == {"a"}


def test_provider_that_gains_chunks_later_pushes_have_update() -> None:
    blob = make_blob(8)
    a = Provider("a")
    a.holds(blob, set())
    sw = FakeSwarm(Fetcher(), [a])
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: False, limit=1.0)
    assert sw.requests == []
    a.holds(blob, set())
    sw.gain(a, blob.spec.handle, list(range(8)))
    sw.run_until(lambda: blob.spec.handle in sw.complete, limit=30)
    assert blob.spec.handle in sw.complete


def test_wrong_size_chunk_is_rejected_at_once() -> None:
    blob = make_blob(2, last=100)
    f = Fetcher(FetcherConfig(bad_data_strikes=1))
    f.peer_up(0.0, "a")
    f.add(0.0, blob.spec, outline=blob.outline)
    f.handle_message(0.0, "a", HaveBitmap(handle=blob.spec.handle, chunk_count=2, bitmap=b"\xc0"))
    fx = f.drain()
    assert any(isinstance(m, RequestChunks) for _, m in fx.sends)
    f.handle_message(0.1, "a", ChunkData(handle=blob.spec.handle, index=1, data=b"x" * 99))
    fx = f.drain()
    assert not any(isinstance(n, WriteChunk) for n in fx.notices)
    assert any(isinstance(n, PeerMisbehaved) for n in fx.notices)


def test_unrequested_chunk_counts_as_duplicate() -> None:
    blob = make_blob(2, last=100)
    f = Fetcher()
    f.add(0.0, blob.spec, outline=blob.outline)
    f.handle_message(0.0, "z", ChunkData(handle=blob.spec.handle, index=0, data=blob.chunks[0]))
    fx = f.drain()
    assert fx.notices == []
    p = f.progress(blob.spec.handle)
    assert p is not None
    assert p.duplicate_bytes == p.bytes_received == CHUNK


def test_dont_have_all_is_reprobed() -> None:
    blob = make_blob(4)
    f = Fetcher(FetcherConfig(reprobe_s=5.0))
    f.peer_up(0.0, "a")
    f.add(0.0, blob.spec)
    fx = f.drain()
    assert fx.sends == [("a", RequestOutline(handle=blob.spec.handle, start=0))]
    f.handle_message(0.1, "a", DontHave(handle=blob.spec.handle, ranges=()))
    fx = f.drain()
    assert fx.sends == []
    assert fx.deadline == 5.0
    f.handle_timer(5.0)
    assert f.drain().sends == [("a", RequestOutline(handle=blob.spec.handle, start=0))]


def test_endgame_races_the_tail_and_cancels_the_loser() -> None:
    cfg = FetcherConfig(max_inflight_bytes_per_peer=4 * CHUNK)
    blob = make_blob(200)
    slow, fast = Provider("slow", rate=0.2e6), Provider("fast", rate=50e6)
    slow.holds(blob)
    fast.holds(blob)
    sw = FakeSwarm(Fetcher(cfg), [slow, fast])
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    cancels = [m for p, m in sw.sent if p == "slow" and isinstance(m, Cancel) and m.ranges]
    assert cancels  # the fast peer won the raced tail chunks; the slow one was told to drop them
    # without the race the slow peer's last 4 chunks alone take 4 x 64 KiB / 0.2 MB/s = 1.3 s
    assert sw.now < 1.0
    p = sw.f.progress(blob.spec.handle)
    assert p is not None
    assert p.duplicate_bytes <= 4 * CHUNK  # only the tail is raced


def test_endgame_waits_for_the_tail() -> None:
    cfg = FetcherConfig(max_inflight_bytes_per_peer=4 * CHUNK, endgame_chunks=16)
    sw, blob = swarm_with(400, ["a", "b"], cfg)
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: blob.spec.handle in sw.complete)
    per_chunk = Counter(requested_indices(sw))
    raced = [i for i, n in per_chunk.items() if n > 1]
    assert all(i >= 400 - 16 - 8 for i in raced), raced
    assert max(per_chunk.values()) <= cfg.endgame_copies


def test_repeated_timeouts_make_a_peer_misbehaved() -> None:
    cfg = FetcherConfig(request_timeout_s=1.0, reprobe_s=0.5, bad_data_strikes=2)
    blob = make_blob(8)
    silent = Provider("silent", loss=1.0)
    silent.holds(blob)
    sw = FakeSwarm(Fetcher(cfg), [silent])
    sw.connect_all()
    sw.f.add(sw.now, blob.spec)
    sw.pump()
    sw.run_until(lambda: bool(sw.misbehaved), limit=10.0)
    assert sw.misbehaved == ["silent"]
    assert 2.0 <= sw.now < 4.0  # two timeouts of 1 s, with a 0.5 s pause between


def test_new_peer_is_probed_for_active_blobs() -> None:
    blob = make_blob(4)
    f = Fetcher()
    f.add(0.0, blob.spec)
    assert f.drain().sends == []
    f.peer_up(1.0, "a")
    assert f.drain().sends == [("a", RequestOutline(handle=blob.spec.handle, start=0))]
