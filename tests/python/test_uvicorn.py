"""A real asyncio server on unixloop: uvicorn (Debian's python3-uvicorn
0.17), the ASGI server uvloop is usually installed for, serving a plain ASGI
application and a Starlette one.  Each test runs on stock asyncio's loop and
on unixloop's (the aloop fixture), so that a difference in behaviour shows as
one of the pair failing; the HTTP tests run with both of uvicorn's HTTP
protocols (h11 and httptools) and the WebSocket test with both of its
WebSocket protocols (websockets and wsproto).

What uvicorn asks of a loop: create_server on a socket it bound itself and
create_unix_server on a path, protocols that read and parse in
data_received, pause_reading while a request body waits for the application
and pause_writing / resume_writing under a large response (its flow
control), call_later for the keep-alive timeout, transports closed by the
server and lost by the client mid-response, TLS through asyncio's sslproto,
add_signal_handler for SIGTERM, and a graceful shutdown that waits for the
requests in flight.
"""
import asyncio
import contextlib
import os
import signal
import socket
import tempfile

import pytest

uvicorn = pytest.importorskip(
    'uvicorn', reason='python3-uvicorn is not installed (make deps installs it)')
httpx = pytest.importorskip(
    'httpx', reason='python3-httpx is not installed (make deps installs it)')
from conftest import pattern, run  # noqa: E402

BIG = 4 * 1024 * 1024  # well past every socket buffer and high-water mark
STREAM_CHUNK = 256 * 1024
HTTP = pytest.mark.parametrize('http', ['h11', 'httptools'])


# -- the application ---------------------------------------------------------

async def read_body(receive):
    body = []
    while True:
        message = await receive()
        assert message['type'] == 'http.request', message
        body.append(message.get('body', b''))
        if not message.get('more_body'):
            return b''.join(body)


async def respond(send, body, status=200):
    await send({'type': 'http.response.start', 'status': status,
                'headers': [(b'content-length', b'%d' % len(body))]})
    await send({'type': 'http.response.body', 'body': body})


def make_app(state):
    """A plain ASGI application; state records what the tests check."""
    async def app(scope, receive, send):
        if scope['type'] == 'lifespan':
            return await lifespan(receive, send)
        if scope['type'] == 'websocket':
            return await websocket_echo(receive, send)
        path = scope['path']
        state.setdefault('clients', []).append(tuple(scope['client'] or ()))
        if path == '/hello':
            await respond(send, b'hello ' + scope['query_string'])
        elif path == '/echo':
            await respond(send, await read_body(receive))
        elif path == '/stream':
            # Faster than the client reads: uvicorn's flow control waits
            # in send() between pause_writing and resume_writing.
            size = int(scope['query_string'].split(b'=')[1])
            await send({'type': 'http.response.start', 'status': 200,
                        'headers': []})
            data = pattern(size)
            for i in range(0, size, STREAM_CHUNK):
                await send({'type': 'http.response.body',
                            'body': data[i:i + STREAM_CHUNK],
                            'more_body': True})
            await send({'type': 'http.response.body', 'body': b''})
        elif path == '/hold':
            state['held'].set()
            await state['release'].wait()
            await respond(send, b'released')
        elif path == '/watch':
            # Half a response, then wait for what the client does next.
            await send({'type': 'http.response.start', 'status': 200,
                        'headers': [(b'content-length', b'100')]})
            await send({'type': 'http.response.body', 'body': b'x',
                        'more_body': True})
            await read_body(receive)  # the request had none
            state['watching'].set()
            state['next'] = (await receive())['type']
            state['gone'].set()
        else:
            await respond(send, b'not found', status=404)

    async def lifespan(receive, send):
        while True:
            message = await receive()
            kind = message['type'].split('.')[1]  # startup or shutdown
            state.setdefault('lifespan', []).append(kind)
            await send({'type': 'lifespan.{}.complete'.format(kind)})
            if kind == 'shutdown':
                return

    async def websocket_echo(receive, send):
        assert (await receive())['type'] == 'websocket.connect'
        await send({'type': 'websocket.accept'})
        while True:
            message = await receive()
            if message['type'] == 'websocket.disconnect':
                state['ws_close_code'] = message['code']
                return
            if message.get('text') is not None:
                await send({'type': 'websocket.send',
                            'text': message['text'].upper()})
            else:
                await send({'type': 'websocket.send',
                            'bytes': message['bytes'][::-1]})

    return app


# -- running uvicorn ---------------------------------------------------------

@contextlib.asynccontextmanager
async def serving(app, uds=None, **options):
    """Runs uvicorn's Server.serve() on the running loop, on a socket bound
    to a free port of 127.0.0.1 (or on the UNIX socket uds); yields the
    server and its base URL, and shuts it down as SIGTERM would."""
    options.setdefault('lifespan', 'off')
    config = uvicorn.Config(app, uds=uds, log_config=None,
                            log_level='warning', **options)
    server = uvicorn.Server(config)
    sockets = None
    base = 'http://unix'  # the host part is not used on a UNIX socket
    if uds is None:
        sock = socket.socket()
        sock.bind(('127.0.0.1', 0))
        sockets = [sock]
        base = 'http{}://{}:{}'.format(
            's' if config.is_ssl else '',
            'localhost' if config.is_ssl else '127.0.0.1',
            sock.getsockname()[1])
    task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started:
        if task.done():
            task.result()  # its error, or:
            raise AssertionError('uvicorn stopped before it started')
        await asyncio.sleep(0)
    try:
        yield server, base
    finally:
        server.should_exit = True
        await task


def client(**kwargs):
    # trust_env=False: no proxy from the environment between us and the
    # server.
    return httpx.AsyncClient(trust_env=False, **kwargs)


async def chunks(data, size=16 * 1024):
    """A request body httpx sends chunked.  In pieces this small because
    anyio 3.6 (httpx's network layer) resends a whole item after a partial
    send on a UNIX socket, on any loop; up to 32 KiB is one skb in Linux, all
    or nothing."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def exchange(base, **kwargs):
    """The requests every transport kind must carry; returns what came."""
    got = {}
    async with client(**kwargs) as c:
        r = await c.get(base + '/hello?loop')
        got['hello'] = (r.status_code, r.content)
        r = await c.post(base + '/echo', content=chunks(pattern(BIG)))
        got['echo'] = (r.status_code, r.content == pattern(BIG))
        async with c.stream('GET', base + '/stream?size={}'.format(BIG)) as r:
            parts = [part async for part in r.aiter_bytes()]
            got['stream'] = (r.status_code, b''.join(parts) == pattern(BIG))
        r = await c.get(base + '/nowhere')
        got['404'] = r.status_code
    return got


EXPECTED = {
    'hello': (200, b'hello loop'),
    'echo': (200, True),
    'stream': (200, True),
    '404': 404,
}


# -- HTTP ---------------------------------------------------------------------

@HTTP
def test_http_over_tcp_on_one_connection(aloop, http):
    state = {}

    async def main():
        async with serving(make_app(state), http=http) as (_, base):
            return await exchange(base)

    assert run(aloop, main) == EXPECTED
    assert len(state['clients']) == 4
    assert len(set(state['clients'])) == 1  # keep-alive: one connection


@HTTP
def test_http_over_unix_socket(aloop, http):
    async def main(path):
        async with serving(make_app({}), uds=path, http=http) as (_, base):
            return await exchange(
                base, transport=httpx.AsyncHTTPTransport(uds=path))

    with tempfile.TemporaryDirectory() as tmp:
        assert run(aloop, main, os.path.join(tmp, 'http.sock')) == EXPECTED


@HTTP
def test_https(aloop, http, tls_pair):
    from test.test_asyncio.utils import SIGNED_CERTFILE  # key and cert
    _, client_ctx = tls_pair

    async def main():
        async with serving(make_app({}), http=http,
                           ssl_certfile=SIGNED_CERTFILE) as (_, base):
            assert base.startswith('https://localhost:')
            return await exchange(base, verify=client_ctx)

    assert run(aloop, main) == EXPECTED


@HTTP
def test_pipelined_requests_answered_in_order(aloop, http):
    # Fifty requests in one write: the parser sees several per
    # data_received and uvicorn pauses reading until each is answered.
    n = 50

    async def main():
        async with serving(make_app({}), http=http) as (server, base):
            host, port = base[len('http://'):].split(':')
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b''.join(
                b'GET /hello?%d HTTP/1.1\r\nHost: x\r\n\r\n' % i
                for i in range(n)))
            bodies = []
            for i in range(n):
                head = await reader.readuntil(b'\r\n\r\n')
                length = int(head.lower().split(b'content-length: ')[1]
                             .split(b'\r\n')[0])
                bodies.append(await reader.readexactly(length))
            kinds = {type(protocol.transport).__module__
                     for protocol in server.server_state.connections}
            writer.close()
            await writer.wait_closed()
            return bodies, kinds

    bodies, kinds = run(aloop, main)
    assert bodies == [b'hello %d' % i for i in range(n)]
    # uvicorn ran on the loop under test's own transports.
    assert kinds == ({'unixloop._core'} if aloop.kind == 'unixloop'
                     else {'asyncio.selector_events'})


@HTTP
def test_keep_alive_timeout_closes_an_idle_connection(aloop, http):
    async def main():
        async with serving(make_app({}), http=http,
                           timeout_keep_alive=0.1) as (_, base):
            host, port = base[len('http://'):].split(':')
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b'GET /hello?1 HTTP/1.1\r\nHost: x\r\n\r\n')
            # The response, then EOF once the connection has been idle
            # for the timeout: read() returns everything up to EOF.
            got = await reader.read(-1)
            writer.close()
            await writer.wait_closed()
            return got

    got = run(aloop, main)
    assert got.startswith(b'HTTP/1.1 200 OK\r\n')
    assert got.endswith(b'\r\n\r\nhello 1')


@HTTP
def test_client_gone_mid_response_is_seen_by_the_app(aloop, http):
    state = {'watching': asyncio.Event(), 'gone': asyncio.Event()}

    async def main():
        async with serving(make_app(state), http=http) as (_, base):
            host, port = base[len('http://'):].split(':')
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b'GET /watch HTTP/1.1\r\nHost: x\r\n\r\n')
            await state['watching'].wait()
            writer.close()  # with 99 bytes of the response still to come
            await writer.wait_closed()
            await state['gone'].wait()

    run(aloop, main)
    assert state['next'] == 'http.disconnect'


@HTTP
def test_limit_concurrency_answers_503(aloop, http):
    state = {'held': asyncio.Event(), 'release': asyncio.Event()}

    async def main():
        async with serving(make_app(state), http=http,
                           limit_concurrency=2) as (_, base):
            async with client() as first, client() as second:
                held = asyncio.create_task(first.get(base + '/hold'))
                await state['held'].wait()
                refused = await second.get(base + '/hello?2')
                state['release'].set()
                return (await held).content, refused.status_code

    assert run(aloop, main) == (b'released', 503)


# -- the server's life -------------------------------------------------------

def test_lifespan_and_graceful_shutdown(aloop):
    # The shutdown SIGTERM starts waits for the request in flight, which
    # gets its whole response; then the application's shutdown runs.
    state = {'held': asyncio.Event(), 'release': asyncio.Event()}

    async def main():
        app = make_app(state)
        async with serving(app, lifespan='on') as (server, base):
            assert state['lifespan'] == ['startup']
            async with client() as c:
                held = asyncio.create_task(c.get(base + '/hold'))
                await state['held'].wait()
                os.kill(os.getpid(), signal.SIGTERM)
                while not server.should_exit:  # uvicorn's handler ran
                    await asyncio.sleep(0)
                aloop.call_later(0.2, state['release'].set)
                r = await held
        return r.status_code, r.content, state['lifespan']

    assert run(aloop, main) == (200, b'released', ['startup', 'shutdown'])


def test_starlette_application(aloop):
    pytest.importorskip(
        'starlette', reason='python3-starlette is not installed '
                            '(make deps installs it)')
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route
    done = asyncio.Event()

    async def hello(request):
        return PlainTextResponse(
            'hello ' + request.path_params['name'],
            background=BackgroundTask(done.set))

    async def upper(request):
        return PlainTextResponse((await request.body()).decode().upper())

    async def stream(request):
        async def parts():
            for i in range(0, BIG, STREAM_CHUNK):
                yield pattern(BIG)[i:i + STREAM_CHUNK]
        return StreamingResponse(parts())

    app = Starlette(routes=[Route('/hello/{name}', hello),
                            Route('/upper', upper, methods=['POST']),
                            Route('/stream', stream)])

    async def main():
        async with serving(app) as (_, base):
            async with client() as c:
                a = await c.get(base + '/hello/starlette')
                await done.wait()  # the background task ran
                b = await c.post(base + '/upper', content=b'abc' * 100_000)
                s = await c.get(base + '/stream')
        return a.text, b.text == 'ABC' * 100_000, s.content == pattern(BIG)

    assert run(aloop, main) == ('hello starlette', True, True)


# -- WebSocket ----------------------------------------------------------------

@pytest.mark.parametrize('ws', ['websockets', 'wsproto'])
def test_websocket_echo(aloop, ws):
    websockets = pytest.importorskip(
        'websockets', reason='python3-websockets is not installed '
                             '(make deps installs it)')
    if ws == 'wsproto':
        pytest.importorskip('wsproto', reason='python3-wsproto is not '
                            'installed (make deps installs it)')
    state = {}

    async def main():
        async with serving(make_app(state), ws=ws) as (_, base):
            url = 'ws' + base[len('http'):] + '/ws'
            async with websockets.connect(url, max_size=None) as conn:
                await conn.send('abc')
                text = await conn.recv()
                await conn.send(pattern(BIG))
                binary = await conn.recv()
            return text, binary == pattern(BIG)[::-1]

    assert run(aloop, main) == ('ABC', True)
    assert state['ws_close_code'] == 1000
