"""call_soon_threadsafe, executors, to_thread, run_coroutine_threadsafe."""
import asyncio
import concurrent.futures
import socket
import threading
import time

import pytest

TIMEOUT = 10


def test_call_soon_threadsafe_wakes_idle_loop(aloop):
    # The loop has nothing to do (no timers, no fds): only the wake-up from
    # call_soon_threadsafe can make it run the callback.
    ready = threading.Event()
    got = []

    def worker():
        assert ready.wait(TIMEOUT)
        aloop.call_soon_threadsafe(lambda: (got.append(threading.get_ident()),
                                            aloop.stop()))

    aloop.call_soon(ready.set)  # runs once the loop is running
    t = threading.Thread(target=worker)
    t.start()
    watchdog = threading.Timer(TIMEOUT, aloop.call_soon_threadsafe,
                               (aloop.stop,))
    watchdog.start()
    try:
        aloop.run_forever()
    finally:
        watchdog.cancel()
        t.join()
    assert got == [threading.get_ident()]


def test_call_soon_threadsafe_wakes_loop_waiting_on_long_timer(aloop):
    ready = threading.Event()
    got = []
    aloop.call_later(3600, got.append, 'never')

    def worker():
        assert ready.wait(TIMEOUT)
        aloop.call_soon_threadsafe(lambda: (got.append('woken'), aloop.stop()))

    aloop.call_soon(ready.set)
    t = threading.Thread(target=worker)
    t.start()
    t0 = time.monotonic()
    aloop.run_forever()
    t.join()
    assert got == ['woken']
    assert time.monotonic() - t0 < TIMEOUT


def test_call_soon_threadsafe_returns_handle_and_args(aloop):
    got = []
    h = aloop.call_soon_threadsafe(got.append, 'x')
    assert not h.cancelled()
    aloop.call_soon(aloop.stop)
    aloop.run_forever()
    assert got == ['x']


def test_call_soon_threadsafe_cancel_from_thread(aloop):
    got = []
    h = aloop.call_soon_threadsafe(got.append, 'cancelled')
    t = threading.Thread(target=h.cancel)
    t.start()
    t.join()
    aloop.call_soon(aloop.stop)
    aloop.run_forever()
    assert got == []


def test_many_threads_many_calls_all_delivered(aloop):
    n_threads, n_calls = 8, 2000
    start = threading.Barrier(n_threads + 1)
    received = []
    done = []

    def on_done():
        done.append(1)
        if len(done) == n_threads:
            aloop.stop()

    def worker(k):
        start.wait(TIMEOUT)
        for i in range(n_calls):
            aloop.call_soon_threadsafe(received.append, (k, i))
        aloop.call_soon_threadsafe(on_done)

    threads = [threading.Thread(target=worker, args=(k,))
               for k in range(n_threads)]
    for t in threads:
        t.start()
    aloop.call_soon(start.wait, TIMEOUT)
    aloop.run_forever()
    for t in threads:
        t.join()
    assert len(received) == n_threads * n_calls
    # Each thread's calls arrive in the order it made them.
    for k in range(n_threads):
        assert [i for kk, i in received if kk == k] == list(range(n_calls))


def test_call_soon_threadsafe_context(aloop):
    import contextvars
    var = contextvars.ContextVar('v', default='unset')
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'threaded')
    got = []

    def worker():
        aloop.call_soon_threadsafe(lambda: (got.append(var.get()), aloop.stop()),
                                   context=ctx)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    aloop.run_forever()
    assert got == ['threaded']


def test_run_in_executor(aloop):
    def blocking(a, b):
        return a + b, threading.get_ident()

    result, tid = aloop.run_until_complete(
        aloop.run_in_executor(None, blocking, 2, 3))
    assert result == 5
    assert tid != threading.get_ident()


def test_run_in_executor_exception(aloop):
    def blocking():
        raise KeyError('from thread')

    with pytest.raises(KeyError):
        aloop.run_until_complete(aloop.run_in_executor(None, blocking))


def test_run_in_executor_many(aloop):
    async def main():
        futs = [aloop.run_in_executor(None, pow, i, 2) for i in range(200)]
        return await asyncio.gather(*futs)

    assert aloop.run_until_complete(main()) == [i * i for i in range(200)]


def test_set_default_executor(aloop):
    used = []

    class Executor(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            used.append(fn)
            return super().submit(fn, *args, **kwargs)

    ex = Executor(max_workers=1)
    try:
        aloop.set_default_executor(ex)
        assert aloop.run_until_complete(
            aloop.run_in_executor(None, abs, -4)) == 4
        assert used == [abs]
    finally:
        ex.shutdown(wait=True)


def test_set_default_executor_requires_thread_pool(aloop):
    with pytest.raises(TypeError):
        aloop.set_default_executor(object())


def test_shutdown_default_executor(aloop):
    tids = []
    aloop.run_until_complete(
        aloop.run_in_executor(None, lambda: tids.append(threading.current_thread())))
    aloop.run_until_complete(aloop.shutdown_default_executor())
    assert not tids[0].is_alive()
    with pytest.raises(RuntimeError, match='shutdown'):
        aloop.run_in_executor(None, print)


def test_to_thread(aloop):
    async def main():
        return await asyncio.to_thread(lambda: threading.get_ident())

    assert aloop.run_until_complete(main()) != threading.get_ident()


def test_run_coroutine_threadsafe(aloop):
    async def coro(x):
        await asyncio.sleep(0.001)
        return x + 1

    results = []

    def worker():
        fut = asyncio.run_coroutine_threadsafe(coro(41), aloop)
        results.append(fut.result(TIMEOUT))
        aloop.call_soon_threadsafe(aloop.stop)

    t = threading.Thread(target=worker)
    t.start()
    aloop.run_forever()
    t.join()
    assert results == [42]


def test_wrap_future(aloop):
    ex = concurrent.futures.ThreadPoolExecutor(1)
    try:
        cf = ex.submit(lambda: 'wrapped')
        fut = asyncio.wrap_future(cf, loop=aloop)
        assert aloop.run_until_complete(fut) == 'wrapped'
    finally:
        ex.shutdown()


def test_call_soon_threadsafe_after_close(aloop):
    aloop.close()
    with pytest.raises(RuntimeError, match='Event loop is closed'):
        aloop.call_soon_threadsafe(lambda: None)


def test_loop_running_in_other_thread(aloop):
    # The loop runs in a worker thread; the main thread feeds it.
    started = threading.Event()
    got = []
    aloop.call_soon(started.set)
    t = threading.Thread(target=aloop.run_forever)
    t.start()
    assert started.wait(TIMEOUT)
    done = threading.Event()
    for i in range(100):
        aloop.call_soon_threadsafe(got.append, i)
    aloop.call_soon_threadsafe(done.set)
    assert done.wait(TIMEOUT)
    aloop.call_soon_threadsafe(aloop.stop)
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert got == list(range(100))


def test_python_signal_handler_runs_while_loop_waits(aloop):
    # A plain Python signal handler (not add_signal_handler) runs while the
    # loop waits, and can wake it with call_soon_threadsafe.  (A signal that
    # lands just before the poll call waits for the next wake-up, in asyncio
    # too: the thread repeats it until the handler has run.)
    import signal
    got = []
    handled = threading.Event()

    def handler(signum, frame):
        if not handled.is_set():
            got.append(signum)
            handled.set()
            aloop.call_soon_threadsafe(aloop.stop)

    old = signal.signal(signal.SIGUSR1, handler)
    main = threading.get_ident()
    ready = threading.Event()

    def worker():
        assert ready.wait(TIMEOUT)
        for _ in range(200):
            signal.pthread_kill(main, signal.SIGUSR1)
            if handled.wait(0.05):
                return
        aloop.call_soon_threadsafe(aloop.stop)

    t = threading.Thread(target=worker)
    aloop.call_soon(ready.set)
    t.start()
    try:
        aloop.run_forever()
    finally:
        t.join()
        signal.signal(signal.SIGUSR1, old)
    assert got == [signal.SIGUSR1]


def test_add_reader_from_another_thread_while_the_loop_waits(aloop):
    """Not thread-safe in principle, but asyncio tolerates it and
    asyncio-mqtt does it (paho-mqtt opens its socket in the executor and
    watches it from there): readers added by another thread while the loop
    waits, then a call_soon_threadsafe, all fire.  A hundred of them, so
    that the watched set grows while the loop is inside poll()."""
    pairs = [socket.socketpair() for _ in range(100)]
    fired = []
    ready = threading.Event()

    def on_readable(i):
        aloop.remove_reader(pairs[i][0].fileno())
        fired.append(i)
        if len(fired) == len(pairs):
            aloop.stop()

    def register():
        assert ready.wait(TIMEOUT)
        for i, (a, _) in enumerate(pairs):
            aloop.add_reader(a.fileno(), on_readable, i)
        for _, b in pairs:
            b.send(b'x')
        aloop.call_soon_threadsafe(lambda: None)

    aloop.call_soon(ready.set)  # runs once the loop is running
    t = threading.Thread(target=register)
    t.start()
    watchdog = threading.Timer(TIMEOUT, aloop.call_soon_threadsafe,
                               (aloop.stop,))
    watchdog.start()
    try:
        aloop.run_forever()
    finally:
        watchdog.cancel()
        t.join()
        for a, b in pairs:
            a.close()
            b.close()
    assert sorted(fired) == list(range(len(pairs)))
