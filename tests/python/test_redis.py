"""A real asyncio client on unixloop: redis-py's asyncio client (Debian's
python3-redis 4.3) against a real Redis server (redis-server, run by the
module's fixture on a free TCP port and a UNIX socket).  Each test runs on
stock asyncio's loop and on unixloop's (the aloop fixture), so that a
difference in behaviour shows as one of the pair failing.

redis.asyncio is built on asyncio streams (open_connection and
open_unix_connection) with a pool of connections shared by tasks, reads
bounded by asyncio.wait_for (socket_timeout), and pub/sub over a connection
that only receives.
"""
import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

redis = pytest.importorskip(
    'redis.asyncio', reason='python3-redis is not installed '
                            '(make deps installs it)')
from redis.exceptions import TimeoutError as RedisTimeout  # noqa: E402
from conftest import free_port, pattern, run  # noqa: E402

BIG = 4 * 1024 * 1024
TRANSPORTS = pytest.mark.parametrize('transport', ['tcp', 'unix'])


@pytest.fixture(scope='module')
def redis_server():
    """A redis-server without persistence; yields (port, unix path)."""
    binary = shutil.which('redis-server')
    if binary is None:
        pytest.skip('redis-server is not installed (Debian: redis-server; '
                    'make deps installs it)')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'redis.sock')
        for attempt in range(3):  # the free port may be taken meanwhile
            port = free_port()
            proc = subprocess.Popen(
                [binary, '--port', str(port), '--bind', '127.0.0.1',
                 '--unixsocket', path, '--save', '', '--appendonly', 'no',
                 '--dir', tmp],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            # It says so once both listeners are open (the UNIX one last).
            for line in proc.stdout:
                if 'ready to accept connections at' in line:
                    break
            else:
                proc.wait()
                continue
            break
        else:
            pytest.fail('redis-server did not start')
        try:
            yield port, path
        finally:
            proc.terminate()
            proc.wait()
            proc.stdout.close()


@contextlib.asynccontextmanager
async def connected(server, transport='tcp', **kwargs):
    """A client of server over transport ('tcp' or 'unix'), or on the
    connection_pool given; closed, with every connection, on the way out."""
    port, path = server
    if 'connection_pool' in kwargs:
        r = redis.Redis(**kwargs)
    elif transport == 'tcp':
        r = redis.Redis(host='127.0.0.1', port=port, **kwargs)
    else:
        r = redis.Redis(unix_socket_path=path, **kwargs)
    try:
        yield r
    finally:
        await r.close()
        await r.connection_pool.disconnect()


def prefixed(aloop, name):
    """A key of its own for each loop's run of a test."""
    return '{}:{}'.format(aloop.kind, name)


@TRANSPORTS
def test_commands_and_a_big_value(aloop, redis_server, transport):
    key = prefixed(aloop, 'commands-' + transport)

    async def main():
        async with connected(redis_server, transport) as r:
            await r.set(key, pattern(BIG))
            value = await r.get(key)
            counter = await r.incrby(key + ':n', 5)
            await r.hset(key + ':h', mapping={'a': '1', 'b': '2'})
            fields = await r.hgetall(key + ':h')
            await r.delete(key, key + ':n', key + ':h')
        return value == pattern(BIG), counter, fields

    assert run(aloop, main) == (True, 5, {b'a': b'1', b'b': b'2'})


@TRANSPORTS
def test_pipeline_and_transaction(aloop, redis_server, transport):
    key = prefixed(aloop, 'pipeline-' + transport)

    async def main():
        async with connected(redis_server, transport) as r, \
                r.pipeline(transaction=True) as pipe:
            for i in range(1000):
                pipe.rpush(key, i)
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            replies = await pipe.execute()
        return replies[-2], replies[-1]

    values, deleted = run(aloop, main)
    assert values == [str(i).encode() for i in range(1000)]
    assert deleted == 1


def test_many_tasks_share_a_pool(aloop, redis_server):
    # 10 tasks, 3 connections: a task waits for a connection to be free.
    key = prefixed(aloop, 'pool')

    async def main():
        pool = redis.BlockingConnectionPool(
            host='127.0.0.1', port=redis_server[0], max_connections=3,
            timeout=None)  # wait as long as it takes
        async with connected(redis_server, connection_pool=pool) as r:
            async def worker():
                for _ in range(50):
                    await r.incr(key)

            await asyncio.gather(*[worker() for _ in range(10)])
            total = int(await r.get(key))
            await r.delete(key)
        return total

    assert run(aloop, main) == 10 * 50


def test_publish_subscribe(aloop, redis_server):
    channel = prefixed(aloop, 'news')

    async def main():
        async with connected(redis_server, 'unix') as r:
            pubsub = r.pubsub()
            try:
                await pubsub.subscribe(channel)
                assert (await pubsub.get_message(timeout=5))['type'] == \
                    'subscribe'
                for i in range(100):
                    await r.publish(channel, 'item %d' % i)
                got = []
                while len(got) < 100:
                    message = await pubsub.get_message(timeout=5)
                    assert message is not None, 'a message did not come'
                    got.append(message['data'])
                await pubsub.unsubscribe(channel)
            finally:
                await pubsub.close()
        return got

    assert run(aloop, main) == [b'item %d' % i for i in range(100)]


def test_blocking_pop_waits_for_a_push_and_times_out(aloop, redis_server):
    key = prefixed(aloop, 'queue')

    async def main():
        async with connected(redis_server) as r:
            waiting = asyncio.create_task(r.blpop(key, timeout=5))
            # The push goes out on a second connection of the pool once
            # the server shows the first one blocked in BLPOP.
            while not any(client['cmd'] == 'blpop'
                          for client in await r.client_list()):
                pass
            await r.rpush(key, 'job')
            popped = await waiting
            empty = await r.blpop(key, timeout=0.1)  # the server times out
        return popped, empty

    assert run(aloop, main) == ((prefixed(aloop, 'queue').encode(), b'job'),
                                None)


def test_socket_timeout_then_recovery(aloop, redis_server):
    key = prefixed(aloop, 'slow')

    async def main():
        async with connected(redis_server, socket_timeout=0.1) as r:
            # The server holds BLPOP for 2 s; the client gives up first.
            with pytest.raises(RedisTimeout):
                await r.blpop(key, timeout=2)
            return await r.ping()  # on a good connection again

    assert run(aloop, main) is True
