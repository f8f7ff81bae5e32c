"""ResourceWarnings for what a program forgot to close, as asyncio gives them.

Every test runs on stock asyncio and on unixloop (the `kind` parameter) and
checks the same things: the warning's category and message, that closing
the loop does not call connection_lost (asyncio does not), and that the
socket is closed once the transport is collected.
"""
import asyncio
import gc
import socket
import warnings

import pytest

import unixloop

from conftest import open_fds


def new_loop(kind):
    return asyncio.SelectorEventLoop() if kind == 'asyncio' \
        else unixloop.new_event_loop()


class Proto(asyncio.Protocol):
    def __init__(self):
        self.events = []

    def connection_made(self, transport):
        self.events.append('made')

    def connection_lost(self, exc):
        self.events.append('lost')


class Recorded(list):
    """with Recorded() as got: ... -- every warning raised inside the block
    (the last reference dropped, then gc.collect()) as (category, text)."""

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self._caught = self._cm.__enter__()
        warnings.simplefilter('always')
        return self

    def __exit__(self, *exc):
        gc.collect()
        self.extend((w.category, str(w.message)) for w in self._caught)
        return self._cm.__exit__(*exc)


def resource_messages(caught, prefix):
    return [m for c, m in caught if c is ResourceWarning and
            m.startswith(prefix)]


def connect(loop):
    """A transport on one end of a socket pair: (a, b, transport, proto)."""
    a, b = socket.socketpair()
    tr, proto = loop.run_until_complete(
        loop.create_connection(Proto, sock=a))
    return a, b, tr, proto


def unclosed_transport_warnings(holder):
    """Empties holder (the last reference to a transport) and returns the
    'unclosed transport' warnings that followed."""
    with Recorded() as got:
        holder.clear()
    return resource_messages(got, 'unclosed transport')


kinds = pytest.mark.parametrize('kind', ['asyncio', 'unixloop'])


@kinds
def test_unclosed_loop_warns(kind):
    loop = new_loop(kind)
    loop.call_soon(len, '')           # a queued callback does not keep it
    loop.call_later(100, len, '')
    text = repr(loop)
    with Recorded() as got:
        del loop
    got = resource_messages(got, 'unclosed event loop')
    assert got == [f'unclosed event loop {text}']


@kinds
def test_closed_loop_does_not_warn(kind):
    loop = new_loop(kind)
    loop.close()
    with Recorded() as got:
        del loop
    assert resource_messages(got, 'unclosed') == []


@kinds
def test_loop_close_keeps_transport_open_then_warns(kind):
    before = open_fds()
    loop = new_loop(kind)
    a, b, tr, proto = connect(loop)
    fd = a.fileno()
    loop.close()
    # asyncio's close() does not call connection_lost: the socket stays
    # open, and the transport is not closing.
    assert proto.events == ['made']
    assert a.fileno() == fd
    assert not tr.is_closing()
    assert repr(tr) == f'<{type(tr).__name__} fd={fd}>'
    text = repr(tr)
    with Recorded() as got:
        del tr
    got = resource_messages(got, 'unclosed transport')
    assert got == [f'unclosed transport {text}']
    assert a.fileno() == -1           # the transport closed its socket
    assert proto.events == ['made']
    b.close()
    assert open_fds() == before


@kinds
def test_close_after_loop_closed_raises_like_asyncio(kind):
    loop = new_loop(kind)
    a, b, tr, proto = connect(loop)
    loop.close()
    with pytest.raises(RuntimeError, match='Event loop is closed'):
        tr.close()
    assert tr.is_closing()
    assert repr(tr).startswith(f'<{type(tr).__name__} closing fd=')
    box = [tr]
    del tr
    assert len(unclosed_transport_warnings(box)) == 1
    assert proto.events == ['made']
    b.close()


@kinds
def test_loop_closed_before_connection_made(kind):
    # The transport exists, connection_made is still queued: the loop
    # closes.  Nothing is called, nothing dangles, the socket is closed when
    # the transport goes.
    before = open_fds()
    loop = new_loop(kind)
    a, b = socket.socketpair()
    proto = Proto()
    tr = loop._make_socket_transport(a, proto)
    loop.close()
    assert proto.events == []
    assert not tr.is_closing()
    assert repr(tr) == f'<{type(tr).__name__} fd={a.fileno()}>'
    assert tr.get_write_buffer_size() == 0
    box = [tr]
    del tr
    assert len(unclosed_transport_warnings(box)) == 1
    assert proto.events == []
    assert a.fileno() == -1
    b.close()
    assert open_fds() == before


@kinds
def test_transport_lost_normally_does_not_warn(kind):
    loop = new_loop(kind)
    a, b, tr, proto = connect(loop)
    tr.close()
    loop.run_until_complete(asyncio.sleep(0))
    assert proto.events == ['made', 'lost']
    loop.close()
    with Recorded() as got:
        del tr
    assert resource_messages(got, 'unclosed') == []
    b.close()


@kinds
def test_forgotten_loop_and_transport_are_collected(kind):
    # Nothing refers to the loop or its transport any more: both are
    # collected, both warn, the socket is closed.
    before = open_fds()
    loop = new_loop(kind)
    a, b, tr, proto = connect(loop)
    with Recorded() as got:
        del loop, tr
    assert len(resource_messages(got, 'unclosed event loop')) == 1
    assert len(resource_messages(got, 'unclosed transport')) == 1
    assert proto.events == ['made']
    assert a.fileno() == -1
    b.close()
    assert open_fds() == before


@kinds
def test_unclosed_server_socket_warns(kind):
    # asyncio's Server has no warning of its own: its listening socket,
    # dropped by the closed loop, warns as any socket does.
    loop = new_loop(kind)
    srv = loop.run_until_complete(
        loop.create_server(Proto, '127.0.0.1', 0))
    port = srv.sockets[0].getsockname()[1]
    loop.close()
    with Recorded() as got:
        del srv
    got = resource_messages(got, 'unclosed <socket.socket')
    assert len(got) == 1 and str(port) in got[0]


@kinds
def test_transport_repr_like_asyncio(kind):
    loop = new_loop(kind)
    a, b = socket.socketpair()
    try:
        tr, proto = loop.run_until_complete(
            loop.create_connection(Proto, sock=a))
        fd = a.fileno()
        name = type(tr).__name__
        assert repr(tr) == \
            f'<{name} fd={fd} read=polling write=<idle, bufsize=0>>'
        tr.pause_reading()
        assert repr(tr) == \
            f'<{name} fd={fd} read=idle write=<idle, bufsize=0>>'
        tr.resume_reading()
        tr.write(b'x' * (8 << 20))    # more than the socket buffer
        size = tr.get_write_buffer_size()
        assert size > 0
        assert repr(tr) == \
            f'<{name} fd={fd} read=polling write=<polling, bufsize={size}>>'
        tr.abort()
        assert repr(tr).startswith(f'<{name} closing fd={fd} read=idle')
        loop.run_until_complete(asyncio.sleep(0))
        assert repr(tr) == f'<{name} closed fd={fd}>'
    finally:
        loop.close()
        b.close()


# ---- every kind of transport, made before or after connection_made ------

class DatagramProto(asyncio.DatagramProtocol):
    def __init__(self):
        self.events = []

    def connection_made(self, transport):
        self.events.append('made')

    def connection_lost(self, exc):
        self.events.append('lost')


def open_transport(loop, what, made):
    """A transport of kind `what`; with made=False, the loop is closed
    before its connection_made could run.  Returns (transport, protocol,
    fileobj it owns, a cleanup closing the other end)."""
    import os
    if what == 'datagram':
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(('127.0.0.1', 0))
        sock.setblocking(False)
        proto = DatagramProto()
        if made:
            tr, _ = loop.run_until_complete(loop.create_datagram_endpoint(
                lambda: proto, sock=sock))
        else:
            tr = loop._make_datagram_transport(sock, proto)
        return tr, proto, sock, lambda: None
    rfd, wfd = os.pipe()
    proto = Proto()
    if what == 'read_pipe':
        f, other = open(rfd, 'rb', buffering=0), wfd
        connect, make = loop.connect_read_pipe, loop._make_read_pipe_transport
    else:
        f, other = open(wfd, 'wb', buffering=0), rfd
        connect, make = loop.connect_write_pipe, loop._make_write_pipe_transport
    if made:
        tr, _ = loop.run_until_complete(connect(lambda: proto, f))
    else:
        tr = make(f, proto)
    return tr, proto, f, lambda: os.close(other)


def is_closed(fileobj):
    if isinstance(fileobj, socket.socket):
        return fileobj.fileno() == -1
    return fileobj.closed


@kinds
@pytest.mark.parametrize('what', ['read_pipe', 'write_pipe', 'datagram'])
@pytest.mark.parametrize('made', [True, False], ids=['made', 'not_made'])
def test_loop_close_leaves_transport_open_then_warns(kind, what, made):
    before = open_fds()
    loop = new_loop(kind)
    tr, proto, fileobj, cleanup = open_transport(loop, what, made)
    loop.close()
    assert proto.events == (['made'] if made else [])
    assert not tr.is_closing()
    assert not is_closed(fileobj)
    box = [tr]
    del tr
    assert len(unclosed_transport_warnings(box)) == 1
    assert proto.events == (['made'] if made else [])
    assert is_closed(fileobj)
    cleanup()
    assert open_fds() == before


@kinds
@pytest.mark.parametrize('what', ['read_pipe', 'datagram'])
def test_forgotten_loop_with_transport_is_collected(kind, what):
    before = open_fds()
    loop = new_loop(kind)
    tr, proto, fileobj, cleanup = open_transport(loop, what, True)
    with Recorded() as got:
        del loop, tr
    assert len(resource_messages(got, 'unclosed event loop')) == 1
    assert len(resource_messages(got, 'unclosed transport')) == 1
    assert proto.events == ['made']
    cleanup()
    assert open_fds() == before
