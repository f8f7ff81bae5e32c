"""The public surface of the unixloop package and of its loop."""
import asyncio
import os

import pytest

import unixloop


def test_all_names():
    assert set(unixloop.__all__) >= {
        'Loop', 'new_event_loop', 'EventLoopPolicy', 'install', 'run'}
    for name in unixloop.__all__:
        assert hasattr(unixloop, name), name


def test_version_is_a_string():
    assert isinstance(unixloop.__version__, str) and unixloop.__version__


def test_loop_is_an_asyncio_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert isinstance(loop, unixloop.Loop)
    assert issubclass(unixloop.Loop, asyncio.AbstractEventLoop)


def test_new_event_loop_returns_fresh_loops(loop):
    other = unixloop.new_event_loop()
    try:
        assert other is not loop
        assert type(other) is unixloop.Loop
    finally:
        other.close()


def test_new_loop_state(loop):
    assert not loop.is_running()
    assert not loop.is_closed()
    assert loop.get_debug() in (False, bool(os.environ.get('PYTHONASYNCIODEBUG')))
    assert loop.slow_callback_duration == pytest.approx(0.1)


def test_public_methods_present(loop):
    for name in dir(asyncio.AbstractEventLoop):
        if name.startswith('_'):
            continue
        assert callable(getattr(loop, name)), name


def test_repr(loop):
    r = repr(loop)
    assert 'running=False' in r and 'closed=False' in r
    loop.close()
    assert 'closed=True' in repr(loop)


def test_backend_name(loop):
    assert loop._backend() in ('epoll', 'poll')


def test_backend_matches_env_var(loop):
    wanted = os.environ.get('UNIXLOOP_BACKEND')
    if not wanted:
        # Without the variable the default is epoll on Linux.
        assert loop._backend() == 'epoll'
    else:
        assert loop._backend() == wanted


@pytest.mark.parametrize('backend', ['epoll', 'poll'])
def test_backend_chosen_at_creation(monkeypatch, no_fd_leak, backend):
    monkeypatch.setenv('UNIXLOOP_BACKEND', backend)
    loop = unixloop.new_event_loop()
    try:
        assert loop._backend() == backend
        assert loop.run_until_complete(asyncio.sleep(0, 'ok')) == 'ok'
    finally:
        loop.close()


def test_bad_backend_env_var(monkeypatch, no_fd_leak):
    monkeypatch.setenv('UNIXLOOP_BACKEND', 'kqueue-on-linux')
    with pytest.raises(ValueError):
        unixloop.new_event_loop()


def test_handle_types(loop):
    h = loop.call_soon(lambda: None)
    t = loop.call_later(10, lambda: None)
    assert type(h).__name__ == 'Handle'
    assert type(t).__name__ == 'TimerHandle'
    for attr in ('cancel', 'cancelled', 'get_context'):
        assert callable(getattr(h, attr))
        assert callable(getattr(t, attr))
    assert callable(t.when)
    h.cancel()
    t.cancel()


def test_handle_repr_names_callback(loop):
    def some_callback():
        pass

    h = loop.call_soon(some_callback)
    assert repr(h).startswith('<Handle')
    assert 'some_callback' in repr(h)
    h.cancel()
    assert 'cancelled' in repr(h)
    t = loop.call_later(5, some_callback)
    assert repr(t).startswith('<TimerHandle')
    assert 'when=' in repr(t)
    t.cancel()

