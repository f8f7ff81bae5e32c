"""A real asyncio client on unixloop: asyncpg (Debian's python3-asyncpg
0.27), the PostgreSQL driver uvloop is most often installed for, against a
real PostgreSQL server (Debian's postgresql, a throwaway cluster made and
started by the module's fixture on a free TCP port and a UNIX socket, with
TLS on).  Each test runs on stock asyncio's loop and on unixloop's (the
aloop fixture), so that a difference in behaviour shows as one of the pair
failing.

asyncpg is a Cython protocol over create_connection and
create_unix_connection: it pauses and resumes reading and writing for COPY,
upgrades to TLS with loop.start_tls after its SSLRequest, cancels a query by
opening a second connection, and bounds every call with timers.
"""
import asyncio
import contextlib
import glob
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

import pytest

asyncpg = pytest.importorskip(
    'asyncpg', reason='python3-asyncpg is not installed (make deps installs '
                      'it)')
from conftest import free_port, pattern, run  # noqa: E402

TRANSPORTS = pytest.mark.parametrize('transport', ['tcp', 'unix'])
USER = 'unixloop'


def postgres_bindir():
    """The newest installed server's bin directory (Debian puts it under
    /usr/lib/postgresql/VERSION/bin, off $PATH), or None."""
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/postgres'),
                   key=lambda p: int(p.split('/')[4]))
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which('postgres')
    return os.path.dirname(on_path) if on_path else None


def server_env():
    """Our environment without a preloaded sanitizer runtime (the ASan/UBSan
    run preloads one for the extension; PostgreSQL hangs under it)."""
    return {k: v for k, v in os.environ.items()
            if k != 'LD_PRELOAD' and not k.endswith('SAN_OPTIONS')}


def server_user():
    """PostgreSQL refuses to run as root: as root, run it as 'postgres'
    (the user Debian's package makes); otherwise as ourselves."""
    return 'postgres' if os.geteuid() == 0 else None


@pytest.fixture(scope='module')
def pg_server(tls_certificate):
    """A throwaway cluster (trust authentication, no fsync, TLS with
    CPython's 'localhost' test certificate); yields (port, socket dir)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip('PostgreSQL is not installed (Debian: postgresql; make '
                    'deps installs it)')
    user = server_user()
    with tempfile.TemporaryDirectory() as tmp:
        if user:
            shutil.chown(tmp, user)
        data = os.path.join(tmp, 'data')
        subprocess.run(
            [os.path.join(bindir, 'initdb'), '-D', data, '-U', USER,
             '--auth=trust', '--no-sync', '-E', 'UTF8'],
            user=user, env=server_env(), check=True,
            stdout=subprocess.DEVNULL)
        # The key must belong to the server's user and be private to it.
        keycert = os.path.join(data, 'keycert.pem')
        shutil.copy(tls_certificate, keycert)
        os.chmod(keycert, 0o600)
        if user:
            shutil.chown(keycert, user)
        proc, port = start_postgres(bindir, data, tmp, user, keycert)
        try:
            yield port, tmp
        finally:
            proc.terminate()  # SIGTERM: smart shutdown, our clients are gone
            proc.wait()
            proc.stdout.close()


def start_postgres(bindir, data, sockdir, user, keycert):
    for attempt in range(3):  # the free port may be taken meanwhile
        port = free_port()
        proc = subprocess.Popen(
            [os.path.join(bindir, 'postgres'), '-D', data, '-p', str(port),
             '-k', sockdir, '-c', 'listen_addresses=127.0.0.1',
             '-c', 'fsync=off', '-c', 'ssl=on',
             '-c', 'ssl_cert_file=' + keycert,
             '-c', 'ssl_key_file=' + keycert],
            user=user, env=server_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        # It says so once every listener is open.
        for line in proc.stdout:
            if 'ready to accept connections' in line:
                return proc, port
        proc.wait()
        proc.stdout.close()
    pytest.fail('postgres did not start')


@pytest.fixture(scope='module')
def tls_certificate():
    certs = pytest.importorskip(
        'test.test_asyncio.utils',
        reason="CPython's test suite is not installed "
               '(libpython3.11-testsuite; make deps installs it)')
    return certs.SIGNED_CERTFILE


def connect_args(server, transport):
    port, sockdir = server
    host = '127.0.0.1' if transport == 'tcp' else sockdir
    return dict(host=host, port=port, user=USER, database='postgres',
                ssl=False)


@contextlib.asynccontextmanager
async def connected(server, transport='tcp', **kwargs):
    """A connection to server over transport ('tcp' or 'unix'), closed on
    the way out."""
    conn = await asyncpg.connect(**connect_args(server, transport), **kwargs)
    try:
        yield conn
    finally:
        await conn.close()


def table(aloop, name):
    """A table name of its own for each loop's run of a test."""
    return '{}_{}'.format(name, aloop.kind)


@TRANSPORTS
def test_queries_and_a_big_result(aloop, pg_server, transport):
    async def main():
        async with connected(pg_server, transport) as conn:
            one = await conn.fetchval('SELECT 1')
            echoed = await conn.fetchval('SELECT $1::bytea', pattern(1 << 20))
            rows = await conn.fetch(
                'SELECT i, md5(i::text) FROM generate_series(1, 100000) i')
            return (one, echoed == pattern(1 << 20), len(rows),
                    rows[-1][0], transport_kind(conn))

    assert run(aloop, main) == (1, True, 100000, 100000,
                                socket.AF_INET if transport == 'tcp'
                                else socket.AF_UNIX)


def transport_kind(conn):
    return conn._transport.get_extra_info('socket').family


@TRANSPORTS
def test_copy_in_and_out_of_a_table(aloop, pg_server, transport):
    """COPY moves 3 MB each way: asyncpg's writes pass the high water mark
    and the server's reply is read in many pieces."""
    name = table(aloop, 'copy_' + transport)
    records = [(i, chr(65 + i % 26) * (100 + i % 1000)) for i in range(5000)]

    async def main():
        async with connected(pg_server, transport) as conn:
            await conn.execute(
                'CREATE TEMP TABLE {} (i int, s text)'.format(name))
            status = await conn.copy_records_to_table(name, records=records)
            back = await conn.fetch('SELECT i, s FROM {} ORDER BY i'
                                    .format(name))
            chunks = []

            async def sink(chunk):
                chunks.append(chunk)

            await conn.copy_from_table(name, output=sink, format='csv')
        return status, [tuple(r) for r in back] == records, \
            b''.join(chunks).count(b'\n')

    assert run(aloop, main) == ('COPY 5000', True, 5000)


def test_prepared_statement_and_cursor(aloop, pg_server):
    async def main():
        async with connected(pg_server) as conn:
            stmt = await conn.prepare('SELECT i * $1 FROM generate_series('
                                      '1, 10000) i')
            total = sum(r[0] for r in await stmt.fetch(3))
            seen = 0
            async with conn.transaction():
                async for record in conn.cursor(
                        'SELECT i FROM generate_series(1, 5000) i',
                        prefetch=100):
                    seen += record[0]
        return total, seen

    assert run(aloop, main) == (3 * 50005000, 12502500)


def test_transaction_rolls_back_on_exception(aloop, pg_server):
    name = table(aloop, 'tx')

    async def main():
        async with connected(pg_server) as conn:
            await conn.execute('CREATE TEMP TABLE {} (i int)'.format(name))
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute('INSERT INTO {} VALUES (1)'
                                       .format(name))
                    1 / 0
            async with conn.transaction():
                await conn.execute('INSERT INTO {} VALUES (2)'.format(name))
            return [r[0] for r in await conn.fetch(
                'SELECT i FROM {}'.format(name))]

    assert run(aloop, main) == [2]


def test_listen_and_notify(aloop, pg_server):
    channel = table(aloop, 'events')

    async def main():
        got = asyncio.Queue()
        async with connected(pg_server) as listener, \
                connected(pg_server, 'unix') as sender:
            await listener.add_listener(
                channel, lambda conn, pid, chan, payload:
                got.put_nowait((pid == sender.get_server_pid(), payload)))
            for i in range(3):
                await sender.execute("SELECT pg_notify($1, $2)", channel,
                                     'n{}'.format(i))
            return [await got.get() for i in range(3)]

    assert run(aloop, main) == [(True, 'n0'), (True, 'n1'), (True, 'n2')]


@TRANSPORTS
def test_timeout_cancels_the_query_and_the_connection_goes_on(
        aloop, pg_server, transport):
    """On timeout asyncpg sends a CancelRequest over a second connection of
    the same kind; the first is usable afterwards."""
    async def main():
        async with connected(pg_server, transport) as conn:
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute('SELECT pg_sleep(30)', timeout=0.1)
            return await conn.fetchval('SELECT 2')

    assert run(aloop, main) == 2


def test_cancelled_task_cancels_the_query(aloop, pg_server):
    async def main():
        async with connected(pg_server) as conn:
            started = asyncio.Event()

            async def sleeper():
                started.set()
                await conn.execute('SELECT pg_sleep(30)')

            task = asyncio.create_task(sleeper())
            await started.wait()
            await asyncio.sleep(0)  # the query is on the wire
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await conn.fetchval('SELECT 3')

    assert run(aloop, main) == 3


def test_pool_shared_by_many_tasks(aloop, pg_server):
    async def main():
        pool = await asyncpg.create_pool(
            **connect_args(pg_server, 'tcp'), min_size=2, max_size=5)
        try:
            async def work(i):
                async with pool.acquire() as conn:
                    return await conn.fetchval('SELECT $1::int * 2', i)

            results = await asyncio.gather(*(work(i) for i in range(200)))
            return results == [2 * i for i in range(200)], pool.get_size()
        finally:
            await pool.close()

    assert run(aloop, main) == (True, 5)


def test_tls_upgrade_with_start_tls(aloop, pg_server, tls_pair):
    """asyncpg asks for TLS in the clear, then upgrades the connection with
    loop.start_tls; the server sees a TLS session and big values cross."""
    _, client_ctx = tls_pair

    async def main():
        args = dict(connect_args(pg_server, 'tcp'), ssl=client_ctx)
        args['host'] = 'localhost'  # the certificate's name
        conn = await asyncpg.connect(**args)
        try:
            in_tls = await conn.fetchval(
                'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
            echoed = await conn.fetchval('SELECT $1::bytea',
                                         pattern(4 << 20))
            return in_tls, echoed == pattern(4 << 20), \
                conn._transport.get_extra_info('sslcontext') is client_ctx
        finally:
            await conn.close()

    assert run(aloop, main) == (True, True, True)


def test_tls_upgrade_to_an_untrusted_server_fails_cleanly(aloop, pg_server):
    """start_tls fails on the certificate (the default CAs do not know the
    test CA): the error is the ssl module's and no fd is left behind."""
    async def main():
        args = dict(connect_args(pg_server, 'tcp'),
                    ssl=ssl.create_default_context())
        args['host'] = 'localhost'
        await asyncpg.connect(**args)

    with pytest.raises(ssl.SSLCertVerificationError):
        run(aloop, main)


def test_server_terminates_the_connection(aloop, pg_server):
    """The backend is killed from another session: the idle connection
    reads the server's farewell and the EOF, tells its termination
    listener, and the next query raises asyncpg's error."""
    async def main():
        async with connected(pg_server) as victim, \
                connected(pg_server, 'unix') as admin:
            lost = asyncio.get_running_loop().create_future()
            victim.add_termination_listener(lambda conn: lost.set_result(
                conn is victim))
            terminated = await admin.fetchval(
                'SELECT pg_terminate_backend($1)', victim.get_server_pid())
            told = await lost
            with pytest.raises(asyncpg.InterfaceError, match="is closed"):
                await victim.fetchval('SELECT 1')
            return terminated, told, victim.is_closed()

    assert run(aloop, main) == (True, True, True)


@TRANSPORTS
def test_connect_to_nothing_fails_cleanly(aloop, pg_server, transport):
    port, sockdir = pg_server
    with tempfile.TemporaryDirectory() as empty:
        args = dict(connect_args(pg_server, transport), port=free_port())
        if transport == 'unix':
            args['host'] = empty

        async def main():
            await asyncpg.connect(**args)

        exc = (ConnectionRefusedError if transport == 'tcp'
               else FileNotFoundError)
        with pytest.raises(exc):
            run(aloop, main)
