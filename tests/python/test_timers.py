"""call_later / call_at, TimerHandle, loop.time()."""
import asyncio
import contextvars
import math
import time

import pytest

from conftest import run_iteration

# asyncio runs a timer whose deadline is within clock resolution of "now".
SLACK = 1e-3


def test_time_is_monotonic_and_close_to_time_monotonic(aloop):
    a = aloop.time()
    b = aloop.time()
    assert b >= a
    assert abs(aloop.time() - time.monotonic()) < 0.5
    samples = [aloop.time() for _ in range(1000)]
    assert samples == sorted(samples)


def test_call_later_ordering_by_deadline(aloop):
    order = []
    for delay in (0.03, 0.01, 0.02, 0.0, 0.015):
        aloop.call_later(delay, order.append, delay)
    aloop.call_later(0.05, aloop.stop)
    aloop.run_forever()
    assert order == [0.0, 0.01, 0.015, 0.02, 0.03]


def test_call_at_ordering_by_deadline(aloop):
    order = []
    now = aloop.time()
    for i in (5, 3, 1, 4, 2):
        aloop.call_at(now + i / 100, order.append, i)
    aloop.call_at(now + 0.06, aloop.stop)
    aloop.run_forever()
    assert order == [1, 2, 3, 4, 5]


def test_equal_deadlines_fifo(loop):
    # unixloop-only: asyncio's heapq is not stable, so stock asyncio runs
    # timers with equal deadlines in heap order, not in FIFO order.
    aloop = loop
    order = []
    when = aloop.time() + 0.01
    for i in range(50):
        aloop.call_at(when, order.append, i)
    aloop.call_at(when, aloop.stop)
    aloop.run_forever()
    assert order == list(range(50))


def test_timer_runs_no_earlier_than_deadline(aloop):
    fired = []
    start = aloop.time()
    h = aloop.call_later(0.05, lambda: (fired.append(aloop.time()), aloop.stop()))
    aloop.run_forever()
    assert fired
    assert fired[0] >= h.when() - SLACK
    assert fired[0] - start >= 0.05 - SLACK
    assert fired[0] - start < 5


def test_when_is_time_plus_delay(aloop):
    before = aloop.time()
    h = aloop.call_later(10, lambda: None)
    after = aloop.time()
    assert before + 10 <= h.when() <= after + 10
    h2 = aloop.call_at(12345.5, lambda: None)
    assert h2.when() == 12345.5
    h.cancel()
    h2.cancel()


def test_call_later_none_delay(aloop):
    with pytest.raises(TypeError, match='delay must not be None'):
        aloop.call_later(None, lambda: None)


def test_call_later_bad_delay_type(aloop):
    with pytest.raises(TypeError):
        aloop.call_later('1', lambda: None)


def test_call_later_args_and_context(aloop):
    var = contextvars.ContextVar('v', default='unset')
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'ctx')
    got = []
    aloop.call_later(0, lambda *a: got.append((a, var.get())), 1, 2, context=ctx)
    aloop.call_at(aloop.time(), lambda *a: got.append((a, var.get())), 3)
    aloop.call_later(0.01, aloop.stop)
    aloop.run_forever()
    assert sorted(got) == [((1, 2), 'ctx'), ((3,), 'unset')]


def test_negative_delay_runs_soon(aloop):
    got = []
    aloop.call_later(-5, got.append, 'neg')
    aloop.call_at(aloop.time() - 100, got.append, 'past')
    aloop.call_soon(aloop.call_soon, aloop.stop)
    aloop.run_forever()
    assert sorted(got) == ['neg', 'past']


def test_cancel_timer(aloop):
    got = []
    h = aloop.call_later(0.01, got.append, 'cancelled')
    aloop.call_later(0.01, got.append, 'kept')
    h.cancel()
    assert h.cancelled()
    aloop.call_later(0.03, aloop.stop)
    aloop.run_forever()
    assert got == ['kept']


def test_cancel_timer_from_earlier_timer(aloop):
    got = []
    later = aloop.call_later(0.02, got.append, 'second')
    aloop.call_later(0.01, lambda: (got.append('first'), later.cancel()))
    aloop.call_later(0.04, aloop.stop)
    aloop.run_forever()
    assert got == ['first']


def test_cancel_many_timers_loop_exits_promptly(aloop):
    handles = [aloop.call_later(3600, lambda: None) for _ in range(1000)]
    for h in handles[::2]:
        h.cancel()
    for h in handles[1::2]:
        h.cancel()
    t0 = time.monotonic()
    aloop.run_until_complete(asyncio.sleep(0.01))
    assert time.monotonic() - t0 < 5


def test_timer_scheduled_from_timer(aloop):
    got = []

    def first():
        got.append('first')
        aloop.call_later(0.01, lambda: (got.append('second'), aloop.stop()))

    aloop.call_later(0.01, first)
    aloop.run_forever()
    assert got == ['first', 'second']


def test_zero_delay_timer_and_call_soon_same_iteration(aloop):
    # A due timer is moved to the ready queue behind the callbacks already in
    # it; compare with asyncio.
    got = []
    aloop.call_later(0, got.append, 'timer')
    aloop.call_soon(got.append, 'soon')
    aloop.call_soon(aloop.call_soon, aloop.stop)
    aloop.run_forever()
    assert got == ['soon', 'timer']


def test_timer_handle_comparisons(aloop):
    cb = lambda: None  # noqa: E731
    a = aloop.call_at(100.0, cb)
    b = aloop.call_at(200.0, cb)
    c = aloop.call_at(100.0, cb)
    assert a < b and a <= b and b > a and b >= a
    assert not (b < a)
    assert a <= c and a >= c
    assert a == a
    assert a != b
    assert sorted([b, a]) == [a, b]
    assert hash(a) == hash(100.0)
    for h in (a, b, c):
        h.cancel()


def test_timer_handle_compare_with_other_type(aloop):
    h = aloop.call_later(1, lambda: None)
    assert (h == 1) is False
    assert h != 'x'
    with pytest.raises(TypeError):
        h < 1
    h.cancel()


def test_timers_sorted_by_when(aloop):
    import random
    rnd = random.Random(1)
    hs = [aloop.call_at(rnd.random() * 100, lambda: None) for _ in range(50)]
    assert [h.when() for h in sorted(hs)] == sorted(h.when() for h in hs)
    for h in hs:
        h.cancel()


def test_timer_keeps_loop_waiting_until_due(aloop):
    # run_until_complete(sleep) must sleep in the poller, not return early.
    start = time.monotonic()
    result = aloop.run_until_complete(asyncio.sleep(0.05, 'done'))
    assert result == 'done'
    assert time.monotonic() - start >= 0.05 - SLACK


def test_far_future_timer_does_not_fire(aloop):
    got = []
    aloop.call_later(1e9, got.append, 'never')
    aloop.call_at(math.inf, got.append, 'never-inf')
    aloop.run_until_complete(asyncio.sleep(0.01))
    assert got == []


def test_timer_handle_cancel_after_fire(aloop):
    got = []
    h = aloop.call_later(0, got.append, 1)
    aloop.run_until_complete(asyncio.sleep(0.01))
    assert got == [1]
    h.cancel()
    assert h.cancelled()


def test_many_timers_all_run(aloop):
    got = []
    now = aloop.time()
    for i in range(2000):
        aloop.call_at(now + (i % 7) / 1000, got.append, i)
    aloop.run_until_complete(asyncio.sleep(0.02))
    assert sorted(got) == list(range(2000))
    # Ordered by deadline.
    assert [i % 7 for i in got] == sorted(i % 7 for i in got)


def test_many_timers_fifo_within_deadline(loop):
    aloop = loop  # unixloop-only (see test_equal_deadlines_fifo)
    got = []
    now = aloop.time()
    for i in range(2000):
        aloop.call_at(now + (i % 7) / 1000, got.append, i)
    aloop.run_until_complete(asyncio.sleep(0.02))
    assert len(got) == 2000
    # FIFO within equal deadlines, ordered by deadline.
    assert got == sorted(range(2000), key=lambda i: (i % 7, i))
