#!/usr/bin/env python3
"""C benchmarks: libunixloop against libuv (and raw epoll for streams).

Micro-benchmarks: ul_bench vs uv_bench.  Stream benchmarks (pingpong_*,
pump_*): ul_stream vs uv_stream vs raw_stream (bare epoll, the physical
limit).  Builds everything with bench/Makefile, runs every workload as fresh
processes, interleaved (run 1 of each program, then run 2 of each, ...), and
prints the medians with ratios.  See README.md.

    python3 bench/cbench.py                 # 5 runs each
    python3 bench/cbench.py --quick         # smoke test
    python3 bench/cbench.py --ul-build build-release --only 'timers*'
    python3 bench/cbench.py --only 'pingpong*,pump*'
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

# workload -> (default N, quick N, [(row label, uv mode or None, key, metric)])
WORKLOADS = {
    "callbacks": (1_000_000, 100_000, [
        ("callbacks", "idle", "rate", "callbacks/s"),
        ("callbacks (uv: 0-timeout timers)", "timer", "rate", "callbacks/s"),
    ]),
    "callbacks_chain": (1_000_000, 100_000, [
        ("callbacks_chain", "idle", "rate", "callbacks/s"),
        ("callbacks_chain (uv: 0-timeout timers)", "timer", "rate", "callbacks/s"),
    ]),
    "timers_1M": (1_000_000, 100_000, [
        ("timers_1M", None, "rate", "timers/s (start+fire)"),
        ("timers_1M start", None, "start_rate", "timers/s"),
        ("timers_1M fire", None, "fire_rate", "timers/s"),
    ]),
    "timers_cancel": (1_000_000, 100_000, [
        ("timers_cancel", None, "rate", "timers/s (start+stop)"),
        ("timers_cancel start", None, "start_rate", "timers/s"),
        ("timers_cancel stop", None, "cancel_rate", "timers/s"),
    ]),
    "async_pingpong": (100_000, 10_000, [
        ("async_pingpong", None, "rate", "wakeups/s"),
    ]),
}


# Stream workloads: case -> (arguments, quick -n, -n for the untimed -V check,
# metric, rows).  Every program takes the same arguments (stream_common.h);
# a row adds options per implementation, e.g. {"raw": ["-q", "4"]}.
# Rows share runs: each distinct command runs once per round.  The pump has
# one row per writer policy, the same in the three programs: -q 0 writes
# until the kernel refuses a chunk, -q 4 at most 4 chunks per loop turn.
_PUMP_ROWS = [
    (" [-q %s]" % _q, {_i: ["-q", _q] for _i in ("raw", "uv", "ul")})
    for _q in ("0", "4")
]
STREAM_WORKLOADS = {}
for _t in ("unix", "tcp"):
    STREAM_WORKLOADS["pingpong_%s_1conn_64B" % _t] = (
        ["pingpong", "-t", _t, "-c", "1", "-s", "64", "-n", "100000"],
        "10000", "2000", "roundtrips/s", [("", {})])
    STREAM_WORKLOADS["pingpong_%s_16conn_1k" % _t] = (
        ["pingpong", "-t", _t, "-c", "16", "-s", "1k", "-n", "300000"],
        "30000", "4000", "roundtrips/s", [("", {})])
for _t in ("unix", "tcp", "pipe"):
    STREAM_WORKLOADS["pump_%s_2G" % _t] = (
        ["pump", "-t", _t, "-n", "2G"], "256M", "64M", "MB/s", _PUMP_ROWS)
STREAM_IMPLS = ("raw", "uv", "ul")


def with_n(args, n):
    args = list(args)
    args[args.index("-n") + 1] = n
    return args


def print_table(header, rows, left):
    table = [header] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for j, r in enumerate(table):
        cells = [r[i].ljust(widths[i]) if i in left else r[i].rjust(widths[i])
                 for i in range(len(r))]
        print("| " + " | ".join(cells) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def spread_of(*lists):
    spread = None
    for vals in lists:
        if len(vals) > 1 and statistics.median(vals):
            s = (max(vals) - min(vals)) / statistics.median(vals)
            spread = s if spread is None else max(spread, s)
    return spread


def run_streams(names, args, repeat, bins, have_ul, jf):
    """Runs the stream workloads; returns (rows, failed)."""
    rows = []
    failed = False
    impls = [i for i in STREAM_IMPLS if i != "ul" or have_ul]
    for name in names:
        base, quick_n, check_n, metric, row_defs = STREAM_WORKLOADS[name]
        if args.quick:
            base = with_n(base, quick_n)
        # The distinct commands of this workload, in run order.
        cmds = []
        for _, extra in row_defs:
            for impl in impls:
                cmd = [bins[impl]] + base + extra.get(impl, [])
                if (impl, cmd) not in cmds:
                    cmds.append((impl, cmd))
        # Correctness first (untimed): every byte checked (-V), small -n.
        for impl, cmd in cmds:
            try:
                run_one(with_n(cmd, check_n) + ["-V"])
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                failed = True
                print("  %s %s -V check: FAILED: %s" % (name, impl, e),
                      file=sys.stderr)
        results = {}
        for run in range(1, repeat + 1):
            for impl, cmd in cmds:
                short = " ".join([os.path.basename(cmd[0])] + cmd[1:])
                try:
                    res = run_one(cmd)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                    failed = True
                    print("  %s run %d %s: FAILED: %s" % (name, run, short, e),
                          file=sys.stderr)
                    continue
                results.setdefault(short, []).append(res)
                print("  %-22s run %d %-48s %s %s (user %.2f s, sys %.2f s)" % (
                    name, run, short, fmt(res["rate"]), res["unit"],
                    res["user"], res["sys"]), file=sys.stderr)
                if jf:
                    rec = dict(res)  # its "workload" is pingpong / pump
                    rec.update({"case": name, "impl": impl, "run": run,
                                "command": short, "time": time.time()})
                    jf.write(json.dumps(rec) + "\n")
                    jf.flush()
        for label, extra in row_defs:
            shorts = {}
            meds = {}
            vals = {}
            for impl in STREAM_IMPLS:
                cmd = [bins[impl]] + base + extra.get(impl, [])
                shorts[impl] = " ".join([os.path.basename(cmd[0])] + cmd[1:])
                vals[impl] = [r["rate"] for r in results.get(shorts[impl], [])]
                meds[impl] = statistics.median(vals[impl]) if vals[impl] else None

            def ratio(a, b):
                return "%.2fx" % (meds[a] / meds[b]) if meds[a] and meds[b] else "-"
            sp = spread_of(*vals.values())
            rows.append([name + label, metric, fmt(meds["raw"]), fmt(meds["uv"]),
                         fmt(meds["ul"]), ratio("ul", "uv"), ratio("ul", "raw"),
                         ratio("uv", "raw"),
                         "%.0f%%" % (sp * 100) if sp is not None else "-",
                         shorts["raw"], shorts["uv"],
                         shorts["ul"] if have_ul else "-"])
    return rows, failed


def fmt(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return "%.2fM" % (v / 1e6)
    if v >= 1e4:
        return "%.1fk" % (v / 1e3)
    return "%.0f" % v


def build(ul_build, want_ul, ul_include=None):
    p = subprocess.run(["make", "-C", HERE, "all"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit("cannot build uv_bench/uv_stream/raw_stream "
                 "(is libuv1-dev installed?)")
    if not want_ul:
        return None
    lib = os.path.join(ul_build, "libunixloop.a")
    if not os.path.exists(lib):
        return "no %s (build the project first: cmake -B build && cmake --build build)" % lib
    extra = ["UL_INCLUDE=" + ul_include] if ul_include else []
    p = subprocess.run(["make", "-C", HERE, "ul_bench", "ul_stream",
                        "UL_BUILD=" + ul_build] + extra,
                       capture_output=True, text=True)
    if p.returncode != 0:
        lines = (p.stdout + p.stderr).strip().splitlines()
        return "cannot build ul_bench/ul_stream: " + (lines[-1] if lines else "?")
    return None


# The CPU every benchmark process is pinned to (None: the scheduler's
# choice).  The programs are single-threaded, but where they run matters: on
# a 2-vCPU VM one vCPU ran the TCP pump 40% slower than the other, the same
# for every program, and unpinned runs landed on either at random (bimodal
# rates, 30-200% spreads).  Pinned, all programs of a run share one CPU.
PIN_CPU = None


def pin_cpu(choice):
    """The CPU to pin to: `choice` if given, else the highest-numbered one
    this process may use; None with a single CPU or when asked not to."""
    if choice == "none":
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if choice is not None:
        cpu = int(choice)
        if cpu not in cpus:
            sys.exit("--cpu %d: not among this process's CPUs %s" % (cpu, cpus))
        return cpu
    return cpus[-1] if len(cpus) > 1 else None


def run_one(cmd):
    pin = None
    if PIN_CPU is not None:
        pin = lambda: os.sched_setaffinity(0, {PIN_CPU})  # noqa: E731
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       preexec_fn=pin)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["rc=%d" % p.returncode])[-1]
        raise RuntimeError(err)
    return json.loads(lines[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description="libunixloop vs libuv, C level")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per program (default 5; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="smaller N, one run")
    ap.add_argument("--only", metavar="GLOB", help="comma-separated workload globs")
    ap.add_argument("--ul-build", default=os.path.join(HERE, "..", "build"),
                    help="the project's CMake build dir with libunixloop.a "
                    "(default: ../build from bench/)")
    ap.add_argument("--ul-include", default=None,
                    help="dir with the unixloop.h matching --ul-build "
                    "(default: ../include from bench/)")
    ap.add_argument("--no-ul", action="store_true",
                    help="run libuv (and raw epoll) only")
    ap.add_argument("--json", metavar="FILE", help="append one JSON line per run")
    ap.add_argument("--cpu", metavar="N|none", default=None,
                    help="pin every benchmark process to CPU N (default: the "
                    "highest-numbered usable CPU; 'none': do not pin)")
    args = ap.parse_args(argv)
    global PIN_CPU
    PIN_CPU = pin_cpu(args.cpu)

    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    names = list(WORKLOADS)
    stream_names = list(STREAM_WORKLOADS)
    if args.only:
        pats = args.only.split(",")
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        stream_names = [n for n in stream_names
                        if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        if not names and not stream_names:
            sys.exit("no workload matches %r" % args.only)

    ul_build = os.path.abspath(args.ul_build)
    notes = []
    ul_include = os.path.abspath(args.ul_include) if args.ul_include else None
    skip = build(ul_build, not args.no_ul, ul_include)
    have_ul = not args.no_ul and skip is None
    if skip:
        notes.append("note: skipping ul_bench: " + skip)
        print(notes[-1], file=sys.stderr)
    uv_bin = os.path.join(HERE, "build", "uv_bench")
    ul_bin = os.path.join(HERE, "build", "ul_bench")

    jf = open(args.json, "a") if args.json else None
    rows = []
    failed = False
    t_start = time.time()
    for name in names:
        n_default, n_quick, row_defs = WORKLOADS[name]
        n = n_quick if args.quick else n_default
        uv_modes = sorted({m for _, m, _, _ in row_defs if m is not None})
        progs = [("uv", m, [uv_bin, name, "-n", str(n)] + (["-m", m] if m else []))
                 for m in (uv_modes or [None])]
        if have_ul:
            progs.append(("ul", None, [ul_bin, name, "-n", str(n)]))
        results = {}
        for run in range(1, repeat + 1):
            for impl, mode, cmd in progs:
                try:
                    res = run_one(cmd)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                    failed = True
                    print("  %s run %d %s: FAILED: %s" % (name, run, impl, e),
                          file=sys.stderr)
                    continue
                results.setdefault((impl, mode), []).append(res)
                print("  %-16s run %d %s%-6s %s/s" % (
                    name, run, impl, "/" + mode if mode else "", fmt(res["rate"])),
                    file=sys.stderr)
                if jf:
                    rec = {"workload": name, "impl": impl, "run": run,
                           "command": " ".join([os.path.basename(cmd[0])] + cmd[1:]),
                           "time": time.time()}
                    rec.update(res)
                    jf.write(json.dumps(rec) + "\n")
                    jf.flush()

        for label, mode, key, metric in row_defs:
            uv_vals = [r[key] for r in results.get(("uv", mode), [])]
            ul_vals = [r[key] for r in results.get(("ul", None), [])]
            med_uv = statistics.median(uv_vals) if uv_vals else None
            med_ul = statistics.median(ul_vals) if ul_vals else None
            spread = None
            for vals, m in ((uv_vals, med_uv), (ul_vals, med_ul)):
                if len(vals) > 1 and m:
                    s = (max(vals) - min(vals)) / m
                    spread = s if spread is None else max(spread, s)
            uv_cmd = "uv_bench %s -n %d%s" % (name, n, " -m " + mode if mode else "")
            rows.append([label, metric, fmt(med_uv), fmt(med_ul),
                         "%.2fx" % (med_ul / med_uv) if med_uv and med_ul else "-",
                         "%.0f%%" % (spread * 100) if spread is not None else "-",
                         uv_cmd, "ul_bench %s -n %d" % (name, n)])
    bins = {impl: os.path.join(HERE, "build", impl + "_stream")
            for impl in STREAM_IMPLS}
    stream_rows, stream_failed = run_streams(stream_names, args, repeat, bins,
                                             have_ul, jf)
    failed = failed or stream_failed
    if jf:
        jf.close()

    print()
    print("%d run(s) each, interleaved, medians; spread = worst (max-min)/median; "
          "%.0f s in all; %s" % (repeat, time.time() - t_start,
                                 "pinned to CPU %d" % PIN_CPU
                                 if PIN_CPU is not None else "not pinned"))
    if rows:
        print_table(["case", "metric", "libuv", "unixloop", "ul/uv", "spread",
                     "libuv command", "unixloop command"], rows, (0, 1, 6, 7))
    if stream_rows:
        if rows:
            print()
        print_table(["case", "metric", "raw epoll", "libuv", "unixloop", "ul/uv",
                     "ul/raw", "uv/raw", "spread", "raw command",
                     "libuv command", "unixloop command"],
                    stream_rows, (0, 1, 9, 10, 11))
    for note in notes:
        print(note)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
