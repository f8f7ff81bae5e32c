"""Pipe transports (connect_read_pipe / connect_write_pipe): unixloop's C
transports behave as stock asyncio's _UnixReadPipeTransport and
_UnixWritePipeTransport.  Every test runs on both loops (the `aloop`
fixture) unless it checks something only unixloop has."""
import asyncio
import errno
import gc
import io
import logging
import os
import pty
import sys
import tempfile
import tty

import pytest

import unixloop


class Recorder(asyncio.Protocol):
    def __init__(self, loop, eof_result=None):
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.exc = None
        self.eof_result = eof_result
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')

    def data_received(self, data):
        self.data += data
        if self.events[-1] != 'data':
            self.events.append('data')

    def eof_received(self):
        self.events.append('eof')
        return self.eof_result

    def pause_writing(self):
        self.events.append('pause')

    def resume_writing(self):
        self.events.append('resume')

    def connection_lost(self, exc):
        self.exc = exc
        self.events.append(('lost', type(exc).__name__ if exc else None))
        self.done.set_result(None)


def connect_read(loop, fd, proto=None):
    proto = proto or Recorder(loop)
    pipe = open(fd, 'rb', buffering=0)
    transport, _ = loop.run_until_complete(
        loop.connect_read_pipe(lambda: proto, pipe))
    return transport, proto, pipe


def connect_write(loop, fd, proto=None):
    proto = proto or Recorder(loop)
    pipe = open(fd, 'wb', buffering=0)
    transport, _ = loop.run_until_complete(
        loop.connect_write_pipe(lambda: proto, pipe))
    return transport, proto, pipe


def wait(loop, fut, timeout=10):
    return loop.run_until_complete(asyncio.wait_for(fut, timeout))


def handler_calls(loop):
    calls = []
    loop.set_exception_handler(lambda loop, ctx: calls.append(ctx))
    return calls


def read_all_now(fd):
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def test_types_extra_and_c(aloop):
    r, w = os.pipe()
    rt, rp, rpipe = connect_read(aloop, r)
    wt, wp, wpipe = connect_write(aloop, w)
    assert isinstance(rt, asyncio.ReadTransport)
    assert isinstance(wt, asyncio.WriteTransport)
    if aloop.kind == 'unixloop':
        assert type(rt) is unixloop._core.ReadPipeTransport
        assert type(wt) is unixloop._core.WritePipeTransport
    assert rt.get_extra_info('pipe') is rpipe
    assert wt.get_extra_info('pipe') is wpipe
    assert rt.get_extra_info('nope', 42) == 42
    assert rt.get_protocol() is rp and wt.get_protocol() is wp
    assert wt.can_write_eof()
    assert not rt.is_closing() and not wt.is_closing()
    assert os.get_blocking(r) is False and os.get_blocking(w) is False
    # asyncio 3.11's read pipe transport has no is_reading of its own.
    with pytest.raises(NotImplementedError):
        rt.is_reading()
    rt.close()
    wt.close()
    assert rt.is_closing() and wt.is_closing()
    wait(aloop, asyncio.gather(rp.done, wp.done))
    assert rpipe.closed and wpipe.closed


def test_repr(aloop):
    r, w = os.pipe()
    rt, rp, _ = connect_read(aloop, r)
    wt, wp, _ = connect_write(aloop, w)

    def state(t):  # the repr without the class name
        return repr(t).split(' ', 1)[1]

    assert state(rt) == f'fd={r} polling>'
    assert state(wt) == f'fd={w} idle bufsize=0>'
    rt.pause_reading()
    assert state(rt) == f'fd={r} idle>'
    rt.resume_reading()
    wt.write(b'x' * (1 << 20))
    size = wt.get_write_buffer_size()
    assert size > 0
    assert state(wt) == f'fd={w} polling bufsize={size}>'
    wt.abort()
    assert state(wt) == f'closing fd={w} polling bufsize=0>' or \
        state(wt) == f'closing fd={w} idle bufsize=0>'
    rt.close()
    assert state(rt) == f'closing fd={r} idle>'
    wait(aloop, asyncio.gather(rp.done, wp.done))
    assert state(rt) == f'closed fd={r} closed>'
    assert state(wt) == f'closed fd={w} closed>'


def test_read_data_then_eof(aloop):
    r, w = os.pipe()
    rt, rp, rpipe = connect_read(aloop, r)
    os.write(w, b'hello ')
    os.write(w, b'world')
    os.close(w)
    wait(aloop, rp.done)
    assert rp.data == b'hello world'
    assert rp.events == ['made', 'data', 'eof', ('lost', None)]
    assert rpipe.closed
    assert rt.is_closing()


def test_read_eof_closes_even_if_protocol_keeps_open(aloop):
    r, w = os.pipe()
    rt, rp, rpipe = connect_read(aloop, r, Recorder(aloop, eof_result=True))
    os.close(w)
    wait(aloop, rp.done)
    assert rp.events == ['made', 'eof', ('lost', None)]
    assert rpipe.closed


def test_read_pause_resume(aloop):
    r, w = os.pipe()
    rt, rp, _ = connect_read(aloop, r)
    rt.pause_reading()
    rt.pause_reading()  # twice: nothing
    os.write(w, b'abc')
    aloop.run_until_complete(asyncio.sleep(0.05))
    assert rp.data == b''
    rt.resume_reading()
    rt.resume_reading()
    os.close(w)
    wait(aloop, rp.done)
    assert rp.data == b'abc'
    rt.pause_reading()  # closed: nothing
    rt.resume_reading()


def test_data_received_raising_is_reported_and_reading_goes_on(aloop):
    calls = handler_calls(aloop)

    class Raising(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if len(self.data) == 1:
                raise ZeroDivisionError('boom')

    r, w = os.pipe()
    rt, rp, _ = connect_read(aloop, r, Raising(aloop))
    os.write(w, b'a')
    aloop.run_until_complete(asyncio.sleep(0.05))
    os.write(w, b'b')
    os.close(w)
    wait(aloop, rp.done)
    assert rp.data == b'ab'
    assert rp.events[-1] == ('lost', None)
    assert len(calls) == 1
    assert isinstance(calls[0]['exception'], ZeroDivisionError)
    assert calls[0]['message'].startswith('Exception in callback')


def test_write_then_close_flushes(aloop):
    r, w = os.pipe()
    wt, wp, wpipe = connect_write(aloop, w)
    rt, rp, _ = connect_read(aloop, r)
    data = bytes(range(256)) * 8192  # 2 MiB: most of it is queued
    wt.write(data[:1000])
    wt.write(bytearray(data[1000:5000]))
    wt.write(memoryview(data)[5000:])
    wt.close()
    assert wt.is_closing()
    wt.close()  # again: nothing
    wait(aloop, asyncio.gather(wp.done, rp.done))
    assert rp.data == data
    assert wp.events == ['made', 'pause', 'resume', ('lost', None)]
    assert rp.events == ['made', 'data', 'eof', ('lost', None)]
    assert wpipe.closed


def test_write_eof_is_close(aloop):
    r, w = os.pipe()
    wt, wp, wpipe = connect_write(aloop, w)
    wt.write(b'bye')
    wt.write_eof()
    assert wt.is_closing()
    wait(aloop, wp.done)
    assert os.read(r, 10) == b'bye'
    assert os.read(r, 10) == b''  # EOF
    os.close(r)


def test_write_water_marks(aloop):
    r, w = os.pipe()
    wt, wp, _ = connect_write(aloop, w)
    assert wt.get_write_buffer_limits() == (16384, 65536)
    wt.set_write_buffer_limits(high=1000)
    assert wt.get_write_buffer_limits() == (250, 1000)
    wt.set_write_buffer_limits(high=4000, low=2000)
    assert wt.get_write_buffer_limits() == (2000, 4000)
    with pytest.raises(ValueError):
        wt.set_write_buffer_limits(high=1, low=2)
    os.set_blocking(r, False)
    wt.write(b'x' * (1 << 20))  # fills the pipe, queues the rest
    assert wp.events == ['made', 'pause']
    assert wt.get_write_buffer_size() > 4000

    async def drain():
        got = 0
        while 'resume' not in wp.events:
            got += len(read_all_now(r))
            await asyncio.sleep(0.001)
        return got

    aloop.run_until_complete(asyncio.wait_for(drain(), 10))
    assert wt.get_write_buffer_size() <= 2000
    wt.abort()
    wait(aloop, wp.done)
    os.close(r)


def test_write_not_bytes(aloop):
    r, w = os.pipe()
    wt, wp, _ = connect_write(aloop, w)
    with pytest.raises(AssertionError):
        wt.write('text')
    wt.write(b'')  # nothing
    assert wt.get_write_buffer_size() == 0
    wt.close()
    wait(aloop, wp.done)
    os.close(r)


def test_reader_gone_while_idle(aloop):
    calls = handler_calls(aloop)
    r, w = os.pipe()
    wt, wp, wpipe = connect_write(aloop, w)
    os.close(r)
    wait(aloop, wp.done)
    assert wp.events == ['made', ('lost', None)]
    assert wpipe.closed
    assert calls == []


def test_reader_gone_with_data_queued(aloop):
    calls = handler_calls(aloop)
    r, w = os.pipe()
    wt, wp, wpipe = connect_write(aloop, w)
    wt.write(b'x' * (1 << 20))
    assert wt.get_write_buffer_size() > 0
    os.close(r)
    wait(aloop, wp.done)
    assert wp.events == ['made', 'pause', ('lost', 'BrokenPipeError')]
    assert calls == []  # an OSError: not reported


def test_broken_write(aloop):
    calls = handler_calls(aloop)
    r, w = os.pipe()
    wt, wp, _ = connect_write(aloop, w)
    os.close(r)
    wt.write(b'x')  # fails at once (SIGPIPE is ignored by Python)
    assert wt.is_closing()
    wait(aloop, wp.done)
    assert wp.events == ['made', ('lost', 'BrokenPipeError')]
    assert isinstance(wp.exc, BrokenPipeError)
    assert calls == []


def test_write_after_close_is_dropped_then_logged(aloop, caplog):
    r, w = os.pipe()
    wt, wp, _ = connect_write(aloop, w)
    wt.close()
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        for _ in range(5):
            wt.write(b'late')
        assert caplog.records == []
        wt.write(b'late')
    assert [rec.getMessage() for rec in caplog.records] == [
        'pipe closed by peer or os.write(pipe, data) raised exception.']
    wait(aloop, wp.done)
    assert os.read(r, 100) == b''  # nothing of it was written
    os.close(r)


def test_abort_drops_buffer(aloop):
    r, w = os.pipe()
    wt, wp, wpipe = connect_write(aloop, w)
    wt.write(b'x' * (1 << 20))
    assert wt.get_write_buffer_size() > 0
    wt.abort()
    assert wt.get_write_buffer_size() == 0
    wait(aloop, wp.done)
    assert wp.events[-1] == ('lost', None)
    assert wpipe.closed
    os.close(r)


# asyncio's half-made transport fails in __del__ after the AttributeError.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('mode', ['read', 'write'])
def test_regular_file_and_directory_rejected(aloop, mode):
    expected = ('Pipe transport is for pipes/sockets only.' if mode == 'read'
                else 'Pipe transport is only for pipes, sockets and '
                     'character devices')
    connect = (aloop.connect_read_pipe if mode == 'read'
               else aloop.connect_write_pipe)
    with tempfile.TemporaryFile() as f:
        with pytest.raises(ValueError) as info:
            aloop.run_until_complete(connect(asyncio.Protocol, f))
        assert str(info.value) == expected
        assert not f.closed
        assert os.get_blocking(f.fileno())  # untouched

    class Dir:  # asyncio takes anything with fileno()
        def __init__(self):
            self.fd = os.open('.', os.O_RDONLY | os.O_DIRECTORY)

        def fileno(self):
            return self.fd

    d = Dir()
    try:
        with pytest.raises(ValueError):
            aloop.run_until_complete(connect(asyncio.Protocol, d))
    finally:
        os.close(d.fd)
    # A bare fd is not a pipe object.
    r, w = os.pipe()
    with pytest.raises(AttributeError):
        aloop.run_until_complete(connect(asyncio.Protocol, r))
    os.close(r)
    os.close(w)


def test_character_device_accepted(aloop):
    with open(os.devnull, 'wb', buffering=0) as f:
        wt, wp, _ = connect_write(aloop, os.dup(f.fileno()))
        wt.write(b'into the void')
        wt.close()
        wait(aloop, wp.done)
        assert wp.events == ['made', ('lost', None)]


def test_pty_read_then_eio(aloop):
    calls = handler_calls(aloop)
    master, slave = pty.openpty()
    tty.setraw(slave)
    rt, rp, _ = connect_read(aloop, master)
    os.write(slave, b'from the tty')

    async def until_data():
        while len(rp.data) < 12:
            await asyncio.sleep(0.001)

    aloop.run_until_complete(asyncio.wait_for(until_data(), 10))
    os.close(slave)
    wait(aloop, rp.done)
    assert rp.data == b'from the tty'
    assert rp.events == ['made', 'data', ('lost', 'OSError')]
    assert rp.exc.errno == errno.EIO
    assert calls == []  # EIO is not reported


def test_pty_write(aloop):
    master, slave = pty.openpty()
    tty.setraw(slave)
    wt, wp, _ = connect_write(aloop, slave)
    wt.write(b'to the tty')
    wt.close()
    wait(aloop, wp.done)
    assert os.read(master, 100) == b'to the tty'
    os.close(master)


def test_connection_made_raising_is_reported(aloop):
    calls = handler_calls(aloop)

    class Raising(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            raise ZeroDivisionError

    r, w = os.pipe()
    rt, rp, _ = connect_read(aloop, r, Raising(aloop))
    os.write(w, b'still read')
    os.close(w)
    wait(aloop, rp.done)
    assert rp.data == b'still read'
    assert [type(c['exception']) for c in calls] == [ZeroDivisionError]


def test_set_protocol(aloop):
    r, w = os.pipe()
    rt, rp, _ = connect_read(aloop, r)
    other = Recorder(aloop)
    rt.set_protocol(other)
    assert rt.get_protocol() is other
    os.write(w, b'to the other')
    os.close(w)
    wait(aloop, other.done)
    assert other.data == b'to the other'
    assert rp.data == b''


def test_loop_closed_with_transports_open(aloop):
    # asyncio leaves them open: repr says so, and collecting them warns
    # and closes the pipes.
    r, w = os.pipe()
    rt, rp, rpipe = connect_read(aloop, r)
    wt, wp, wpipe = connect_write(aloop, w)
    aloop.close()
    assert 'open' in repr(rt) and 'open' in repr(wt)
    assert rp.events == ['made'] and wp.events == ['made']
    assert not rpipe.closed and not wpipe.closed
    del rt, wt, rp, wp
    with pytest.warns(ResourceWarning, match='unclosed transport'):
        gc.collect()
    assert rpipe.closed and wpipe.closed


def test_subprocess_uses_pipe_transports(aloop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, '-c',
            'import sys; sys.stdout.write(sys.stdin.read().upper())',
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        kinds = {type(proc._transport.get_pipe_transport(fd)).__name__
                 for fd in (0, 1)}
        out, _ = await proc.communicate(b'through pipes' * 10000)
        return kinds, out, proc.returncode

    asyncio.set_event_loop(aloop)
    kinds, out, rc = aloop.run_until_complete(main())
    assert out == b'THROUGH PIPES' * 10000
    assert rc == 0
    if aloop.kind == 'unixloop':
        assert kinds == {'ReadPipeTransport', 'WritePipeTransport'}


def test_big_writes_keep_order_and_copy_mutable_data(aloop):
    # unixloop queues big bytes objects by reference: the order with copied
    # writes must hold, and a bytearray changed after write() must not be.
    r, w = os.pipe()
    wt, wp, _ = connect_write(aloop, w)
    rt, rp, _ = connect_read(aloop, r)
    big = [bytes([65 + i]) * (300 * 1024) for i in range(4)]
    mutable = bytearray(b'm' * 100_000)
    expected = big[0] + b'small' + big[1] + bytes(mutable) + big[2] + big[3]
    wt.write(big[0])
    wt.write(b'small')
    wt.write(big[1])
    wt.write(mutable)
    mutable[:] = b'X' * len(mutable)
    wt.write(big[2])
    wt.writelines([big[3]])
    del big
    wt.close()
    wait(aloop, asyncio.gather(wp.done, rp.done))
    assert rp.data == expected
