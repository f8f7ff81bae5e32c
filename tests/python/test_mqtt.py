"""A real asyncio client on unixloop that watches fds itself: asyncio-mqtt
(Debian's python3-asyncio-mqtt 0.16, over paho-mqtt 1.6) against a real
MQTT broker (mosquitto, run by the module's fixture on a free TCP port, and
on a second one with TLS).  Each test runs on stock asyncio's loop and on
unixloop's (the aloop fixture), so that a difference in behaviour shows as
one of the pair failing.

asyncio-mqtt has no transport: paho-mqtt owns a plain (or ssl.SSLSocket)
socket, connects it in the default executor, and asyncio-mqtt drives it
with add_reader / add_writer / remove_writer -- the first add_reader
called from the executor's thread, while the loop waits, followed by a
call_soon_threadsafe that starts paho's housekeeping task.
"""
import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

import pytest

aiomqtt = pytest.importorskip(
    'asyncio_mqtt', reason='python3-asyncio-mqtt is not installed '
                           '(make deps installs it)')
from conftest import free_port, pattern, run  # noqa: E402


@pytest.fixture(scope='module')
def broker():
    """A mosquitto broker: yields (plain port, TLS port); the TLS listener
    uses CPython's 'localhost' test certificate."""
    binary = shutil.which('mosquitto') or (
        '/usr/sbin/mosquitto' if os.access('/usr/sbin/mosquitto', os.X_OK)
        else None)
    if binary is None:
        pytest.skip('mosquitto is not installed (Debian: mosquitto; make '
                    'deps installs it)')
    certs = pytest.importorskip(
        'test.test_asyncio.utils',
        reason="CPython's test suite is not installed "
               '(libpython3.11-testsuite; make deps installs it)')
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # mosquitto drops root for its own user
        keycert = os.path.join(tmp, 'keycert.pem')
        shutil.copy(certs.SIGNED_CERTFILE, keycert)
        os.chmod(keycert, 0o644)
        for attempt in range(3):  # a free port may be taken meanwhile
            port, tls_port = free_port(), free_port()
            conf = os.path.join(tmp, 'mosquitto.conf')
            with open(conf, 'w') as f:
                f.write('allow_anonymous true\n'
                        'persistence false\n'
                        'listener {} 127.0.0.1\n'
                        'listener {} 127.0.0.1\n'
                        'certfile {}\nkeyfile {}\n'.format(
                            port, tls_port, keycert, keycert))
            proc = subprocess.Popen([binary, '-c', conf],
                                    stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            # It says so once both listeners are open.
            for line in proc.stdout:
                if ' running' in line:
                    break
            else:
                proc.wait()
                proc.stdout.close()
                continue
            break
        else:
            pytest.fail('mosquitto did not start')
        try:
            yield port, tls_port
        finally:
            proc.terminate()
            proc.wait()
            proc.stdout.close()


def topic(aloop, name):
    """A topic of its own for each loop's run of a test."""
    return 'unixloop/{}/{}'.format(aloop.kind, name)


async def receive(messages, count):
    got = []
    async for message in messages:
        got.append((message.topic.value, message.payload))
        if len(got) == count:
            return got


@pytest.mark.parametrize('qos', [0, 1, 2])
def test_publish_and_receive_in_order(aloop, broker, qos):
    """Messages up to 256 KiB: the big ones do not fit the socket buffer at
    once, so paho asks for add_writer and drops it when done."""
    name = topic(aloop, 'order{}'.format(qos))
    sizes = [0, 1, 1000, 70000, 256 * 1024] * 4

    async def main():
        async with aiomqtt.Client('127.0.0.1', broker[0]) as client:
            async with client.messages() as messages:
                await client.subscribe(name, qos=qos)
                for size in sizes:
                    await client.publish(name, pattern(size), qos=qos)
                got = await receive(messages, len(sizes))
        return [len(payload) for _, payload in got], \
            all(payload == pattern(len(payload)) for _, payload in got)

    assert run(aloop, main) == (sizes, True)


def test_two_clients_retained_message_and_wildcards(aloop, broker):
    base = topic(aloop, 'rooms')

    async def main():
        async with aiomqtt.Client('127.0.0.1', broker[0]) as publisher:
            await publisher.publish(base + '/kitchen', b'21.5', qos=1,
                                    retain=True)
            async with aiomqtt.Client('127.0.0.1', broker[0]) as listener:
                async with listener.messages() as messages:
                    await listener.subscribe(base + '/#', qos=1)
                    retained = await receive(messages, 1)
                    await publisher.publish(base + '/hall', b'19', qos=1)
                    await publisher.publish(base + '/hall/door', b'open',
                                            qos=1)
                    live = await receive(messages, 2)
            await publisher.publish(base + '/kitchen', b'', qos=1,
                                    retain=True)  # clears it
        return retained, sorted(live)

    assert run(aloop, main) == (
        [(base + '/kitchen', b'21.5')],
        [(base + '/hall', b'19'), (base + '/hall/door', b'open')])


def test_will_of_a_client_that_vanishes(aloop, broker):
    """A client whose socket is shut down without DISCONNECT: the broker
    publishes its will to the others."""
    name = topic(aloop, 'will')

    async def main():
        will = aiomqtt.Will(name, b'gone', qos=1)
        async with aiomqtt.Client('127.0.0.1', broker[0]) as watcher:
            async with watcher.messages() as messages:
                await watcher.subscribe(name, qos=1)
                doomed = aiomqtt.Client('127.0.0.1', broker[0], will=will)
                await doomed.connect()
                doomed._client.socket().shutdown(socket.SHUT_RDWR)
                got = await receive(messages, 1)
                # The doomed client reads the EOF through its reader and
                # reports the lost connection.
                with pytest.raises(aiomqtt.MqttError):
                    await asyncio.wait_for(doomed._disconnected, 5)
        return got

    assert run(aloop, main) == [(name, b'gone')]


def test_tls_socket_driven_by_add_reader(aloop, broker, tls_pair):
    """paho wraps its socket with the SSLContext and does the handshake and
    every read on it from the loop's add_reader callback."""
    _, client_ctx = tls_pair
    name = topic(aloop, 'tls')
    payload = pattern(300 * 1024)

    async def main():
        async with aiomqtt.Client('localhost', broker[1],
                                  tls_context=client_ctx) as client:
            async with client.messages() as messages:
                await client.subscribe(name, qos=1)
                await client.publish(name, payload, qos=1)
                got = await receive(messages, 1)
            sock = client._client.socket()
        return isinstance(sock, ssl.SSLSocket), got[0][1] == payload

    assert run(aloop, main) == (True, True)


def test_connect_to_nothing_fails_cleanly(aloop, broker):
    port = free_port()

    async def main():
        async with aiomqtt.Client('127.0.0.1', port):
            pass

    with pytest.raises(aiomqtt.MqttError, match='refused'):
        run(aloop, main)
