"""loop.sendfile() on unixloop's socket transports: done in C
(ul_stream_sendfile), with what asyncio's native sendfile gives a user."""
import asyncio
import os
import socket
import tempfile

import pytest

import unixloop

DATA = bytes(range(256)) * 40000  # 10 MB: more than the socket buffers


class Sink(asyncio.Protocol):
    """The transport's own protocol: the tests read the peer socket."""

    def __init__(self):
        self.lost = None
        self.lost_exc = None

    def connection_made(self, transport):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.lost_exc = exc
        self.lost.set_result(None)


@pytest.fixture
def datafile():
    with tempfile.TemporaryFile() as f:
        f.write(DATA)
        f.seek(0)
        yield f


async def open_pair(loop):
    a, b = socket.socketpair()
    b.setblocking(False)
    proto = Sink()
    tr, _ = await loop.connect_accepted_socket(lambda: proto, a)
    return tr, proto, b


async def read_all(loop, sock, limit=None):
    got = bytearray()
    while True:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            return bytes(got)
        got += chunk
        if limit is not None and len(got) >= limit:
            return bytes(got)


def test_sendfile_offset_count_position(aloop, datafile):
    async def main():
        tr, proto, peer = await open_pair(aloop)
        reader = aloop.create_task(read_all(aloop, peer))
        tr.write(b'head')
        n = await aloop.sendfile(tr, datafile, 1000, 3_000_000)
        assert n == 3_000_000
        assert datafile.tell() == 3_001_000
        n = await aloop.sendfile(tr, datafile, len(DATA) - 1000)  # to EOF
        assert n == 1000
        n = await aloop.sendfile(tr, datafile, 5, 10**9)  # count past EOF
        assert n == len(DATA) - 5
        assert datafile.tell() == len(DATA)
        tr.write(b'tail')
        tr.close()
        got = await reader
        assert got == (b'head' + DATA[1000:3_001_000] + DATA[-1000:] +
                       DATA[5:] + b'tail')
        await proto.lost
        peer.close()
    aloop.run_until_complete(main())


def test_sendfile_is_native_in_c(loop, datafile):
    """unixloop does not go through asyncio's Python sock_sendfile."""
    async def refuse(*args, **kwargs):
        raise AssertionError('the Python sendfile path was used')

    async def main():
        loop.sock_sendfile = refuse
        tr, proto, peer = await open_pair(loop)
        reader = loop.create_task(read_all(loop, peer))
        assert await loop.sendfile(tr, datafile) == len(DATA)
        tr.close()
        assert await reader == DATA
        await proto.lost
        peer.close()
    loop.run_until_complete(main())


def test_write_during_sendfile_raises(aloop, datafile):
    async def main():
        tr, proto, peer = await open_pair(aloop)
        reader = aloop.create_task(read_all(aloop, peer))
        task = aloop.create_task(aloop.sendfile(tr, datafile))
        await asyncio.sleep(0)  # the task starts the sendfile
        with pytest.raises(RuntimeError, match='sendfile is in progress'):
            tr.write(b'no')
        assert await task == len(DATA)
        tr.write(b'yes')
        tr.close()
        assert await reader == DATA + b'yes'
        await proto.lost
        peer.close()
    aloop.run_until_complete(main())


def test_sendfile_peer_closes_midway(aloop, datafile):
    async def main():
        tr, proto, peer = await open_pair(aloop)
        reader = aloop.create_task(read_all(aloop, peer, limit=1024))
        task = aloop.create_task(aloop.sendfile(tr, datafile))
        got = await reader
        peer.close()
        with pytest.raises(ConnectionError):
            await task
        await proto.lost
        assert tr.is_closing()
        assert 1024 <= datafile.tell() < len(DATA)
        assert got == DATA[:len(got)]
    aloop.run_until_complete(main())


def test_sendfile_cancelled(loop, datafile):
    """A cancelled sendfile stops where it is: the transport stays open and
    writable, and the file position says how far it got (asyncio leaves the
    position at the start, though bytes were sent)."""
    async def main():
        tr, proto, peer = await open_pair(loop)
        task = loop.create_task(loop.sendfile(tr, datafile))
        for _ in range(5):  # the peer does not read: the sendfile stalls
            await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sent = datafile.tell()
        assert 0 < sent < len(DATA)
        assert not tr.is_closing()
        tr.write(b'after')
        tr.close()
        assert await read_all(loop, peer) == DATA[:sent] + b'after'
        await proto.lost
        assert proto.lost_exc is None
        peer.close()
    loop.run_until_complete(main())


def test_sendfile_closing_transport_and_bad_args(aloop, datafile):
    async def main():
        tr, proto, peer = await open_pair(aloop)
        with pytest.raises(ValueError):
            await aloop.sendfile(tr, datafile, -1)
        with pytest.raises(TypeError):
            await aloop.sendfile(tr, datafile, 0, 'x')
        tr.close()
        with pytest.raises(RuntimeError, match='Transport is closing'):
            await aloop.sendfile(tr, datafile)
        await proto.lost
        assert datafile.tell() == 0
        peer.close()
    aloop.run_until_complete(main())
