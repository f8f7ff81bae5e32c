#!/usr/bin/env python3
"""Side-by-side Python benchmarks: stock asyncio, uvloop and unixloop.

Every (workload, loop, run) is a fresh interpreter (this file re-run with
--worker), loops are interleaved round-robin inside each workload (run 1 on
every loop, then run 2, ...), and the table shows medians.  See README.md.

    python3 bench/pybench.py                      # all default workloads, 5 runs
    python3 bench/pybench.py --quick              # smoke test, < 1 minute
    python3 bench/pybench.py --loop asyncio,uvloop --only 'echo_*' --repeat 3
    python3 bench/pybench.py --all --json results.jsonl
    python3 bench/pybench.py --loop raw,uvloop,unixloop --only 'echo_proto_*'

Run it with the interpreter whose packages you want to compare (the project
venv, made with --system-site-packages, sees Debian's uvloop).
"""

import argparse
import asyncio
import fnmatch
import json
import os
import platform
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ALL_LOOPS = ("asyncio", "uvloop", "unixloop")
# Not a loop: bench/c/echo_server.c, a raw-epoll C echo server, run as the
# server of the echo workloads only (--loop raw,...): what one recv() and one
# send() per request cost with nothing above them.  A loop that batches its
# system calls can go below it (small messages); with big ones the copies
# dominate and it is the floor.
RAW = "raw"
RECV_SIZE = 65536          # sock_recv / StreamReader.read size of the echo servers
ECHO_CONNECTIONS = 16


# --------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------

def new_loop(name):
    if name in ("asyncio", RAW):  # raw: a stock loop only waits for the client
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "unixloop":
        import unixloop
        return unixloop.new_event_loop()
    raise ValueError("unknown loop %r" % name)


def loop_version(name):
    if name == "asyncio":
        return platform.python_version()
    if name == RAW:
        return "C epoll"
    mod = __import__(name)
    return getattr(mod, "__version__", "?")


# --------------------------------------------------------------------------
# Micro workloads.  Each takes (loop, seconds) and returns (count, elapsed):
# it works for about `seconds` and reports how many units it completed in
# `elapsed` seconds of wall time.
# --------------------------------------------------------------------------

CALL_SOON_BATCH = 100_000


def wl_call_soon(loop, seconds):
    """Rounds: one callback schedules CALL_SOON_BATCH callbacks (each bumps a
    counter) and then itself; they all run in the next iteration.  Counts
    the callbacks."""
    count = 0
    deadline = time.perf_counter() + seconds
    rng = range(CALL_SOON_BATCH)

    def cb():
        nonlocal count
        count += 1

    def batch():
        if time.perf_counter() >= deadline:
            loop.stop()
            return
        call_soon = loop.call_soon
        for _ in rng:
            call_soon(cb)
        call_soon(batch)

    t0 = time.perf_counter()
    loop.call_soon(batch)
    loop.run_forever()
    return count, time.perf_counter() - t0


def wl_call_soon_chain(loop, seconds):
    """Each callback schedules the next one (one callback per iteration)."""
    count = 0
    deadline = time.perf_counter() + seconds
    call_soon = loop.call_soon

    def cb():
        nonlocal count
        count += 1
        if not count & 1023 and time.perf_counter() >= deadline:
            loop.stop()
            return
        call_soon(cb)

    t0 = time.perf_counter()
    call_soon(cb)
    loop.run_forever()
    return count, time.perf_counter() - t0


TIMERS_PER_ROUND = 100_000
# Delays spread over 0-10 ms in a scrambled order: scheduling 100k timers takes
# longer than that on every loop, so all are due once scheduled, and the
# measure is the timer heap plus the calls, not the clock.
TIMER_DELAYS = [((i * 7919) % 1000) / 100_000 for i in range(TIMERS_PER_ROUND)]


def _timer_rounds(loop, seconds, cancel_half):
    """Rounds of TIMERS_PER_ROUND call_later timers (every other one cancelled
    right after scheduling if cancel_half); a round ends when every timer
    that was not cancelled has fired.  Counts scheduled timers."""
    n = len(TIMER_DELAYS)
    n_fire = n - n // 2 if cancel_half else n
    deadline = time.perf_counter() + seconds
    state = {"left": 0, "count": 0}

    def fire():
        state["left"] -= 1
        if not state["left"]:
            state["count"] += n
            if time.perf_counter() >= deadline:
                loop.stop()
            else:
                start_round()

    def start_round():
        state["left"] = n_fire
        call_later = loop.call_later
        if cancel_half:
            handles = [call_later(d, fire) for d in TIMER_DELAYS]
            for h in handles[1::2]:
                h.cancel()
        else:
            for d in TIMER_DELAYS:
                call_later(d, fire)

    t0 = time.perf_counter()
    loop.call_soon(start_round)
    loop.run_forever()
    return state["count"], time.perf_counter() - t0


def wl_call_later(loop, seconds):
    return _timer_rounds(loop, seconds, False)


def wl_call_later_cancel(loop, seconds):
    return _timer_rounds(loop, seconds, True)


def wl_sleep0(loop, seconds):
    """One task looping on `await asyncio.sleep(0)`; counts the yields."""
    async def main():
        count = 0
        deadline = time.perf_counter() + seconds
        sleep = asyncio.sleep
        while time.perf_counter() < deadline:
            for _ in range(1000):
                await sleep(0)
            count += 1000
        return count

    t0 = time.perf_counter()
    count = loop.run_until_complete(main())
    return count, time.perf_counter() - t0


def wl_future_roundtrip(loop, seconds):
    """One task awaits a fresh future that a call_soon'd set_result
    completes; counts the awaits."""
    async def main():
        count = 0
        deadline = time.perf_counter() + seconds
        create_future = loop.create_future
        call_soon = loop.call_soon
        while time.perf_counter() < deadline:
            for _ in range(1000):
                f = create_future()
                call_soon(f.set_result, None)
                await f
            count += 1000
        return count

    t0 = time.perf_counter()
    count = loop.run_until_complete(main())
    return count, time.perf_counter() - t0


TASKS_BATCH = 1000


def wl_tasks(loop, seconds):
    """Batches of TASKS_BATCH tasks of a trivial coroutine, created with
    loop.create_task and awaited together with asyncio.gather; counts the
    tasks."""
    async def leaf():
        return 1

    async def main():
        count = 0
        deadline = time.perf_counter() + seconds
        create_task = loop.create_task
        gather = asyncio.gather
        rng = range(TASKS_BATCH)
        while time.perf_counter() < deadline:
            await gather(*[create_task(leaf()) for _ in rng])
            count += TASKS_BATCH
        return count

    t0 = time.perf_counter()
    count = loop.run_until_complete(main())
    return count, time.perf_counter() - t0


def wl_signal(loop, seconds):
    """Signal round trips: os.kill(own pid, SIGUSR1) -> the loop's
    add_signal_handler callback sets a future -> the awaiting task resumes;
    counts the round trips and records each one's latency."""
    import signal

    latencies = []

    async def main():
        count = 0
        state = {}

        def on_signal():
            fut = state.get("fut")
            if fut is not None and not fut.done():
                fut.set_result(None)

        loop.add_signal_handler(signal.SIGUSR1, on_signal)
        try:
            deadline = time.perf_counter() + seconds
            kill, pid, perf = os.kill, os.getpid(), time.perf_counter
            while perf() < deadline:
                for _ in range(100):
                    fut = state["fut"] = loop.create_future()
                    t0 = perf()
                    kill(pid, signal.SIGUSR1)
                    await fut
                    latencies.append(perf() - t0)
                count += 100
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        return count

    t0 = time.perf_counter()
    count = loop.run_until_complete(main())
    elapsed = time.perf_counter() - t0
    latencies.sort()
    extra = {
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[min(len(latencies) - 1,
                                int(len(latencies) * 0.99))] * 1e6,
    }
    return count, elapsed, extra


def run_micro(func, loop, warmup, duration):
    func(loop, warmup)
    count, elapsed, *extra = func(loop, duration)
    res = {"count": count, "seconds": elapsed, "value": count / elapsed}
    if extra:
        res.update(extra[0])
    return res


# --------------------------------------------------------------------------
# Echo servers, driven by bench/build/echo_client in its own process
# --------------------------------------------------------------------------

async def _sock_echo(loop, conn):
    try:
        while True:
            data = await loop.sock_recv(conn, RECV_SIZE)
            if not data:
                break
            await loop.sock_sendall(conn, data)
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        conn.close()


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def _streams_echo(reader, writer):
    try:
        while True:
            data = await reader.read(RECV_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def _cpu(ru):
    return ru.ru_utime + ru.ru_stime


def echo_client_cmd(client, target, size, warmup, duration, tls=False):
    """size: bytes per echo, or a URL path (str): HTTP GETs of it."""
    what = ["-H", size] if isinstance(size, str) else ["-s", str(size)]
    return [client] + target + ["-c", str(ECHO_CONNECTIONS)] + what + [
        "-d", str(duration), "-w", str(warmup)] + (["-T"] if tls else [])


def _server_tls_context():
    """TLS for the 'tls' echo: CPython's test certificate and key (from
    libpython3.11-testsuite; the client does not check them)."""
    from test.test_asyncio import utils as certs
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.SIGNED_CERTFILE)
    return ctx


HTTP_BODY = "Hello, World!"


async def _start_aiohttp(family, path):
    """An aiohttp application answering GET / with HTTP_BODY; returns a
    coroutine function that stops it and the echo client's target."""
    from aiohttp import web

    async def hello(request):
        return web.Response(text=HTTP_BODY)

    app = web.Application()
    app.add_routes([web.get("/", hello)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if family == "tcp":
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner.cleanup, ["-a", "127.0.0.1:%d" % runner.addresses[0][1]]
    await web.UnixSite(runner, path).start()
    return runner.cleanup, ["-u", path]


async def _start_uvicorn(family, path):
    """An ASGI application answering every GET with HTTP_BODY behind
    uvicorn's httptools protocol, as uvicorn's Server would serve it (minus
    its 0.1 s housekeeping tick); returns as _start_aiohttp does."""
    import functools
    import uvicorn
    from uvicorn.server import ServerState
    body = HTTP_BODY.encode()
    headers = [(b"content-type", b"text/plain"),
               (b"content-length", b"%d" % len(body))]

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": headers})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(app, http="httptools", lifespan="off",
                            log_config=None, access_log=False)
    config.load()
    protocol = functools.partial(config.http_protocol_class, config=config,
                                 server_state=ServerState())
    loop = asyncio.get_running_loop()
    if family == "tcp":
        server = await loop.create_server(protocol, "127.0.0.1", 0)
        target = ["-a", "127.0.0.1:%d" % server.sockets[0].getsockname()[1]]
    else:
        server = await loop.create_unix_server(protocol, path)
        target = ["-u", path]

    async def stop():
        server.close()
        await server.wait_closed()
    return stop, target


# The HTTP servers the http_* workloads run: api -> (start function, the
# modules it imports, the Debian packages that have them).
HTTP_SERVERS = {
    "aiohttp": (_start_aiohttp, ["aiohttp"], "python3-aiohttp"),
    "uvicorn": (_start_uvicorn, ["uvicorn", "httptools"],
                "python3-uvicorn python3-httptools"),
}


def run_echo(loop, api, family, size, warmup, duration, client):
    """Serves echo with `api` ('sock', 'proto', 'streams', or 'tls': the
    protocol over TLS, asyncio's sslproto on each loop's transport), or HTTP with
    one of HTTP_SERVERS ('aiohttp', 'uvicorn'), on `family` ('tcp' or 'unix'), runs the C client
    against it and measures the server's CPU time (run_client)."""
    tmpdir = None
    lsock = None
    server = None
    stop_http = None
    tasks = set()
    if family == "tcp":
        host = "127.0.0.1"
    else:
        tmpdir = tempfile.mkdtemp(prefix="pybench-")
        path = os.path.join(tmpdir, "echo.sock")

    if api == "sock":
        if family == "tcp":
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((host, 0))
            target = ["-a", "%s:%d" % (host, lsock.getsockname()[1])]
        else:
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lsock.bind(path)
            target = ["-u", path]
        lsock.listen(128)
        lsock.setblocking(False)

        async def accept_loop():
            while True:
                conn, _ = await loop.sock_accept(lsock)
                conn.setblocking(False)
                if family == "tcp":
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                tasks.add(loop.create_task(_sock_echo(loop, conn)))

        tasks.add(loop.create_task(accept_loop()))
    elif api in HTTP_SERVERS:
        stop_http, target = loop.run_until_complete(
            HTTP_SERVERS[api][0](family, path if family == "unix" else None))
    else:
        async def start():
            if api in ("proto", "tls"):
                ctx = _server_tls_context() if api == "tls" else None
                if family == "tcp":
                    return await loop.create_server(_EchoProtocol, host, 0,
                                                    ssl=ctx)
                return await loop.create_unix_server(_EchoProtocol, path,
                                                     ssl=ctx)
            if family == "tcp":
                return await asyncio.start_server(_streams_echo, host, 0)
            return await asyncio.start_unix_server(_streams_echo, path)

        server = loop.run_until_complete(start())
        if family == "tcp":
            target = ["-a", "%s:%d" % (host, server.sockets[0].getsockname()[1])]
        else:
            target = ["-u", path]

    cmd = echo_client_cmd(client, target, size, warmup, duration,
                          tls=api == "tls")

    def cleanup():
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        if lsock is not None:
            lsock.close()
        if server is not None:
            server.close()
            loop.run_until_complete(server.wait_closed())
        if stop_http is not None:
            loop.run_until_complete(stop_http())

    try:
        return run_client(loop, cmd, cleanup)[0]
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def pin_cpus():
    """The two CPUs the server and the client are pinned to, or None.

    Unpinned, the scheduler sometimes runs server and client on one CPU and
    sometimes on two, and the server's CPU per request moves by up to 1.6x
    between runs of the same loop.  Pinned, every loop gets the same
    placement.  PYBENCH_NO_PIN=1 (--no-pin) leaves placement to the
    scheduler."""
    if os.environ.get("PYBENCH_NO_PIN") == "1":
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[:2] if len(cpus) >= 2 else None


def _self_cpu():
    return _cpu(resource.getrusage(resource.RUSAGE_SELF))


def _proc_cpu(pid):
    """Seconds process `pid` has run on a CPU (all its threads), to the
    nanosecond: the first field of /proc/PID/schedstat."""
    def cpu():
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[0]) / 1e9
    return cpu


def run_echo_raw(family, size, warmup, duration, client):
    """run_echo with bench/c/echo_server as the server, in a process of its
    own on the server's CPU; its CPU time is read from /proc."""
    tmpdir = None
    cmd = [os.path.join(os.path.dirname(client), "echo_server")]
    if family == "tcp":
        cmd += ["-a", "127.0.0.1:0"]
    else:
        tmpdir = tempfile.mkdtemp(prefix="pybench-")
        path = os.path.join(tmpdir, "echo.sock")
        cmd += ["-u", path]
    pins = pin_cpus()
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                              preexec_fn=(lambda: os.sched_setaffinity(0, {pins[0]}))
                              if pins else None)
    loop = new_loop(RAW)
    try:
        ready = json.loads(server.stdout.readline() or "{}")
        if ready.get("event") != "listening":
            raise RuntimeError("echo_server did not start (rc=%s)" % server.poll())
        if family == "tcp":
            target = ["-a", "127.0.0.1:%d" % ready["port"]]
        else:
            target = ["-u", path]
        ccmd = echo_client_cmd(client, target, size, warmup, duration)
        return run_client(loop, ccmd, lambda: None, _proc_cpu(server.pid))[0]
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
        loop.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def run_client(loop, cmd, cleanup, cpu=_self_cpu):
    """Runs the load generator `cmd` (echo_client, udp_client) against the
    server on `loop` and measures this process's CPU time (getrusage) over
    the client's measured window (or the clock `cpu()` given);
    `cleanup()` runs once the client is done.
    The client's stdout is read by a helper thread that is blocked in read()
    except at the two window marks.  Server and client run on CPUs of their
    own (pin_cpus).  Returns (figures, the client's result line)."""
    pins = pin_cpus()
    if pins:
        os.sched_setaffinity(0, {pins[0]})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if pins:
        os.sched_setaffinity(proc.pid, {pins[1]})  # before its warm-up ends
    done = loop.create_future()
    marks = {}

    def watch():
        for line in proc.stdout:
            msg = json.loads(line)
            if msg.get("event") == "start":
                marks["cpu0"] = cpu()
                marks["t0"] = time.perf_counter()
            else:
                marks["cpu1"] = cpu()
                marks["t1"] = time.perf_counter()
                marks["result"] = msg
                break
        loop.call_soon_threadsafe(
            lambda: done.done() or done.set_result(None))

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        loop.run_until_complete(done)
    finally:
        cleanup()
        th.join(10)
        rc = proc.wait(10)
        err = proc.stderr.read().decode(errors="replace").strip()
    if "result" not in marks or rc != 0:
        raise RuntimeError("%s failed (rc=%s): %s"
                           % (os.path.basename(cmd[0]), rc, err))
    res = marks["result"]
    used = marks["cpu1"] - marks["cpu0"]
    window = marks["t1"] - marks["t0"]
    reqs = res["requests"]
    return {
        "value": res["rps"],
        "requests": reqs,
        "seconds": res["seconds"],
        "server_cpu_s": used,
        "server_window_s": window,
        "server_busy": used / window if window > 0 else None,
        "cpu_us_per_req": used / reqs * 1e6 if reqs else None,
    }, res


# --------------------------------------------------------------------------
# The workload table
# --------------------------------------------------------------------------

class Workload:
    def __init__(self, name, metric, kind, default=True, **params):
        self.name = name
        self.metric = metric
        self.kind = kind          # "micro" or "echo" (echo_client drives it)
        self.default = default
        self.params = params

    @property
    def raw_serves(self):
        """bench/c/echo_server can be the server (it speaks echo, not HTTP)."""
        return self.kind == "echo" and self.params["api"] not in HTTP_SERVERS \
            and self.params["api"] != "tls"


def _workloads():
    wl = [
        Workload("call_soon", "callbacks/s", "micro", func=wl_call_soon),
        Workload("call_soon_chain", "callbacks/s", "micro", func=wl_call_soon_chain),
        Workload("call_later", "timers/s", "micro", func=wl_call_later),
        Workload("call_later_cancel", "timers/s", "micro", func=wl_call_later_cancel),
        Workload("sleep0", "yields/s", "micro", func=wl_sleep0),
        Workload("future_roundtrip", "awaits/s", "micro", func=wl_future_roundtrip),
        Workload("tasks", "tasks/s", "micro", func=wl_tasks),
        Workload("signal", "roundtrips/s", "micro", func=wl_signal),
    ]
    sizes = (("1k", 1024), ("10k", 10240), ("100k", 102400))
    for api, default in (("sock", True), ("proto", False), ("streams", False),
                         ("tls", False)):
        for family in ("tcp", "unix"):
            for label, size in sizes:
                wl.append(Workload("echo_%s_%s_%s" % (api, family, label), "req/s",
                                   "echo", default=default, api=api,
                                   family=family, size=size))
    for server in HTTP_SERVERS:
        for family in ("tcp", "unix"):
            wl.append(Workload("http_%s_%s" % (server, family), "req/s",
                               "echo", default=False, api=server,
                               family=family, size="/"))
    return {w.name: w for w in wl}


WORKLOADS = _workloads()


# --------------------------------------------------------------------------
# Worker: one workload on one loop, in this (fresh) process
# --------------------------------------------------------------------------

def worker(args):
    w = WORKLOADS[args.worker]
    if args.loop == RAW:
        res = run_echo_raw(w.params["family"], w.params["size"], args.warmup,
                           args.duration, args.echo_client)
    else:
        loop = new_loop(args.loop)
        asyncio.set_event_loop(loop)
        try:
            if w.kind == "micro":
                res = run_micro(w.params["func"], loop, args.warmup,
                                args.duration)
            else:
                res = run_echo(loop, w.params["api"], w.params["family"],
                               w.params["size"], args.warmup, args.duration,
                               args.echo_client)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    res["loop_version"] = loop_version(args.loop)
    print(json.dumps(res), flush=True)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    a = abs(v)
    if a >= 1e6:
        return "%.2fM" % (v / 1e6)
    if a >= 1e5:
        return "%.1fk" % (v / 1e3)
    if a >= 1e4:
        return "%.1fk" % (v / 1e3)
    if a >= 1000:
        return "%.0f" % v
    if a >= 100:
        return "%.1f" % v
    return "%.2f" % v


def ratio(a, b):
    if a is None or b is None or not b:
        return "-"
    return "%.2fx" % (a / b)


def check_loop(python, name):
    code = ("import sys; sys.path.insert(0, %r); import pybench; "
            "l = pybench.new_loop(%r); l.close(); print(pybench.loop_version(%r))"
            % (HERE, name, name))
    p = subprocess.run([python, "-c", code], capture_output=True, text=True,
                       timeout=60)
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines()
        return None, lines[-1] if lines else "rc=%d" % p.returncode
    return p.stdout.strip(), None


def ensure_echo_client(path, explicit, raw=False):
    """The echo client at `path` (and, for the raw contender, echo_server
    beside it), built if missing unless the path was given."""
    server = os.path.join(os.path.dirname(path), "echo_server")
    if os.access(path, os.X_OK) and (not raw or os.access(server, os.X_OK)):
        return True
    if explicit:
        return False
    p = subprocess.run(["make", "-C", HERE, "build/echo_client", "build/echo_server"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
    return os.access(path, os.X_OK) and (not raw or os.access(server, os.X_OK))


def print_table(rows, loops, out=sys.stdout):
    header = ["workload", "metric", "asyncio", "uvloop", "unixloop",
              "unixloop/uvloop", "unixloop/asyncio", "spread", "uvloop/asyncio"]
    table = [header]
    for r in rows:
        m = r["medians"]
        table.append([
            r["workload"], r["metric"],
            fmt(m.get("asyncio")), fmt(m.get("uvloop")), fmt(m.get("unixloop")),
            ratio(m.get("unixloop"), m.get("uvloop")),
            ratio(m.get("unixloop"), m.get("asyncio")),
            "%.0f%%" % (r["spread"] * 100) if r["spread"] is not None else "-",
            ratio(m.get("uvloop"), m.get("asyncio")),
        ])
    if RAW in loops:  # the floor: how far each loop's server is above it
        table[0] += ["raw C", "unixloop/raw", "uvloop/raw"]
        for row, r in zip(table[1:], rows):
            m = r["medians"]
            row += [fmt(m.get(RAW)), ratio(m.get("unixloop"), m.get(RAW)),
                    ratio(m.get("uvloop"), m.get(RAW))]
    write_table(table, out)


def write_table(table, out):
    """A markdown table: the header row first; two left-aligned columns."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for j, row in enumerate(table):
        cells = [row[i].ljust(widths[i]) if i < 2 else row[i].rjust(widths[i])
                 for i in range(len(row))]
        lines.append("| " + " | ".join(cells) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.write("\n".join(lines) + "\n")


def run_worker(cmd, timeout):
    """Runs one worker process; returns its last stdout line, parsed.
    Raises RuntimeError (with the last line of stderr), ValueError or
    subprocess.TimeoutExpired."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise RuntimeError((p.stderr.strip().splitlines() or
                            ["rc=%d" % p.returncode])[-1])
    return json.loads(lines[-1])


def driver(args):
    python = args.python or sys.executable
    loops = [x.strip() for x in args.loop.split(",") if x.strip()]
    for name in loops:
        if name not in ALL_LOOPS + (RAW,):
            sys.exit("unknown loop %r (choose from %s)"
                     % (name, ",".join(ALL_LOOPS + (RAW,))))

    if args.only:
        pats = args.only.split(",")
        names = [n for n in WORKLOADS if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    else:
        names = [n for n, w in WORKLOADS.items() if w.default or args.all]
    if not names:
        sys.exit("no workload matches %r" % args.only)

    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    if args.quick:
        micro_w, micro_d, echo_w, echo_d = 0.05, 0.2, 0.1, 0.3
    else:
        micro_w, micro_d, echo_w, echo_d = 0.3, 1.0, 0.5, 1.5
    if args.duration is not None:
        micro_d = echo_d = args.duration
    if args.warmup is not None:
        micro_w = echo_w = args.warmup

    notes = []
    versions = {}
    usable = []
    for name in loops:
        ver, err = check_loop(python, name)
        if ver is None:
            notes.append("note: skipping %s: cannot import/create it (%s)" % (name, err))
        else:
            versions[name] = ver
            usable.append(name)
    for n in notes:
        print(n, file=sys.stderr)
    if not usable:
        sys.exit("no loop available")

    client = args.echo_client or os.path.join(HERE, "build", "echo_client")
    if any(WORKLOADS[n].kind == "echo" for n in names):
        if not ensure_echo_client(client, bool(args.echo_client), RAW in usable):
            msg = "note: skipping echo workloads: no echo client at %s (make -C bench)" % client
            print(msg, file=sys.stderr)
            notes.append(msg)
            names = [n for n in names if WORKLOADS[n].kind != "echo"]

    for api, (_, modules, packages) in HTTP_SERVERS.items():
        if not any(WORKLOADS[n].params.get("api") == api for n in names):
            continue
        p = subprocess.run([python, "-c", "import " + ", ".join(modules)],
                           capture_output=True)
        if p.returncode != 0:
            msg = ("note: skipping http_%s workloads: %s cannot be imported "
                   "(Debian: %s)" % (api, " or ".join(modules), packages))
            print(msg, file=sys.stderr)
            notes.append(msg)
            names = [n for n in names
                     if WORKLOADS[n].params.get("api") != api]

    print("# python %s (%s); loops: %s; %d run(s) each, interleaved; "
          "micro %.2gs+%.2gs warm-up, echo %.2gs+%.2gs warm-up, %d connections"
          % (platform.python_version(), python,
             ", ".join("%s %s" % (l, versions[l]) for l in usable), repeat,
             micro_d, micro_w, echo_d, echo_w, ECHO_CONNECTIONS),
          file=sys.stderr)

    jf = open(args.json, "a") if args.json else None
    rows = []
    t_start = time.time()
    for name in names:
        w = WORKLOADS[name]
        warm, dur = (micro_w, micro_d) if w.kind == "micro" else (echo_w, echo_d)
        results = {l: [] for l in usable}
        errors = {}
        for run in range(1, repeat + 1):
            for l in usable:
                if l == RAW and not w.raw_serves:
                    continue  # the C server only serves the echo workloads
                cmd = [python, os.path.abspath(__file__), "--worker", name,
                       "--loop", l, "--warmup", str(warm), "--duration", str(dur),
                       "--echo-client", client]
                try:
                    res = run_worker(cmd, 60 + 10 * (warm + dur))
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                    errors[l] = str(e)
                    print("  %s run %d %s: FAILED: %s" % (name, run, l, e),
                          file=sys.stderr)
                    continue
                results[l].append(res)
                extra = ""
                if w.kind == "echo":
                    extra = "  %.1f us CPU/req, server busy %.0f%%" % (
                        res["cpu_us_per_req"] or 0, (res["server_busy"] or 0) * 100)
                elif "p50_us" in res:
                    extra = "  p50 %.1f us, p99 %.1f us" % (res["p50_us"],
                                                           res["p99_us"])
                print("  %-24s run %d %-8s %10s %s%s" % (
                    name, run, l, fmt(res["value"]), w.metric, extra),
                    file=sys.stderr)
                if jf:
                    rec = {"workload": name, "loop": l, "run": run,
                           "metric": w.metric, "repeat": repeat,
                           "warmup": warm, "duration": dur,
                           "python": platform.python_version(),
                           "loop_version": versions[l], "time": time.time()}
                    rec.update(res)
                    jf.write(json.dumps(rec) + "\n")
                    jf.flush()

        def summarize(key):
            med, spread = {}, None
            for l in usable:
                vals = [r[key] for r in results[l] if r.get(key) is not None]
                if not vals:
                    continue
                m = statistics.median(vals)
                med[l] = m
                if len(vals) > 1 and m:
                    s = (max(vals) - min(vals)) / m
                    spread = s if spread is None else max(spread, s)
            return med, spread

        med, spread = summarize("value")
        rows.append({"workload": name, "metric": w.metric, "medians": med,
                     "spread": spread, "errors": errors})
        if w.kind == "echo":
            med, spread = summarize("cpu_us_per_req")
            rows.append({"workload": name, "metric": "server us CPU/req (lower=better)",
                         "medians": med, "spread": spread, "errors": errors})
        for key, label in (("p50_us", "latency p50 us (lower=better)"),
                           ("p99_us", "latency p99 us (lower=better)")):
            med, spread = summarize(key)
            if med:
                rows.append({"workload": name, "metric": label,
                             "medians": med, "spread": spread,
                             "errors": errors})
    if jf:
        jf.close()

    print()
    print("%d run(s) per loop, medians; spread = worst (max-min)/median over the "
          "loops; %.0f s in all" % (repeat, time.time() - t_start))
    print_table(rows, usable)
    for n in notes:
        print(n)
    failed = [(r["workload"], l, e) for r in rows for l, e in r["errors"].items()]
    for wname, l, e in dict(((a, b), (a, b, c)) for a, b, c in failed).values():
        print("note: %s on %s failed at least once: %s" % (wname, l, e))
    return 1 if failed else 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="asyncio vs uvloop vs unixloop, side by side",
        epilog="workloads: " + " ".join(
            n + ("" if w.default else "*") for n, w in WORKLOADS.items())
        + "   (* = only with --all or --only)")
    ap.add_argument("--loop", default=",".join(ALL_LOOPS),
                    help="comma-separated loops (default: %(default)s)")
    ap.add_argument("--only", metavar="GLOB",
                    help="run only workloads matching GLOB (comma-separated globs)")
    ap.add_argument("--all", action="store_true",
                    help="also run the extra workloads (echo_proto_*, echo_streams_*)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per loop (default 5; 1 with --quick)")
    ap.add_argument("--json", metavar="FILE", help="append one JSON line per run")
    ap.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    ap.add_argument("--duration", type=float, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run")
    ap.add_argument("--python", help="interpreter for the runs (default: this one)")
    ap.add_argument("--echo-client", help="echo client binary "
                    "(default: bench/build/echo_client, built if missing)")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin the echo server and its client to CPUs "
                    "of their own (see pin_cpus)")
    ap.add_argument("--list", action="store_true", help="list the workloads")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.no_pin:
        os.environ["PYBENCH_NO_PIN"] = "1"  # inherited by the workers
    if args.list:
        for n, w in WORKLOADS.items():
            print("%-26s %-12s %s" % (n, w.metric, "" if w.default else "(extra)"))
        return 0
    if args.worker:
        if args.worker not in WORKLOADS:
            sys.exit("unknown workload %r" % args.worker)
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
