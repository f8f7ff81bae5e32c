"""A real asyncio library on unixloop: websockets' legacy API (Debian's
python3-websockets 10.4: websockets.serve / connect / unix_serve /
unix_connect), each test run on stock asyncio's loop and on unixloop's (the
aloop fixture), so that a difference in behaviour shows as one of the pair
failing.

websockets drives what a long-lived message protocol needs of a loop:
create_server / create_connection over TCP and UNIX sockets, a protocol that
feeds a StreamReader (pause_reading / resume_reading once its buffer is
full), write buffer limits with pause_writing / resume_writing to block a
sender, many concurrent connections, timers (keepalive pings, open_timeout
and close_timeout through wait_for cancelling pending reads), write_eof for
the TCP half-close, close() and abort() with data still buffered, and TLS
through asyncio's sslproto.
"""
import asyncio
import contextlib
import os
import re
import socket
import ssl
import tempfile

import pytest

websockets = pytest.importorskip(
    'websockets',
    reason='python3-websockets is not installed (make deps installs it)')
from websockets.exceptions import ConnectionClosedOK  # noqa: E402
from websockets.utils import accept_key  # noqa: E402
from conftest import pattern  # noqa: E402

TIMEOUT = 10  # for awaits that should finish at once: a hang fails the test
BIG = 4 * 1024 * 1024  # well past every buffer on the way
TEXT = 'h\u00e9llo w\u00f6rld \u2713 ' * 100  # multi-byte UTF-8
# permessage-deflate is on by default and squeezes pattern() to almost
# nothing: where the bytes on the wire matter, it is turned off.
RAW = dict(compression=None)


async def within(aw, timeout=TIMEOUT):
    return await asyncio.wait_for(aw, timeout)


def port_of(server):
    return server.sockets[0].getsockname()[1]


async def echo(ws):
    async for message in ws:
        await ws.send(message)


@contextlib.asynccontextmanager
async def serving(handler, path=None, host='127.0.0.1', port=0, **kwargs):
    """A websockets server on 127.0.0.1 (a free port) or on the UNIX socket
    path, closed on the way out."""
    if path is None:
        server = await within(websockets.serve(handler, host, port, **kwargs))
    else:
        server = await within(websockets.unix_serve(handler, path, **kwargs))
    try:
        yield server
    finally:
        server.close()
        await within(server.wait_closed())


@contextlib.asynccontextmanager
async def connected(uri, path=None, **kwargs):
    """A client connection to uri (over the UNIX socket path if given),
    closed with the closing handshake on the way out."""
    if path is None:
        ws = await within(websockets.connect(uri, **kwargs))
    else:
        ws = await within(websockets.unix_connect(path, uri, **kwargs))
    try:
        yield ws
    finally:
        await within(ws.close())


async def round_trip(ws):
    """A text and a binary message through an echo server."""
    await within(ws.send(TEXT))
    text = await within(ws.recv())
    await within(ws.send(pattern(100000)))
    binary = await within(ws.recv())
    return text, binary


def test_echo_over_tcp(aloop):
    async def main():
        async with serving(echo) as server:
            uri = 'ws://127.0.0.1:{}/'.format(port_of(server))
            async with connected(uri) as ws:
                got = await round_trip(ws)
            return got, ws.close_code

    assert aloop.run_until_complete(main()) == ((TEXT, pattern(100000)), 1000)


def test_echo_over_unix_socket(aloop):
    async def main(path):
        async with serving(echo, path=path):
            async with connected('ws://localhost/', path=path) as ws:
                got = await round_trip(ws)
                family = ws.transport.get_extra_info('socket').family
            return got, family, ws.close_code

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'ws.sock')
        assert aloop.run_until_complete(main(path)) == (
            (TEXT, pattern(100000)), socket.AF_UNIX, 1000)


def test_big_and_fragmented_messages(aloop):
    async def fragments(message, sizes):
        """message cut in pieces of the given sizes, in turn."""
        i = 0
        while i < len(message):
            for size in sizes:
                if i < len(message):
                    yield message[i:i + size]
                    i += size
            # Let the loop run between fragments, as a real producer would.
            await asyncio.sleep(0)

    async def main():
        async with serving(echo, max_size=2 * BIG, **RAW) as server:
            uri = 'ws://127.0.0.1:{}/'.format(port_of(server))
            async with connected(uri, max_size=2 * BIG, **RAW) as ws:
                await within(ws.send(pattern(BIG)))
                big = await within(ws.recv())
                # One message sent as many frames: the server's recv() has
                # it whole (else its echo would be a part of it).
                data = pattern(BIG + 12345)
                await within(ws.send(fragments(data, (1, 1000, 65536, 7))))
                binary = await within(ws.recv())
                await within(ws.send(fragments(TEXT, (3, 50))))
                text = await within(ws.recv())
        return big == pattern(BIG), binary == data, text

    assert aloop.run_until_complete(main()) == (True, True, TEXT)


def test_fifty_concurrent_clients(aloop):
    clients, rounds = 50, 5

    async def main():
        active = set()
        all_connected = asyncio.Event()

        async def handler(ws):
            active.add(ws)
            if len(active) == clients:
                all_connected.set()
            async for message in ws:
                await ws.send(message[::-1])

        async def client(uri, i):
            async with connected(uri) as ws:
                # Every client holds its connection open until all are in.
                await within(all_connected.wait())
                replies = []
                for j in range(rounds):
                    await ws.send('client {} round {} {}'.format(
                        i, j, 'x' * (j * 1000)))
                    replies.append(await within(ws.recv()))
                return replies

        async with serving(handler) as server:
            uri = 'ws://127.0.0.1:{}/'.format(port_of(server))
            got = await within(asyncio.gather(
                *(client(uri, i) for i in range(clients))))
        return len(active), got

    n, got = aloop.run_until_complete(main())
    assert n == clients
    assert got == [['client {} round {} {}'.format(i, j, 'x' * (j * 1000))
                    [::-1] for j in range(rounds)] for i in range(clients)]


def test_ping_waits_for_the_pong(aloop):
    async def main():
        async with serving(echo) as server:
            uri = 'ws://127.0.0.1:{}/'.format(port_of(server))
            async with connected(uri, ping_interval=None) as ws:
                latencies = []
                for data in (None, b'my ping', 'text ping'):
                    pong = await within(ws.ping(data))
                    latencies.append(await within(pong))
                still_open = await round_trip(ws)
        return latencies, still_open

    latencies, still_open = aloop.run_until_complete(main())
    assert len(latencies) == 3
    assert all(isinstance(t, float) and 0 <= t < TIMEOUT for t in latencies)
    assert still_open == (TEXT, pattern(100000))


def test_keepalive_keeps_an_idle_connection_open(aloop):
    # Both ends ping every 50 ms (and would close with 1011 if a pong took
    # over a second).  Each end counts the pings it answers; the test waits
    # until each has answered several, then checks that pongs came back to
    # both (latency is measured on a pong) and the connection is still open
    # and usable.
    wanted = 6

    async def main():
        answered = {'server': 0, 'client': 0}
        enough = asyncio.Event()

        def count(side):
            answered[side] += 1
            if min(answered.values()) >= wanted:
                enough.set()

        class Server(websockets.WebSocketServerProtocol):
            async def pong(self, data=b''):
                count('server')
                await super().pong(data)

        class Client(websockets.WebSocketClientProtocol):
            async def pong(self, data=b''):
                count('client')
                await super().pong(data)

        keepalive = dict(ping_interval=0.05, ping_timeout=1)
        async with serving(echo, create_protocol=Server, **keepalive) as srv:
            uri = 'ws://127.0.0.1:{}/'.format(port_of(srv))
            async with connected(uri, create_protocol=Client,
                                 **keepalive) as ws:
                await within(enough.wait())
                state = (ws.open, ws.close_code, ws.latency > 0,
                         [s.latency > 0 for s in srv.websockets])
                usable = await round_trip(ws)
        return state, usable

    state, usable = aloop.run_until_complete(main())
    assert state == (True, None, True, [True])
    assert usable == (TEXT, pattern(100000))


def test_server_close_with_clients_connected(aloop):
    clients = 3

    async def main():
        handlers = []
        all_connected = asyncio.Event()

        async def handler(ws):
            handlers.append(ws)
            if len(handlers) == clients:
                all_connected.set()
            await ws.wait_closed()

        server = await within(websockets.serve(handler, '127.0.0.1', 0))
        uri = 'ws://127.0.0.1:{}/'.format(port_of(server))
        sockets = [await within(websockets.connect(uri))
                   for _ in range(clients)]
        await within(all_connected.wait())
        server.close()  # closes every connection with 1001 (going away)
        await within(server.wait_closed())

        seen = []
        for ws in sockets:
            with pytest.raises(ConnectionClosedOK) as caught:
                await within(ws.recv())
            await within(ws.wait_closed())
            seen.append((caught.value.code, ws.close_code,
                         ws.transport.is_closing()))
        with pytest.raises(OSError):  # nothing listens any more
            await within(websockets.connect(uri, open_timeout=None))
        return seen, [ws.close_code for ws in handlers]

    seen, server_side = aloop.run_until_complete(main())
    assert seen == [(1001, 1001, True)] * clients
    assert server_side == [1001] * clients


class Misbehaving(asyncio.Protocol):
    """A peer that accepts the TCP connection, answers the opening handshake
    only if told to, and then ignores everything: it never answers a close
    frame, never closes, and keeps its half of the connection open on EOF.
    With stop_reading, it stops reading right after the handshake."""

    def __init__(self, peers, handshake, stop_reading=False):
        peers.append(self)
        self.handshake = handshake
        self.stop_reading = stop_reading
        self.request = b''
        self.frames = b''  # what came after the handshake
        loop = asyncio.get_running_loop()
        self.got_eof = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.request.endswith(b'\r\n\r\n'):
            self.frames += data
            return
        self.request += data
        if self.handshake and self.request.endswith(b'\r\n\r\n'):
            key = re.search(rb'Sec-WebSocket-Key: *(\S+)', self.request, re.I)
            self.transport.write(
                b'HTTP/1.1 101 Switching Protocols\r\n'
                b'Upgrade: websocket\r\nConnection: Upgrade\r\n'
                b'Sec-WebSocket-Accept: ' +
                accept_key(key.group(1).decode()).encode() + b'\r\n\r\n')
            if self.stop_reading:
                self.transport.pause_reading()

    def eof_received(self):
        self.got_eof.set_result(None)
        return True  # keep the connection half-open

    def connection_lost(self, exc):
        self.lost.set_result(None)


@contextlib.asynccontextmanager
async def misbehaving_server(**kwargs):
    """Yields (uri, peers); closes the peers' transports on the way out."""
    loop = asyncio.get_running_loop()
    peers = []
    # A small receive buffer, so that a peer that stops reading holds up
    # the sender early (accepted sockets inherit it from the listener).
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.bind(('127.0.0.1', 0))
    server = await loop.create_server(
        lambda: Misbehaving(peers, **kwargs), sock=sock)
    try:
        yield 'ws://127.0.0.1:{}/'.format(port_of(server)), peers
    finally:
        server.close()
        for peer in peers:
            peer.transport.close()
        await within(asyncio.gather(*(p.lost for p in peers)))
        await within(server.wait_closed())


def test_open_timeout_against_a_silent_server(aloop):
    async def main():
        async with misbehaving_server(handshake=False) as (uri, peers):
            start = aloop.time()
            with pytest.raises(asyncio.TimeoutError):
                # close_timeout bounds the clean-up after the timeout: the
                # client half-closes and waits for the peer to close.
                await within(websockets.connect(
                    uri, open_timeout=0.2, close_timeout=0.2))
            elapsed = aloop.time() - start
            # The request came, and the client closed its connection.
            await within(peers[0].got_eof)
            return elapsed, len(peers), peers[0].request[:4]

    elapsed, n, request = aloop.run_until_complete(main())
    assert 0.2 <= elapsed < 5  # the default timeouts are 10 s
    assert (n, request) == (1, b'GET ')


def test_close_timeout_against_a_peer_that_never_answers_close(aloop):
    async def main():
        async with misbehaving_server(handshake=True) as (uri, peers):
            ws = await within(websockets.connect(uri, close_timeout=0.1))
            start = aloop.time()
            # close() waits close_timeout for the peer's close frame, then
            # for the TCP close, half-closes and waits again, then closes.
            await within(ws.close())
            elapsed = aloop.time() - start
            await within(peers[0].got_eof)  # the half-close came
            return (elapsed, ws.closed, ws.close_code,
                    ws.transport.is_closing(), peers[0].frames[:1])

    elapsed, closed, code, closing, frame = aloop.run_until_complete(main())
    assert 0.1 <= elapsed < 5  # the default close_timeout is 10 s
    assert (closed, code, closing) == (True, 1006, True)
    assert frame == b'\x88'  # the client's close frame did go out


def test_close_aborts_when_the_peer_stops_reading(aloop):
    # The client's write buffer holds most of a big message that the peer
    # does not read: close() cannot send its close frame, close_timeout
    # after close_timeout passes, and the transport is finally aborted: the
    # data still buffered is dropped, not sent.
    async def main():
        paused = asyncio.Event()

        class Client(websockets.WebSocketClientProtocol):
            def pause_writing(self):
                super().pause_writing()
                paused.set()

        async with misbehaving_server(handshake=True,
                                      stop_reading=True) as (uri, peers):
            ws = await within(websockets.connect(
                uri, close_timeout=0.1, create_protocol=Client))
            send = asyncio.ensure_future(ws.send(pattern(2 * BIG)))
            await within(paused.wait())
            buffered = ws.transport.get_write_buffer_size()
            start = aloop.time()
            await within(ws.close())
            elapsed = aloop.time() - start
            # Unblocked by the abort: the message is lost, send() returns.
            outcome = (await within(asyncio.gather(
                send, return_exceptions=True)))[0]
            # The peer reads again: part of the message, then EOF.
            peers[0].transport.resume_reading()
            await within(peers[0].got_eof)
            return (buffered > 65536, elapsed, ws.closed, ws.close_code,
                    ws.transport.is_closing(), outcome,
                    0 < len(peers[0].frames) < 2 * BIG)

    got = aloop.run_until_complete(main())
    buffered, elapsed, closed, code, closing, outcome, partial = got
    assert buffered
    assert 0.1 <= elapsed < 5  # close_timeout, not the default 10 s
    assert (closed, code, closing) == (True, 1006, True)
    assert outcome is None
    assert partial  # aborted, not flushed


def test_wss_with_a_verified_certificate(aloop, tls_pair):
    # The TLS layer is asyncio's sslproto on the loop's transports.
    server_ctx, client_ctx = tls_pair

    async def main():
        async with serving(echo, ssl=server_ctx, max_size=2 * BIG,
                           **RAW) as server:
            uri = 'wss://127.0.0.1:{}/'.format(port_of(server))
            async with connected(uri, ssl=client_ctx, max_size=2 * BIG,
                                 server_hostname='localhost', **RAW) as ws:
                got = await round_trip(ws)
                await within(ws.send(pattern(BIG)))
                big = await within(ws.recv()) == pattern(BIG)
                cert = ws.transport.get_extra_info('peercert')
            # Without the signing CA, the certificate is refused.
            with pytest.raises(ssl.SSLCertVerificationError):
                await within(websockets.connect(
                    uri, ssl=ssl.create_default_context(),
                    server_hostname='localhost'))
        subject = dict(item[0] for item in cert['subject'])
        return got, big, ws.close_code, subject['commonName']

    assert aloop.run_until_complete(main()) == (
        (TEXT, pattern(100000)), True, 1000, 'localhost')


def test_backpressure_blocks_the_sender_until_the_client_reads(aloop):
    count, size = 24, 256 * 1024  # far more than the buffers on the way

    def message(i):
        return i.to_bytes(4, 'big') + pattern(size)

    async def main():
        loop = asyncio.get_running_loop()
        flow = []  # the server's pause_writing / resume_writing calls
        paused = asyncio.Event()
        sending = loop.create_future()

        class Server(websockets.WebSocketServerProtocol):
            def pause_writing(self):
                super().pause_writing()
                flow.append('pause')
                paused.set()

            def resume_writing(self):
                super().resume_writing()
                flow.append('resume')

        async def send_all(ws):
            for i in range(count):
                await ws.send(message(i))

        async def handler(ws):
            task = asyncio.ensure_future(send_all(ws))
            sending.set_result(task)
            await task

        # Small kernel buffers on both ends: loopback TCP autotunes its
        # buffers to several MiB (the more, the faster the reader drains
        # them), which would swallow the whole stream before the loop's
        # own flow control has anything to hold back.
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        listener.bind(('127.0.0.1', 0))
        client_sock = socket.socket()
        client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client_sock.setblocking(False)
        async with serving(handler, sock=listener, create_protocol=Server,
                           host=None, port=None, **RAW) as server:
            uri = 'ws://127.0.0.1:{}/'.format(port_of(server))
            await within(loop.sock_connect(client_sock,
                                           ('127.0.0.1', port_of(server))))
            # max_queue=1: the client takes in little before recv().
            async with connected(uri, sock=client_sock, max_queue=1,
                                 **RAW) as ws:
                send = await within(sending)
                await within(paused.wait())
                # The client reads nothing: the send stays blocked.
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(send), 0.3)
                stalled = (send.done(), flow[-1], ws.transport.is_reading())
                got = [await within(ws.recv()) for _ in range(count)]
                await within(send)
        return stalled, got

    stalled, got = aloop.run_until_complete(main())
    assert stalled == (False, 'pause', False)
    assert len(got) == count
    assert all(m == message(i) for i, m in enumerate(got))
