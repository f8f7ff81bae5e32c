#!/usr/bin/env python3
"""Run Tornado's own test suite (tornado.test, shipped in Debian's
python3-tornado) with every asyncio loop it makes coming from unixloop.

    python tests/conformance/tornado_suite.py                 # on unixloop
    python tests/conformance/tornado_suite.py --loop asyncio  # on stock asyncio

Tornado 6 runs on asyncio: each IOLoop is an asyncio loop got from the
policy, and its IOStream drives non-blocking sockets, pipes and processes
with add_reader / add_writer, call_later, call_soon_threadsafe,
add_signal_handler and the child watcher.  Its suite is strict: it fails a
test that logs or writes to stderr, so a warning a loop emits (an unclosed
transport, a callback error) fails too.

The suite runs in a child process (tornado.test.runtests, as `python -m
tornado.test.runtests` would, through tornado.testing.main); the parent
prints one line, "tornado: N passed, N failed, N skipped; loops made: ...",
and exits non-zero if a test failed, the suite could not run, or a loop came
from anything but the loop asked for.  Where tornado is not installed it
says so and exits 0 with nothing run.
"""
import argparse
import asyncio
import collections
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile

TIMEOUT = 900  # the suite takes 20 s plainly, a minute or two under ASan


def child(loop_kind, report_path):
    """Runs the suite on loop_kind; writes the kinds of loop made to
    report_path as it exits."""
    made = collections.Counter()
    if loop_kind == 'unixloop':
        import unixloop
        base = unixloop.EventLoopPolicy
    else:
        base = asyncio.DefaultEventLoopPolicy

    class CountingPolicy(base):
        def new_event_loop(self):
            loop = super().new_event_loop()
            made[type(loop).__module__ + '.' + type(loop).__name__] += 1
            return loop

    asyncio.set_event_loop_policy(CountingPolicy())
    from tornado.test import runtests
    sys.argv = ['tornado.test.runtests', 'tornado.test.runtests.all']
    try:
        runtests.main()  # exits
    finally:
        with open(report_path, 'w') as f:
            json.dump(dict(made), f)


def summarize(output):
    """(run, failed, skipped) from unittest's closing lines, or None."""
    ran = re.search(r'^Ran (\d+) tests? in ', output, re.M)
    verdict = re.search(r'^(OK|FAILED)(?: \((.*)\))?$', output, re.M)
    if not ran or not verdict:
        return None
    counts = dict((k, int(v)) for k, v in
                  re.findall(r'(\w+)=(\d+)', verdict.group(2) or ''))
    failed = (counts.get('failures', 0) + counts.get('errors', 0)
              + counts.get('unexpected successes', 0))
    return int(ran.group(1)), failed, counts.get('skipped', 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--loop', choices=('unixloop', 'asyncio'),
                        default='unixloop')
    parser.add_argument('--child', metavar='REPORT', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.loop, args.child)

    if importlib.util.find_spec('tornado') is None:
        print('tornado: not installed (Debian: python3-tornado; make deps '
              'installs it), nothing run')
        return 0
    fd, report = tempfile.mkstemp(prefix='tornado-suite-', suffix='.json')
    os.close(fd)
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), '--loop', args.loop,
             '--child', report],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b''  # bytes here, even with text=True
        sys.stdout.write(out.decode(errors='replace')
                         if isinstance(out, bytes) else out)
        print('tornado: the suite did not finish in {} s'.format(TIMEOUT))
        os.remove(report)
        return 1
    output = proc.stdout
    sys.stdout.write(output)
    try:
        with open(report) as f:
            made = json.load(f)
    except ValueError:  # empty: the child died before it could write it
        print('tornado: the suite did not finish (exit status {})'.format(
            proc.returncode))
        return 1
    finally:
        os.remove(report)
    counts = summarize(output)
    if counts is None:
        print('tornado: no unittest summary in the output (exit status {})'
              .format(proc.returncode))
        return 1
    ran, failed, skipped = counts
    expected = 'unixloop.' if args.loop == 'unixloop' else 'asyncio.'
    wrong = {k: n for k, n in made.items() if not k.startswith(expected)}
    print('tornado: {} passed, {} failed, {} skipped; loops made: {}'.format(
        ran - failed - skipped, failed, skipped, made))
    if wrong or not made:
        print('tornado: loops that are not {}: {}'.format(args.loop, wrong
                                                            or 'none made'))
        return 1
    return 0 if failed == 0 and proc.returncode == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
