"""add_reader / add_writer / remove_reader / remove_writer."""
import asyncio
import os
import selectors
import socket
import tempfile

import pytest

import unixloop
from conftest import run_iteration


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


class FileLike:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


def test_reader_fires_when_data_arrives(aloop, pair):
    a, b = pair
    got = []

    def on_readable():
        got.append(a.recv(100))
        aloop.stop()

    aloop.add_reader(a.fileno(), on_readable)
    aloop.call_soon(b.send, b'hello')
    aloop.run_forever()
    assert got == [b'hello']
    assert aloop.remove_reader(a.fileno()) is True
    assert aloop.remove_reader(a.fileno()) is False


def test_reader_args(aloop, pair):
    a, b = pair
    got = []

    def on_readable(x, y):
        got.append((x, y, a.recv(10)))
        aloop.stop()

    aloop.add_reader(a, on_readable, 1, 'two')
    b.send(b'z')
    aloop.run_forever()
    assert got == [(1, 'two', b'z')]
    aloop.remove_reader(a)


def test_reader_is_level_triggered(aloop, pair):
    a, b = pair
    calls = []

    def on_readable():
        calls.append(1)
        if len(calls) == 3:
            aloop.stop()  # never read: it stays readable

    aloop.add_reader(a, on_readable)
    b.send(b'x')
    aloop.run_forever()
    assert len(calls) == 3
    aloop.remove_reader(a)


def test_writer_fires(aloop, pair):
    a, b = pair
    got = []

    def on_writable():
        got.append(a.send(b'data'))
        aloop.remove_writer(a)
        aloop.stop()

    aloop.add_writer(a.fileno(), on_writable)
    aloop.run_forever()
    assert got == [4]
    assert b.recv(10) == b'data'
    assert aloop.remove_writer(a) is False


def test_file_objects_with_fileno(aloop, pair):
    a, b = pair
    got = []
    fa = FileLike(a.fileno())
    aloop.add_reader(fa, lambda: (got.append(a.recv(5)), aloop.stop()))
    b.send(b'12345')
    aloop.run_forever()
    assert got == [b'12345']
    # Removal works by fd, by the socket, or by another object with fileno().
    assert aloop.remove_reader(FileLike(a.fileno())) is True
    assert aloop.remove_reader(a) is False


def test_remove_returns_false_when_not_registered(aloop, pair):
    a, b = pair
    assert aloop.remove_reader(a) is False
    assert aloop.remove_writer(a) is False
    aloop.add_writer(a, lambda: None)
    assert aloop.remove_reader(a) is False
    assert aloop.remove_writer(a) is True


def test_reader_and_writer_on_same_fd(aloop, pair):
    a, b = pair
    events = []

    def on_writable():
        events.append('w')
        aloop.remove_writer(a)
        b.send(b'ping')

    def on_readable():
        events.append(('r', a.recv(10)))
        aloop.stop()

    aloop.add_reader(a, on_readable)
    aloop.add_writer(a, on_writable)
    aloop.run_forever()
    assert events == ['w', ('r', b'ping')]
    assert aloop.remove_writer(a) is False
    assert aloop.remove_reader(a) is True


def test_remove_reader_keeps_writer(aloop, pair):
    a, b = pair
    writes = []
    aloop.add_reader(a, lambda: pytest.fail('reader removed'))
    aloop.add_writer(a, lambda: (writes.append(1), aloop.stop()))
    assert aloop.remove_reader(a) is True
    b.send(b'x')
    aloop.run_forever()
    assert writes == [1]
    assert aloop.remove_writer(a) is True


def test_replacing_reader_cancels_old_handle(aloop, pair):
    a, b = pair
    got = []
    old = aloop._add_reader(a.fileno(), got.append, 'old')
    new = aloop._add_reader(a.fileno(), lambda: (got.append('new'), aloop.stop()))
    assert old.cancelled()
    assert not new.cancelled()
    b.send(b'x')
    aloop.run_forever()
    assert got == ['new']
    assert aloop.remove_reader(a) is True
    assert new.cancelled()


def test_replacing_writer_cancels_old_handle(aloop, pair):
    a, b = pair
    got = []
    old = aloop._add_writer(a.fileno(), got.append, 'old')
    aloop.add_writer(a, lambda: (got.append('new'), aloop.stop()))
    assert old.cancelled()
    aloop.run_forever()
    assert got == ['new']
    aloop.remove_writer(a)


def test_remove_reader_inside_callback(aloop, pair):
    a, b = pair
    calls = []

    def on_readable():
        calls.append(1)
        assert aloop.remove_reader(a) is True
        aloop.call_later(0.02, aloop.stop)

    aloop.add_reader(a, on_readable)
    b.send(b'x')  # never read: stays readable
    aloop.run_forever()
    assert calls == [1]


def test_remove_reader_before_dispatch_same_iteration(aloop, pair):
    # Two fds become readable; the first callback removes the second's
    # reader: the second must not run.
    a, b = pair
    c, d = socket.socketpair()
    try:
        calls = []

        def first():
            calls.append('first')
            aloop.remove_reader(c)
            aloop.remove_reader(a)
            aloop.call_later(0.02, aloop.stop)

        def second():
            calls.append('second')
            aloop.remove_reader(c)
            aloop.remove_reader(a)
            aloop.call_later(0.02, aloop.stop)

        aloop.add_reader(a, first)
        aloop.add_reader(c, second)
        b.send(b'x')
        d.send(b'x')
        aloop.run_forever()
        assert calls in (['first'], ['second'])
    finally:
        c.close()
        d.close()


@pytest.mark.parametrize('bad', [-1, -100])
def test_negative_fd_value_error(aloop, bad):
    with pytest.raises(ValueError):
        aloop.add_reader(bad, lambda: None)
    with pytest.raises(ValueError):
        aloop.add_writer(bad, lambda: None)
    with pytest.raises(ValueError):
        aloop.remove_reader(bad)


@pytest.mark.parametrize('bad', ['abc', object(), 1.5])
def test_invalid_file_object_value_error(aloop, bad):
    with pytest.raises(ValueError, match='Invalid file object'):
        aloop.add_reader(bad, lambda: None)
    with pytest.raises(ValueError, match='Invalid file object'):
        aloop.add_writer(bad, lambda: None)


def test_fileno_returning_negative(aloop):
    with pytest.raises(ValueError):
        aloop.add_reader(FileLike(-1), lambda: None)


def test_huge_fd_same_exception_as_asyncio(loop, no_fd_leak):
    ref = asyncio.SelectorEventLoop()
    try:
        with pytest.raises(Exception) as expected:
            ref.add_reader(2 ** 40, lambda: None)
    finally:
        ref.close()
    with pytest.raises(Exception) as got:
        loop.add_reader(2 ** 40, lambda: None)
    assert type(got.value) is type(expected.value)


def test_closed_fd_oserror(aloop):
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError) as ei:
        aloop.add_reader(fd, lambda: None)
    assert ei.value.errno == 9  # EBADF
    with pytest.raises(OSError):
        aloop.add_writer(fd, lambda: None)
    assert aloop.remove_reader(fd) is False


def _reference_loop(backend):
    """Stock asyncio with the same polling mechanism as unixloop's backend."""
    if backend == 'poll':
        return asyncio.SelectorEventLoop(selectors.PollSelector())
    return asyncio.SelectorEventLoop(selectors.EpollSelector())


def _regular_file_outcome(loop):
    with tempfile.TemporaryFile() as f:
        f.write(b'abc')
        f.flush()
        try:
            loop.add_reader(f, lambda: (got.append(1), loop.stop()))
        except OSError as exc:
            return type(exc), exc.errno
        got = []
        loop.call_later(2, loop.stop)
        loop.run_forever()
        loop.remove_reader(f)
        return 'registered', got


def test_reader_on_regular_file_like_asyncio(loop):
    # epoll refuses regular files (EPERM -> PermissionError), as stock
    # asyncio's default selector does; poll accepts them and reports them
    # readable at once, as asyncio's PollSelector does.
    backend = loop._backend()
    ref = _reference_loop(backend)
    try:
        expected = _regular_file_outcome(ref)
    finally:
        ref.close()
    assert _regular_file_outcome(loop) == expected
    if backend == 'epoll':
        assert expected[0] is PermissionError


def test_default_asyncio_loop_refuses_regular_file(loop):
    # What a user of stock asyncio sees (its default selector is epoll):
    # unixloop's default backend does the same.
    if loop._backend() != 'epoll':
        pytest.skip('only the epoll backend matches asyncio default selector')
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f, lambda: None)
        with pytest.raises(PermissionError):
            loop.add_writer(f, lambda: None)


def test_add_reader_after_close(aloop, pair):
    a, b = pair
    aloop.close()
    with pytest.raises(RuntimeError, match='Event loop is closed'):
        aloop.add_reader(a, lambda: None)
    with pytest.raises(RuntimeError, match='Event loop is closed'):
        aloop.add_writer(a, lambda: None)
    assert aloop.remove_reader(a) is False


def test_readers_dropped_on_close(no_fd_leak, pair):
    a, b = pair
    loop = unixloop.new_event_loop()
    loop.add_reader(a, lambda: None)
    loop.add_writer(b, lambda: None)
    loop.close()
    # The fds stay open and usable: the loop never owned them.
    b.send(b'x')
    assert a.recv(1) == b'x'


def test_fd_closed_while_watched_then_reused(aloop):
    # Registering a new fd number that a closed, still-registered fd had:
    # remove_reader of the stale fd then add_reader of the new one works.
    a, b = socket.socketpair()
    num = a.fileno()
    aloop.add_reader(num, lambda: None)
    aloop.remove_reader(num)
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        got = []
        aloop.add_reader(c, lambda: (got.append(c.recv(1)), aloop.stop()))
        d.send(b'y')
        aloop.run_forever()
        assert got == [b'y']
        aloop.remove_reader(c)
    finally:
        c.close()
        d.close()


def test_many_fds(aloop):
    pairs = [socket.socketpair() for _ in range(100)]
    try:
        seen = set()

        def on_readable(i, s):
            s.recv(10)
            aloop.remove_reader(s)
            seen.add(i)
            if len(seen) == len(pairs):
                aloop.stop()

        for i, (x, y) in enumerate(pairs):
            x.setblocking(False)
            aloop.add_reader(x, on_readable, i, x)
        for x, y in pairs:
            y.send(b'!')
        aloop.run_forever()
        assert seen == set(range(100))
    finally:
        for x, y in pairs:
            x.close()
            y.close()


def test_peer_close_makes_reader_fire(aloop, pair):
    a, b = pair
    got = []
    aloop.add_reader(a, lambda: (got.append(a.recv(10)), aloop.stop()))
    b.close()
    aloop.run_forever()
    assert got == [b'']
    aloop.remove_reader(a)


def test_pipe_reader(aloop):
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        got = []
        aloop.add_reader(r, lambda: (got.append(os.read(r, 10)), aloop.stop()))
        aloop.call_soon(os.write, w, b'pipe')
        aloop.run_forever()
        assert got == [b'pipe']
        assert aloop.remove_reader(r)
    finally:
        os.close(r)
        os.close(w)


def test_exception_in_reader_goes_to_handler(aloop, pair):
    a, b = pair
    contexts = []
    aloop.set_exception_handler(lambda l, c: (contexts.append(c), aloop.stop()))

    def boom():
        a.recv(10)
        raise ZeroDivisionError('in reader')

    aloop.add_reader(a, boom)
    b.send(b'x')
    aloop.run_forever()
    aloop.remove_reader(a)
    assert len(contexts) == 1
    assert isinstance(contexts[0]['exception'], ZeroDivisionError)
    assert contexts[0]['message'].startswith('Exception in callback')


def test_callback_closes_its_own_fd(aloop):
    a, b = socket.socketpair()
    num = a.fileno()
    got = []

    def on_readable():
        got.append('cb')
        a.close()  # closed while still registered
        aloop.call_later(0.02, aloop.stop)

    try:
        aloop.add_reader(num, on_readable)
        b.send(b'x')
        aloop.run_forever()
        assert got == ['cb']
        assert aloop.remove_reader(num) is True
        # A new socket with the same fd number can be watched.
        c, d = socket.socketpair()
        try:
            x, y = (c, d) if c.fileno() == num else (d, c)
            aloop.add_reader(x, lambda: (got.append(x.recv(1)), aloop.stop()))
            y.send(b'q')
            aloop.run_forever()
            assert got == ['cb', b'q']
            aloop.remove_reader(x)
        finally:
            c.close()
            d.close()
    finally:
        a.close()
        b.close()
