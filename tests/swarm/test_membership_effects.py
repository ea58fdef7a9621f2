"""The shared machine outputs: ``Effects`` merging and the ``TimerHeap`` against a dict model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol.messages import Ping
from swarmnode.swarm.effects import Effects, TimerHeap


def test_merge_appends_in_order_and_keeps_the_earlier_deadline() -> None:
    a = Effects(sends=[("x", Ping(seq=1))], hangups=["h"], deadline=5.0)
    b = Effects(sends=[("y", Ping(seq=2))], notices=["n"], deadline=3.0)
    a.merge(b)
    assert a.sends == [("x", Ping(seq=1)), ("y", Ping(seq=2))]
    assert a.hangups == ["h"]
    assert a.notices == ["n"]
    assert a.deadline == 3.0
    a.merge(Effects(deadline=None))
    assert a.deadline == 3.0
    c = Effects()
    c.merge(Effects(deadline=7.0))
    assert c.deadline == 7.0
    assert not Effects(deadline=1.0)  # a deadline alone is nothing to do now
    assert a


def test_timer_heap_reschedule_and_cancel() -> None:
    h: TimerHeap[str] = TimerHeap()
    h.schedule("a", 5.0)
    h.schedule("b", 3.0)
    h.schedule("a", 1.0)  # moves earlier
    assert h.next_deadline() == 1.0
    assert h.deadline_of("a") == 1.0
    h.cancel("a")
    assert "a" not in h
    assert h.next_deadline() == 3.0
    assert h.pop_due(2.9) == []
    assert h.pop_due(3.0) == ["b"]
    assert h.next_deadline() is None
    assert len(h) == 0


def test_timer_heap_memory_stays_bounded_under_rescheduling() -> None:
    h: TimerHeap[int] = TimerHeap()
    for i in range(10_000):
        h.schedule(i % 4, float(i))
    assert len(h) == 4
    assert len(h._heap) <= 2 * len(h) + 17


ops = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 5), st.floats(0, 100)),
        st.tuples(st.just("cancel"), st.integers(0, 5), st.just(0.0)),
        st.tuples(st.just("pop"), st.just(0), st.floats(0, 100)),
    ),
    max_size=60,
)


@given(ops)
def test_timer_heap_matches_a_dict_model(steps: list[tuple[str, int, float]]) -> None:
    h: TimerHeap[int] = TimerHeap()
    model: dict[int, float] = {}
    for op, key, at in steps:
        if op == "schedule":
            h.schedule(key, at)
            model[key] = at
        elif op == "cancel":
            h.cancel(key)
            model.pop(key, None)
        else:
            due = sorted((t, k) for k, t in model.items() if t <= at)
            fired = h.pop_due(at)
            assert sorted(fired) == sorted(k for _, k in due)
            assert [model[k] for k in fired] == sorted(model[k] for k in fired)  # earliest first
            for k in fired:
                del model[k]
        assert h.next_deadline() == (min(model.values()) if model else None)
        assert len(h) == len(model)
