#!/usr/bin/env python3
"""Spawn benchmarks: unixloop vs asyncio vs uvloop (Python), and
libunixloop vs libuv vs a bare posix_spawn loop (C), side by side in one run.

    .venv/bin/python bench/spawnbench.py [--repeat 5] [--only GLOB] [--quick]
                                         [--no-c] [--no-py] [--json FILE]

Workloads (each: spawns per second, /bin/true unless said otherwise):
  seq              1,000 spawns one after another (spawn, wait, next)
  conc50           1,000 spawns, 50 children alive at a time
  seq_1GiB         seq from a parent holding a touched 1 GiB heap
  conc50_1GiB      conc50 likewise
  communicate      (Python) create_subprocess_exec('cat') with stdin
                   and stdout pipes, communicate(64 bytes), 1,000 times;
                   alongside, its bare C form (spawn_cat_raw: posix_spawnp,
                   write, read to EOF, waitpid; no loop): the physical limit

Python: asyncio.create_subprocess_exec + wait (or communicate) on a fresh
loop of each kind: stock asyncio (its default ThreadedChildWatcher),
uvloop, unixloop (ul_process_spawn + the pidfd watcher).  C: spawn_raw
(posix_spawn + waitpid(-1)), spawn_uv (uv_spawn), spawn_ul
(ul_process_spawn), built by `make -C bench spawn`.

Every run is a fresh process; contenders are interleaved round-robin; each
figure is the median of --repeat runs; ratios are taken within this run.
The 1 GiB runs use fewer spawns (see COUNTS) so that a forking contender
(uvloop: ~30 spawns/s there) finishes.
"""
import argparse
import fnmatch
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, 'build')

# (name, concurrency, heap MiB, spawns): fewer spawns with the big heap.
WORKLOADS = [
    ('seq', 1, 0, 1000),
    ('conc50', 50, 0, 1000),
    ('seq_1GiB', 1, 1024, 200),
    ('conc50_1GiB', 50, 1024, 200),
    ('communicate', 1, 0, 1000),
]
PY_LOOPS = ['asyncio', 'uvloop', 'unixloop']
SCALE = 1.0  # --scale
C_PROGS = ['raw', 'uv', 'ul']


# ---- the Python worker (runs in its own process) ---------------------------

def worker(loop_name, conc, heap_mib, count, communicate):
    import asyncio
    heap = b'\x01' * (heap_mib << 20) if heap_mib else None  # touched
    if loop_name == 'asyncio':
        loop = asyncio.new_event_loop()
    elif loop_name == 'uvloop':
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        import unixloop
        loop = unixloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def one():
        if communicate:
            p = await asyncio.create_subprocess_exec(
                'cat', stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            out, _ = await p.communicate(b'x' * 64)
            assert out == b'x' * 64
        else:
            p = await asyncio.create_subprocess_exec('/bin/true')
            await p.wait()
        assert p.returncode == 0

    async def main():
        await one()  # warm-up: imports, the child watcher
        sem = asyncio.Semaphore(conc)

        async def limited():
            async with sem:
                await one()
        t0 = time.perf_counter()
        if conc == 1:
            for _ in range(count):
                await one()
        else:
            await asyncio.gather(*(limited() for _ in range(count)))
        return time.perf_counter() - t0
    elapsed = loop.run_until_complete(main())
    loop.close()
    del heap
    print(json.dumps({'spawns_per_s': count / elapsed}))


def run_py(loop_name, wl, quick):
    name, conc, heap, count = wl
    count = max(conc, int(count * SCALE))
    if quick:
        count = max(20, count // 10)
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', loop_name,
           str(conc), str(heap), str(count), '1' if name == 'communicate' else '0']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        sys.stderr.write(f'{loop_name} {name} failed:\n{r.stderr}\n')
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])['spawns_per_s']


def run_c(prog, wl, quick):
    name, conc, heap, count = wl
    count = max(conc, int(count * SCALE))
    if quick:
        count = max(20, count // 10)
    cmd = [os.path.join(BUILD, 'spawn_' + prog), '-n', str(count),
           '-j', str(conc), '-m', str(heap)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        sys.stderr.write(f'spawn_{prog} {name} failed:\n{r.stderr}\n')
        return None
    for field in r.stdout.split():
        if field.startswith('spawns_per_s='):
            return float(field.split('=')[1])
    return None


def loop_available(name):
    if name == 'unixloop':
        return True
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def fmt(v):
    return '-' if v is None else (f'{v:.0f}' if v >= 100 else f'{v:.1f}')


def ratio(a, b):
    return '-' if a is None or b is None or b == 0 else f'{a / b:.2f}x'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--only', action='append', default=[])
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--scale', type=float, default=1.0,
                    help='multiply every spawn count (e.g. 0.3 on a busy '
                         'machine)')
    ap.add_argument('--no-c', action='store_true')
    ap.add_argument('--no-py', action='store_true')
    ap.add_argument('--json')
    ap.add_argument('--worker', nargs=5)
    args = ap.parse_args()
    if args.worker:
        loop_name, conc, heap, count, comm = args.worker
        worker(loop_name, int(conc), int(heap), int(count), comm == '1')
        return
    global SCALE
    SCALE = args.scale
    repeat = 1 if args.quick else args.repeat
    wls = [w for w in WORKLOADS
           if not args.only or any(fnmatch.fnmatch(w[0], g) for g in args.only)]
    out = open(args.json, 'a') if args.json else None

    if not args.no_c:
        subprocess.run(['make', '-s', '-C', HERE, 'spawn'], check=True)
        print(f'C: spawns/s, median of {repeat}; ul = libunixloop, '
              'uv = libuv, raw = posix_spawn + waitpid')
        print(f'{"workload":<14} {"raw":>7} {"uv":>7} {"ul":>7} '
              f'{"ul/uv":>7} {"ul/raw":>7}  spread')
        for wl in wls:
            if wl[0] == 'communicate':
                continue
            runs = {p: [] for p in C_PROGS}
            for _ in range(repeat):
                for p in C_PROGS:
                    v = run_c(p, wl, args.quick)
                    if v is not None:
                        runs[p].append(v)
            med = {p: statistics.median(v) if v else None
                   for p, v in runs.items()}
            spread = max(((max(v) - min(v)) / statistics.median(v)
                          for v in runs.values() if v), default=0)
            print(f'{wl[0]:<14} {fmt(med["raw"]):>7} {fmt(med["uv"]):>7} '
                  f'{fmt(med["ul"]):>7} {ratio(med["ul"], med["uv"]):>7} '
                  f'{ratio(med["ul"], med["raw"]):>7}  {spread:.0%}',
                  flush=True)
            if out:
                out.write(json.dumps({'side': 'c', 'workload': wl[0],
                                      'runs': runs, 'median': med}) + '\n')

    if not args.no_py:
        loops = [l for l in PY_LOOPS if loop_available(l)]
        print(f'\nPython: spawns/s, median of {repeat}; '
              f'{sys.executable} {sys.version.split()[0]}')
        print(f'{"workload":<14} {"asyncio":>8} {"uvloop":>8} {"unixloop":>8}'
              f' {"ul/asyncio":>10} {"ul/uvloop":>9} {"ul/best":>8}  spread')
        for wl in wls:
            runs = {l: [] for l in loops}
            limit = wl[0] == 'communicate' and not args.no_c
            c_runs = []
            for _ in range(repeat):
                for l in loops:
                    v = run_py(l, wl, args.quick)
                    if v is not None:
                        runs[l].append(v)
                if limit:
                    v = run_c('cat_raw', wl, args.quick)
                    if v is not None:
                        c_runs.append(v)
            med = {l: statistics.median(v) if v else None
                   for l, v in runs.items()}
            a, u, x = med.get('asyncio'), med.get('uvloop'), med.get('unixloop')
            best = max((v for v in (a, u) if v is not None), default=None)
            spread = max(((max(v) - min(v)) / statistics.median(v)
                          for v in runs.values() if v), default=0)
            print(f'{wl[0]:<14} {fmt(a):>8} {fmt(u):>8} {fmt(x):>8} '
                  f'{ratio(x, a):>10} {ratio(x, u):>9} {ratio(x, best):>8}'
                  f'  {spread:.0%}', flush=True)
            if c_runs:
                c_med = statistics.median(c_runs)
                print(f'{"":<14} bare C (spawn_cat_raw) {fmt(c_med)}/s: '
                      f'unixloop {ratio(x, c_med)}, asyncio {ratio(a, c_med)}'
                      f' of it', flush=True)
            if out:
                out.write(json.dumps({'side': 'py', 'workload': wl[0],
                                      'runs': runs, 'median': med,
                                      'c_limit_runs': c_runs}) + '\n')
    if out:
        out.close()


if __name__ == '__main__':
    main()
