"""Servers: asyncio's Server object on unixloop, whose accept loop is C
(_core.Acceptor on a ul_server), compared with stock asyncio."""
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest

import unixloop


class Counting(asyncio.Protocol):
    """Echoes; counts connections in a shared dict, wakes `changed`."""

    def __init__(self, state):
        self.state = state

    def connection_made(self, transport):
        self.transport = transport
        self.state['made'] += 1
        self.state['changed'].set()

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.state['lost'] += 1
        self.state['changed'].set()


def new_state():
    return {'made': 0, 'lost': 0, 'changed': asyncio.Event()}


async def wait_for(state, key, n):
    while state[key] < n:
        state['changed'].clear()
        await state['changed'].wait()


async def echo_once(loop, addr, family=socket.AF_INET, payload=b'ping'):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, addr)
        await loop.sock_sendall(sock, payload)
        got = b''
        while len(got) < len(payload):
            chunk = await loop.sock_recv(sock, 1024)
            if not chunk:
                break
            got += chunk
        return got
    finally:
        sock.close()


def test_accept_loop_is_c(loop):
    async def main():
        state = new_state()
        srv = await loop.create_server(lambda: Counting(state),
                                       '127.0.0.1', 0)
        fd = srv.sockets[0].fileno()
        assert type(loop._acceptors[fd]).__name__ == 'Acceptor'
        addr = srv.sockets[0].getsockname()
        assert await echo_once(loop, addr) == b'ping'
        srv.close()
        assert fd not in loop._acceptors
        await srv.wait_closed()
    loop.run_until_complete(main())


def test_many_connections_at_once(aloop):
    """Many clients connecting at once: all are served.  (Not more than the
    backlog: the kernel would drop the overflow's handshakes, on both loops;
    the batch limit itself is tested in C, net_accept_batch_limit.)"""
    async def connect(addr):
        c = socket.socket()
        c.setblocking(False)
        await aloop.sock_connect(c, addr)
        return c

    async def main():
        state = new_state()
        srv = await aloop.create_server(lambda: Counting(state),
                                        '127.0.0.1', 0, backlog=50)
        addr = srv.sockets[0].getsockname()
        clients = await asyncio.gather(*(connect(addr) for _ in range(40)))
        await wait_for(state, 'made', 40)
        for c in clients:
            await aloop.sock_sendall(c, b'x')
            assert await aloop.sock_recv(c, 1) == b'x'
            c.close()
        await wait_for(state, 'lost', 40)
        srv.close()
        await srv.wait_closed()
    aloop.run_until_complete(main())


def test_start_stop_serving_close_wait_closed(aloop):
    async def main():
        state = new_state()
        srv = await aloop.create_server(lambda: Counting(state),
                                        '127.0.0.1', 0, start_serving=False)
        assert not srv.is_serving()
        assert srv.get_loop() is aloop
        addr = srv.sockets[0].getsockname()
        # Not listening yet (asyncio listens in start_serving).
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(addr).close()
        await srv.start_serving()
        assert srv.is_serving()
        client = socket.create_connection(addr)
        client.setblocking(False)
        await wait_for(state, 'made', 1)

        # wait_closed (waiting before close: 3.11 returns at once after it)
        # waits for the connection the server made.
        closed = aloop.create_task(srv.wait_closed())
        await asyncio.sleep(0)
        srv.close()
        assert not srv.is_serving()
        assert srv.sockets == ()
        for _ in range(3):
            await asyncio.sleep(0)
        assert not closed.done()
        # The listening socket is closed: new connects are refused.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(addr).close()
        client.close()
        await wait_for(state, 'lost', 1)
        await closed
        srv.close()  # again: nothing
    aloop.run_until_complete(main())


def test_serve_forever_and_context_manager(aloop):
    async def main():
        state = new_state()
        srv = await aloop.create_server(lambda: Counting(state),
                                        '127.0.0.1', 0, start_serving=False)
        addr = srv.sockets[0].getsockname()
        async with srv:
            task = aloop.create_task(srv.serve_forever())
            await asyncio.sleep(0)  # the task starts serving
            assert await echo_once(aloop, addr) == b'ping'
            assert srv.is_serving()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not srv.is_serving()
        assert srv.sockets == ()
    aloop.run_until_complete(main())


def test_unix_server(aloop):
    async def main():
        state = new_state()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, 'sock')
            srv = await aloop.create_unix_server(lambda: Counting(state),
                                                 path)
            assert srv.sockets[0].getsockname() == path
            got = await echo_once(aloop, path, socket.AF_UNIX, b'unix')
            assert got == b'unix'
            srv.close()
            await srv.wait_closed()
    aloop.run_until_complete(main())


def test_streams_server(aloop):
    async def handle(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def main():
        srv = await asyncio.start_server(handle, '127.0.0.1', 0)
        addr = srv.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b'hello\n')
        assert await reader.readline() == b'hello\n'
        assert await reader.read() == b''
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
    aloop.run_until_complete(main())


def test_protocol_factory_raises(loop):
    """The connection is closed; debug mode reports it, as asyncio's
    _accept_connection2 does."""
    reported = []
    loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))
    loop.set_debug(True)

    def factory():
        raise ZeroDivisionError

    async def main():
        srv = await loop.create_server(factory, '127.0.0.1', 0)
        addr = srv.sockets[0].getsockname()
        sock = socket.create_connection(addr)
        sock.setblocking(False)
        assert await loop.sock_recv(sock, 10) == b''  # closed by the server
        sock.close()
        srv.close()
        await srv.wait_closed()
    loop.run_until_complete(main())
    msgs = [ctx['message'] for ctx in reported]
    assert 'Error on transport creation for incoming connection' in msgs
    ctx = reported[msgs.index(
        'Error on transport creation for incoming connection')]
    assert isinstance(ctx['exception'], ZeroDivisionError)


EMFILE_SCRIPT = r'''
import asyncio, errno, json, os, resource, socket, sys, time
import unixloop

kind = sys.argv[1]
loop = (unixloop.new_event_loop() if kind == 'unixloop'
        else asyncio.SelectorEventLoop())
errors = []
err_event = asyncio.Event()

def handler(lp, ctx):
    exc = ctx.get('exception')
    errors.append([ctx['message'], getattr(exc, 'errno', None), lp.time(),
                   'socket' in ctx])
    err_event.set()

loop.set_exception_handler(handler)
made = 0
made_event = asyncio.Event()

class P(asyncio.Protocol):
    def connection_made(self, tr):
        global made
        made += 1
        made_event.set()

async def wait_made(n):
    while made < n:
        made_event.clear()
        await made_event.wait()

async def wait_errors(n):
    while len(errors) < n:
        err_event.clear()
        await err_event.wait()

async def main():
    srv = await loop.create_server(P, '127.0.0.1', 0)
    addr = srv.sockets[0].getsockname()
    clients = [socket.create_connection(addr) for _ in range(4)]
    # Use up every fd: the next accept() fails with EMFILE.
    fds = [int(f) for f in os.listdir('/proc/self/fd')]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(fds) + 3, hard))
    fillers = []
    while True:
        try:
            fillers.append(os.open('/dev/null', os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE
            break
    await wait_errors(1)
    # Backing off: no accept, no spinning, for the retry delay.
    cpu0 = time.process_time()
    await asyncio.sleep(0.5)
    cpu = time.process_time() - cpu0
    in_backoff = len(errors)
    # Two fds back: two connections after the delay, then EMFILE again.
    os.close(fillers.pop())
    os.close(fillers.pop())
    await wait_made(2)
    await wait_errors(2)
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await wait_made(4)
    for c in clients:
        c.close()
    srv.close()
    await srv.wait_closed()
    print(json.dumps({'errors': errors, 'cpu': cpu, 'made': made,
                      'in_backoff': in_backoff}))

loop.run_until_complete(main())
loop.close()
'''


def test_emfile_backoff():
    """accept() out of fds: reported through call_exception_handler, then
    no accepting (and no spinning) for ACCEPT_RETRY_DELAY seconds, then it
    resumes by itself.  In a subprocess with a low RLIMIT_NOFILE.

    unixloop only: asyncio 3.11's _accept_connection goes on looping after
    the error, so it reports it (and schedules a retry) `backlog` times per
    wake-up; unixloop reports it once per back-off."""
    out = subprocess.run(
        [sys.executable, '-c', EMFILE_SCRIPT, 'unixloop'],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    errors = res['errors']
    assert res['made'] == 4
    assert res['in_backoff'] == 1
    assert res['cpu'] < 0.25, res  # a spinning reader would take ~0.5 s
    assert len(errors) >= 2
    for message, err, _, has_socket in errors:
        assert message == 'socket.accept() out of system resource'
        assert err == 24  # EMFILE
        assert has_socket
    delay = asyncio.constants.ACCEPT_RETRY_DELAY
    gaps = [b[2] - a[2] for a, b in zip(errors, errors[1:])]
    assert all(g >= delay * 0.9 for g in gaps), gaps
