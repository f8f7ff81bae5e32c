"""Exceptions raised by callbacks; the exception handler."""
import asyncio
import logging

import pytest

from conftest import run_iteration


def boom():
    raise ZeroDivisionError('boom')


def test_exception_in_callback_goes_to_handler(aloop):
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append((loop, ctx)))
    h = aloop.call_soon(boom)
    aloop.call_soon(aloop.stop)
    aloop.run_forever()
    assert len(contexts) == 1
    loop, ctx = contexts[0]
    assert loop is aloop
    assert set(ctx) >= {'message', 'exception', 'handle'}
    assert ctx['message'].startswith('Exception in callback boom()')
    assert isinstance(ctx['exception'], ZeroDivisionError)
    assert ctx['handle'] is h


def test_context_keys_same_as_asyncio(aloop):
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    aloop.call_soon(boom)
    aloop.call_later(0, boom)
    aloop.call_later(0.001, aloop.stop)
    aloop.run_forever()
    assert [sorted(c) for c in contexts] == [
        ['exception', 'handle', 'message']] * 2
    assert contexts[0]['message'] == contexts[1]['message']


def test_message_includes_callback_source(aloop):
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    def named_callback(a, b):
        raise ValueError

    aloop.call_soon(named_callback, 1, 'x')
    run_iteration(aloop)
    msg = contexts[0]['message']
    assert msg.startswith("Exception in callback ")
    assert "named_callback(1, 'x')" in msg
    assert 'test_errors.py' in msg


def test_following_callbacks_still_run(aloop):
    aloop.set_exception_handler(lambda loop, ctx: None)
    got = []
    aloop.call_soon(boom)
    aloop.call_soon(got.append, 'after')
    run_iteration(aloop)
    assert got == ['after']


def test_get_set_exception_handler(aloop):
    assert aloop.get_exception_handler() is None

    def handler(loop, ctx):
        pass

    aloop.set_exception_handler(handler)
    assert aloop.get_exception_handler() is handler
    aloop.set_exception_handler(None)
    assert aloop.get_exception_handler() is None
    with pytest.raises(TypeError):
        aloop.set_exception_handler('not callable')


def test_default_exception_handler_logs(aloop, caplog):
    aloop.call_soon(boom)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        run_iteration(aloop)
    records = [r for r in caplog.records if r.name == 'asyncio']
    assert len(records) == 1
    assert records[0].getMessage().startswith('Exception in callback boom()')
    assert records[0].exc_info[0] is ZeroDivisionError


def test_default_exception_handler_direct_call(aloop, caplog):
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        aloop.default_exception_handler({'message': 'custom message here'})
        aloop.call_exception_handler({'message': 'via call', 'extra': 1})
    msgs = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
    assert msgs[0] == 'custom message here'
    assert msgs[1].startswith('via call')
    assert 'extra: 1' in msgs[1]


def test_custom_handler_can_delegate_to_default(aloop, caplog):
    seen = []

    def handler(loop, ctx):
        seen.append(ctx['message'])
        loop.default_exception_handler(ctx)

    aloop.set_exception_handler(handler)
    aloop.call_soon(boom)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        run_iteration(aloop)
    assert len(seen) == 1
    assert any('Exception in callback' in r.getMessage()
               for r in caplog.records)


def test_handler_that_raises_is_logged(aloop, caplog):
    def bad_handler(loop, ctx):
        raise RuntimeError('handler broke')

    aloop.set_exception_handler(bad_handler)
    got = []
    aloop.call_soon(boom)
    aloop.call_soon(got.append, 'still-runs')
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        run_iteration(aloop)
    assert got == ['still-runs']
    msgs = [r.getMessage() for r in caplog.records]
    assert any('Unhandled error in exception handler' in m for m in msgs)


def test_exception_in_timer_callback(aloop):
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    h = aloop.call_later(0.001, boom)
    aloop.call_later(0.01, aloop.stop)
    aloop.run_forever()
    assert len(contexts) == 1
    assert contexts[0]['handle'] is h
    assert isinstance(contexts[0]['exception'], ZeroDivisionError)


def test_task_exception_never_retrieved(aloop):
    import gc
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    async def failing():
        raise OSError('lost')

    task = aloop.create_task(failing())
    aloop.run_until_complete(asyncio.sleep(0.001))
    del task
    gc.collect()
    assert len(contexts) == 1
    assert contexts[0]['message'] == 'Task exception was never retrieved'
    assert isinstance(contexts[0]['exception'], OSError)


@pytest.mark.parametrize('exc_type', [KeyboardInterrupt, SystemExit])
def test_base_exception_escapes_run_forever(aloop, exc_type):
    handled = []
    aloop.set_exception_handler(lambda loop, ctx: handled.append(ctx))
    order = []

    def raiser():
        order.append('raiser')
        raise exc_type()

    aloop.call_soon(order.append, 'before')
    aloop.call_soon(raiser)
    aloop.call_soon(order.append, 'after')
    with pytest.raises(exc_type):
        aloop.run_forever()
    assert not aloop.is_running()
    assert handled == []
    assert order == ['before', 'raiser']
    # The loop is usable and the remaining callback runs later.
    aloop.call_soon(aloop.stop)
    aloop.run_forever()
    assert order == ['before', 'raiser', 'after']
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


@pytest.mark.parametrize('exc_type', [KeyboardInterrupt, SystemExit])
def test_base_exception_escapes_run_until_complete(aloop, exc_type):
    def raiser():
        raise exc_type()

    later = []

    async def main():
        aloop.call_soon(raiser)
        aloop.call_soon(later.append, 1)
        await asyncio.sleep(10)

    task = aloop.create_task(main())
    with pytest.raises(exc_type):
        aloop.run_until_complete(task)
    assert not aloop.is_running()
    assert not task.done()
    assert aloop.run_until_complete(asyncio.sleep(0, 'again')) == 'again'
    assert later == [1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        aloop.run_until_complete(task)


@pytest.mark.parametrize('exc_type', [KeyboardInterrupt, SystemExit])
def test_base_exception_in_timer_escapes(aloop, exc_type):
    def raiser():
        raise exc_type()

    aloop.call_later(0.001, raiser)
    with pytest.raises(exc_type):
        aloop.run_forever()
    assert not aloop.is_running()
    assert aloop.run_until_complete(asyncio.sleep(0.001, 'ok')) == 'ok'


@pytest.mark.parametrize('exc_type', [KeyboardInterrupt, SystemExit])
def test_base_exception_in_coroutine(aloop, exc_type):
    async def main():
        raise exc_type()

    with pytest.raises(exc_type):
        aloop.run_until_complete(main())
    assert aloop.run_until_complete(asyncio.sleep(0, 1)) == 1


def test_base_exception_in_reader_escapes(aloop):
    import socket
    a, b = socket.socketpair()
    try:
        def raiser():
            a.recv(1)
            raise KeyboardInterrupt

        aloop.add_reader(a, raiser)
        b.send(b'x')
        with pytest.raises(KeyboardInterrupt):
            aloop.run_forever()
        assert aloop.remove_reader(a) is True
        assert not aloop.is_running()
    finally:
        a.close()
        b.close()


def test_call_exception_handler_with_custom_context(aloop):
    seen = []
    aloop.set_exception_handler(lambda loop, ctx: seen.append(ctx))
    ctx = {'message': 'hello', 'future': None}
    aloop.call_exception_handler(ctx)
    assert seen == [ctx]


def test_ctrl_c_interrupts_idle_loop(aloop):
    # The loop waits with nothing to do; SIGINT (Ctrl-C) must raise
    # KeyboardInterrupt out of run_forever(), as in asyncio.  A signal that
    # lands between the last check and the poll call waits for the next
    # wake-up in both loops (asyncio uses a wakeup fd only for
    # add_signal_handler), so the thread repeats SIGINT until it is seen.
    import signal
    import threading
    main = threading.get_ident()
    ready = threading.Event()
    seen = threading.Event()

    def on_sigint(signum, frame):
        if not seen.is_set():
            seen.set()
            raise KeyboardInterrupt

    def worker():
        assert ready.wait(10)
        for _ in range(200):
            signal.pthread_kill(main, signal.SIGINT)
            if seen.wait(0.05):
                return

    old = signal.signal(signal.SIGINT, on_sigint)
    t = threading.Thread(target=worker)
    aloop.call_soon(ready.set)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            aloop.run_forever()
    finally:
        seen.set()
        t.join()
        signal.signal(signal.SIGINT, old)
    assert not aloop.is_running()
    assert aloop.run_until_complete(asyncio.sleep(0, 'after')) == 'after'
