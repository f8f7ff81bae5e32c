"""Real asyncio libraries on unixloop: anyio (Debian's python3-anyio 3.6)
used directly, and httpx (python3-httpx 0.23 on httpcore 0.16, whose network
backend is anyio on asyncio) against an aiohttp server on the same loop.
Each test runs on stock asyncio's loop and on unixloop's (the aloop fixture),
so that a difference in behaviour shows as one of the pair failing.

What they exercise of the loop:

- anyio's TCP streams: create_connection, sock_accept +
  connect_accepted_socket, a protocol that sets the write buffer limits to 0
  (pause_writing after every write not sent at once), pause_reading /
  resume_reading around every receive, write_eof with the transport kept
  open (eof_received returns True), and cancellation of a pending receive;
- anyio's UNIX streams: no transports at all but raw non-blocking sockets,
  with an add_reader / add_writer and a remove_* around every wait;
- anyio's TLS (ssl.MemoryBIO over a TCP stream), on both ends or, under
  httpx, against asyncio's sslproto in aiohttp's server;
- worker threads: anyio's own threads hand results back with
  call_soon_threadsafe, from_thread.run with run_coroutine_threadsafe, and
  getaddrinfo runs in the loop's default executor;
- subprocesses (subprocess_exec, pipe transports, child watching, the
  returncode of a process killed by a signal) and add_signal_handler;
- httpx: connection pooling and keep-alive, large and streamed bodies in both
  directions, read timeouts, HTTP over a UNIX socket and over TLS.
"""
import asyncio
import functools
import os
import signal
import socket
import subprocess
import tempfile
import threading

import pytest

anyio = pytest.importorskip(
    'anyio', reason='python3-anyio is not installed (make deps installs it)')
httpx = pytest.importorskip(
    'httpx', reason='python3-httpx is not installed (make deps installs it)')
pytest.importorskip(
    'aiohttp',
    reason='python3-aiohttp is not installed (make deps installs it)')
from anyio.abc import SocketAttribute  # noqa: E402
from anyio.streams.tls import TLSAttribute, TLSListener  # noqa: E402
from conftest import pattern, run  # noqa: E402
# httpx's tests talk to the same aiohttp server as test_aiohttp.py's.
from test_aiohttp import make_app, serve  # noqa: E402

BIG = 4 * 1024 * 1024  # well past every socket and pipe buffer
# anyio 3.6's UNIXSocketStream.send() resends the whole item after a partial
# send (it passes `item`, not the unsent rest of its memoryview), on any loop.  A send of at most 32 KiB on a UNIX
# stream socket is one skb in Linux, all or nothing, so chunks this small
# keep that bug out of the way.
CHUNK = 16 * 1024
EOF_MARK = b'<the peer sent EOF>'


# -- anyio streams ----------------------------------------------------------

async def open_listener(family, tmp):
    if family == 'tcp':
        return await anyio.create_tcp_listener(local_host='127.0.0.1')
    return await anyio.create_unix_listener(os.path.join(tmp, 'anyio.sock'))


async def connect(listener, **tls):
    address = listener.extra(SocketAttribute.local_address)
    if isinstance(address, tuple):
        return await anyio.connect_tcp(*address, **tls)
    return await anyio.connect_unix(address)


async def echo(stream, trailer=EOF_MARK):
    """Echoes until the peer's EOF, then sends trailer (which proves the
    half-closed connection still carries data the other way) and closes."""
    async with stream:
        try:
            while True:
                await stream.send(await stream.receive(CHUNK))
        except anyio.EndOfStream:
            pass
        if trailer:
            await stream.send(trailer)


async def send_all(stream, data, eof=True):
    for i in range(0, len(data), CHUNK):
        await stream.send(data[i:i + CHUNK])
    if eof:
        await stream.send_eof()


async def receive_until_eof(stream):
    received = bytearray()
    try:
        while True:
            received += await stream.receive()
    except anyio.EndOfStream:
        return bytes(received)


async def receive_exactly(stream, n):
    received = bytearray()
    while len(received) < n:
        received += await stream.receive()
    return bytes(received)


@pytest.mark.parametrize('family', ['tcp', 'unix'])
def test_echo_with_half_close(aloop, family):
    data = pattern(BIG)

    async def main(tmp):
        async with await open_listener(family, tmp) as listener:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, echo)
                async with await connect(listener) as client:
                    # Sending and receiving at once: the echo cannot all
                    # sit in the socket buffers.
                    tg.start_soon(send_all, client, data)
                    received = await receive_until_eof(client)
                tg.cancel_scope.cancel()  # stops serve()
        return received

    with tempfile.TemporaryDirectory() as tmp:
        received = run(aloop, main, tmp)
    assert len(received) == len(data) + len(EOF_MARK)
    assert received == data + EOF_MARK


def test_tls_echo(aloop, tls_pair):
    server_ctx, client_ctx = tls_pair
    data = pattern(BIG)

    async def main():
        listener = TLSListener(
            await anyio.create_tcp_listener(local_host='127.0.0.1'),
            server_ctx)
        port = listener.listener.extra(SocketAttribute.local_port)
        handled = anyio.Event()

        async def handler(stream):
            # TLS streams have no half close: the client's close_notify is
            # the end, and closing answers it with the server's.
            await echo(stream, trailer=None)
            handled.set()

        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handler)
            client = await anyio.connect_tcp(
                '127.0.0.1', port, tls=True, ssl_context=client_ctx,
                tls_hostname='localhost')
            async with client:
                tg.start_soon(functools.partial(send_all, client, data,
                                                eof=False))
                received = await receive_exactly(client, len(data))
                info = (client.extra(TLSAttribute.tls_version),
                        client.extra(TLSAttribute.peer_certificate)['subject'])
            await handled.wait()  # the server saw the close_notify
            tg.cancel_scope.cancel()
        return received, info

    received, (version, subject) = run(aloop, main)
    assert received == data
    assert version.startswith('TLSv1.')
    assert (('commonName', 'localhost'),) in subject


@pytest.mark.parametrize('family', ['tcp', 'unix'])
def test_cancelled_receive(aloop, family):
    async def main(tmp):
        accepted = anyio.Event()
        server_streams = []

        async def hold(stream):
            server_streams.append(stream)
            accepted.set()
            async with stream:
                await stream.receive()  # nothing comes: cancelled below
            raise AssertionError('receive() returned')

        async with await open_listener(family, tmp) as listener:
            async with await connect(listener) as client:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(listener.serve, hold)
                    await accepted.wait()
                    # A receive with nothing to read, ended by its deadline.
                    with anyio.move_on_after(0.1) as scope:
                        await client.receive()
                        raise AssertionError('receive() returned')
                    assert scope.cancel_called
                    # That receive left the stream usable.
                    await server_streams[0].send(b'late')
                    assert await client.receive() == b'late'
                    # Cancelling the server's task group ends the handler
                    # blocked in receive(), which closes its stream.
                    tg.cancel_scope.cancel()
                with anyio.fail_after(5):
                    with pytest.raises(anyio.EndOfStream):
                        await client.receive()

    with tempfile.TemporaryDirectory() as tmp:
        run(aloop, main, tmp)


def test_connect_errors(aloop):
    async def main(tmp):
        # A bound socket that does not listen: connecting to it is refused.
        with socket.socket() as unused:
            unused.bind(('127.0.0.1', 0))
            port = unused.getsockname()[1]
            with pytest.raises(OSError) as tcp:
                await anyio.connect_tcp('127.0.0.1', port)
            async with client() as c:
                with pytest.raises(httpx.ConnectError):
                    await c.get('http://127.0.0.1:{}/'.format(port))
        with pytest.raises(FileNotFoundError):
            await anyio.connect_unix(os.path.join(tmp, 'missing.sock'))
        return tcp.value

    with tempfile.TemporaryDirectory() as tmp:
        error = run(aloop, main, tmp)
    # anyio wraps the loop's create_connection error.
    assert isinstance(error.__cause__, ConnectionRefusedError)


# -- threads, subprocesses, signals -----------------------------------------

def test_to_thread_and_back(aloop):
    loop_thread = threading.get_ident()

    async def in_loop(x):
        await anyio.sleep(0)
        return x * 2, threading.get_ident(), asyncio.get_running_loop()

    def in_worker(x):
        # Back into the loop twice: a coroutine and a plain function.
        doubled, thread, loop = anyio.from_thread.run(in_loop, x)
        sync_thread = anyio.from_thread.run_sync(threading.get_ident)
        return doubled, {thread, sync_thread}, loop, threading.get_ident()

    async def main():
        results = {}

        async def call(x):
            results[x] = await anyio.to_thread.run_sync(
                in_worker, x, cancellable=True)

        # Several workers at once, each waiting on the loop in turn.
        async with anyio.create_task_group() as tg:
            for x in range(8):
                tg.start_soon(call, x)
        # getaddrinfo runs in the loop's default executor.
        addresses = await anyio.getaddrinfo('127.0.0.1', 80,
                                            type=socket.SOCK_STREAM)
        return results, addresses

    results, addresses = run(aloop, main)
    assert sorted(results) == list(range(8))
    for x, (doubled, loop_threads, loop, worker) in results.items():
        assert doubled == 2 * x
        assert loop_threads == {loop_thread}
        assert loop is aloop
        assert worker != loop_thread
    assert [a[4] for a in addresses] == [('127.0.0.1', 80)]


def test_process_echo_and_kill(aloop):
    data = pattern(BIG)

    async def main():
        async with await anyio.open_process(
                ['cat'], stderr=subprocess.DEVNULL) as cat:

            async def feed():
                await send_all(cat.stdin, data, eof=False)
                await cat.stdin.aclose()  # cat's EOF

            async with anyio.create_task_group() as tg:
                tg.start_soon(feed)
                echoed = await receive_until_eof(cat.stdout)
            status = await cat.wait()

        killed = []
        for signum in (signal.SIGKILL, signal.SIGTERM):
            # cat blocks reading its open stdin until the signal.
            async with await anyio.open_process(
                    ['cat'], stderr=subprocess.DEVNULL) as victim:
                victim.send_signal(signum)
                killed.append((await victim.wait(), victim.returncode))
        return echoed, status, killed

    echoed, status, killed = run(aloop, main)
    assert echoed == data
    assert status == 0
    assert killed == [(-signal.SIGKILL, -signal.SIGKILL),
                      (-signal.SIGTERM, -signal.SIGTERM)]


def test_signal_receiver(aloop):
    async def main():
        got = []
        with anyio.open_signal_receiver(signal.SIGUSR1,
                                        signal.SIGUSR2) as signals:
            for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1):
                os.kill(os.getpid(), signum)
                got.append(await signals.__anext__())
        return got

    got = run(aloop, main)
    assert got == [signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1]
    # Leaving the receiver removed the handlers, as asyncio does.
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


# -- httpx against aiohttp's server -----------------------------------------

def client(**kwargs):
    # trust_env=False: no proxy from the environment between us and the
    # server.
    return httpx.AsyncClient(trust_env=False, **kwargs)


async def chunks(data):
    """A request body httpx sends chunked, as it is produced."""
    for i in range(0, len(data), CHUNK):
        await anyio.sleep(0)
        yield data[i:i + CHUNK]


async def exchange(base, **kwargs):
    """The requests every transport kind must carry; returns what came."""
    got = {}
    async with client(**kwargs) as c:
        r = await c.get(base + '/hello/loop')
        got['hello'] = (r.status_code, r.text, r.http_version)
        # Sent in CHUNK-sized pieces: see CHUNK for anyio's UNIX socket
        # send bug that a single 4 MiB body would run into.
        r = await c.post(base + '/echo', content=chunks(pattern(BIG)))
        got['echo'] = (r.status_code, r.content == pattern(BIG))
        async with c.stream('GET', base + '/stream',
                            params={'size': str(BIG)}) as r:
            parts = [part async for part in r.aiter_bytes()]
            got['stream'] = (r.status_code, b''.join(parts) == pattern(BIG),
                             len(parts) > 1)
    return got


EXPECTED = {
    'hello': (200, 'hello loop', 'HTTP/1.1'),
    'echo': (200, True),
    'stream': (200, True, True),
}


def test_httpx_get_and_post(aloop):
    async def main():
        runner, base = await serve(make_app({}))
        try:
            async with client() as c:
                r = await c.get(base + '/hello/loop')
                hello = (r.status_code, r.text)
                body = pattern(BIG)
                r = await c.post(base + '/echo', content=body)
                echoed = (r.status_code, len(r.content), r.content == body)
        finally:
            await runner.cleanup()
        return hello, echoed

    hello, echoed = run(aloop, main)
    assert hello == (200, 'hello loop')
    assert echoed == (200, BIG, True)


def test_httpx_streaming_both_ways(aloop):
    async def main():
        runner, base = await serve(make_app({}))
        try:
            return await exchange(base)
        finally:
            await runner.cleanup()

    assert run(aloop, main) == EXPECTED


def test_httpx_keep_alive_reuses_one_connection(aloop):
    state = {}

    async def main():
        runner, base = await serve(make_app(state))
        try:
            async with client() as c:
                for i in range(20):
                    r = await c.get(base + '/hello/{}'.format(i))
                    assert r.text == 'hello {}'.format(i)
        finally:
            await runner.cleanup()

    run(aloop, main)
    assert len(state['peers']) == 20
    assert len(set(state['peers'])) == 1  # one connection accepted
    # The server ran on the loop under test's own transports.
    assert state['kinds'] == ({'unixloop._core'} if aloop.kind == 'unixloop'
                              else {'asyncio.selector_events'})


def test_httpx_over_unix_socket(aloop):
    async def main(path):
        state = {}
        runner, base = await serve(make_app(state), unix_path=path)
        try:
            got = await exchange(
                base, transport=httpx.AsyncHTTPTransport(uds=path))
        finally:
            await runner.cleanup()
        return got, state['peers']

    with tempfile.TemporaryDirectory() as tmp:
        got, peers = run(aloop, main, os.path.join(tmp, 'http.sock'))
    assert got == EXPECTED
    assert peers == ['']  # an unnamed UNIX socket was the client


def test_httpx_read_timeout(aloop):
    async def main():
        state = {'stalled': asyncio.Event(), 'release': asyncio.Event()}
        runner, base = await serve(make_app(state))
        try:
            timeout = httpx.Timeout(5.0, read=0.2)
            async with client(timeout=timeout) as c:
                with pytest.raises(httpx.ReadTimeout):
                    await c.get(base + '/stall')
                assert state['stalled'].is_set()  # the server had it
                # The client goes on, on a new connection.
                r = await c.get(base + '/hello/again')
                assert (r.status_code, r.text) == (200, 'hello again')
        finally:
            state['release'].set()  # or cleanup waits for the handler
            await runner.cleanup()

    run(aloop, main)


def test_httpx_https(aloop, tls_pair):
    server_ctx, client_ctx = tls_pair

    async def main():
        runner, base = await serve(make_app({}), ssl_context=server_ctx)
        try:
            return await exchange(base, verify=client_ctx)
        finally:
            await runner.cleanup()

    assert run(aloop, main) == EXPECTED
