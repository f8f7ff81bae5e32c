"""Entry points: unixloop.run, install, EventLoopPolicy."""
import asyncio
import threading

import pytest

import unixloop


@pytest.fixture
def restore_policy(no_fd_leak):
    old = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(old)
    asyncio.set_event_loop(None)


async def whoami(value=None):
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)
    return value, loop


def test_run_returns_result_on_unixloop(no_fd_leak):
    value, loop = unixloop.run(whoami('result'))
    assert value == 'result'
    assert isinstance(loop, unixloop.Loop)
    assert loop.is_closed()


def test_run_propagates_exception(no_fd_leak):
    async def main():
        raise ArithmeticError('from main')

    with pytest.raises(ArithmeticError, match='from main'):
        unixloop.run(main())


def test_run_debug(no_fd_leak):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert unixloop.run(main(), debug=True) is True
    assert unixloop.run(main(), debug=False) is False


def test_run_rejects_non_coroutine(no_fd_leak):
    with pytest.raises(ValueError):
        unixloop.run(42)


@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_run_inside_running_loop(no_fd_leak):
    async def inner():
        return 1

    async def main():
        coro = inner()
        try:
            unixloop.run(coro)
        finally:
            coro.close()

    try:
        with pytest.raises(RuntimeError,
                           match='cannot be called from a running event loop'):
            unixloop.run(main())
    finally:
        import gc
        gc.collect()


def test_asyncio_run_inside_running_unixloop(no_fd_leak):
    async def inner():
        return 1

    async def main():
        coro = inner()
        try:
            asyncio.run(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError,
                       match=r'asyncio.run\(\) cannot be called from a running'):
        unixloop.run(main())


def test_run_cancels_leftover_tasks(no_fd_leak):
    cancelled = []

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)
        return 'main-done'

    assert unixloop.run(main()) == 'main-done'
    assert cancelled == [True]


def test_run_shuts_down_asyncgens_and_executor(no_fd_leak):
    finalized = []
    threads = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def main():
        g = agen()
        await g.__anext__()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: threads.append(threading.current_thread()))
        return g

    g = unixloop.run(main())
    assert finalized == [True]
    assert not threads[0].is_alive()
    del g


def test_install_makes_asyncio_use_unixloop(restore_policy):
    unixloop.install()
    assert isinstance(asyncio.get_event_loop_policy(), unixloop.EventLoopPolicy)
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, unixloop.Loop)
    finally:
        loop.close()
    value, running = asyncio.run(whoami('via-asyncio-run'))
    assert value == 'via-asyncio-run'
    assert isinstance(running, unixloop.Loop)


def test_set_event_loop_policy_directly(restore_policy):
    asyncio.set_event_loop_policy(unixloop.EventLoopPolicy())
    _, running = asyncio.run(whoami())
    assert isinstance(running, unixloop.Loop)


def test_policy_restored_means_stock_asyncio(restore_policy):
    unixloop.install()
    asyncio.set_event_loop_policy(None)
    _, running = asyncio.run(whoami())
    assert not isinstance(running, unixloop.Loop)


def test_event_loop_policy_new_event_loop(no_fd_leak):
    policy = unixloop.EventLoopPolicy()
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, unixloop.Loop)
        assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
        assert loop.run_until_complete(asyncio.sleep(0, 3)) == 3
    finally:
        loop.close()


def test_policy_get_set_event_loop(restore_policy):
    policy = unixloop.EventLoopPolicy()
    asyncio.set_event_loop_policy(policy)
    loop = policy.new_event_loop()
    try:
        policy.set_event_loop(loop)
        assert policy.get_event_loop() is loop
        assert asyncio.get_event_loop_policy().get_event_loop() is loop
    finally:
        policy.set_event_loop(None)
        loop.close()


def test_policy_in_other_thread(restore_policy):
    unixloop.install()
    result = []

    def worker():
        result.append(asyncio.run(whoami('thread')))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    value, running = result[0]
    assert value == 'thread'
    assert isinstance(running, unixloop.Loop)


def test_runner_with_loop_factory(no_fd_leak):
    with asyncio.Runner(loop_factory=unixloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), unixloop.Loop)
        assert runner.run(whoami(1))[0] == 1
        assert runner.run(whoami(2))[0] == 2


def test_run_many_times_no_fd_leak(no_fd_leak):
    for i in range(50):
        assert unixloop.run(whoami(i))[0] == i
