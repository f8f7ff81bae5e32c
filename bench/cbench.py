#!/usr/bin/env python3
"""C micro-benchmarks: libunixloop (ul_bench) against libuv (uv_bench).

Builds both with bench/Makefile, runs every workload on both as fresh
processes, interleaved (run 1 uv, run 1 ul, run 2 uv, ...), and prints the
medians with ul/uv ratios.  See README.md.

    python3 bench/cbench.py                 # 5 runs each
    python3 bench/cbench.py --quick         # smoke test
    python3 bench/cbench.py --ul-build build-release --only 'timers*'
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


def fmt(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return "%.2fM" % (v / 1e6)
    if v >= 1e4:
        return "%.1fk" % (v / 1e3)
    return "%.0f" % v


def build(ul_build, want_ul):
    p = subprocess.run(["make", "-C", HERE, "all"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit("cannot build uv_bench (is libuv1-dev installed?)")
    if not want_ul:
        return None
    lib = os.path.join(ul_build, "libunixloop.a")
    if not os.path.exists(lib):
        return "no %s (build the project first: cmake -B build && cmake --build build)" % lib
    p = subprocess.run(["make", "-C", HERE, "ul_bench", "UL_BUILD=" + ul_build],
                       capture_output=True, text=True)
    if p.returncode != 0:
        lines = (p.stdout + p.stderr).strip().splitlines()
        return "cannot build ul_bench: " + (lines[-1] if lines else "?")
    return None


def run_one(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
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
    ap.add_argument("--no-ul", action="store_true", help="run libuv only")
    ap.add_argument("--json", metavar="FILE", help="append one JSON line per run")
    args = ap.parse_args(argv)

    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    names = list(WORKLOADS)
    if args.only:
        pats = args.only.split(",")
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        if not names:
            sys.exit("no workload matches %r" % args.only)

    ul_build = os.path.abspath(args.ul_build)
    notes = []
    skip = build(ul_build, not args.no_ul)
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
    if jf:
        jf.close()

    header = ["case", "metric", "libuv", "unixloop", "ul/uv", "spread",
              "libuv command", "unixloop command"]
    table = [header] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print()
    print("%d run(s) each, interleaved, medians; spread = worst (max-min)/median; "
          "%.0f s in all" % (repeat, time.time() - t_start))
    for j, r in enumerate(table):
        cells = [r[i].ljust(widths[i]) if i in (0, 1, 6, 7) else r[i].rjust(widths[i])
                 for i in range(len(r))]
        print("| " + " | ".join(cells) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for note in notes:
        print(note)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
