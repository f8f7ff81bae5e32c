"""The C socket transport (unixloop._core.SocketTransport): what a user of
asyncio's transports sees, compared with stock asyncio where it makes sense."""
import asyncio
import socket
import ssl
import tracemalloc

import pytest

import unixloop
from conftest import pattern, run


class Recorder(asyncio.Protocol):
    def __init__(self):
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.done = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')

    def data_received(self, data):
        self.data += data
        self.events.append('data')

    def eof_received(self):
        self.events.append('eof')

    def connection_lost(self, exc):
        self.events.append(('lost', type(exc).__name__ if exc else None))
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def make_pair(loop, proto_factory=Recorder):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    proto = proto_factory()
    proto.done = loop.create_future()
    transport, _ = loop.run_until_complete(
        loop.connect_accepted_socket(lambda: proto, a))
    return transport, proto, b


def test_transport_is_asyncio_transport_and_in_c(aloop, no_fd_leak):
    transport, proto, peer = make_pair(aloop)
    try:
        assert isinstance(transport, asyncio.Transport)
        assert isinstance(transport, asyncio.WriteTransport)
        assert isinstance(transport, asyncio.ReadTransport)
        if isinstance(aloop, unixloop.Loop):
            assert type(transport).__name__ == 'SocketTransport'
        assert transport.get_extra_info('socket') is not None
        assert transport.get_extra_info('sockname') is not None
        assert transport.get_extra_info('nope', 42) == 42
        assert transport.get_protocol() is proto
        assert transport.can_write_eof()
    finally:
        transport.close()
        aloop.run_until_complete(proto.done)
        peer.close()


def test_round_trip_eof_and_close_order(aloop, no_fd_leak):
    transport, proto, peer = make_pair(aloop)
    try:
        transport.write(b'hello')
        aloop.run_until_complete(asyncio.sleep(0.01))
        assert peer.recv(100) == b'hello'
        peer.sendall(b'world')
        peer.shutdown(socket.SHUT_WR)
        aloop.run_until_complete(proto.done)
        assert bytes(proto.data) == b'world'
        # eof_received returned None: the transport closed itself.
        assert proto.events[0] == 'made'
        assert proto.events[-2:] == ['eof', ('lost', None)]
        assert transport.is_closing()
    finally:
        peer.close()


class Keeper(Recorder):
    """Keeps every bytes object data_received got, as it got it."""

    def __init__(self):
        super().__init__()
        self.chunks = []

    def data_received(self, data):
        self.chunks.append(data)


def test_big_and_small_reads_each_get_their_own_bytes(aloop, no_fd_leak):
    # unixloop reads big chunks straight into the bytes object it hands to
    # data_received: no later read may write into one handed out before.
    transport, proto, peer = make_pair(aloop, Keeper)
    sizes = [100, 40 * 1024, 300 * 1024, 200, 1024 * 1024 + 7, 1]
    payload = bytes(range(256)) * (sum(sizes) // 256 + 1)
    try:
        async def send():
            at = 0
            for n in sizes:
                await aloop.sock_sendall(peer, payload[at:at + n])
                await asyncio.sleep(0)
                at += n
            peer.shutdown(socket.SHUT_WR)
            await proto.done
        aloop.run_until_complete(send())
        assert all(type(c) is bytes and c for c in proto.chunks)
        assert b''.join(proto.chunks) == payload[:sum(sizes)]
        assert proto.events[-1] == ('lost', None)
    finally:
        transport.close()
        peer.close()


def test_idle_connection_holds_no_read_buffer(aloop, no_fd_leak):
    # After a big read, unixloop reads into a bytes object it allocates
    # before the read; when the read finds nothing (the bytes came in whole
    # buffers), that object must not stay with the idle connection.
    class Counter(Recorder):
        def __init__(self):
            super().__init__()
            self.count = 0
            self.want = None

        def data_received(self, data):
            self.count += len(data)
            if self.want is not None and self.count >= self.want[0]:
                self.want[1].set_result(None)

    async def deliver(n):
        proto.want = (proto.count + n, aloop.create_future())
        peer.send(b'x' * n)  # fits in the socket buffer at once
        await proto.want[1]

    whole = 127 * 1024  # the transport's big read size
    transport, proto, peer = make_pair(aloop, Counter)
    tracemalloc.start()
    try:
        aloop.run_until_complete(deliver(20 * 1024))  # makes its reads big
        aloop.run_until_complete(deliver(whole))
        held = [t for t in tracemalloc.take_snapshot().traces
                if t.size >= whole]
        assert held == []
        assert proto.count == 20 * 1024 + whole
    finally:
        tracemalloc.stop()
        transport.close()
        aloop.run_until_complete(proto.done)
        peer.close()


def test_write_errors_like_asyncio(aloop, no_fd_leak):
    transport, proto, peer = make_pair(aloop)
    try:
        with pytest.raises(TypeError, match='bytes-like object'):
            transport.write('text')
        transport.write_eof()
        with pytest.raises(RuntimeError, match='after write_eof'):
            transport.write(b'x')
        with pytest.raises(ValueError, match='must be >= low'):
            transport.set_write_buffer_limits(high=1, low=2)
        transport.set_write_buffer_limits(high=100)
        assert transport.get_write_buffer_limits() == (25, 100)
    finally:
        transport.close()
        aloop.run_until_complete(proto.done)
        peer.close()


def test_flow_control_pause_resume(aloop, no_fd_leak):
    class Flow(Recorder):
        def pause_writing(self):
            self.events.append('pause')

        def resume_writing(self):
            self.events.append('resume')

    transport, proto, peer = make_pair(aloop, Flow)
    try:
        transport.set_write_buffer_limits(high=64 * 1024)
        blob = b'x' * (4 * 1024 * 1024)
        transport.write(blob)
        assert 'pause' in proto.events
        assert transport.get_write_buffer_size() > 0
        got = 0

        async def drain_peer():
            nonlocal got
            while got < len(blob):
                try:
                    got += len(peer.recv(1 << 20))
                except BlockingIOError:
                    await asyncio.sleep(0.001)

        aloop.run_until_complete(drain_peer())
        aloop.run_until_complete(asyncio.sleep(0.01))
        assert got == len(blob)
        assert proto.events.count('pause') == 1
        assert 'resume' in proto.events
        assert transport.get_write_buffer_size() == 0
    finally:
        transport.close()
        aloop.run_until_complete(proto.done)
        peer.close()


def test_writes_while_close_flushes_are_sent(aloop, no_fd_leak):
    """asyncio's socket transport takes writes until close() has flushed
    its buffer: its TLS layer writes the close_notify from resume_writing,
    called as that buffer drains."""
    class Closer(Recorder):
        def resume_writing(self):
            self.transport.write(b'bye')

    transport, proto, peer = make_pair(aloop, Closer)
    blob = pattern(4 * 1024 * 1024)
    try:
        transport.write(blob)
        transport.close()
        transport.write(b'then')
        got = bytearray()

        async def read_peer():
            while True:
                try:
                    chunk = peer.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                if not chunk:
                    return
                got.extend(chunk)

        run(aloop, read_peer)
        run(aloop, lambda: proto.done)
        assert bytes(got) == blob + b'then' + b'bye'
        assert proto.events == ['made', ('lost', None)]
    finally:
        peer.close()


def test_buffered_protocol_reads_into_its_buffer(aloop, no_fd_leak):
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(10)
            self.got = bytearray()
            self.events = []

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.got += self.buf[:nbytes]

        def eof_received(self):
            self.events.append('eof')

        def connection_lost(self, exc):
            self.done.set_result(exc)

    transport, proto, peer = make_pair(aloop, Buffered)
    try:
        peer.sendall(b'a' * 25)
        peer.shutdown(socket.SHUT_WR)
        assert aloop.run_until_complete(proto.done) is None
        assert bytes(proto.got) == b'a' * 25
        assert proto.events == ['eof']
    finally:
        peer.close()


def test_pause_reading_stops_delivery(aloop, no_fd_leak):
    transport, proto, peer = make_pair(aloop)
    try:
        aloop.run_until_complete(asyncio.sleep(0))
        transport.pause_reading()
        assert not transport.is_reading()
        peer.sendall(b'held')
        aloop.run_until_complete(asyncio.sleep(0.02))
        assert bytes(proto.data) == b''
        transport.resume_reading()
        assert transport.is_reading()
        aloop.run_until_complete(asyncio.sleep(0.02))
        assert bytes(proto.data) == b'held'
    finally:
        transport.close()
        aloop.run_until_complete(proto.done)
        peer.close()


def test_data_received_error_goes_to_handler_and_aborts(aloop, no_fd_leak):
    class Boom(Recorder):
        def data_received(self, data):
            raise ZeroDivisionError('boom')

    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    transport, proto, peer = make_pair(aloop, Boom)
    try:
        peer.sendall(b'x')
        aloop.run_until_complete(proto.done)
        assert contexts and contexts[0]['message'] == (
            'Fatal error: protocol.data_received() call failed.')
        assert isinstance(contexts[0]['exception'], ZeroDivisionError)
        assert contexts[0]['transport'] is transport
        assert proto.events[-1] == ('lost', 'ZeroDivisionError')
    finally:
        aloop.set_exception_handler(None)
        peer.close()


def test_peer_reset_reaches_connection_lost(aloop, no_fd_leak):
    transport, proto, peer = make_pair(aloop)
    # Unread data in the peer's receive queue makes its close a reset.
    transport.write(b'unread')
    aloop.run_until_complete(asyncio.sleep(0.01))
    peer.close()
    aloop.run_until_complete(proto.done)
    assert proto.events[-1] in (('lost', 'ConnectionResetError'),
                                ('lost', None))


@pytest.mark.parametrize('upgrade', ['ssl=', 'start_tls'])
def test_failed_tls_handshake_reaches_the_caller(aloop, tls_pair, upgrade):
    """A client that does not trust the server's certificate: asyncio's
    sslproto aborts the transport under it with _force_close(exc), and the
    caller gets the ssl module's error, with nothing for the handler."""
    server_ctx, _ = tls_pair
    untrusting = ssl.create_default_context()
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    async def main():
        server = await aloop.create_server(asyncio.Protocol, '127.0.0.1', 0,
                                           ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                if upgrade == 'ssl=':
                    await aloop.create_connection(
                        asyncio.Protocol, '127.0.0.1', port, ssl=untrusting,
                        server_hostname='localhost')
                else:
                    transport, proto = await aloop.create_connection(
                        asyncio.Protocol, '127.0.0.1', port)
                    try:
                        await aloop.start_tls(transport, proto, untrusting,
                                              server_hostname='localhost')
                    finally:
                        transport.close()
        finally:
            server.close()
            await server.wait_closed()

    run(aloop, main)
    # In debug mode asyncio also reports the server's side, reset by the
    # client mid-handshake ("Error on transport creation for incoming
    # connection"), on both loops; nothing is reported about the client.
    assert [c for c in contexts
            if not c['message'].endswith('incoming connection')] == []


def test_tls_runs_on_the_c_transport(loop, tls_pair):
    """ssl= on both ends: asyncio's sslproto sits over unixloop's C socket
    transport (asyncio's own _make_ssl_transport would put it over its
    Python selector transport), and the bytes cross intact."""
    server_ctx, client_ctx = tls_pair
    blob = pattern(1 << 20)
    under = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            under.append(transport._ssl_protocol._transport)

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        server = await loop.create_server(Echo, '127.0.0.1', 0,
                                          ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            '127.0.0.1', port, ssl=client_ctx, server_hostname='localhost')
        under.append(writer.transport._ssl_protocol._transport)
        writer.write(blob)
        echoed = await reader.readexactly(len(blob))
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return echoed == blob

    assert run(loop, main)
    assert [type(t).__name__ for t in under] == ['SocketTransport'] * 2
