"""Shared fixtures of the unixloop pytest suite.

The backend of libunixloop is chosen by $UNIXLOOP_BACKEND when a loop is
created; ``pytest --unixloop-backend=poll`` sets it for the whole run (as
``UNIXLOOP_BACKEND=poll pytest`` does).

Fixtures:
  loop        a fresh unixloop loop, closed after the test
  aloop       parametrized: stock asyncio's loop and unixloop's, so that one
              test proves unixloop behaves as asyncio does
  no_fd_leak  fails the test if it leaves fds open (both loop fixtures use it)
  tls_pair    (server, client) SSLContexts from CPython's test certificates:
              keycert3.pem is 'localhost', signed by pycacert.pem

Helpers (import them from conftest): run_iteration(loop), pattern(n),
run(loop, main, *args), free_port() (for a server the tests start).
"""
import asyncio
import gc
import os
import socket
import ssl

import pytest

import unixloop


def pytest_addoption(parser):
    parser.addoption(
        '--unixloop-backend', choices=('epoll', 'poll'), default=None,
        help='libunixloop backend for every loop (sets $UNIXLOOP_BACKEND)')


def pytest_configure(config):
    # Every skip prints its reason in the summary (as -rs).
    if 's' not in config.option.reportchars:
        config.option.reportchars += 's'
    backend = config.getoption('--unixloop-backend')
    if backend:
        os.environ['UNIXLOOP_BACKEND'] = backend


def pytest_report_header(config):
    return 'unixloop backend: {} (UNIXLOOP_BACKEND={!r})'.format(
        _probe_backend(), os.environ.get('UNIXLOOP_BACKEND'))


def _probe_backend():
    loop = unixloop.new_event_loop()
    try:
        return loop._backend()
    finally:
        loop.close()


def open_fds():
    gc.collect()
    return sorted(int(fd) for fd in os.listdir('/proc/self/fd'))


@pytest.fixture
def no_fd_leak():
    before = open_fds()
    yield
    after = open_fds()
    leaked = sorted(set(after) - set(before))
    assert not leaked, 'fds leaked: {}'.format(
        [(fd, _describe_fd(fd)) for fd in leaked])


def _describe_fd(fd):
    try:
        return os.readlink('/proc/self/fd/{}'.format(fd))
    except OSError:
        return '?'


def make_loop(kind):
    if kind == 'asyncio':
        return asyncio.SelectorEventLoop()
    return unixloop.new_event_loop()


def _close(loop):
    if loop.is_running():  # a broken test; do not hang the suite
        loop.stop()
    if not loop.is_closed():
        try:
            loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            pass
        loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def loop(no_fd_leak):
    loop = unixloop.new_event_loop()
    yield loop
    _close(loop)


@pytest.fixture(params=['asyncio', 'unixloop'])
def aloop(request, no_fd_leak):
    loop = make_loop(request.param)
    loop.kind = request.param
    yield loop
    _close(loop)


def pattern(n):
    """n bytes in which a lost, repeated or reordered chunk shows."""
    block = bytes(range(256)) * 64  # 16 KiB
    return (block * (n // len(block) + 1))[:n]


def run(loop, main, *args, timeout=10):
    """Runs main(*args) on loop, bounded so that a hang fails the test (no
    test that uses it needs a tenth of the timeout)."""
    return loop.run_until_complete(asyncio.wait_for(main(*args), timeout))


def free_port():
    """A TCP port on 127.0.0.1 free a moment ago (a server started on it
    may still lose it to another process: retry)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_iteration(loop):
    """Runs exactly one iteration of loop (stop() before run_forever())."""
    loop.stop()
    loop.run_forever()


@pytest.fixture
def tls_pair():
    certs = pytest.importorskip(
        'test.test_asyncio.utils',
        reason="CPython's test suite is not installed "
               '(libpython3.11-testsuite; make deps installs it)')
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.SIGNED_CERTFILE)
    client_ctx = ssl.create_default_context(cafile=certs.SIGNING_CA)
    return server_ctx, client_ctx
