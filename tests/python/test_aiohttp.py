"""A real asyncio network program on unixloop: aiohttp's web server and
client (Debian's python3-aiohttp), over TCP and over a UNIX socket, each
test run on stock asyncio's loop and on unixloop's (the aloop fixture), so
that a difference in behaviour shows as one of the pair failing.

aiohttp drives what an HTTP stack needs of a loop: create_server and
create_connection (TCP and UNIX), getaddrinfo in the executor, transports
with flow control (pause_writing / resume_writing on a large streamed
response), pause_reading on a large request body, loop.sendfile with an
offset and a count (web.FileResponse), TLS through asyncio's sslproto,
keep-alive, timeouts that cancel a pending read, and closing with
connections still open.
"""
import asyncio
import os
import sys
import tempfile

import pytest

aiohttp = pytest.importorskip(
    'aiohttp',
    reason='python3-aiohttp is not installed (make deps installs it)')
from aiohttp import web  # noqa: E402
from conftest import pattern  # noqa: E402

BIG = 4 * 1024 * 1024  # well past every write buffer's high-water mark


def make_app(state):
    """The application both this file and test_anyio_httpx.py serve; state
    records each request's peer and transport module for their checks."""
    async def hello(request):
        state.setdefault('peers', []).append(
            request.transport.get_extra_info('peername'))
        state.setdefault('kinds', set()).add(
            type(request.transport).__module__)
        return web.Response(text='hello ' + request.match_info['name'])

    async def echo(request):
        return web.Response(body=await request.read())

    async def stream(request):
        # Chunked, written faster than the client reads: the transport's
        # high-water mark pauses the writer until the client catches up.
        size = int(request.query['size'])
        response = web.StreamResponse()
        await response.prepare(request)
        data = pattern(size)
        for i in range(0, size, 256 * 1024):
            await response.write(data[i:i + 256 * 1024])
        await response.write_eof()
        return response

    async def stall(request):
        state['stalled'].set()
        await state['release'].wait()  # the client has given up by then
        return web.Response(text='late')

    async def websocket(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application(client_max_size=BIG + 1)
    app.add_routes([
        web.get('/hello/{name}', hello),
        web.post('/echo', echo),
        web.get('/stream', stream),
        web.get('/stall', stall),
        web.get('/ws', websocket),
    ])
    return app


async def serve(app, unix_path=None, ssl_context=None):
    """Starts app on 127.0.0.1 (a free port) or on unix_path; returns the
    runner and the base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    if unix_path is None:
        site = web.TCPSite(runner, '127.0.0.1', 0, ssl_context=ssl_context)
    else:
        site = web.UnixSite(runner, unix_path)
    await site.start()
    if unix_path is None:
        port = runner.addresses[0][1]
        if ssl_context is not None:
            # The certificate names localhost.  It may resolve to ::1
            # first: refused there, clients go on to 127.0.0.1.
            return runner, 'https://localhost:{}'.format(port)
        return runner, 'http://127.0.0.1:{}'.format(port)
    return runner, 'http://unix'  # the host part is not used on a UNIX socket


async def exchange(base, connector):
    """The requests every transport kind must carry; returns what came."""
    got = {}
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(base + '/hello/loop') as r:
            got['hello'] = (r.status, await r.text())
        body = pattern(BIG)
        async with session.post(base + '/echo', data=body) as r:
            got['echo'] = (r.status, await r.read() == body)
        async with session.get(base + '/stream',
                               params={'size': str(BIG)}) as r:
            got['stream'] = (r.status, await r.read() == pattern(BIG))
        async with session.ws_connect(base + '/ws') as ws:
            await ws.send_str('abc')
            text = await ws.receive_str()
            await ws.send_bytes(b'\x01\x02\x03')
            binary = await ws.receive_bytes()
            got['ws'] = (text, binary)
    return got


EXPECTED = {
    'hello': (200, 'hello loop'),
    'echo': (200, True),
    'stream': (200, True),
    'ws': ('ABC', b'\x03\x02\x01'),
}


def test_http_and_websocket_over_tcp(aloop):
    async def main():
        runner, base = await serve(make_app({}))
        try:
            return await exchange(base, aiohttp.TCPConnector())
        finally:
            await runner.cleanup()

    assert aloop.run_until_complete(main()) == EXPECTED


def test_http_and_websocket_over_unix_socket(aloop):
    async def main(path):
        runner, base = await serve(make_app({}), unix_path=path)
        try:
            return await exchange(base, aiohttp.UnixConnector(path=path))
        finally:
            await runner.cleanup()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'http.sock')
        assert aloop.run_until_complete(main(path)) == EXPECTED
        # aiohttp leaves the socket file to the loop's server, which
        # removes it on close from Python 3.13 on (cleanup_socket=True) and
        # leaves it before, on both loops.
        assert os.path.exists(path) == (sys.version_info < (3, 13))


def test_https_with_a_verified_certificate(aloop, tls_pair):
    # The TLS layer is asyncio's sslproto on the loop's transports.
    server_ctx, client_ctx = tls_pair

    async def main():
        runner, base = await serve(make_app({}), ssl_context=server_ctx)
        try:
            return await exchange(base, aiohttp.TCPConnector(ssl=client_ctx))
        finally:
            await runner.cleanup()

    assert aloop.run_until_complete(main()) == EXPECTED


def test_file_response_uses_loop_sendfile(aloop, tmp_path):
    # web.FileResponse sends with loop.sendfile(transport, file, offset,
    # count): the whole file, and a Range request's offset and count.
    data = pattern(3 * 1024 * 1024 + 123)
    path = tmp_path / 'file.bin'
    path.write_bytes(data)
    fallbacks = []
    real_fallback = aloop._sendfile_fallback

    async def counting_fallback(*args):
        fallbacks.append(args)
        return await real_fallback(*args)

    aloop._sendfile_fallback = counting_fallback

    async def main():
        async def download(request):
            return web.FileResponse(path)

        app = web.Application()
        app.add_routes([web.get('/file', download)])
        runner, base = await serve(app)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(base + '/file') as r:
                    whole = (r.status, await r.read())
                ranged = {'Range': 'bytes=1000-200999'}
                async with session.get(base + '/file', headers=ranged) as r:
                    part = (r.status, await r.read())
        finally:
            await runner.cleanup()
        return whole, part

    whole, part = aloop.run_until_complete(main())
    assert whole == (200, data)
    assert part == (206, data[1000:201000])
    assert fallbacks == []  # a plain socket transport: sendfile(2) served


def test_keep_alive_reuses_one_connection(aloop):
    async def main():
        peers = set()
        kinds = set()

        async def whoami(request):
            peers.add(request.transport.get_extra_info('peername'))
            kinds.add(type(request.transport).__module__)
            return web.Response(text='ok')

        app = web.Application()
        app.add_routes([web.get('/', whoami)])
        runner, base = await serve(app)
        try:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(20):
                    async with session.get(base + '/') as r:
                        assert await r.text() == 'ok'
        finally:
            await runner.cleanup()
        return peers, kinds

    peers, kinds = aloop.run_until_complete(main())
    assert len(peers) == 1
    # The server ran on the loop under test's own transports.
    assert kinds == ({'unixloop._core'} if aloop.kind == 'unixloop'
                     else {'asyncio.selector_events'})


def test_client_timeout_while_the_server_stalls(aloop):
    async def main():
        state = {'stalled': asyncio.Event(), 'release': asyncio.Event()}
        runner, base = await serve(make_app(state))
        try:
            # The timeout is the only way out of the stalled request; the
            # assertion below shows the server had the request first.
            timeout = aiohttp.ClientTimeout(total=0.2)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                with pytest.raises(asyncio.TimeoutError):
                    await session.get(base + '/stall')
            return state['stalled'].is_set()
        finally:
            state['release'].set()  # or cleanup waits 60 s for the handler
            await runner.cleanup()

    assert aloop.run_until_complete(main())


def test_server_cleanup_with_an_open_client_connection(aloop):
    async def main():
        runner, base = await serve(make_app({}))
        session = aiohttp.ClientSession()
        try:
            async with session.get(base + '/hello/a') as r:
                assert await r.text() == 'hello a'
            # The client holds the kept-alive connection open while the
            # server shuts down: cleanup closes it instead of waiting.
            await runner.cleanup()
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(base + '/hello/b') as r:
                    await r.text()
        finally:
            await session.close()

    aloop.run_until_complete(main())
