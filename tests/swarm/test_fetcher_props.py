"""Random swarms for the fetch scheduler (hypothesis): partial, lossy, corrupt, slow and dying
providers around one live provider holding everything. The fake swarm asserts on every drain
that no chunk is asked of a peer that did not announce it and no peer's pipeline passes the cap;
here we check that the download completes, every byte stored is verified, and the books balance.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarmnode.swarm.fetcher import Fetcher, FetcherConfig
from tests.swarm.fetcher_swarm import CHUNK, FakeSwarm, Provider, make_blob


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[FakeSwarm, bytes, list[tuple[float, str]], int]:
    count = draw(st.integers(2, 80))
    last = draw(st.integers(1, CHUNK))
    blob = make_blob(count, last=last, seed=draw(st.integers(0, 250)))
    cfg = FetcherConfig(
        max_inflight_bytes_per_peer=draw(st.integers(1, 24)) * CHUNK,
        max_unstored_bytes=draw(st.integers(1, 32)) * CHUNK,
        request_timeout_s=1.0,
        reprobe_s=0.5,
        bad_data_strikes=draw(st.integers(1, 3)),
        endgame_copies=draw(st.integers(1, 3)),
    )
    full = Provider(
        "full",
        rate=draw(st.sampled_from([1e6, 20e6, 100e6])),
        latency=draw(st.floats(0.0001, 0.05)),
    )
    full.holds(blob)
    providers = [full]
    downs: list[tuple[float, str]] = []
    for k in range(draw(st.integers(0, 3))):
        p = Provider(
            f"p{k}",
            rate=draw(st.sampled_from([0.5e6, 5e6, 100e6])),
            latency=draw(st.floats(0.0001, 0.05)),
            loss=draw(st.sampled_from([0.0, 0.0, 0.2, 1.0])),
            corrupt=draw(st.booleans()),
            bad_outline=draw(st.booleans()),
        )
        p.holds(blob, set(draw(st.lists(st.integers(0, count - 1), max_size=count))))
        providers.append(p)
        if draw(st.booleans()):
            downs.append((draw(st.floats(0.0, 2.0)), p.name))
    sw = FakeSwarm(Fetcher(cfg), providers, seed=draw(st.integers(0, 2**32)))
    return sw, blob.spec.handle, sorted(downs), count


@given(scenarios())
def test_download_completes_when_a_live_provider_holds_everything(
    scenario: tuple[FakeSwarm, bytes, list[tuple[float, str]], int],
) -> None:
    sw, handle, downs, count = scenario
    sw.connect_all()
    sw.f.add(sw.now, sw.providers["full"].blobs[handle].spec)
    sw.pump()
    for at, name in downs:
        sw.run_until(lambda at=at: sw.now >= at or handle in sw.complete, limit=at)
        sw.down(name)
    sw.run_until(lambda: handle in sw.complete, limit=600.0)
    assert handle in sw.complete, sw.f.progress(handle)
    progress = sw.f.progress(handle)
    assert progress is not None
    assert progress.stored_chunks == count
    assert sorted(i for h, i, _ in sw.arrivals if h == handle) == list(range(count))
    assert progress.bytes_received >= progress.stored_bytes + progress.duplicate_bytes
    assert "full" not in sw.misbehaved or sw.f.config.bad_data_strikes == 1
    assert all(sw.f.inflight_bytes(p) == 0 for p in sw.providers)
