"""A real asyncio program on unixloop: AsyncSSH (Debian's python3-asyncssh
2.10), an SSH server and client in one process.  Each test runs on stock
asyncio's loop and on unixloop's (the aloop fixture), so that a difference in
behaviour shows as one of the pair failing.

What SSH asks of a loop: TCP connections carrying a protocol that encrypts
and decrypts in data_received, with flow control both ways (an SSH channel's
window pauses reading and writing); a server process whose session is
redirected to a local subprocess (pipe transports, child watching, the exit
status sent back); ports and UNIX socket paths forwarded through the
connection (create_server and create_connection, create_unix_server and
create_unix_connection, paired by asyncssh); and SFTP, a file protocol over
one channel.
"""
import asyncio
import os
import sys
import tempfile
import warnings

import pytest

with warnings.catch_warnings():
    # cryptography deprecates ciphers asyncssh still offers, on import.
    warnings.simplefilter('ignore')
    asyncssh = pytest.importorskip(
        'asyncssh', reason='python3-asyncssh is not installed '
                           '(make deps installs it)')
from conftest import pattern, run  # noqa: E402

BIG = 4 * 1024 * 1024  # many SSH windows (2 MiB) and packets (32 KiB)


async def echo_session(process):
    """A shell session without a shell: echoes stdin until EOF."""
    while data := await process.stdin.read(65536):
        process.stdout.write(data)
    process.exit(0)


async def cat_session(process):
    """The session's stdin and stdout are a local `cat` process's."""
    cat = await asyncio.create_subprocess_exec(
        sys.executable, '-c',
        'import shutil, sys; '
        'shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)',
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    await process.redirect(stdin=cat.stdin, stdout=cat.stdout)
    await process.stdout.drain()
    process.exit(await cat.wait())


async def failing_session(process):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, '-c', 'import sys; sys.exit(7)')
    process.exit(await proc.wait())


SESSIONS = {'echo': echo_session, 'cat': cat_session,
            'fail': failing_session}


async def dispatch(process):
    await SESSIONS[process.command](process)


class Forwarding(asyncssh.SSHServer):
    """A server that lets its clients forward ports and UNIX socket paths
    (asyncssh's default refuses)."""
    def connection_requested(self, dest_host, dest_port, orig_host,
                             orig_port):
        return True

    def unix_connection_requested(self, dest_path):
        return True


class Keys:
    """A host key and a client key, made once: key generation is slow."""
    host = asyncssh.generate_private_key('ssh-ed25519')
    client = asyncssh.generate_private_key('ssh-ed25519')


async def ssh_pair(**server_options):
    """An SSH server on 127.0.0.1 (a free port) and a client connected to
    it with public key authentication; returns (server, connection)."""
    server = await asyncssh.listen(
        '127.0.0.1', 0, server_host_keys=[Keys.host],
        authorized_client_keys=asyncssh.import_authorized_keys(
            Keys.client.export_public_key().decode()),
        server_factory=Forwarding, process_factory=dispatch, encoding=None,
        **server_options)
    port = server.sockets[0].getsockname()[1]
    conn = await asyncssh.connect(
        '127.0.0.1', port, username='user', client_keys=[Keys.client],
        known_hosts=([Keys.host.convert_to_public()], [], []))
    return server, conn


async def close_pair(server, conn):
    conn.close()
    await conn.wait_closed()
    server.close()
    await server.wait_closed()


def test_session_echo(aloop):
    async def main():
        server, conn = await ssh_pair()
        try:
            result = await conn.run('echo', input=pattern(BIG),
                                    encoding=None)
        finally:
            await close_pair(server, conn)
        return result.exit_status, result.stdout == pattern(BIG)

    assert run(aloop, main) == (0, True)


def test_session_redirected_to_a_subprocess(aloop):
    async def main():
        server, conn = await ssh_pair()
        try:
            cat = await conn.run('cat', input=pattern(BIG), encoding=None)
            fail = await conn.run('fail')
        finally:
            await close_pair(server, conn)
        return (cat.exit_status, cat.stdout == pattern(BIG),
                fail.exit_status)

    assert run(aloop, main) == (0, True, 7)


async def echo_client(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def through(reader, writer, data):
    """Sends data, then EOF; returns what came back before EOF."""
    async def send():
        writer.write(data)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    got = await reader.read(-1)
    await sender
    writer.close()
    await writer.wait_closed()
    return got


async def echoed_through_forward(echo, forward, open_client):
    """Sends BIG to the echo server echo through a forward that
    forward(connection) sets up and open_client(listener) connects to;
    closes everything and returns whether it all came back."""
    server, conn = await ssh_pair()
    try:
        listener = await forward(conn)
        got = await through(*await open_client(listener), pattern(BIG))
        listener.close()
        await listener.wait_closed()
    finally:
        await close_pair(server, conn)
        echo.close()
        await echo.wait_closed()
    return got == pattern(BIG)


def test_tcp_port_forwarding(aloop):
    async def main():
        echo = await asyncio.start_server(echo_client, '127.0.0.1', 0)
        port = echo.sockets[0].getsockname()[1]
        return await echoed_through_forward(
            echo,
            lambda conn: conn.forward_local_port('127.0.0.1', 0,
                                                 '127.0.0.1', port),
            lambda listener: asyncio.open_connection('127.0.0.1',
                                                     listener.get_port()))

    assert run(aloop, main)


def test_unix_socket_forwarding(aloop):
    async def main(tmp):
        echo_path = os.path.join(tmp, 'echo.sock')
        local_path = os.path.join(tmp, 'local.sock')
        echo = await asyncio.start_unix_server(echo_client, echo_path)
        return await echoed_through_forward(
            echo,
            lambda conn: conn.forward_local_path(local_path, echo_path),
            lambda listener: asyncio.open_unix_connection(local_path))

    with tempfile.TemporaryDirectory() as tmp:
        assert run(aloop, main, tmp)


def test_sftp_put_and_get(aloop):
    async def main(tmp):
        served = os.path.join(tmp, 'served')
        os.mkdir(served)
        source = os.path.join(tmp, 'source')
        with open(source, 'wb') as f:
            f.write(pattern(BIG))
        server, conn = await ssh_pair(
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan,
                                                          chroot=served))
        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.put(source, 'copy')
                listing = await sftp.listdir('.')
                await sftp.get('copy', os.path.join(tmp, 'back'))
        finally:
            await close_pair(server, conn)
        with open(os.path.join(tmp, 'back'), 'rb') as f:
            back = f.read()
        return sorted(listing), back == pattern(BIG)

    with tempfile.TemporaryDirectory() as tmp:
        assert run(aloop, main, tmp) == (['.', '..', 'copy'], True)


def test_connection_refused_and_bad_key(aloop):
    async def main():
        server, conn = await ssh_pair()
        port = server.sockets[0].getsockname()[1]
        try:
            stranger = asyncssh.generate_private_key('ssh-ed25519')
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect(
                    '127.0.0.1', port, username='user',
                    client_keys=[stranger],
                    known_hosts=([Keys.host.convert_to_public()], [], []))
        finally:
            await close_pair(server, conn)
        # The server is gone: nothing listens on its port now.
        with pytest.raises(OSError):
            await asyncssh.connect('127.0.0.1', port, username='user',
                                   known_hosts=None)

    run(aloop, main)
