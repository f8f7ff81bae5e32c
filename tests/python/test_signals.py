"""add_signal_handler / remove_signal_handler, and Python's own signal
machinery (Ctrl-C, signal.signal handlers, asyncio.Runner) with the loop
running.  Each behaviour is checked on stock asyncio and on unixloop (the
`aloop` fixture) where asyncio has it.

No sleeps: a signal is sent with os.kill() from the loop's thread (CPython
runs the Python-level handler at once and writes the signal number to the
wake-up fd) or with signal.pthread_kill() to the main thread from another
thread, which interrupts the loop's poll; every wait has a deadline.
"""
import asyncio
import os
import signal
import threading
import time

import pytest

import unixloop

TIMEOUT = 10
MAIN_THREAD = threading.main_thread().ident
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP,
           signal.SIGTERM, signal.SIGALRM)


@pytest.fixture(autouse=True)
def restore_signals():
    """Puts back every disposition and the wake-up fd a test changed."""
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    old_wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(old_wakeup)
    yield
    signal.set_wakeup_fd(old_wakeup)
    for sig, handler in saved.items():
        if signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


def wait_for(loop, fut, timeout=TIMEOUT):
    """Runs the loop until fut is done; fails (does not hang) after timeout."""
    return loop.run_until_complete(asyncio.wait_for(fut, timeout))


# Syscalls a loop waits in, for /proc/.../syscall when wchan says nothing.
_POLL_SYSCALLS = {
    'x86_64': {7, 23, 232, 270, 271, 281, 441},  # poll select epoll_wait ...
    'aarch64': {22, 72, 73, 441},                 # epoll_pwait pselect6 ppoll
}.get(os.uname().machine, set())


def _main_thread_polling():
    """True if the main thread sleeps in poll/epoll_wait/select."""
    task = '/proc/self/task/{}/'.format(threading.main_thread().native_id)
    try:
        with open(task + 'wchan') as f:
            wchan = f.read()
        if 'poll' in wchan or 'select' in wchan:
            return True
        with open(task + 'syscall') as f:
            nr = f.read().split()[0]
        return nr.isdigit() and int(nr) in _POLL_SYSCALLS
    except OSError:
        return False


def kill_main_thread_soon(loop, sig):
    """From another thread, sends sig to the main thread once the loop
    waits in poll (it ran a callback and has nothing else to do; the thread
    checks /proc, with a deadline).  Returns the thread.

    Sending while the main thread runs bytecode would test less, and can
    even delay CPython's own handler: in 3.11 another thread may recompute
    the eval breaker and drop the "signal pending" bit, so the handler only
    runs when the next poll returns (stock asyncio, too)."""
    ready = threading.Event()

    def worker():
        assert ready.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not _main_thread_polling() and time.monotonic() < deadline:
            os.sched_yield()
        signal.pthread_kill(MAIN_THREAD, sig)

    loop.call_soon(ready.set)
    t = threading.Thread(target=worker)
    t.start()
    return t


# ---------------------------------------------------------------------------
# add / remove


def test_add_signal_handler_runs_callback_on_loop(aloop):
    got = []
    done = aloop.create_future()

    def cb(*args):
        got.append((args, aloop.is_running(), threading.get_ident()))
        done.set_result(None)

    assert aloop.add_signal_handler(signal.SIGUSR1, cb, 'a', 2) is None
    handle = aloop._signal_handlers[signal.SIGUSR1]
    assert handle._callback is cb
    assert handle._args == ('a', 2)
    assert not handle.cancelled()
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL,
                                                   signal.SIG_IGN, None)

    os.kill(os.getpid(), signal.SIGUSR1)
    assert got == []  # not from inside the signal handler
    wait_for(aloop, done)
    assert got == [(('a', 2), True, threading.get_ident())]

    # Again: still installed.
    done = aloop.create_future()
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_for(aloop, done)
    assert len(got) == 2

    assert aloop.remove_signal_handler(signal.SIGUSR1) is True
    assert aloop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.SIGUSR1 not in aloop._signal_handlers
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_remove_restores_default_int_handler(aloop):
    aloop.add_signal_handler(signal.SIGINT, lambda: None)
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert aloop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_remove_never_added(aloop):
    assert aloop.remove_signal_handler(signal.SIGUSR2) is False
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def test_wakeup_fd_set_and_reset(aloop):
    aloop.add_signal_handler(signal.SIGUSR1, lambda: None)
    aloop.add_signal_handler(signal.SIGUSR2, lambda: None)
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    assert fd == aloop._csock.fileno()
    aloop.remove_signal_handler(signal.SIGUSR1)
    assert signal.set_wakeup_fd(fd) == fd  # still set: one handler left
    aloop.remove_signal_handler(signal.SIGUSR2)
    assert signal.set_wakeup_fd(-1) == -1  # the last removal reset it


def test_readd_replaces_callback(aloop):
    got = []
    done = aloop.create_future()
    aloop.add_signal_handler(signal.SIGUSR1, got.append, 'first')
    aloop.add_signal_handler(signal.SIGUSR1,
                             lambda x: (got.append(x), done.set_result(None)),
                             'second')
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_for(aloop, done)
    assert got == ['second']
    assert aloop.remove_signal_handler(signal.SIGUSR1) is True
    assert aloop.remove_signal_handler(signal.SIGUSR1) is False


def test_cancelled_handle_removes_handler(aloop):
    # asyncio: a delivery to a cancelled Handle removes the handler instead.
    got = []
    aloop.add_signal_handler(signal.SIGUSR1, got.append, 'x')
    aloop._signal_handlers[signal.SIGUSR1].cancel()
    done = aloop.create_future()
    aloop.add_signal_handler(signal.SIGUSR2, done.set_result, None)
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR2)
    wait_for(aloop, done)
    assert got == []
    assert signal.SIGUSR1 not in aloop._signal_handlers
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_callback_exception_goes_to_exception_handler(aloop):
    contexts = []
    done = aloop.create_future()

    def handler(loop, context):
        contexts.append(context)
        done.set_result(None)

    def cb():
        raise ZeroDivisionError('boom')

    aloop.set_exception_handler(handler)
    aloop.add_signal_handler(signal.SIGUSR1, cb)
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_for(aloop, done)
    [context] = contexts
    assert isinstance(context['exception'], ZeroDivisionError)
    assert context['message'].startswith('Exception in callback')
    # The handler survives the exception.
    assert signal.SIGUSR1 in aloop._signal_handlers


def test_no_callback_after_remove(aloop):
    # Delivered (CPython's handler wrote the number to the wake-up fd at
    # once), then removed before the loop read it: the callback does not run.
    got = []
    aloop.add_signal_handler(signal.SIGUSR1, got.append, 1)
    done = aloop.create_future()
    aloop.add_signal_handler(signal.SIGUSR2, done.set_result, None)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert aloop.remove_signal_handler(signal.SIGUSR1) is True
    os.kill(os.getpid(), signal.SIGUSR2)
    wait_for(aloop, done)
    assert got == []


def test_delivered_then_readded_runs_new_callback(aloop):
    # asyncio cannot tell deliveries apart: a number still in the wake-up fd
    # goes to whatever handler the signal has when the loop reads it.
    got = []
    done = aloop.create_future()
    aloop.add_signal_handler(signal.SIGUSR1, got.append, 'old')
    os.kill(os.getpid(), signal.SIGUSR1)
    assert aloop.remove_signal_handler(signal.SIGUSR1) is True
    aloop.add_signal_handler(signal.SIGUSR1,
                             lambda: (got.append('new'),
                                      done.set_result(None)))
    wait_for(aloop, done)
    assert got == ['new']


# ---------------------------------------------------------------------------
# errors, compared with asyncio


def _error(loop, method, *args):
    with pytest.raises(BaseException) as info:
        getattr(loop, method)(*args)
    return type(info.value), str(info.value)


def _expected(method, *args):
    """What stock asyncio raises for the same call."""
    loop = asyncio.SelectorEventLoop()
    try:
        return _error(loop, method, *args)
    finally:
        loop.close()


async def _coro_func():
    pass


@pytest.mark.parametrize('sig, exc, message', [
    (0, ValueError, 'invalid signal number 0'),
    (-1, ValueError, 'invalid signal number -1'),
    (signal.NSIG, ValueError, f'invalid signal number {signal.NSIG}'),
    (1000, ValueError, 'invalid signal number 1000'),
    (32, ValueError, 'invalid signal number 32'),
    ('1', TypeError, "sig must be an int, not '1'"),
    (1.0, TypeError, 'sig must be an int, not 1.0'),
    (None, TypeError, 'sig must be an int, not None'),
    (signal.SIGKILL, RuntimeError, 'sig 9 cannot be caught'),
    (signal.SIGSTOP, RuntimeError, 'sig 19 cannot be caught'),
])
def test_add_bad_signal(aloop, sig, exc, message):
    assert _error(aloop, 'add_signal_handler', sig, lambda: None) == (
        exc, message)
    assert _expected('add_signal_handler', sig, lambda: None) == (
        exc, message)
    assert aloop._signal_handlers == {}
    assert signal.set_wakeup_fd(-1) == -1  # nothing left half-installed
    if isinstance(sig, int) and 0 < sig < signal.NSIG and sig != 32:
        assert signal.getsignal(sig) is signal.SIG_DFL


@pytest.mark.parametrize('sig, exc, message', [
    (0, ValueError, 'invalid signal number 0'),
    (signal.NSIG, ValueError, f'invalid signal number {signal.NSIG}'),
    ('1', TypeError, "sig must be an int, not '1'"),
])
def test_remove_bad_signal(aloop, sig, exc, message):
    assert _error(aloop, 'remove_signal_handler', sig) == (exc, message)
    assert _expected('remove_signal_handler', sig) == (exc, message)


def test_remove_sigkill_is_false(aloop):
    assert aloop.remove_signal_handler(signal.SIGKILL) is False


def test_add_coroutine_function(aloop):
    expected = (TypeError,
                'coroutines cannot be used with add_signal_handler()')
    assert _error(aloop, 'add_signal_handler', signal.SIGUSR1,
                  _coro_func) == expected
    coro = _coro_func()
    try:
        assert _error(aloop, 'add_signal_handler', signal.SIGUSR1,
                      coro) == expected
    finally:
        coro.close()
    assert aloop._signal_handlers == {}
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_add_coroutine_checked_before_signal(aloop):
    # asyncio checks the callback first: a bad signal and a coroutine
    # function together give the coroutine TypeError.
    assert _error(aloop, 'add_signal_handler', 0, _coro_func) == (
        TypeError, 'coroutines cannot be used with add_signal_handler()')


def test_add_on_closed_loop(aloop):
    aloop.close()
    assert _error(aloop, 'add_signal_handler', signal.SIGUSR1,
                  lambda: None) == (RuntimeError, 'Event loop is closed')
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    # remove only checks the signal, as asyncio's does.
    assert aloop.remove_signal_handler(signal.SIGUSR1) is False


@pytest.mark.parametrize('kind', ['asyncio', 'unixloop'])
def test_add_from_non_main_thread(kind, no_fd_leak):
    result = []

    def worker():
        loop = (asyncio.SelectorEventLoop() if kind == 'asyncio'
                else unixloop.new_event_loop())
        try:
            result.append(_error(loop, 'add_signal_handler', signal.SIGUSR1,
                                 lambda: None))
            result.append(dict(loop._signal_handlers))
        finally:
            loop.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive()
    [(exc, message), handlers] = result
    assert exc is RuntimeError
    assert message == ('set_wakeup_fd only works in main thread of the main '
                       'interpreter')
    assert handlers == {}
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


# ---------------------------------------------------------------------------
# bursts and several signals


def test_burst_runs_callback(aloop):
    calls = []
    done = aloop.create_future()

    def cb():
        calls.append(1)
        if not done.done():
            done.set_result(None)

    aloop.add_signal_handler(signal.SIGUSR1, cb)
    for _ in range(100):
        os.kill(os.getpid(), signal.SIGUSR1)
    wait_for(aloop, done)
    assert 1 <= len(calls) <= 100


def test_two_signals_both_run(aloop):
    got = set()
    done = aloop.create_future()

    def cb(sig):
        got.add(sig)
        if len(got) == 2 and not done.done():
            done.set_result(None)

    aloop.add_signal_handler(signal.SIGUSR1, cb, 'usr1')
    aloop.add_signal_handler(signal.SIGUSR2, cb, 'usr2')
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR2)
    wait_for(aloop, done)
    assert got == {'usr1', 'usr2'}


def test_signal_wakes_waiting_loop(aloop):
    # Sent from another thread to the main thread while the loop waits with
    # nothing else to do.
    done = aloop.create_future()
    aloop.add_signal_handler(signal.SIGUSR1, done.set_result, 'woken')
    t = kill_main_thread_soon(aloop, signal.SIGUSR1)
    try:
        assert wait_for(aloop, done) == 'woken'
    finally:
        t.join(TIMEOUT)


def test_close_removes_handlers(aloop):
    aloop.add_signal_handler(signal.SIGUSR1, lambda: None)
    aloop.add_signal_handler(signal.SIGINT, lambda: None)
    aloop.close()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.set_wakeup_fd(-1) == -1
    assert not aloop._signal_handlers
    # (no_fd_leak, through aloop, checks the self-pipe is closed)


# ---------------------------------------------------------------------------
# Python's own signal machinery with the loop running


def _need_default_sigint():
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip('SIGINT is not Python\'s default handler here')


def test_ctrl_c_from_callback(aloop):
    _need_default_sigint()
    never = aloop.create_future()
    aloop.call_later(0.001, os.kill, os.getpid(), signal.SIGINT)
    aloop.call_later(TIMEOUT, never.set_result, 'timed out')
    with pytest.raises(KeyboardInterrupt):
        aloop.run_until_complete(never)
    assert not aloop.is_running()
    # The loop is still usable.
    assert aloop.run_until_complete(asyncio.sleep(0, 'again')) == 'again'


def test_ctrl_c_while_waiting_run_until_complete(aloop):
    _need_default_sigint()
    never = aloop.create_future()
    aloop.call_later(TIMEOUT, never.set_result, 'timed out')
    t = kill_main_thread_soon(aloop, signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            aloop.run_until_complete(never)
    finally:
        t.join(TIMEOUT)
    assert not never.done()
    assert not aloop.is_running()
    assert aloop.run_until_complete(asyncio.sleep(0, 'again')) == 'again'


def test_ctrl_c_while_waiting_run_forever(aloop):
    _need_default_sigint()
    timed_out = []
    aloop.call_later(TIMEOUT, lambda: (timed_out.append(1), aloop.stop()))
    t = kill_main_thread_soon(aloop, signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            aloop.run_forever()
    finally:
        t.join(TIMEOUT)
    assert timed_out == []
    assert not aloop.is_running()


def _runner_sigint(kind, from_thread):
    """asyncio.Runner: the first SIGINT cancels the main task; run() then
    raises KeyboardInterrupt.  Returns what main saw."""
    seen = []

    async def main():
        loop = asyncio.get_running_loop()
        if from_thread:
            t = kill_main_thread_soon(loop, signal.SIGINT)
        else:
            loop.call_later(0.001, os.kill, os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(TIMEOUT)
            seen.append('timed out')
        except asyncio.CancelledError:
            seen.append('cancelled')
            raise
        finally:
            if from_thread:
                t.join(TIMEOUT)

    factory = (asyncio.SelectorEventLoop if kind == 'asyncio'
               else unixloop.new_event_loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        with pytest.raises(KeyboardInterrupt):
            runner.run(main())
        # The runner put SIGINT back.
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    return seen


@pytest.mark.parametrize('from_thread', [False, True],
                         ids=['os.kill', 'pthread_kill'])
@pytest.mark.parametrize('kind', ['asyncio', 'unixloop'])
def test_runner_sigint_cancels_main_task(kind, from_thread, no_fd_leak):
    _need_default_sigint()
    assert _runner_sigint(kind, from_thread) == ['cancelled']


def test_unixloop_run_sigint_cancels_main(no_fd_leak):
    _need_default_sigint()
    seen = []

    async def main():
        asyncio.get_running_loop().call_later(
            0.001, os.kill, os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(TIMEOUT)
        except asyncio.CancelledError:
            seen.append('cancelled')
            raise

    with pytest.raises(KeyboardInterrupt):
        unixloop.run(main())
    assert seen == ['cancelled']
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize('with_loop_handler', [False, True],
                         ids=['alone', 'with-add_signal_handler'])
def test_signal_module_handler_runs(aloop, with_loop_handler):
    # A handler set with signal.signal runs while the loop waits.
    done = aloop.create_future()
    calls = []

    def handler(signum, frame):
        calls.append((signum, threading.get_ident()))
        # A Python signal handler runs between the loop's poll and its
        # retry (PEP 475): only a thread-safe call wakes stock asyncio.
        aloop.call_soon_threadsafe(
            lambda: done.done() or done.set_result(None))

    signal.signal(signal.SIGUSR2, handler)
    if with_loop_handler:  # the wake-up fd is set then
        aloop.add_signal_handler(signal.SIGUSR1, lambda: None)
    t = kill_main_thread_soon(aloop, signal.SIGUSR2)
    try:
        wait_for(aloop, done)
    finally:
        t.join(TIMEOUT)
    assert calls == [(signal.SIGUSR2, threading.get_ident())]

    # From the loop's own thread too.
    done = aloop.create_future()
    os.kill(os.getpid(), signal.SIGUSR2)
    wait_for(aloop, done)
    assert len(calls) == 2


def test_signal_module_handler_exception_propagates(aloop):
    # An exception raised by a signal.signal handler while the loop waits
    # comes out of run_until_complete, as KeyboardInterrupt does.
    def handler(signum, frame):
        raise LookupError('from handler')

    signal.signal(signal.SIGUSR2, handler)
    never = aloop.create_future()
    aloop.call_later(TIMEOUT, never.set_result, 'timed out')
    t = kill_main_thread_soon(aloop, signal.SIGUSR2)
    try:
        with pytest.raises(LookupError, match='from handler'):
            aloop.run_until_complete(never)
    finally:
        t.join(TIMEOUT)
    assert not never.done()


@pytest.mark.parametrize('with_loop_handler', [False, True],
                         ids=['alone', 'with-add_signal_handler'])
def test_ctrl_c_while_waiting_with_wakeup_fd(aloop, with_loop_handler):
    # With the wake-up fd set (a handler for another signal), SIGINT's
    # number is written there too: KeyboardInterrupt still comes out, and
    # the stray number does not disturb the next run.
    _need_default_sigint()
    got = []
    if with_loop_handler:
        aloop.add_signal_handler(signal.SIGUSR1, got.append, 'usr1')
    never = aloop.create_future()
    aloop.call_later(TIMEOUT, never.set_result, 'timed out')
    t = kill_main_thread_soon(aloop, signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            aloop.run_until_complete(never)
    finally:
        t.join(TIMEOUT)
    assert not never.done()
    if with_loop_handler:
        done = aloop.create_future()
        aloop.add_signal_handler(signal.SIGUSR2, done.set_result, None)
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_for(aloop, done)
    assert got == []


def test_sigint_handler_replaces_keyboard_interrupt(aloop):
    # With add_signal_handler(SIGINT), Ctrl-C runs the callback instead.
    done = aloop.create_future()
    aloop.add_signal_handler(signal.SIGINT, done.set_result, 'handled')
    t = kill_main_thread_soon(aloop, signal.SIGINT)
    try:
        assert wait_for(aloop, done) == 'handled'
    finally:
        t.join(TIMEOUT)
    assert aloop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize('kind', ['asyncio', 'unixloop'])
def test_unclosed_loop_collected_removes_handlers(kind, no_fd_leak):
    import gc
    loop = (asyncio.SelectorEventLoop() if kind == 'asyncio'
            else unixloop.new_event_loop())
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
    with pytest.warns(ResourceWarning, match='unclosed event loop'):
        del loop
        gc.collect()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1
