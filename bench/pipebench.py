#!/usr/bin/env python3
"""Pipe throughput, both ways: stock asyncio, uvloop and unixloop side by side.

    python3 bench/pipebench.py                    # both workloads, 5 runs each
    python3 bench/pipebench.py --quick            # smoke test
    python3 bench/pipebench.py --repeat 7 --loop asyncio,unixloop --only pipe_read

Workloads (the far end is c/pipe_pump.c, a blocking C program, so that the
loop under test is what limits the rate):

  pipe_read   `pipe_pump -w N` writes N bytes into a pipe; the loop reads them
              with connect_read_pipe and a Protocol that counts them.
  pipe_write  the loop writes N bytes with connect_write_pipe (CHUNK-byte
              bytes objects, waiting for resume_writing whenever it is paused)
              into a pipe that `pipe_pump -r` reads and discards.

Every run is a fresh interpreter (this file with --worker); loops are
interleaved round-robin (run 1 of each loop, then run 2, ...); the table
shows the median MB/s (10^6 bytes/s) and the median CPU time the Python
process spent per MiB moved (user + system), then unixloop's ratios.
`spread` is the worst (max - min) / median over the loops of a row.
"""

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PUMP = os.path.join(HERE, "build", "pipe_pump")
ALL_LOOPS = ("asyncio", "uvloop", "unixloop")
WORKLOADS = ("pipe_read", "pipe_write")
CHUNK = 256 * 1024
MIB = 1 << 20


def new_loop(name):
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    import unixloop
    return unixloop.new_event_loop()


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def pipe_read(loop, nbytes):
    proc = subprocess.Popen([PUMP, "-w", str(nbytes)], stdout=subprocess.PIPE)
    done = loop.create_future()

    class Counter(asyncio.Protocol):
        count = 0

        def data_received(self, data):
            self.count += len(data)

        def connection_lost(self, exc):
            done.set_result(self.count)

    t0, c0 = time.perf_counter(), cpu_seconds()
    await loop.connect_read_pipe(Counter, proc.stdout)
    got = await done
    t1, c1 = time.perf_counter(), cpu_seconds()
    proc.wait()
    return got, t1 - t0, c1 - c0


async def pipe_write(loop, nbytes):
    proc = subprocess.Popen([PUMP, "-r"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    chunk = b"w" * CHUNK
    lost = loop.create_future()

    class Writer(asyncio.Protocol):
        resumed = None

        def pause_writing(self):
            self.resumed = loop.create_future()

        def resume_writing(self):
            self.resumed.set_result(None)
            self.resumed = None

        def connection_lost(self, exc):
            lost.set_result(exc)

    t0, c0 = time.perf_counter(), cpu_seconds()
    transport, proto = await loop.connect_write_pipe(Writer, proc.stdin)
    sent = 0
    while sent < nbytes:
        transport.write(chunk)
        sent += CHUNK
        if proto.resumed is not None:
            await proto.resumed
    transport.close()
    exc = await lost
    t1, c1 = time.perf_counter(), cpu_seconds()
    out = proc.stdout.read()  # the transport closed proc.stdin
    proc.stdout.close()
    proc.wait()
    if exc is not None or int(out) != sent:
        raise SystemExit("pipe_write: the reader got %s of %d bytes (%r)"
                         % (out.strip(), sent, exc))
    return sent, t1 - t0, c1 - c0


def worker(args):
    loop = new_loop(args.loop)
    try:
        fn = globals()[args.worker]
        loop.run_until_complete(fn(loop, args.bytes // 8))  # warm-up
        nbytes, elapsed, cpu = loop.run_until_complete(fn(loop, args.bytes))
    finally:
        loop.close()
    print(json.dumps({"workload": args.worker, "loop": args.loop,
                      "bytes": nbytes, "seconds": elapsed, "cpu": cpu,
                      "mb_s": nbytes / elapsed / 1e6,
                      "cpu_us_per_mib": cpu / (nbytes / MIB) * 1e6}))


def run_one(workload, loop, nbytes):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", workload,
           "--loop", loop, "--bytes", str(nbytes)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def available(loop):
    try:
        __import__(loop if loop != "asyncio" else "asyncio")
        return True
    except ImportError:
        print("note: skipping %s: not importable" % loop, file=sys.stderr)
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small runs, 1 each")
    ap.add_argument("--repeat", type=int, default=5, help="runs per loop")
    ap.add_argument("--bytes", type=int, default=1 << 30,
                    help="bytes per run (default 1 GiB)")
    ap.add_argument("--loop", default=",".join(ALL_LOOPS))
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--json", help="append every run as a JSON line here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.repeat, args.bytes = 1, 64 * MIB
    if not os.path.exists(PUMP):
        subprocess.run(["make", "-C", HERE, "build/pipe_pump"], check=True,
                       stdout=subprocess.DEVNULL)
    loops = [l for l in args.loop.split(",") if available(l)]
    workloads = [w for w in args.only.split(",") if w in WORKLOADS]
    print("pipebench: %s, %d MiB per run, %d runs, python %s"
          % (", ".join(loops), args.bytes // MIB, args.repeat,
             sys.version.split()[0]))
    header = ("%-11s" % "workload" +
              "".join("%14s" % ("%s MB/s" % l) for l in loops) +
              "".join("%16s" % ("%s us/MiB" % l) for l in loops) +
              "%9s" % "spread")
    if "unixloop" in loops:
        header += "".join("%12s" % ("ul/%s" % l[:7])
                          for l in loops if l != "unixloop")
    print(header)
    for wl in workloads:
        runs = {l: [] for l in loops}
        for _ in range(args.repeat):
            for l in loops:
                r = run_one(wl, l, args.bytes)
                runs[l].append(r)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
        med = {l: statistics.median(r["mb_s"] for r in runs[l]) for l in loops}
        cpu = {l: statistics.median(r["cpu_us_per_mib"] for r in runs[l])
               for l in loops}
        spread = max((max(r["mb_s"] for r in runs[l]) -
                      min(r["mb_s"] for r in runs[l])) / med[l] for l in loops)
        line = ("%-11s" % wl + "".join("%14.0f" % med[l] for l in loops) +
                "".join("%16.0f" % cpu[l] for l in loops) +
                "%8.0f%%" % (spread * 100))
        if "unixloop" in loops:
            line += "".join("%11.2fx" % (med["unixloop"] / med[l])
                            for l in loops if l != "unixloop")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
