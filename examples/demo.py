"""demo.py -- real asyncio programs, run unchanged on stock asyncio and on
unixloop, side by side.

Small programs, each run several times on both loops (best time kept):
  tasks      10,000 tasks that yield (sleep(0)) and wait on timers
  sock ping  two tasks ping-ponging over a socketpair with loop.sock_sendall
             and loop.sock_recv
  streams    an asyncio.start_server echo server and 20 clients using
             open_connection, 200 lines each
  aiohttp    an aiohttp web application and 10 aiohttp clients, 100 GETs
             each over keep-alive connections
  uvicorn    an ASGI application behind uvicorn's httptools protocol and 10
             stream clients, 100 keep-alive GETs each
(the last two are left out, with a message, where their packages are not
installed; make deps installs them)
The last line compares the totals.
"""
import asyncio
import socket
import sys
import time

RUNS = 5

try:
    import unixloop
    unixloop.run  # an empty or half-built package imports but has no run()
except Exception as exc:  # ImportError, or the extension failed to load
    print(f"demo: cannot import unixloop: {exc!r}", file=sys.stderr)
    sys.exit(1)


async def tasks_and_timers(n=10_000):
    async def worker(i):
        await asyncio.sleep(0)
        await asyncio.sleep(0.001 * (i % 3))
        return i

    results = await asyncio.gather(*[worker(i) for i in range(n)])
    assert sum(results) == n * (n - 1) // 2


async def sock_ping_pong(rounds=20_000):
    """Two tasks, one at each end of a socketpair: ping, then pong."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def pinger():
        for i in range(rounds):
            await loop.sock_sendall(a, b'ping %d' % i)
            assert (await loop.sock_recv(a, 64)) == b'pong %d' % i
        await loop.sock_sendall(a, b'stop')

    async def ponger():
        while (data := await loop.sock_recv(b, 64)) != b'stop':
            await loop.sock_sendall(b, data.replace(b'ping', b'pong'))

    try:
        await asyncio.gather(pinger(), ponger())
    finally:
        a.close()
        b.close()


async def streams_echo(clients=20, lines=200):
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]

    async def client(k):
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        for i in range(lines):
            msg = b'client %d line %d\n' % (k, i)
            writer.write(msg)
            assert await reader.readline() == msg
        writer.close()
        await writer.wait_closed()

    async with server:
        await asyncio.gather(*[client(k) for k in range(clients)])


async def aiohttp_web(clients=10, requests=100):
    import aiohttp
    from aiohttp import web

    async def hello(request):
        return web.Response(text='hello ' + request.match_info['name'])

    app = web.Application()
    app.add_routes([web.get('/hello/{name}', hello)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, '127.0.0.1', 0).start()
    base = 'http://127.0.0.1:%d' % runner.addresses[0][1]

    async def client(session, k):
        for _ in range(requests):
            async with session.get(f'{base}/hello/{k}') as response:
                assert await response.text() == f'hello {k}'

    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*[client(session, k)
                                   for k in range(clients)])
    finally:
        await runner.cleanup()


async def uvicorn_asgi(clients=10, requests=100):
    """uvicorn's HTTP protocol (httptools) serving an ASGI application.
    Server.serve() is left out: it polls every 0.1 s, which would time
    uvicorn's sleeps rather than the loop."""
    import functools
    import uvicorn
    from uvicorn.server import ServerState

    async def app(scope, receive, send):
        body = b'hello ' + scope['query_string']
        await send({'type': 'http.response.start', 'status': 200,
                    'headers': [(b'content-length', b'%d' % len(body))]})
        await send({'type': 'http.response.body', 'body': body})

    config = uvicorn.Config(app, http='httptools', lifespan='off',
                            log_config=None, access_log=False)
    config.load()
    protocol = functools.partial(config.http_protocol_class, config=config,
                                 server_state=ServerState())
    server = await asyncio.get_running_loop().create_server(
        protocol, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]

    async def client(k):
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        for i in range(requests):
            writer.write(b'GET /?%d HTTP/1.1\r\nHost: demo\r\n\r\n' % i)
            head = await reader.readuntil(b'\r\n\r\n')
            length = int(head.split(b'content-length: ')[1].split(b'\r')[0])
            assert await reader.readexactly(length) == b'hello %d' % i
        writer.close()
        await writer.wait_closed()

    async with server:
        await asyncio.gather(*[client(k) for k in range(clients)])


PROGRAMS = [
    ("tasks + timers", tasks_and_timers),
    ("sock_* ping-pong", sock_ping_pong),
    ("streams echo", streams_echo),
    ("aiohttp web", aiohttp_web),
    ("uvicorn ASGI", uvicorn_asgi),
]
# Programs that need packages Debian may not have installed (make deps
# installs them all): program -> (modules, Debian packages).
NEEDS = {
    aiohttp_web: (["aiohttp"], "python3-aiohttp"),
    uvicorn_asgi: (["uvicorn", "httptools"],
                   "python3-uvicorn python3-httptools"),
}


def available_programs():
    import importlib
    programs = []
    for name, program in PROGRAMS:
        modules, packages = NEEDS.get(program, ([], ""))
        try:
            for module in modules:
                importlib.import_module(module)
        except ImportError:
            print(f"demo: {' and '.join(modules)} not installed (Debian: "
                  f"{packages}): the {name} program is left out",
                  file=sys.stderr)
            continue
        programs.append((name, program))
    return programs


def best_time(run, program):
    best = float("inf")
    for _ in range(RUNS):
        t0 = time.perf_counter()
        run(program())
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    async def which_loop():
        return type(asyncio.get_running_loop())

    loop_type = unixloop.run(which_loop())
    if not loop_type.__module__.startswith("unixloop"):
        print(f"demo: unixloop.run() ran on {loop_type!r}, not a unixloop loop",
              file=sys.stderr)
        return 1
    print(f"{'program':<18} {'asyncio':>10} {'unixloop':>10} {'speed-up':>9}")
    total_a = total_u = 0.0
    programs = available_programs()
    for name, program in programs:
        t_a = best_time(asyncio.run, program)
        t_u = best_time(unixloop.run, program)
        total_a += t_a
        total_u += t_u
        print(f"{name:<18} {t_a * 1e3:8.1f}ms {t_u * 1e3:8.1f}ms "
              f"{t_a / t_u:8.2f}x")
    print(f"all {len(programs)} programs: asyncio {total_a * 1e3:.1f} ms, "
          f"unixloop {total_u * 1e3:.1f} ms -> unixloop is "
          f"{total_a / total_u:.2f}x "
          f"as fast (best of {RUNS} runs each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
