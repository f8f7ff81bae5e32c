"""The loop API that depends on the interpreter's version.

unixloop offers what asyncio offers on the running interpreter: the parts
added in 3.12 and 3.13 (create_task's extra keyword arguments such as
eager_start, Server.close_clients / abort_clients, create_unix_server's
cleanup_socket, shutdown_default_executor's timeout) exist where asyncio
has them, and behave as asyncio's.  Only one interpreter runs these tests
here (3.11 on the project's machines): the tests of a newer API skip on an
older interpreter, saying why, and the tests of an older interpreter check
that the API is refused as asyncio refuses it.
"""
import asyncio
import inspect
import os
import sys
import tempfile

import pytest

import unixloop

PY = sys.version_info[:2]


def accepts(func, name):
    params = inspect.signature(func).parameters
    return name in params or any(
        p.kind is p.VAR_KEYWORD for p in params.values())


# What the interpreter's asyncio offers (features, not version numbers).
TASK_KWARGS = accepts(asyncio.BaseEventLoop.create_task, 'eager_start')
EAGER_TASKS = hasattr(asyncio, 'eager_task_factory')
CLOSE_CLIENTS = hasattr(asyncio.Server, 'close_clients')
CLEANUP_SOCKET = accepts(asyncio.SelectorEventLoop.create_unix_server,
                         'cleanup_socket')
EXECUTOR_TIMEOUT = accepts(asyncio.BaseEventLoop.shutdown_default_executor,
                           'timeout')


def needs(feature, what, version):
    return pytest.mark.skipif(
        not feature, reason=f'{what} is not in asyncio before {version} '
        f'(this is {PY[0]}.{PY[1]})')


def test_feature_detection_matches_version():
    # The features above are the ones of the documented versions.
    assert EXECUTOR_TIMEOUT == (PY >= (3, 12))
    assert EAGER_TASKS == (PY >= (3, 12))
    assert CLOSE_CLIENTS == (PY >= (3, 13))
    assert CLEANUP_SOCKET == (PY >= (3, 13))


@pytest.mark.parametrize('method', [
    'create_task', 'shutdown_default_executor', 'create_unix_server',
    'create_server', 'run_in_executor', 'shutdown_asyncgens'])
def test_python_level_signatures_are_asyncio(method):
    # The methods written in Python (or asyncio's own) take asyncio's
    # arguments on this interpreter.
    ours = getattr(unixloop.Loop, method)
    try:
        sig = inspect.signature(ours)
    except ValueError:
        pytest.skip(f'{method} is written in C (no signature to compare)')
    assert sig == inspect.signature(
        getattr(asyncio.SelectorEventLoop, method))


# ---- create_task --------------------------------------------------------

async def _answer():
    return 42


def test_create_task_unknown_keyword_as_asyncio(aloop):
    if TASK_KWARGS:
        pytest.skip('asyncio passes extra keywords on to the Task here')
    coro = _answer()
    with pytest.raises(TypeError) as ei:
        aloop.create_task(coro, eager_start=True)
    coro.close()
    assert 'unexpected keyword argument' in str(ei.value)
    assert "'eager_start'" in str(ei.value)


@needs(TASK_KWARGS, "create_task(**kwargs)", '3.13')
def test_create_task_eager_start(aloop):
    async def main():
        steps = []

        async def step():
            steps.append('ran')

        t = aloop.create_task(step(), eager_start=True)
        # An eager task runs up to its first suspension inside create_task.
        assert steps == ['ran']
        await t
        return t.done()

    assert aloop.run_until_complete(main())


@needs(EAGER_TASKS, 'eager_task_factory', '3.12')
def test_eager_task_factory(aloop):
    aloop.set_task_factory(asyncio.eager_task_factory)

    async def main():
        steps = []

        async def step():
            steps.append('ran')
            return 7

        t = aloop.create_task(step(), name='eager')
        assert steps == ['ran'] and t.done()
        assert t.get_name() == 'eager'
        return await t

    assert aloop.run_until_complete(main()) == 7


def _factory_calls(loop):
    calls = []

    def factory(loop, coro, **kwargs):
        calls.append(sorted(kwargs))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    import contextvars
    ctx = contextvars.copy_context()
    t1 = loop.create_task(_answer(), name='one')
    t2 = loop.create_task(_answer(), context=ctx)
    assert t1.get_name() == 'one'
    assert loop.run_until_complete(asyncio.gather(t1, t2)) == [42, 42]
    return calls


def test_task_factory_called_as_by_asyncio():
    # The factory protocol is the interpreter's: on 3.11 (loop, coro) or
    # (loop, coro, context=...), the name set afterwards.
    got = {}
    for kind, make in [('asyncio', asyncio.SelectorEventLoop),
                       ('unixloop', unixloop.new_event_loop)]:
        loop = make()
        try:
            got[kind] = _factory_calls(loop)
        finally:
            loop.close()
    assert got['asyncio'] == got['unixloop']
    assert got['unixloop']


# ---- servers ----------------------------------------------------------------

class Echo(asyncio.Protocol):
    def __init__(self, lost):
        self.lost = lost

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost.append(exc)


def _serve_one_client(loop):
    lost = []
    made = loop.create_future()

    def factory():
        proto = Echo(lost)
        made.set_result(None)
        return proto

    srv = loop.run_until_complete(
        loop.create_server(factory, '127.0.0.1', 0))
    port = srv.sockets[0].getsockname()[1]
    r, w = loop.run_until_complete(asyncio.open_connection('127.0.0.1', port))
    loop.run_until_complete(asyncio.wait_for(made, 10))
    loop.run_until_complete(asyncio.sleep(0))   # connection_made ran
    return srv, lost, w


@needs(CLOSE_CLIENTS, 'Server.close_clients', '3.13')
@pytest.mark.parametrize('how', ['close_clients', 'abort_clients'])
def test_server_close_clients(aloop, how):
    srv, lost, w = _serve_one_client(aloop)
    try:
        srv.close()
        getattr(srv, how)()
        aloop.run_until_complete(asyncio.wait_for(srv.wait_closed(), 10))
        assert lost == [None]
    finally:
        w.close()
        aloop.run_until_complete(asyncio.sleep(0))


def test_server_close_clients_absent_as_in_asyncio(aloop):
    if CLOSE_CLIENTS:
        pytest.skip('Server.close_clients exists on this interpreter')
    srv = aloop.run_until_complete(
        aloop.create_server(asyncio.Protocol, '127.0.0.1', 0))
    try:
        assert not hasattr(srv, 'close_clients')
        assert not hasattr(srv, 'abort_clients')
    finally:
        srv.close()
        aloop.run_until_complete(srv.wait_closed())


def test_server_clients_tracked_and_released(aloop):
    # Accepted transports are attached to their server and detached when
    # they are lost (the bookkeeping's signature changed in 3.13):
    # wait_closed() returns once the last client is gone.
    srv, lost, w = _serve_one_client(aloop)
    srv.close()
    w.close()
    aloop.run_until_complete(asyncio.wait_for(srv.wait_closed(), 10))
    assert lost == [None]


# ---- create_unix_server ----------------------------------------------------

@needs(CLEANUP_SOCKET, 'create_unix_server(cleanup_socket=)', '3.13')
@pytest.mark.parametrize('cleanup', [True, False])
def test_unix_server_cleanup_socket(aloop, cleanup):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'sock')
        srv = aloop.run_until_complete(aloop.create_unix_server(
            asyncio.Protocol, path, cleanup_socket=cleanup))
        assert os.path.exists(path)
        srv.close()
        aloop.run_until_complete(srv.wait_closed())
        assert os.path.exists(path) == (not cleanup)


def test_unix_server_cleanup_socket_refused_as_asyncio(aloop):
    if CLEANUP_SOCKET:
        pytest.skip('cleanup_socket exists on this interpreter')
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(TypeError, match='cleanup_socket'):
            aloop.create_unix_server(asyncio.Protocol,
                                     os.path.join(d, 'sock'),
                                     cleanup_socket=True)


# ---- shutdown_default_executor ---------------------------------------------

@needs(EXECUTOR_TIMEOUT, 'shutdown_default_executor(timeout=)', '3.12')
def test_shutdown_default_executor_timeout(aloop):
    import threading
    release = threading.Event()
    aloop.run_in_executor(None, release.wait, 10)
    with pytest.warns(RuntimeWarning, match='did not finish'):
        aloop.run_until_complete(
            aloop.shutdown_default_executor(timeout=0.05))
    release.set()


def test_shutdown_default_executor_timeout_refused_as_asyncio(aloop):
    if EXECUTOR_TIMEOUT:
        pytest.skip('the timeout exists on this interpreter')
    with pytest.raises(TypeError, match='timeout'):
        aloop.shutdown_default_executor(timeout=1)
