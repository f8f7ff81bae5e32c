#!/usr/bin/env python3
"""UDP echo: asyncio vs uvloop vs unixloop, side by side.

    python3 bench/udpbench.py                     # every workload; 5 runs
    python3 bench/udpbench.py --repeat 7 --only 'udp_echo_1k'
    python3 bench/udpbench.py --json out.jsonl

The server (a fresh process per run) is
create_datagram_endpoint(local_addr=('127.0.0.1', 0)) with a DatagramProtocol
whose datagram_received does transport.sendto(data, addr), its receive
buffer asked at 1 MiB.  The client is bench/build/udp_client (built if
missing) in its own process: 16 flows, one UDP socket each, one datagram in
flight per flow, 200 ms retransmit timeout.  unixdgram_echo_* do the same over
UNIX-domain datagram sockets (server bound to a path, each flow bound to its
own, 8 flows; uvloop 0.17 cannot make such an endpoint and shows '-').  The server's CPU time
(getrusage) is taken over the client's measured window: on a 2-core machine
the client nearly fills the other core at uvloop's speed, so compare loops by
server CPU time per request; requests/s is beside it.  Runs are interleaved
(asyncio, uvloop, unixloop, asyncio, ...) and medians are reported.
"""
import argparse
import asyncio
import fnmatch
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pybench  # noqa: E402  (new_loop, run_client, check_loop, fmt, ...)

FLOWS = 16
# A UNIX-domain datagram socket queues at most net.unix.max_dgram_qlen
# (default 10) datagrams; more flows than that make the client's sends fail
# with EAGAIN whenever the server lags, and the figure depend on the timeout.
UNIX_FLOWS = 8
RCVBUF = 1 << 20
# name: (family, datagram size)
WORKLOADS = {
    "udp_echo_64": ("udp", 64),
    "udp_echo_1k": ("udp", 1024),
    "udp_echo_8k": ("udp", 8192),
    "unixdgram_echo_64": ("unix", 64),
    "unixdgram_echo_1k": ("unix", 1024),
}


class Unsupported(Exception):
    """The loop cannot make this endpoint (uvloop 0.17: AF_UNIX datagrams)."""


class EchoProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


def run_udp_echo(loop, family, size, warmup, duration, client):
    """Serves datagram echo on `loop` (UDP on 127.0.0.1, or a UNIX-domain
    datagram socket), runs the client against it and measures this
    process's CPU time over the client's measured window
    (pybench.run_client)."""
    tmpdir = None
    if family == "udp":
        kw = {"local_addr": ("127.0.0.1", 0)}
    else:
        tmpdir = tempfile.mkdtemp(prefix="udpbench-")
        path = os.path.join(tmpdir, "echo.sock")
        kw = {"local_addr": path, "family": socket.AF_UNIX}
    try:
        transport, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(EchoProtocol, **kw))
    except (TypeError, ValueError, NotImplementedError) as e:
        raise Unsupported("%s: %s" % (type(e).__name__, e))
    sock = transport.get_extra_info("socket")
    if RCVBUF:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    if family == "udp":
        host, port = transport.get_extra_info("sockname")[:2]
        target = ["-a", "%s:%d" % (host, port)]
    else:
        target = ["-u", path]
    flows = FLOWS if family == "udp" else UNIX_FLOWS
    cmd = [client] + target + ["-c", str(flows), "-s", str(size),
                               "-d", str(duration), "-w", str(warmup)]

    def cleanup():
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))

    try:
        figures, res = pybench.run_client(loop, cmd, cleanup)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    for key in ("losses", "late", "send_errors"):
        figures[key] = res[key]
    return figures


def worker(args):
    loop = pybench.new_loop(args.loop)
    asyncio.set_event_loop(loop)
    family, size = WORKLOADS[args.worker]
    try:
        res = run_udp_echo(loop, family, size, args.warmup, args.duration,
                           args.client)
    except Unsupported as e:
        res = {"unsupported": str(e)}
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    res["loop_version"] = pybench.loop_version(args.loop)
    print(json.dumps(res), flush=True)


def ensure_client(path, explicit):
    if os.access(path, os.X_OK):
        return True
    if not explicit:
        p = subprocess.run(["make", "-C", HERE, "build/udp_client"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stdout + p.stderr)
    return os.access(path, os.X_OK)


def print_table(rows, out=sys.stdout):
    header = ["workload", "metric", "asyncio", "uvloop", "unixloop",
              "unixloop vs uvloop", "unixloop vs asyncio", "spread"]
    table = [header]
    for r in rows:
        m = r["medians"]
        # For CPU per request lower is better: the gain is anchor / unixloop.
        a, u, x = m.get("asyncio"), m.get("uvloop"), m.get("unixloop")
        if r["lower_is_better"]:
            vs_uv, vs_as = pybench.ratio(u, x), pybench.ratio(a, x)
        else:
            vs_uv, vs_as = pybench.ratio(x, u), pybench.ratio(x, a)
        table.append([r["workload"], r["metric"], pybench.fmt(a),
                      pybench.fmt(u), pybench.fmt(x), vs_uv, vs_as,
                      "%.0f%%" % (r["spread"] * 100)
                      if r["spread"] is not None else "-"])
    pybench.write_table(table, out)


def driver(args):
    python = args.python or sys.executable
    loops = [x.strip() for x in args.loop.split(",") if x.strip()]
    names = [n for n in WORKLOADS
             if not args.only or any(fnmatch.fnmatchcase(n, p)
                                     for p in args.only.split(","))]
    if not names:
        sys.exit("no workload matches %r" % args.only)
    usable, versions = [], {}
    for name in loops:
        ver, err = pybench.check_loop(python, name)
        if ver is None:
            print("note: skipping %s: %s" % (name, err), file=sys.stderr)
        else:
            usable.append(name)
            versions[name] = ver
    if not usable:
        sys.exit("no loop available")
    client = args.client or os.path.join(HERE, "build", "udp_client")
    if not ensure_client(client, bool(args.client)):
        sys.exit("no UDP client at %s (make -C bench)" % client)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    warm, dur = (0.1, 0.3) if args.quick else (0.5, 1.5)
    if args.duration is not None:
        dur = args.duration
    if args.warmup is not None:
        warm = args.warmup
    print("# python %s (%s); loops: %s; %d run(s) each, interleaved; "
          "%.2gs + %.2gs warm-up; %d flows (UNIX: %d)"
          % (platform.python_version(), python,
             ", ".join("%s %s" % (l, versions[l]) for l in usable), repeat,
             dur, warm, FLOWS, UNIX_FLOWS), file=sys.stderr)
    jf = open(args.json, "a") if args.json else None
    rows, failed = [], 0
    t_start = time.time()
    for name in names:
        results = {l: [] for l in usable}
        unsupported = {}
        for run in range(1, repeat + 1):
            for l in usable:
                cmd = [python, os.path.abspath(__file__), "--worker", name,
                       "--loop", l, "--warmup", str(warm), "--duration",
                       str(dur), "--client", client]
                try:
                    res = pybench.run_worker(cmd, 60 + 10 * (warm + dur))
                except (RuntimeError, subprocess.TimeoutExpired,
                        ValueError) as e:
                    failed += 1
                    print("  %s run %d %s: FAILED: %s" % (name, run, l, e),
                          file=sys.stderr)
                    continue
                if "unsupported" in res:
                    unsupported[l] = res["unsupported"]
                    print("  %s run %d %s: not supported: %s"
                          % (name, run, l, res["unsupported"]), file=sys.stderr)
                    continue
                results[l].append(res)
                print("  %-12s run %d %-8s %10s req/s  %.2f us CPU/req, "
                      "server busy %.0f%%, losses %d, late %d"
                      % (name, run, l, pybench.fmt(res["value"]),
                         res["cpu_us_per_req"] or 0,
                         (res["server_busy"] or 0) * 100, res["losses"],
                         res["late"]), file=sys.stderr)
                if jf:
                    rec = {"workload": name, "loop": l, "run": run,
                           "repeat": repeat, "warmup": warm, "duration": dur,
                           "python": platform.python_version(),
                           "loop_version": versions[l], "time": time.time()}
                    rec.update(res)
                    jf.write(json.dumps(rec) + "\n")
                    jf.flush()
        for key, metric, lower in (
                ("value", "req/s", False),
                ("cpu_us_per_req", "server us CPU/req", True)):
            med, spread = {}, None
            for l in usable:
                vals = [r[key] for r in results[l] if r.get(key) is not None]
                if not vals:
                    continue
                med[l] = statistics.median(vals)
                if len(vals) > 1 and med[l]:
                    s = (max(vals) - min(vals)) / med[l]
                    spread = s if spread is None else max(spread, s)
            rows.append({"workload": name, "metric": metric, "medians": med,
                         "spread": spread, "lower_is_better": lower})
        for l, why in unsupported.items():
            print("note: %s: %s cannot run it (%s)" % (name, l, why))
        losses = {l: sum(r["losses"] for r in results[l]) for l in usable}
        if any(losses.values()):
            print("note: %s losses per loop (all runs): %s" % (name, losses))
    if jf:
        jf.close()
    print()
    print("%d run(s) per loop, medians; 'unixloop vs X' is X's CPU/req over "
          "unixloop's (higher = unixloop better) and unixloop's req/s over "
          "X's; %.0f s in all" % (repeat, time.time() - t_start))
    print_table(rows)
    return 1 if failed else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", default=",".join(pybench.ALL_LOOPS))
    ap.add_argument("--only", metavar="GLOB",
                    help="workloads matching GLOB (comma-separated): "
                    + " ".join(WORKLOADS))
    ap.add_argument("--repeat", type=int, help="runs per loop (default 5)")
    ap.add_argument("--quick", action="store_true", help="short runs")
    ap.add_argument("--duration", type=float, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run")
    ap.add_argument("--json", metavar="FILE", help="append one JSON line per run")
    ap.add_argument("--python", help="interpreter for the runs")
    ap.add_argument("--client", help="udp_client binary "
                    "(default: bench/build/udp_client, built if missing)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
