"""Debug mode: slow callbacks, thread checks, callback checks, tracebacks."""
import asyncio
import logging
import socket
import threading
import time

import pytest

from conftest import run_iteration

TIMEOUT = 10


def test_set_get_debug(aloop):
    aloop.set_debug(True)
    assert aloop.get_debug() is True
    aloop.set_debug(False)
    assert aloop.get_debug() is False


def _slow(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # busy: the callback itself is slow
        pass


def test_slow_callback_logged(aloop, caplog):
    aloop.set_debug(True)
    aloop.slow_callback_duration = 0.01

    def slow_callback():
        _slow(0.03)

    aloop.call_soon(slow_callback)
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        run_iteration(aloop)
    msgs = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
    slow = [m for m in msgs if m.startswith('Executing <Handle')]
    assert len(slow) == 1, msgs
    assert 'slow_callback' in slow[0]
    took = float(slow[0].split(' took ')[1].split(' seconds')[0])
    assert took >= 0.03 - 1e-3


def test_slow_timer_callback_logged(aloop, caplog):
    aloop.set_debug(True)
    aloop.slow_callback_duration = 0.01

    def slow_timer():
        _slow(0.03)
        aloop.stop()

    aloop.call_later(0.001, slow_timer)
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        aloop.run_forever()
    msgs = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
    assert any(m.startswith('Executing <TimerHandle') and 'slow_timer' in m
               and ' took ' in m for m in msgs), msgs


def test_fast_callback_not_logged(aloop, caplog):
    aloop.set_debug(True)
    aloop.slow_callback_duration = 5
    aloop.call_soon(lambda: None)
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        run_iteration(aloop)
    assert not [r for r in caplog.records if 'Executing' in r.getMessage()]


def test_slow_callback_not_logged_without_debug(aloop, caplog):
    aloop.set_debug(False)
    aloop.slow_callback_duration = 0.001
    aloop.call_soon(_slow, 0.01)
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        run_iteration(aloop)
    assert not [r for r in caplog.records if 'Executing' in r.getMessage()]


def test_slow_callback_duration_settable(aloop):
    aloop.slow_callback_duration = 0.5
    assert aloop.slow_callback_duration == 0.5


def _call_from_other_thread(loop, fn):
    """Calls fn() in a thread while loop runs; returns what it raised."""
    ready = threading.Event()
    result = []

    def worker():
        if not ready.wait(TIMEOUT):
            result.append('timeout')
        else:
            try:
                fn()
                result.append(None)
            except BaseException as exc:
                result.append(exc)
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(ready.set)
    t = threading.Thread(target=worker)
    t.start()
    loop.run_forever()
    t.join()
    return result[0]


@pytest.mark.parametrize('method', ['call_soon', 'call_later', 'call_at'])
def test_non_threadsafe_call_from_other_thread_in_debug(aloop, method):
    aloop.set_debug(True)
    call = {
        'call_soon': lambda: aloop.call_soon(print),
        'call_later': lambda: aloop.call_later(1, print),
        'call_at': lambda: aloop.call_at(aloop.time() + 1, print),
    }[method]
    exc = _call_from_other_thread(aloop, call)
    assert isinstance(exc, RuntimeError)
    assert str(exc) == ('Non-thread-safe operation invoked on an event loop '
                        'other than the current one')


def test_call_soon_threadsafe_from_other_thread_in_debug_ok(aloop):
    aloop.set_debug(True)
    got = []
    exc = _call_from_other_thread(
        aloop, lambda: aloop.call_soon_threadsafe(got.append, 1))
    assert exc is None
    assert got == [1]


def test_call_soon_from_other_thread_without_debug_ok(aloop):
    aloop.set_debug(False)
    exc = _call_from_other_thread(aloop, lambda: aloop.call_soon(print, end=''))
    # asyncio does not check the thread outside debug mode; print(end='')
    # is rejected by call_soon itself (a keyword argument).
    assert isinstance(exc, TypeError)
    exc = _call_from_other_thread(aloop, lambda: aloop.call_soon(lambda: None))
    assert exc is None


def test_call_soon_from_other_thread_when_not_running_in_debug(aloop):
    # Not running: no owning thread, no error (as asyncio).
    aloop.set_debug(True)
    errors = []

    def worker():
        try:
            aloop.call_soon(lambda: None)
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == []


async def coro_func():
    pass


@pytest.mark.parametrize('method', ['call_soon', 'call_later', 'call_at',
                                    'call_soon_threadsafe'])
def test_coroutine_function_rejected_in_debug(aloop, method):
    aloop.set_debug(True)
    call = {
        'call_soon': lambda f: aloop.call_soon(f),
        'call_soon_threadsafe': lambda f: aloop.call_soon_threadsafe(f),
        'call_later': lambda f: aloop.call_later(1, f),
        'call_at': lambda f: aloop.call_at(1, f),
    }[method]
    with pytest.raises(TypeError) as ei:
        call(coro_func)
    # asyncio's call_later() goes through call_at() and names it.
    expected = 'call_at' if method == 'call_later' else method
    if method == 'call_later' and aloop.kind == 'unixloop':
        assert str(ei.value).startswith('coroutines cannot be used with call_')
    else:
        assert str(ei.value) == f'coroutines cannot be used with {expected}()'


def test_call_later_coroutine_message_like_asyncio(loop):
    loop.set_debug(True)
    with pytest.raises(TypeError) as ei:
        loop.call_later(1, coro_func)
    assert str(ei.value) == 'coroutines cannot be used with call_at()'


def test_non_callable_rejected_in_debug(aloop):
    aloop.set_debug(True)
    with pytest.raises(TypeError) as ei:
        aloop.call_soon(1)
    assert str(ei.value) == ('a callable object was expected by call_soon(), '
                             'got 1')


def test_coroutine_function_accepted_without_debug(aloop):
    # Outside debug mode asyncio does not check (the call makes a
    # coroutine object that is never awaited).
    import warnings
    aloop.set_debug(False)
    h = aloop.call_soon(coro_func)
    h.cancel()
    del h
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        import gc
        gc.collect()


def test_source_traceback_in_debug(aloop):
    aloop.set_debug(True)
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    def boom():
        raise ValueError

    h = aloop.call_soon(boom)
    assert h._source_traceback
    assert h._source_traceback[-1].name == 'test_source_traceback_in_debug'
    run_iteration(aloop)
    assert 'source_traceback' in contexts[0]
    assert contexts[0]['source_traceback'] == h._source_traceback


def test_no_source_traceback_without_debug(aloop):
    aloop.set_debug(False)
    h = aloop.call_soon(lambda: None)
    assert not h._source_traceback


def test_handle_repr_created_at_in_debug(aloop):
    aloop.set_debug(True)
    h = aloop.call_soon(lambda: None)
    assert 'created at ' in repr(h)
    assert 'test_debug.py' in repr(h)


def test_blocking_socket_rejected_in_debug(aloop):
    aloop.set_debug(True)
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError, match='the socket must be non-blocking'):
            aloop.run_until_complete(aloop.sock_recv(a, 10))
    finally:
        a.close()
        b.close()


def test_run_with_debug_flag(aloop):
    async def main():
        return asyncio.get_running_loop().get_debug()

    aloop.set_debug(True)
    assert aloop.run_until_complete(main()) is True


def test_debug_mode_tracks_coroutine_origin(aloop):
    import sys
    aloop.set_debug(True)

    async def main():
        return sys.get_coroutine_origin_tracking_depth()

    assert aloop.run_until_complete(main()) > 0
    assert sys.get_coroutine_origin_tracking_depth() == 0


def _debug_messages(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == 'asyncio' and r.levelno == logging.DEBUG]


def test_transport_debug_logs_like_asyncio(aloop, caplog):
    # asyncio logs flow control and EOF of its socket transports in debug
    # mode, naming the transport by its repr.
    aloop.set_debug(True)
    a, b = socket.socketpair()
    eof = aloop.create_future()

    class Proto(asyncio.Protocol):
        def eof_received(self):
            eof.set_result(None)

    try:
        tr, _ = aloop.run_until_complete(
            aloop.create_connection(Proto, sock=a))
        with caplog.at_level(logging.DEBUG, logger='asyncio'):
            tr.pause_reading()
            tr.pause_reading()              # no change: no message
            tr.resume_reading()
            b.shutdown(socket.SHUT_WR)
            aloop.run_until_complete(asyncio.wait_for(eof, TIMEOUT))
        # (the repr is formatted when the record is: by then, closed)
        msgs = _debug_messages(caplog)
        name = type(tr).__name__
        assert [m.split('> ', 1)[1] for m in msgs
                if m.startswith(f'<{name} ')] == [
            'pauses reading', 'resumes reading', 'received EOF']
        tr.close()
        aloop.run_until_complete(asyncio.sleep(0))
    finally:
        b.close()


def test_close_logged_in_debug(aloop, caplog):
    aloop.set_debug(True)
    with caplog.at_level(logging.DEBUG, logger='asyncio'):
        aloop.close()
    assert f'Close {aloop!r}' in _debug_messages(caplog)


@pytest.mark.parametrize('how', ['PYTHONASYNCIODEBUG=1', '-X dev'])
def test_debug_mode_from_environment(how):
    # asyncio's loops start in debug mode under PYTHONASYNCIODEBUG or
    # -X dev: so do unixloop's, slow callbacks warn.
    import os
    import subprocess
    import sys
    code = '''if 1:
        import asyncio, time, unixloop
        async def main():
            loop = asyncio.get_running_loop()
            print(loop.get_debug())
            loop.slow_callback_duration = 0.001
            t = time.monotonic()
            while time.monotonic() - t < 0.01:
                pass
        unixloop.run(main())
    '''
    env = dict(os.environ)
    env.pop('PYTHONASYNCIODEBUG', None)
    args = [sys.executable]
    if how == '-X dev':
        args += ['-X', 'dev']
    else:
        env['PYTHONASYNCIODEBUG'] = '1'
    proc = subprocess.run(args + ['-c', code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == 'True\n'
    assert 'Executing <Task' in proc.stderr and ' took ' in proc.stderr


def test_task_source_traceback_in_debug(aloop):
    aloop.set_debug(True)

    async def coro():
        pass

    task = aloop.create_task(coro())
    # asyncio drops its own create_task frame: the last frame is ours.
    assert task._source_traceback[-1].name == \
        'test_task_source_traceback_in_debug'
    fut = aloop.create_future()
    # asyncio's create_future is a Python frame, unixloop's is not.
    assert 'test_task_source_traceback_in_debug' in \
        [f.name for f in fut._source_traceback[-2:]]
    aloop.run_until_complete(task)


@pytest.mark.parametrize('callback', ['connection_made', 'data_received'])
def test_slow_protocol_callback_logged(aloop, caplog, callback):
    # A slow protocol callback is reported as the handle that ran it, as
    # asyncio does (e.g. "Executing <Handle ..._read_ready()> took ...").
    aloop.set_debug(True)
    aloop.slow_callback_duration = 0.01
    a, b = socket.socketpair()
    got = aloop.create_future()

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            if callback == 'connection_made':
                _slow(0.03)

        def data_received(self, data):
            _slow(0.03)
            got.set_result(data)

    try:
        with caplog.at_level(logging.WARNING, logger='asyncio'):
            tr, _ = aloop.run_until_complete(
                aloop.create_connection(Proto, sock=a))
            b.send(b'x')
            aloop.run_until_complete(asyncio.wait_for(got, TIMEOUT))
        msgs = [r.getMessage() for r in caplog.records
                if r.name == 'asyncio' and r.levelno == logging.WARNING]
        expect = ('.connection_made(' if callback == 'connection_made'
                  else '._read_ready()')
        slow = [m for m in msgs if m.startswith('Executing <Handle ')
                and expect in m and ' took ' in m]
        assert len(slow) >= 1, msgs
        tr.close()
        aloop.run_until_complete(asyncio.sleep(0))
    finally:
        b.close()
