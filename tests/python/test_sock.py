"""Low-level sock_* coroutines over socketpairs, TCP, UNIX and UDP."""
import asyncio
import os
import socket
import tempfile

import pytest

import unixloop

BIG = 10 * 1024 * 1024


def nonblocking(*socks):
    for s in socks:
        s.setblocking(False)
    return socks


@pytest.fixture
def pair():
    a, b = nonblocking(*socket.socketpair())
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def unix_path():
    with tempfile.TemporaryDirectory() as d:
        yield os.path.join(d, 'sock')


def payload(n):
    block = bytes(range(256)) * 4096  # 1 MiB, not a repeating short pattern
    out = bytearray()
    i = 0
    while len(out) < n:
        out += block[i % 251:] + block[:i % 251]
        i += 1
    return bytes(out[:n])


def test_sock_recv(aloop, pair):
    a, b = pair

    async def main():
        fut = aloop.create_task(aloop.sock_recv(a, 100))
        await asyncio.sleep(0)
        assert not fut.done()
        b.send(b'hello')
        return await fut

    assert aloop.run_until_complete(main()) == b'hello'


def test_sock_recv_eof(aloop, pair):
    a, b = pair
    b.close()
    assert aloop.run_until_complete(aloop.sock_recv(a, 100)) == b''


def test_sock_recv_into(aloop, pair):
    a, b = pair
    buf = bytearray(10)

    async def main():
        task = aloop.create_task(aloop.sock_recv_into(a, buf))
        await asyncio.sleep(0)
        await aloop.sock_sendall(b, b'abcdef')
        return await task

    n = aloop.run_until_complete(main())
    assert n == 6
    assert bytes(buf[:n]) == b'abcdef'


def test_sock_recv_into_memoryview(aloop, pair):
    a, b = pair
    buf = bytearray(8)
    b.send(b'xyz')
    n = aloop.run_until_complete(aloop.sock_recv_into(a, memoryview(buf)[2:]))
    assert n == 3 and buf == b'\0\0xyz\0\0\0'


def _transfer(loop, a, b, data):
    async def receiver():
        chunks = []
        while True:
            chunk = await loop.sock_recv(b, 256 * 1024)
            if not chunk:
                return b''.join(chunks)
            chunks.append(chunk)

    async def sender():
        await loop.sock_sendall(a, data)
        a.shutdown(socket.SHUT_WR)

    async def main():
        r = loop.create_task(receiver())
        await sender()
        return await asyncio.wait_for(r, 30)

    return loop.run_until_complete(main())


def test_sock_sendall_large_payload(aloop, pair):
    a, b = pair
    data = payload(BIG)
    got = _transfer(aloop, a, b, data)
    assert len(got) == len(data)
    assert got == data


def test_sock_sendall_empty(aloop, pair):
    a, b = pair
    assert aloop.run_until_complete(aloop.sock_sendall(a, b'')) is None


def test_sock_sendall_to_closed_peer(aloop, pair):
    a, b = pair
    b.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        aloop.run_until_complete(aloop.sock_sendall(a, payload(BIG)))


def _connect_accept(loop, family, address):
    listener = socket.socket(family, socket.SOCK_STREAM)
    client = socket.socket(family, socket.SOCK_STREAM)
    nonblocking(listener, client)
    try:
        listener.bind(address)
        listener.listen(5)
        addr = listener.getsockname()

        async def main():
            accept = loop.create_task(loop.sock_accept(listener))
            await loop.sock_connect(client, addr)
            conn, peer = await accept
            try:
                assert not conn.getblocking()
                await loop.sock_sendall(client, b'ping')
                got = await loop.sock_recv(conn, 4)
                await loop.sock_sendall(conn, b'pong')
                back = await loop.sock_recv(client, 4)
                return got, back, peer
            finally:
                conn.close()

        return loop.run_until_complete(main())
    finally:
        listener.close()
        client.close()


def test_sock_connect_accept_tcp(aloop):
    got, back, peer = _connect_accept(aloop, socket.AF_INET, ('127.0.0.1', 0))
    assert (got, back) == (b'ping', b'pong')
    assert peer[0] == '127.0.0.1'


def test_sock_connect_accept_tcp6(aloop):
    if not socket.has_ipv6:
        pytest.skip('no IPv6')
    try:
        got, back, peer = _connect_accept(aloop, socket.AF_INET6, ('::1', 0))
    except OSError as exc:
        pytest.skip(f'IPv6 loopback unavailable: {exc}')
    assert (got, back) == (b'ping', b'pong')


def test_sock_connect_accept_unix(aloop, unix_path):
    got, back, peer = _connect_accept(aloop, socket.AF_UNIX, unix_path)
    assert (got, back) == (b'ping', b'pong')


def test_sock_sendall_large_tcp(aloop):
    listener = socket.create_server(('127.0.0.1', 0))
    client = socket.socket()
    nonblocking(listener, client)
    try:
        async def connect():
            accept = aloop.create_task(aloop.sock_accept(listener))
            await aloop.sock_connect(client, listener.getsockname())
            conn, _ = await accept
            return conn

        conn = aloop.run_until_complete(connect())
        try:
            data = payload(BIG)
            assert _transfer(aloop, client, conn, data) == data
        finally:
            conn.close()
    finally:
        listener.close()
        client.close()


def test_sock_connect_refused(aloop):
    # A port nobody listens on: bind, note it, close.
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    addr = probe.getsockname()
    probe.close()
    s = socket.socket()
    s.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError):
            aloop.run_until_complete(aloop.sock_connect(s, addr))
    finally:
        s.close()


def test_sock_connect_unix_missing_path(aloop, unix_path):
    s = socket.socket(socket.AF_UNIX)
    s.setblocking(False)
    try:
        with pytest.raises(FileNotFoundError):
            aloop.run_until_complete(aloop.sock_connect(s, unix_path))
    finally:
        s.close()


def test_sock_recvfrom_sendto_udp(aloop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    nonblocking(a, b)
    try:
        a.bind(('127.0.0.1', 0))
        b.bind(('127.0.0.1', 0))

        async def main():
            recv = aloop.create_task(aloop.sock_recvfrom(a, 2048))
            await asyncio.sleep(0)
            assert not recv.done()
            n = await aloop.sock_sendto(b, b'datagram', a.getsockname())
            data, addr = await recv
            buf = bytearray(100)
            recv2 = aloop.create_task(aloop.sock_recvfrom_into(b, buf))
            await aloop.sock_sendto(a, b'reply', addr)
            nbytes, addr2 = await recv2
            return n, data, addr, bytes(buf[:nbytes]), addr2

        n, data, addr, reply, addr2 = aloop.run_until_complete(main())
        assert n == len(b'datagram')
        assert data == b'datagram'
        assert addr == b.getsockname()
        assert reply == b'reply'
        assert addr2 == a.getsockname()
    finally:
        a.close()
        b.close()


def test_sock_recvfrom_many_datagrams(aloop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    nonblocking(a, b)
    try:
        a.bind(('127.0.0.1', 0))

        async def main():
            got = []
            for i in range(100):
                await aloop.sock_sendto(b, str(i).encode(), a.getsockname())
                data, _ = await aloop.sock_recvfrom(a, 100)
                got.append(int(data))
            return got

        assert aloop.run_until_complete(main()) == list(range(100))
    finally:
        a.close()
        b.close()


def test_cancel_pending_sock_recv_removes_reader(aloop, pair):
    a, b = pair

    async def main():
        task = aloop.create_task(aloop.sock_recv(a, 10))
        await asyncio.sleep(0)
        assert a.fileno() in _reader_fds(aloop)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        return _reader_fds(aloop)

    assert a.fileno() not in aloop.run_until_complete(main())
    assert aloop.remove_reader(a) is False
    # The data sent afterwards is still there for the next reader.
    b.send(b'after')
    assert aloop.run_until_complete(aloop.sock_recv(a, 10)) == b'after'


def _reader_fds(loop):
    """The fds with an active reader, from each loop's own table (the
    public remove_reader() would change what it looks at)."""
    if isinstance(loop, unixloop.Loop):
        return {fd for fd, h in loop._readers.items() if not h.cancelled()}
    return {k.fd for k in loop._selector.get_map().values()
            if k.data[0] is not None and not k.data[0].cancelled()}


def test_cancel_pending_sock_accept_removes_reader(aloop):
    listener = socket.create_server(('127.0.0.1', 0))
    listener.setblocking(False)
    try:
        async def main():
            task = aloop.create_task(aloop.sock_accept(listener))
            await asyncio.sleep(0)
            assert listener.fileno() in _reader_fds(aloop)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            return _reader_fds(aloop)

        assert listener.fileno() not in aloop.run_until_complete(main())
    finally:
        listener.close()


def test_sock_recv_timeout_with_wait_for(aloop, pair):
    a, b = pair

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(aloop.sock_recv(a, 10), 0.02)
        b.send(b'late')
        return await aloop.sock_recv(a, 10)

    assert aloop.run_until_complete(main()) == b'late'


def test_two_concurrent_sock_recv_on_different_sockets(aloop):
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    nonblocking(a1, b1, a2, b2)
    try:
        async def main():
            r1 = aloop.create_task(aloop.sock_recv(a1, 10))
            r2 = aloop.create_task(aloop.sock_recv(a2, 10))
            await asyncio.sleep(0)
            b2.send(b'two')
            b1.send(b'one')
            return await asyncio.gather(r1, r2)

        assert aloop.run_until_complete(main()) == [b'one', b'two']
    finally:
        for s in (a1, b1, a2, b2):
            s.close()


def test_getaddrinfo(aloop):
    infos = aloop.run_until_complete(
        aloop.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM))
    assert infos and infos[0][4] == ('127.0.0.1', 80)


# unixloop does the first, non-waiting recv()/send() of a plain socket in C
# and calls the methods of any other socket object: both must behave alike.

class RecordingSocket(socket.socket):
    """A socket subclass whose recv/send must be the ones called."""
    calls = []

    def recv(self, n, *args):
        self.calls.append(('recv', n))
        return super().recv(n, *args)

    def send(self, data, *args):
        self.calls.append(('send', len(data)))
        return super().send(data, *args)


def test_sock_subclass_methods_are_called(aloop):
    RecordingSocket.calls = []
    la, lb = socket.socketpair()
    # Adopt the pair's fds into the subclass objects.
    a = RecordingSocket(fileno=la.detach())
    b = RecordingSocket(fileno=lb.detach())
    nonblocking(a, b)
    try:
        async def main():
            await aloop.sock_sendall(a, b'abc')
            return await aloop.sock_recv(b, 10)

        assert aloop.run_until_complete(main()) == b'abc'
        assert ('send', 3) in RecordingSocket.calls
        assert ('recv', 10) in RecordingSocket.calls
    finally:
        a.close()
        b.close()


def test_sock_recv_large_n_and_waiting(aloop, pair):
    a, b = pair
    data = payload(200_000)

    async def main():
        recv = aloop.create_task(aloop.sock_recv(b, 1 << 20))
        await asyncio.sleep(0)
        assert not recv.done()
        await aloop.sock_sendall(a, data)
        got = await recv
        rest = bytearray(got)
        while len(rest) < len(data):
            rest += await aloop.sock_recv(b, 1 << 20)
        return bytes(rest)

    assert aloop.run_until_complete(main()) == data


def test_sock_recv_connection_reset(aloop):
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen()
    c = socket.socket()
    c.connect(srv.getsockname())
    s, _ = srv.accept()
    srv.close()
    nonblocking(c, s)
    # SO_LINGER 0: close() sends a RST, so recv() fails with ECONNRESET.
    import struct
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    s.close()
    try:
        with pytest.raises(ConnectionResetError):
            aloop.run_until_complete(aloop.sock_recv(c, 100))
    finally:
        c.close()


def test_sock_send_to_closed_peer_raises(aloop, pair):
    a, b = pair
    b.close()

    async def main():
        await aloop.sock_sendall(a, b'x' * 1000)

    with pytest.raises(BrokenPipeError):
        aloop.run_until_complete(main())
