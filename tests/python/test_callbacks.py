"""call_soon: order, arguments, contexts, cancellation, iterations.

Behavioural tests run on stock asyncio and on unixloop (fixture ``aloop``)
and compare what they record, so a difference from asyncio fails here.
"""
import asyncio
import contextvars

import pytest

from conftest import make_loop, run_iteration

var = contextvars.ContextVar('var', default='unset')


def test_fifo_order(aloop):
    order = []
    for i in range(100):
        aloop.call_soon(order.append, i)
    aloop.call_soon(aloop.stop)
    aloop.run_forever()
    assert order == list(range(100))


def test_args_passed(aloop):
    got = []

    def cb(*args):
        got.append(args)

    aloop.call_soon(cb)
    aloop.call_soon(cb, 1)
    aloop.call_soon(cb, 1, 'two', None, (3,))
    run_iteration(aloop)
    assert got == [(), (1,), (1, 'two', None, (3,))]


def test_keyword_other_than_context_rejected(aloop):
    with pytest.raises(TypeError):
        aloop.call_soon(print, 'x', end='')


def test_missing_callback_rejected(aloop):
    with pytest.raises(TypeError):
        aloop.call_soon()


def test_context_honoured(aloop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'in-copy')
    seen = []
    aloop.call_soon(lambda: seen.append(var.get()), context=ctx)
    aloop.call_soon(lambda: seen.append(var.get()))
    run_iteration(aloop)
    assert seen == ['in-copy', 'unset']
    assert var.get() == 'unset'


def test_context_none_means_current_copy(aloop):
    token = var.set('outer')
    try:
        seen = []
        aloop.call_soon(lambda: seen.append(var.get()), context=None)
        aloop.call_soon(lambda: var.set('changed-in-callback'))
        aloop.call_soon(lambda: seen.append(var.get()))
        var.set('after-scheduling')
        run_iteration(aloop)
        # Each callback got a copy of the context of its call_soon.
        assert seen == ['outer', 'outer']
        assert var.get() == 'after-scheduling'
    finally:
        var.reset(token)


def test_callback_set_in_context_persists_in_that_context(aloop):
    ctx = contextvars.copy_context()
    aloop.call_soon(var.set, 'first', context=ctx)
    aloop.call_soon(lambda: None)
    run_iteration(aloop)
    assert ctx[var] == 'first'
    assert var.get() == 'unset'


def test_call_soon_returns_handle_with_context(loop):
    # Handle.get_context() is asyncio's API from 3.12; unixloop has it on
    # every version (asyncio 3.11 keeps it in Handle._context).
    ctx = contextvars.copy_context()
    h = loop.call_soon(lambda: None, context=ctx)
    assert h.get_context() is ctx
    h2 = loop.call_soon(lambda: None)
    assert isinstance(h2.get_context(), contextvars.Context)
    assert h2.get_context() is not ctx
    assert not h.cancelled()


def test_cancel_prevents_call(aloop):
    called = []
    h = aloop.call_soon(called.append, 'cancelled-one')
    aloop.call_soon(called.append, 'kept')
    h.cancel()
    assert h.cancelled()
    run_iteration(aloop)
    assert called == ['kept']


def test_cancel_twice_and_after_run(aloop):
    called = []
    h = aloop.call_soon(called.append, 1)
    run_iteration(aloop)
    assert called == [1]
    assert not h.cancelled()
    h.cancel()
    h.cancel()
    assert h.cancelled()


def test_cancel_from_earlier_callback_same_iteration(aloop):
    called = []
    later = []

    def first():
        called.append('first')
        later[0].cancel()

    aloop.call_soon(first)
    later.append(aloop.call_soon(called.append, 'second'))
    run_iteration(aloop)
    assert called == ['first']


def test_cancel_drops_references(aloop):
    import weakref

    class Arg:
        pass

    arg = Arg()
    ref = weakref.ref(arg)
    h = aloop.call_soon(lambda a: None, arg)
    del arg
    h.cancel()
    import gc
    gc.collect()
    assert ref() is None


def test_freeing_a_handle_that_frees_many_handles(aloop):
    # A Handle's arguments can hold the last references to other Handles:
    # freeing it frees them first, while it is itself being freed.
    # unixloop keeps freed Handles for reuse, up to a fixed number; the
    # ones freed inside must not push the outer one past that number.
    inner = [aloop.call_soon(print) for _ in range(1000)]
    for h in inner:
        h.cancel()
    aloop.call_soon(lambda handles: None, inner)
    del inner, h
    run_iteration(aloop)  # the outer Handle runs and is freed
    ran = []
    for i in range(1000):  # Handles from the kept ones and new ones
        aloop.call_soon(ran.append, i)
    run_iteration(aloop)
    assert ran == list(range(1000))


def _iteration_scenario(loop):
    """Record which callbacks run in which run_forever() call."""
    order = []

    def a():
        order.append('a')
        loop.call_soon(c)

    def b():
        order.append('b')
        loop.stop()

    def c():
        order.append('c')
        loop.call_soon(d)

    def d():
        order.append('d')
        loop.stop()

    loop.call_soon(a)
    loop.call_soon(b)
    loop.run_forever()
    order.append('|')
    loop.run_forever()
    order.append('|')
    return order


@pytest.mark.parametrize('kind', ['asyncio', 'unixloop'])
def test_callbacks_scheduled_during_iteration_run_next(no_fd_leak, kind):
    loop = make_loop(kind)
    try:
        order = _iteration_scenario(loop)
    finally:
        loop.close()
    # a schedules c, but b stops the loop in the same iteration: c runs only
    # when the loop runs again; c schedules d which runs one iteration later.
    assert order == ['a', 'b', '|', 'c', 'd', '|']


def test_stop_then_callbacks_scheduled_in_iteration_wait(aloop):
    order = []

    def a():
        order.append('a')
        aloop.call_soon(order.append, 'next-iteration')

    aloop.call_soon(a)
    run_iteration(aloop)
    assert order == ['a']
    run_iteration(aloop)
    assert order == ['a', 'next-iteration']


def test_many_callbacks_chained(aloop):
    n = 0

    def step():
        nonlocal n
        n += 1
        if n < 10000:
            aloop.call_soon(step)
        else:
            aloop.stop()

    aloop.call_soon(step)
    aloop.run_forever()
    assert n == 10000


def test_get_running_loop_inside_callback(aloop):
    seen = []
    aloop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    run_iteration(aloop)
    assert seen == [aloop]
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_handle_callback_attributes(aloop):
    def cb(x):
        pass

    h = aloop.call_soon(cb, 42)
    assert h._callback is cb
    assert h._args == (42,)
    h.cancel()
    # asyncio drops callback and args on cancel (not in debug mode).
    assert h._callback is None
    assert h._args is None
