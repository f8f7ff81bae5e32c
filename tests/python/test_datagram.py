"""Datagram endpoints (create_datagram_endpoint, unixloop._core.
DatagramTransport): what a user of asyncio's datagram transports sees, each
test run on stock asyncio and on unixloop to prove the same behaviour."""
import asyncio
import logging
import os
import socket
import tempfile

import pytest

import unixloop


class Recorder(asyncio.DatagramProtocol):
    def __init__(self, loop, echo=False):
        self.loop = loop
        self.echo = echo
        self.events = []
        self.datagrams = []
        self.errors = []
        self.transport = None
        self.lost = loop.create_future()
        self.got = asyncio.Event()
        self.failed = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append('made')

    def datagram_received(self, data, addr):
        self.datagrams.append((data, addr))
        if not self.events or self.events[-1] != 'data':
            self.events.append('data')
        if self.echo:
            self.transport.sendto(data, addr)
        self.got.set()

    def error_received(self, exc):
        self.errors.append(exc)
        self.events.append(('error', type(exc).__name__))
        self.failed.set()

    def pause_writing(self):
        self.events.append('pause')

    def resume_writing(self):
        self.events.append('resume')

    def connection_lost(self, exc):
        self.events.append(('lost', type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait_datagrams(self, n):
        while len(self.datagrams) < n:
            self.got.clear()
            await asyncio.wait_for(self.got.wait(), 5)


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, 10))


def endpoint(loop, **kw):
    echo = kw.pop('echo', False)
    return run(loop, loop.create_datagram_endpoint(
        lambda: Recorder(loop, echo), **kw))


def close_all(loop, *transports):
    protocols = [t.get_protocol() for t in transports]
    for t in transports:
        t.close()
    for p in protocols:
        run(loop, p.lost)


def test_transport_type_and_extra_info(aloop):
    t, p = endpoint(aloop, local_addr=('127.0.0.1', 0))
    try:
        assert isinstance(t, asyncio.BaseTransport)
        if isinstance(aloop, unixloop.Loop):
            assert type(t).__name__ == 'DatagramTransport'
            # asyncio 3.11's own class is not one; 3.12's is.
            assert isinstance(t, asyncio.DatagramTransport)
        sock = t.get_extra_info('socket')
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_DGRAM
        assert t.get_extra_info('sockname') == sock.getsockname()
        assert t.get_extra_info('peername') is None
        assert t.get_extra_info('nope', 42) == 42
        assert t.get_protocol() is p
        assert t.get_write_buffer_size() == 0
        assert t.get_write_buffer_limits() == (16384, 65536)
        assert not t.is_closing()
        assert p.events == ['made']
    finally:
        close_all(aloop, t)
    assert p.events == ['made', ('lost', None)]
    assert t.is_closing()
    assert t.get_protocol() is None   # asyncio drops it after the loss


def test_udp_echo_and_addresses(aloop):
    st, sp = endpoint(aloop, local_addr=('127.0.0.1', 0), echo=True)
    saddr = st.get_extra_info('sockname')
    ct, cp = endpoint(aloop, remote_addr=saddr)
    try:
        assert ct.get_extra_info('peername') == saddr
        ct.sendto(b'one')
        ct.sendto(b'two', saddr)          # the connected address is fine
        ct.sendto(bytearray(b'three'))
        ct.sendto(memoryview(b'four'))
        ct.sendto(b'')                    # asyncio 3.11 sends nothing
        run(aloop, cp.wait_datagrams(4))
        assert [d for d, _ in cp.datagrams] == [b'one', b'two', b'three',
                                                b'four']
        assert all(a == saddr for _, a in cp.datagrams)
        assert sp.datagrams[0][1] == ct.get_extra_info('sockname')
        assert isinstance(sp.datagrams[0][0], bytes)
    finally:
        close_all(aloop, ct, st)


def test_udp6_echo(aloop):
    if not socket.has_ipv6:
        pytest.skip('no IPv6 support in this Python')
    try:
        st, sp = endpoint(aloop, local_addr=('::1', 0), echo=True)
    except OSError as e:
        pytest.skip(f'no IPv6 loopback here: {e}')
    saddr = st.get_extra_info('sockname')
    ct, cp = endpoint(aloop, remote_addr=saddr[:2], family=socket.AF_INET6)
    try:
        ct.sendto(b'six')
        run(aloop, cp.wait_datagrams(1))
        data, addr = cp.datagrams[0]
        assert data == b'six'
        assert addr == saddr            # (host, port, flowinfo, scope_id)
        assert len(sp.datagrams[0][1]) == 4
    finally:
        close_all(aloop, ct, st)


def test_unconnected_sendto_host_name(aloop):
    st, sp = endpoint(aloop, local_addr=('127.0.0.1', 0))
    ut, up = endpoint(aloop, local_addr=('127.0.0.1', 0))
    try:
        port = st.get_extra_info('sockname')[1]
        ut.sendto(b'by name', ('localhost', port))
        ut.sendto(b'by number', ('127.0.0.1', port))
        run(aloop, sp.wait_datagrams(2))
        assert sorted(d for d, _ in sp.datagrams) == [b'by name',
                                                       b'by number']
    finally:
        close_all(aloop, st, ut)


def test_sendto_checks_and_messages(aloop):
    st, sp = endpoint(aloop, local_addr=('127.0.0.1', 0))
    saddr = st.get_extra_info('sockname')
    ct, cp = endpoint(aloop, remote_addr=saddr)
    try:
        with pytest.raises(TypeError, match="data argument must be a "
                           "bytes-like object, not 'str'"):
            ct.sendto('text')
        with pytest.raises(ValueError, match=r"Invalid address: must be None "
                           r"or \('127\.0\.0\.1', \d+\)"):
            ct.sendto(b'x', ('127.0.0.1', 9))
        ct.sendto(b'', None)
        ct.sendto(b'ok', addr=None)
        run(aloop, sp.wait_datagrams(1))
        assert [d for d, _ in sp.datagrams] == [b'ok']
    finally:
        close_all(aloop, ct, st)


def test_unreachable_peer_goes_to_error_received(aloop):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(('127.0.0.1', 0))
    dead = probe.getsockname()
    probe.close()
    t, p = endpoint(aloop, remote_addr=dead)
    try:
        t.sendto(b'anyone?')
        run(aloop, p.failed.wait())
        assert isinstance(p.errors[0], ConnectionRefusedError)
        assert not t.is_closing()
        assert p.events == ['made', ('error', 'ConnectionRefusedError')]
    finally:
        close_all(aloop, t)
    assert p.events[-1] == ('lost', None)


def test_unix_datagrams_by_path(aloop):
    with tempfile.TemporaryDirectory() as d:
        spath = os.path.join(d, 'server')
        cpath = os.path.join(d, 'client')
        st, sp = endpoint(aloop, local_addr=spath, family=socket.AF_UNIX,
                          echo=True)
        ct, cp = endpoint(aloop, local_addr=cpath, remote_addr=spath,
                          family=socket.AF_UNIX)
        try:
            assert st.get_extra_info('sockname') == spath
            assert ct.get_extra_info('peername') == spath
            ct.sendto(b'x' * 100_000)     # larger than any UDP datagram
            ct.sendto(b'small')
            run(aloop, cp.wait_datagrams(2))
            assert [len(d) for d, _ in cp.datagrams] == [100_000, 5]
            assert cp.datagrams[0][1] == spath
            assert sp.datagrams[0][1] == cpath
        finally:
            close_all(aloop, ct, st)


def test_unix_datagram_unbound_sender(aloop):
    with tempfile.TemporaryDirectory() as d:
        spath = os.path.join(d, 'server')
        st, sp = endpoint(aloop, local_addr=spath, family=socket.AF_UNIX)
        ct, cp = endpoint(aloop, remote_addr=spath, family=socket.AF_UNIX)
        try:
            ct.sendto(b'who?')
            run(aloop, sp.wait_datagrams(1))
            assert sp.datagrams[0][1] in ('', None)
            # What socket.recvfrom says for an unnamed sender:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            raw.bind(os.path.join(d, 'raw'))
            ct2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            ct2.sendto(b'?', os.path.join(d, 'raw'))
            assert sp.datagrams[0][1] == raw.recvfrom(10)[1]
            raw.close()
            ct2.close()
        finally:
            close_all(aloop, ct, st)


class _RawPeer:
    """A UNIX datagram socket bound to a path, read only when the test says
    so, and a transport connected to it."""

    def __init__(self, loop):
        self.dir = tempfile.TemporaryDirectory()
        path = os.path.join(self.dir.name, 'peer')
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.transport, self.protocol = endpoint(
            loop, remote_addr=path, family=socket.AF_UNIX)

    def close(self):
        self.sock.close()
        self.dir.cleanup()


def _socketpair_endpoint(loop):
    peer = _RawPeer(loop)
    return peer.transport, peer.protocol, peer


def _fill(t):
    n = 0
    while t.get_write_buffer_size() == 0:
        t.sendto(b'z' * 1000)
        n += 1
        assert n < 100_000
    return n


def _drain(peer):
    sock = peer.sock
    n = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return n
        n += 1


def test_water_marks_pause_resume(aloop):
    t, p, peer = _socketpair_endpoint(aloop)
    try:
        t.set_write_buffer_limits(high=4000)
        assert t.get_write_buffer_limits() == (1000, 4000)
        sent = _fill(t)
        for _ in range(3):
            t.sendto(b'z' * 1000)
        assert t.get_write_buffer_size() == 4000
        assert 'pause' not in p.events
        t.sendto(b'!')
        assert p.events[-1] == 'pause'
        assert t.get_write_buffer_size() == 4001

        async def drain_until_resumed():
            while p.events[-1] != 'resume':
                _drain(peer)
                await asyncio.sleep(0.001)
        run(aloop, drain_until_resumed())
        assert t.get_write_buffer_size() <= 1000
        with pytest.raises(ValueError, match='high.*must be >= low'):
            t.set_write_buffer_limits(high=1, low=2)
        assert sent > 0
    finally:
        close_all(aloop, t)
        peer.close()
    assert p.events == ['made', 'pause', 'resume', ('lost', None)]


def test_close_flushes_abort_drops(aloop):
    for aborting in (False, True):
        t, p, peer = _socketpair_endpoint(aloop)
        sent = _fill(t)
        t.sendto(b'last')
        if aborting:
            t.abort()
            if isinstance(aloop, unixloop.Loop):
                # asyncio 3.11 clears its buffer but not _buffer_size.
                assert t.get_write_buffer_size() == 0
        else:
            t.close()
        assert t.is_closing()
        got = 0

        async def drain_until_lost():
            nonlocal got
            while not p.lost.done():
                got += _drain(peer)
                await asyncio.sleep(0.001)
            got += _drain(peer)
        run(aloop, drain_until_lost())
        assert got == (sent - 1 if aborting else sent + 1)
        assert p.events == ['made', ('lost', None)]
        peer.close()


def test_send_after_close_dropped_then_warned(aloop, caplog):
    st, sp = endpoint(aloop, local_addr=('127.0.0.1', 0))
    ct, cp = endpoint(aloop, remote_addr=st.get_extra_info('sockname'))
    ct.close()
    run(aloop, cp.lost)
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        for _ in range(4):
            ct.sendto(b'late')
        assert not caplog.records
        for _ in range(3):
            ct.sendto(b'late')
    assert [r.getMessage() for r in caplog.records] == [
        'socket.send() raised exception.'] * 3
    close_all(aloop, st)
    assert sp.datagrams == []


def test_exception_in_datagram_received_keeps_transport(aloop):
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    class Failing(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b'boom':
                raise ZeroDivisionError

    st, sp = run(aloop, aloop.create_datagram_endpoint(
        lambda: Failing(aloop), local_addr=('127.0.0.1', 0)))
    ct, cp = endpoint(aloop, remote_addr=st.get_extra_info('sockname'))
    try:
        ct.sendto(b'boom')
        run(aloop, sp.wait_datagrams(1))
        ct.sendto(b'fine')
        run(aloop, sp.wait_datagrams(2))
        assert len(contexts) == 1
        assert isinstance(contexts[0]['exception'], ZeroDivisionError)
        assert contexts[0]['message'].startswith('Exception in callback')
        assert not st.is_closing()
    finally:
        close_all(aloop, ct, st)


def test_bad_address_is_fatal_write_error(aloop):
    contexts = []
    aloop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    t, p = endpoint(aloop, local_addr=('127.0.0.1', 0))
    t.sendto(b'x', None)     # unconnected and no address
    exc = run(aloop, p.lost)
    assert isinstance(exc, TypeError)
    assert contexts[0]['message'] == 'Fatal write error on datagram transport'
    assert contexts[0]['transport'] is t
    assert contexts[0]['protocol'] is p


def test_send_error_goes_to_error_received(aloop):
    t, p = endpoint(aloop, local_addr=('127.0.0.1', 0))
    try:
        t.sendto(b'x' * 70000, ('127.0.0.1', 9))   # larger than UDP allows
        assert [type(e) for e in p.errors] == [OSError]
        assert p.errors[0].errno == 90               # EMSGSIZE
        t.sendto(b'x', ('255.255.255.255', 9))      # no SO_BROADCAST
        assert isinstance(p.errors[1], PermissionError)
        assert not t.is_closing()
    finally:
        close_all(aloop, t)


def test_large_udp_datagram(aloop):
    st, sp = endpoint(aloop, local_addr=('127.0.0.1', 0))
    st.get_extra_info('socket').setsockopt(socket.SOL_SOCKET,
                                           socket.SO_RCVBUF, 1 << 20)
    ct, cp = endpoint(aloop, remote_addr=st.get_extra_info('sockname'))
    try:
        payload = bytes(range(256)) * 255 + b'end'   # 65,283 bytes
        ct.sendto(payload)
        run(aloop, sp.wait_datagrams(1))
        assert sp.datagrams[0][0] == payload
    finally:
        close_all(aloop, ct, st)


def test_reuse_port_and_allow_broadcast(aloop):
    t1, _ = endpoint(aloop, local_addr=('127.0.0.1', 0), reuse_port=True)
    addr = t1.get_extra_info('sockname')
    t2, _ = endpoint(aloop, local_addr=addr, reuse_port=True)
    t3, p3 = endpoint(aloop, local_addr=('127.0.0.1', 0),
                      allow_broadcast=True)
    try:
        for t in (t1, t2):
            assert t.get_extra_info('socket').getsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert t3.get_extra_info('socket').getsockopt(
            socket.SOL_SOCKET, socket.SO_BROADCAST)
        with pytest.raises(ValueError, match='A UDP Socket was expected'):
            tcp = socket.socket()
            try:
                run(aloop, aloop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, sock=tcp))
            finally:
                tcp.close()
    finally:
        close_all(aloop, t1, t2, t3)


def test_repr_and_set_protocol(aloop):
    t, p = endpoint(aloop, local_addr=('127.0.0.1', 0))
    fd = t.get_extra_info('socket').fileno()
    r = repr(t)
    assert f'fd={fd} read=polling write=<idle, bufsize=0>>' in r
    other = Recorder(aloop)
    t.set_protocol(other)
    assert t.get_protocol() is other
    t.close()
    run(aloop, other.lost)
    assert repr(t).endswith(f' closed fd={fd}>')
    assert p.events == ['made']


def test_connection_made_before_waiter_and_data(aloop):
    """connection_made runs before create_datagram_endpoint returns, and
    reading starts only after it."""
    order = []

    class P(Recorder):
        def connection_made(self, transport):
            order.append('made')
            super().connection_made(transport)

    async def main():
        t, p = await aloop.create_datagram_endpoint(
            lambda: P(aloop), local_addr=('127.0.0.1', 0))
        order.append('returned')
        t.close()
        await p.lost
    run(aloop, main())
    assert order == ['made', 'returned']


def test_many_peers_each_answered(aloop):
    """More senders than unixloop keeps address tuples for: every echo
    reaches its own sender, with the sender's address."""
    st, sp = endpoint(aloop, local_addr=('127.0.0.1', 0), echo=True)
    saddr = st.get_extra_info('sockname')
    peers = []
    try:
        for i in range(80):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(('127.0.0.1', 0))
            s.setblocking(False)
            peers.append(s)
        for rnd in range(3):
            for i, s in enumerate(peers):
                s.sendto(b'%d:%d' % (rnd, i), saddr)
            run(aloop, sp.wait_datagrams(80 * (rnd + 1)))
            run(aloop, asyncio.sleep(0.01))
            for i, s in enumerate(peers):
                assert s.recvfrom(100) == (b'%d:%d' % (rnd, i), saddr)
        senders = {a for _, a in sp.datagrams}
        assert senders == {s.getsockname() for s in peers}
    finally:
        for s in peers:
            s.close()
        close_all(aloop, st)


def test_keyboard_interrupt_in_datagram_received_escapes(aloop):
    class Interrupting(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            raise KeyboardInterrupt

    st, sp = run(aloop, aloop.create_datagram_endpoint(
        lambda: Interrupting(aloop), local_addr=('127.0.0.1', 0)))
    ct, cp = endpoint(aloop, remote_addr=st.get_extra_info('sockname'))
    ct.sendto(b'^C')
    with pytest.raises(KeyboardInterrupt):
        aloop.run_until_complete(asyncio.sleep(5))
    assert sp.datagrams[0][0] == b'^C'
    assert not st.is_closing()       # the transport is still usable
    close_all(aloop, ct, st)


def test_error_received_raising_escapes_sendto(aloop):
    """An exception from error_received() called for a send error escapes
    sendto(), as in asyncio."""
    class Raising(Recorder):
        def error_received(self, exc):
            super().error_received(exc)
            raise RuntimeError('from error_received')

    t, p = run(aloop, aloop.create_datagram_endpoint(
        lambda: Raising(aloop), local_addr=('127.0.0.1', 0)))
    try:
        with pytest.raises(RuntimeError, match='from error_received'):
            t.sendto(b'x' * 70000, ('127.0.0.1', 9))
        assert not t.is_closing()
    finally:
        close_all(aloop, t)
