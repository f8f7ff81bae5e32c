#!/usr/bin/env python3
"""asyncpg benchmarks: unixloop vs asyncio vs uvloop, side by side in one
run, against a throwaway PostgreSQL cluster this script makes and starts.

    .venv/bin/python bench/pgbench.py [--repeat 5] [--only GLOB] [--quick]
                                      [--duration S] [--json FILE]

asyncpg is what uvloop is most often installed for.  Workloads (16 tasks,
each with its own connection, each awaiting one query after another):
  select_tcp     conn.fetchval('SELECT $1::int', i) over TCP (127.0.0.1)
  select_unix    the same over the UNIX socket
  rows_unix      conn.fetch() of 100 rows (int, text) over the UNIX socket

Figures: queries/s and the client process's CPU time per query (user +
system, lower is better).  PostgreSQL's backends share the machine's CPUs
with the client, so queries/s follows them; the client's CPU per query is
what the loop changes: judge by it, with queries/s beside it.

Needs Debian's postgresql and python3-asyncpg (make deps).  As root the
server runs as the 'postgres' user (PostgreSQL refuses root).  Every run is
a fresh process; contenders are interleaved round-robin; each figure is the
median of --repeat runs; ratios are taken within this run.
"""
import argparse
import fnmatch
import glob
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

LOOPS = ['asyncio', 'uvloop', 'unixloop']
CONNECTIONS = 16
USER = 'bench'
WORKLOADS = {
    'select_tcp': ('tcp', "SELECT $1::int", 'fetchval'),
    'select_unix': ('unix', "SELECT $1::int", 'fetchval'),
    'rows_unix': ('unix', "SELECT i, md5((i + $1)::text) FROM "
                          "generate_series(1, 100) i", 'fetch'),
}


# ---- the worker (runs in its own process) ----------------------------------

def worker(loop_name, workload, port, sockdir, warmup, duration):
    import asyncio
    import resource
    import time

    import asyncpg
    family, query, method = WORKLOADS[workload]
    if loop_name == 'asyncio':
        loop = asyncio.new_event_loop()
    elif loop_name == 'uvloop':
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        import unixloop
        loop = unixloop.new_event_loop()
    asyncio.set_event_loop(loop)
    host = '127.0.0.1' if family == 'tcp' else sockdir
    done = 0
    running = True

    async def client():
        nonlocal done
        conn = await asyncpg.connect(host=host, port=port, user=USER,
                                     database='postgres', ssl=False)
        call = getattr(conn, method)
        expected = 100 if method == 'fetch' else None
        i = 0
        try:
            while running:
                result = await call(query, i)
                # A real answer each time: its rows, or the number sent.
                if (len(result) if expected else result) != (expected or i):
                    raise AssertionError('wrong answer: %r' % (result,))
                done += 1
                i += 1
        finally:
            await conn.close()

    def cpu():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    async def main():
        nonlocal running
        tasks = [asyncio.ensure_future(client()) for _ in range(CONNECTIONS)]
        await asyncio.sleep(warmup)
        n0, c0, t0 = done, cpu(), time.monotonic()
        await asyncio.sleep(duration)
        n1, c1, t1 = done, cpu(), time.monotonic()
        running = False
        await asyncio.gather(*tasks)
        return {'queries': n1 - n0, 'seconds': t1 - t0, 'cpu': c1 - c0}

    try:
        res = loop.run_until_complete(main())
    finally:
        loop.close()
    res['qps'] = res['queries'] / res['seconds']
    res['cpu_us'] = res['cpu'] / res['queries'] * 1e6
    print(json.dumps(res), flush=True)


# ---- the server -------------------------------------------------------------

def postgres_bindir():
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/postgres'),
                   key=lambda p: int(p.split('/')[4]))
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which('postgres')
    return os.path.dirname(on_path) if on_path else None


def start_postgres(tmp):
    """initdb + postgres in tmp; returns (process, port)."""
    bindir = postgres_bindir()
    if bindir is None:
        sys.exit('pgbench: PostgreSQL is not installed (Debian: postgresql)')
    user = 'postgres' if os.geteuid() == 0 else None
    if user:
        shutil.chown(tmp, user)
    data = os.path.join(tmp, 'data')
    subprocess.run([os.path.join(bindir, 'initdb'), '-D', data, '-U', USER,
                    '--auth=trust', '--no-sync'],
                   user=user, check=True, stdout=subprocess.DEVNULL)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [os.path.join(bindir, 'postgres'), '-D', data, '-p', str(port),
         '-k', tmp, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off',
         '-c', 'max_connections=50'],
        user=user, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    for line in proc.stdout:
        if 'ready to accept connections' in line:
            return proc, port
    sys.exit('pgbench: postgres did not start')


# ---- the driver -------------------------------------------------------------

def loop_available(name):
    if name == 'asyncio':
        return True
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def run_worker(loop_name, workload, port, sockdir, warmup, duration):
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--worker', loop_name,
         workload, str(port), sockdir, str(warmup), str(duration)],
        capture_output=True, text=True, timeout=120 + duration)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt(v):
    if v is None:
        return '-'
    return '%.1fk' % (v / 1000) if v >= 10000 else '%.1f' % v


def main():
    if len(sys.argv) > 1 and sys.argv[1] == '--worker':
        name, workload, port, sockdir, warmup, duration = sys.argv[2:8]
        worker(name, workload, int(port), sockdir, float(warmup),
               float(duration))
        return
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--only', default='*')
    ap.add_argument('--quick', action='store_true',
                    help='1 run of 0.5 s per cell: a smoke test')
    ap.add_argument('--duration', type=float, default=2.0)
    ap.add_argument('--json', help='append one JSON line per run')
    args = ap.parse_args()
    repeat, duration, warmup = args.repeat, args.duration, 0.5
    if args.quick:
        repeat, duration, warmup = 1, 0.5, 0.2
    if importlib.util.find_spec('asyncpg') is None:
        sys.exit('pgbench: asyncpg is not installed (Debian: '
                 'python3-asyncpg)')
    loops = [name for name in LOOPS if loop_available(name)]
    for name in set(LOOPS) - set(loops):
        print('pgbench: %s cannot be imported: skipped' % name)
    workloads = [w for w in WORKLOADS
                 if any(fnmatch.fnmatch(w, g) for g in args.only.split(','))]
    with tempfile.TemporaryDirectory(prefix='pgbench-') as tmp:
        os.chmod(tmp, 0o755)
        server, port = start_postgres(tmp)
        try:
            rows = run_all(workloads, loops, repeat, port, tmp, warmup,
                           duration, args.json)
        finally:
            server.terminate()
            server.wait()
            server.stdout.close()
    print_table(rows, loops, repeat)


def run_all(workloads, loops, repeat, port, sockdir, warmup, duration,
            json_path):
    rows = []
    for workload in workloads:
        runs = {name: [] for name in loops}
        for i in range(repeat):
            for name in loops:  # interleaved round-robin
                res = run_worker(name, workload, port, sockdir, warmup,
                                 duration)
                if res is None:
                    continue
                runs[name].append(res)
                print('  %-12s run %d %-9s %8s q/s  %6.1f us CPU/query' % (
                    workload, i + 1, name, fmt(res['qps']), res['cpu_us']),
                    flush=True)
                if json_path:
                    with open(json_path, 'a') as f:
                        f.write(json.dumps(dict(res, workload=workload,
                                                loop=name)) + '\n')
        rows.append((workload, {
            name: (statistics.median(r['qps'] for r in rs),
                   statistics.median(r['cpu_us'] for r in rs))
            for name, rs in runs.items() if rs}))
    return rows


def print_table(rows, loops, repeat):
    print('\n%d run(s) per loop, medians; client CPU per query, lower is '
          'better' % repeat)
    head = ['workload'] + ['%s q/s' % n for n in loops] + [
        '%s us/q' % n for n in loops] + ['asyncio / unixloop',
                                         'uvloop / unixloop']
    print('| ' + ' | '.join(head) + ' |')
    print('|' + '---|' * len(head))
    for workload, med in rows:
        cells = [workload]
        cells += [fmt(med[n][0]) if n in med else '-' for n in loops]
        cells += ['%.2f' % med[n][1] if n in med else '-' for n in loops]
        for other in ('asyncio', 'uvloop'):
            if other in med and 'unixloop' in med:
                cells.append('%.2fx' % (med[other][1] / med['unixloop'][1]))
            else:
                cells.append('-')
        print('| ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
