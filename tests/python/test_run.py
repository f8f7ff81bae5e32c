"""run_until_complete, run_forever, stop, is_running, close."""
import asyncio
import gc
import warnings
import weakref

import pytest

import unixloop
from conftest import make_loop, open_fds, run_iteration


def test_run_until_complete_coroutine(aloop):
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert aloop.run_until_complete(main(21)) == 42


def test_run_until_complete_future(aloop):
    fut = aloop.create_future()
    aloop.call_soon(fut.set_result, 'value')
    assert aloop.run_until_complete(fut) == 'value'


def test_run_until_complete_done_future(aloop):
    fut = aloop.create_future()
    fut.set_result(7)
    assert aloop.run_until_complete(fut) == 7


def test_run_until_complete_raises_exception(aloop):
    async def main():
        raise LookupError('inner')

    with pytest.raises(LookupError, match='inner'):
        aloop.run_until_complete(main())


def test_run_until_complete_cancelled(aloop):
    fut = aloop.create_future()
    aloop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        aloop.run_until_complete(fut)


def test_run_until_complete_not_awaitable(aloop):
    with pytest.raises(TypeError):
        aloop.run_until_complete(42)


def test_run_until_complete_future_of_other_loop(aloop, no_fd_leak):
    other = make_loop(aloop.kind)
    try:
        fut = other.create_future()
        with pytest.raises(ValueError):
            aloop.run_until_complete(fut)
    finally:
        other.close()


def test_run_until_complete_stopped_early(aloop):
    fut = aloop.create_future()
    aloop.call_soon(aloop.stop)
    with pytest.raises(RuntimeError,
                       match='Event loop stopped before Future completed'):
        aloop.run_until_complete(fut)
    fut.cancel()


def test_run_until_complete_task_with_timers(aloop):
    async def main():
        t0 = aloop.time()
        await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.sleep(0.01), timeout=5)
        return aloop.time() - t0

    assert aloop.run_until_complete(main()) >= 0.03 - 2e-3


def test_run_forever_and_stop(aloop):
    got = []
    aloop.call_soon(got.append, 1)
    aloop.call_later(0.01, aloop.stop)
    aloop.run_forever()
    assert got == [1]
    assert not aloop.is_running()
    # It can run again.
    aloop.call_soon(got.append, 2)
    aloop.call_soon(aloop.stop)
    aloop.run_forever()
    assert got == [1, 2]


def test_stop_before_run_forever_runs_one_iteration(aloop):
    got = []

    def first():
        got.append('first')
        aloop.call_soon(got.append, 'not-this-time')

    aloop.call_soon(first)
    aloop.call_soon(got.append, 'second')
    aloop.stop()
    aloop.run_forever()
    assert got == ['first', 'second']
    aloop.stop()
    aloop.run_forever()
    assert got == ['first', 'second', 'not-this-time']


def test_stop_before_run_forever_with_empty_queue_returns(aloop):
    aloop.stop()
    aloop.run_forever()  # must not block
    assert not aloop.is_running()


def test_stop_with_pending_timer_does_not_wait(aloop):
    import time
    aloop.call_later(30, lambda: None)
    aloop.call_soon(aloop.stop)
    t0 = time.monotonic()
    aloop.run_forever()
    assert time.monotonic() - t0 < 5


def test_stop_twice_in_one_iteration(aloop):
    aloop.call_soon(aloop.stop)
    aloop.call_soon(aloop.stop)
    aloop.run_forever()
    got = []
    aloop.call_soon(got.append, 1)
    aloop.call_soon(aloop.stop)
    aloop.run_forever()
    assert got == [1]


def test_is_running(aloop):
    seen = []
    assert not aloop.is_running()
    aloop.call_soon(lambda: seen.append(aloop.is_running()))
    run_iteration(aloop)
    assert seen == [True]
    assert not aloop.is_running()


def test_is_running_inside_coroutine(aloop):
    async def main():
        return aloop.is_running(), asyncio.get_running_loop() is aloop

    assert aloop.run_until_complete(main()) == (True, True)


def test_run_forever_twice_raises(aloop):
    errors = []

    def reenter():
        for fn in (aloop.run_forever,
                   lambda: aloop.run_until_complete(aloop.create_future())):
            try:
                fn()
            except RuntimeError as exc:
                errors.append(str(exc))
        aloop.stop()

    aloop.call_soon(reenter)
    aloop.run_forever()
    assert errors == ['This event loop is already running'] * 2
    assert not aloop.is_running()


def test_run_other_loop_inside_running_loop(aloop, no_fd_leak):
    other = make_loop(aloop.kind)
    errors = []

    def nested():
        try:
            other.run_until_complete(other.create_future())
        except RuntimeError as exc:
            errors.append(str(exc))
        aloop.stop()

    try:
        aloop.call_soon(nested)
        aloop.run_forever()
    finally:
        other.close()
    assert errors == [
        'Cannot run the event loop while another loop is running']


def test_close_while_running(aloop):
    errors = []

    def close_it():
        try:
            aloop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        aloop.stop()

    aloop.call_soon(close_it)
    aloop.run_forever()
    assert errors == ['Cannot close a running event loop']
    assert not aloop.is_closed()
    assert aloop.run_until_complete(asyncio.sleep(0, 'usable')) == 'usable'


@pytest.mark.parametrize('call', [
    lambda l: l.call_soon(lambda: None),
    lambda l: l.call_later(1, lambda: None),
    lambda l: l.call_at(1, lambda: None),
    lambda l: l.call_soon_threadsafe(lambda: None),
    lambda l: l.run_forever(),
    lambda l: l.run_until_complete(l.create_future()),
    lambda l: l.create_task(asyncio.sleep(0)),
    lambda l: l.run_in_executor(None, print),
], ids=['call_soon', 'call_later', 'call_at', 'call_soon_threadsafe',
        'run_forever', 'run_until_complete', 'create_task',
        'run_in_executor'])
def test_calls_after_close(aloop, call):
    aloop.close()
    assert aloop.is_closed()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # never-awaited coro
        with pytest.raises(RuntimeError, match='Event loop is closed'):
            call(aloop)
        gc.collect()


def test_close_twice(aloop):
    aloop.close()
    aloop.close()
    assert aloop.is_closed()


def test_close_drops_pending_callbacks(aloop):
    import weakref

    class Obj:
        pass

    obj = Obj()
    ref = weakref.ref(obj)
    aloop.call_soon(lambda o: None, obj)
    aloop.call_later(100, lambda o: None, obj)
    del obj
    aloop.close()
    gc.collect()
    assert ref() is None


def test_stop_on_closed_loop_is_harmless(aloop):
    aloop.close()
    aloop.stop()


def test_create_and_close_200_loops_no_fd_leak(no_fd_leak):
    before = open_fds()
    for _ in range(200):
        loop = unixloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    assert open_fds() == before


def _unclosed_loops(pending):
    before = open_fds()
    refs = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always', ResourceWarning)
        for _ in range(200):
            loop = unixloop.new_event_loop()
            if pending:
                loop.call_soon(lambda: None)
                loop.call_later(10, lambda: None)
            refs.append(weakref.ref(loop))
            del loop
        gc.collect()
    warned = any(issubclass(x.category, ResourceWarning) and
                 'unclosed event loop' in str(x.message) for x in w)
    del w  # the warnings hold the loops as their source
    gc.collect()
    alive = sum(r() is not None for r in refs)
    leaked = len(open_fds()) - len(before)
    return alive, leaked, warned


def test_unclosed_loops_garbage_collected_no_fd_leak(no_fd_leak):
    # asyncio warns about a loop that was not closed, and closes it.
    assert _unclosed_loops(pending=False) == (0, 0, True)


def test_unclosed_loops_with_pending_callbacks_collected():
    # No no_fd_leak fixture here: this test measures the leak itself.
    assert _unclosed_loops(pending=True) == (0, 0, True)


def test_loop_in_reference_cycle_collected(no_fd_leak):
    import weakref
    before = open_fds()
    loop = unixloop.new_event_loop()
    loop.self_ref = loop
    loop.call_soon(lambda l: None, loop)
    ref = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert ref() is None
    assert open_fds() == before


def test_create_future_and_task(aloop):
    fut = aloop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is aloop

    async def coro():
        return 'task-result'

    task = aloop.create_task(coro(), name='my-task')
    assert isinstance(task, asyncio.Task)
    assert task.get_name() == 'my-task'
    assert task.get_loop() is aloop
    assert aloop.run_until_complete(task) == 'task-result'


def test_task_factory(aloop):
    made = []

    def factory(loop, coro, **kwargs):
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    assert aloop.get_task_factory() is None
    aloop.set_task_factory(factory)
    assert aloop.get_task_factory() is factory

    async def coro():
        return 5

    task = aloop.create_task(coro())
    assert len(made) == 1
    assert aloop.run_until_complete(task) == 5
    aloop.set_task_factory(None)
    assert aloop.get_task_factory() is None
    with pytest.raises(TypeError):
        aloop.set_task_factory(42)


def test_shutdown_asyncgens(aloop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(asyncio.get_running_loop() is aloop)

    async def start():
        g = agen()
        assert await g.__anext__() == 1
        return g

    g = aloop.run_until_complete(start())
    assert finalized == []
    aloop.run_until_complete(aloop.shutdown_asyncgens())
    assert finalized == [True]
    del g


def test_asyncgen_finalizer_hook_on_gc(aloop):
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append('done')

    async def main():
        g = agen()
        await g.__anext__()
        del g
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    aloop.run_until_complete(main())
    assert finalized == ['done']


def test_asyncgen_hooks_restored(aloop):
    import sys
    hooks = sys.get_asyncgen_hooks()
    aloop.run_until_complete(asyncio.sleep(0))
    assert sys.get_asyncgen_hooks() == hooks


def test_gather_many_tasks(aloop):
    async def worker(i):
        await asyncio.sleep(0.001 * (i % 5))
        return i

    async def main():
        return await asyncio.gather(*(worker(i) for i in range(500)))

    assert aloop.run_until_complete(main()) == list(range(500))
