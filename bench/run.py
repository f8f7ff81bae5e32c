#!/usr/bin/env python3
"""The `make bench` entry point: cbench.py (C: libunixloop vs libuv), then
pybench.py, udpbench.py and pipebench.py (Python: asyncio vs uvloop vs
unixloop), then spawnbench.py (spawning, in C and in Python), then
pgbench.py (asyncpg against a throwaway PostgreSQL).

    python3 bench/run.py                  # full: about 10-12 minutes
    python3 bench/run.py --quick          # smoke test: about a minute
    python3 bench/run.py --json-dir out/  # keep every run as JSON lines

Extra arguments after `--` go to pybench.py, e.g.
    python3 bench/run.py -- --only 'echo_*' --loop asyncio,unixloop
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--repeat", type=int, help="runs per program/loop")
    ap.add_argument("--ul-build", help="CMake build dir with libunixloop.a "
                    "(default: ../build from bench/)")
    ap.add_argument("--json-dir", help="write cbench.jsonl and pybench.jsonl here")
    ap.add_argument("--skip-c", action="store_true", help="skip cbench.py")
    ap.add_argument("--skip-py", action="store_true", help="skip pybench.py")
    ap.add_argument("--skip-udp", action="store_true", help="skip udpbench.py")
    ap.add_argument("--skip-pipe", action="store_true", help="skip pipebench.py")
    ap.add_argument("--skip-spawn", action="store_true", help="skip spawnbench.py")
    ap.add_argument("--skip-pg", action="store_true", help="skip pgbench.py")
    ap.add_argument("rest", nargs="*", help="(after --) arguments for pybench.py")
    args = ap.parse_args(argv)

    common = []
    if args.quick:
        common.append("--quick")
    if args.repeat is not None:
        common += ["--repeat", str(args.repeat)]
    c_args, py_args, pipe_args = list(common), list(common), list(common)
    if args.ul_build:
        c_args += ["--ul-build", args.ul_build]
    if args.json_dir:
        os.makedirs(args.json_dir, exist_ok=True)
        c_args += ["--json", os.path.join(args.json_dir, "cbench.jsonl")]
        py_args += ["--json", os.path.join(args.json_dir, "pybench.jsonl")]
        pipe_args += ["--json", os.path.join(args.json_dir, "pipebench.jsonl")]
    py_args += args.rest

    status = 0
    t0 = time.time()
    if not args.skip_c:
        print("== C: libunixloop vs libuv (cbench.py %s)" % " ".join(c_args), flush=True)
        status |= subprocess.call([sys.executable, os.path.join(HERE, "cbench.py")] + c_args)
        print(flush=True)
    if not args.skip_py:
        print("== Python: asyncio vs uvloop vs unixloop (pybench.py %s)"
              % " ".join(py_args), flush=True)
        status |= subprocess.call([sys.executable, os.path.join(HERE, "pybench.py")] + py_args)
    if not args.skip_udp:
        udp_args = list(common)
        if args.json_dir:
            udp_args += ["--json", os.path.join(args.json_dir, "udpbench.jsonl")]
        print("\n== Python UDP echo: asyncio vs uvloop vs unixloop "
              "(udpbench.py %s)" % " ".join(udp_args), flush=True)
        status |= subprocess.call([sys.executable, os.path.join(HERE, "udpbench.py")]
                                  + udp_args)
        print(flush=True)
    if not args.skip_pipe:
        print("== Python pipes: asyncio vs uvloop vs unixloop (pipebench.py %s)"
              % " ".join(pipe_args), flush=True)
        status |= subprocess.call([sys.executable, os.path.join(HERE, "pipebench.py")] + pipe_args)
    if not args.skip_spawn:
        spawn_args = list(common)
        if args.json_dir:
            spawn_args += ["--json", os.path.join(args.json_dir, "spawnbench.jsonl")]
        print("\n== Spawning: C and Python (spawnbench.py %s)" % " ".join(spawn_args),
              flush=True)
        status |= subprocess.call([sys.executable, os.path.join(HERE, "spawnbench.py")]
                                  + spawn_args)
    if not args.skip_pg:
        pg_args = list(common)
        if args.json_dir:
            pg_args += ["--json", os.path.join(args.json_dir, "pgbench.jsonl")]
        print("\n== asyncpg: asyncio vs uvloop vs unixloop (pgbench.py %s)"
              % " ".join(pg_args), flush=True)
        status |= subprocess.call([sys.executable, os.path.join(HERE, "pgbench.py")]
                                  + pg_args)
    print("\nbench/run.py: done in %.0f s (python %s)" % (time.time() - t0, sys.executable))
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
