#!/usr/bin/env python3
"""Run other projects' own test suites with every asyncio loop they make
coming from unixloop: Tornado's (tornado.test, shipped in Debian's
python3-tornado), aiosmtpd's (aiosmtpd.tests, in python3-aiosmtpd; it
needs python3-pytest-mock) and pyzmq's tests of zmq.asyncio (zmq.tests, in
python3-zmq).

    python tests/conformance/suites.py tornado                 # on unixloop
    python tests/conformance/suites.py aiosmtpd --loop asyncio  # on stock asyncio

Tornado 6 runs on asyncio: each IOLoop is an asyncio loop got from the
policy, and its IOStream drives non-blocking sockets, pipes and processes
with add_reader / add_writer, call_later, call_soon_threadsafe,
add_signal_handler and the child watcher.  Its runner fails a test that logs
or writes to stderr, so a warning a loop emits (an unclosed transport, a
callback error) fails too.  aiosmtpd's tests run its SMTP, LMTP and SMTPS
servers on a loop in a thread (Controller) and in the main thread, with
STARTTLS, PROXY protocol headers, timeouts and UNIX sockets.  zmq.asyncio
waits on each socket's fd with add_reader and emulates its edge-triggered
readiness with call_soon and call_later.

A suite runs in a child process whose event loop policy is the side's,
counting the loops made; the parent prints the suite's output and one line,
"SUITE: N passed, N failed, N skipped; loops made: ...", and exits non-zero
if a test failed, the suite could not run, a loop came from anything but
the side asked for, or Python reported an exception it ignored (in a
__del__, say, even at exit).  Where a suite's packages are not installed it says so
and exits 0 with nothing run.
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

TIMEOUT = 900  # tornado takes 20 s plainly, aiosmtpd 55 s; a few times that under ASan


# Tests left out on both sides, each with its reason: they race a short
# timeout or time a CPU-bound step, and fail on a slow or busy machine
# (under ASan/UBSan, say) whatever the loop.
_RACES_TIMEOUT = ('a 0.1 s request timeout that must fire only after the '
                  'request reached the server, which a busy machine (or a '
                  'slow TLS handshake) misses; Tornado skips it on its own '
                  'CI (skipOnTravis)')
EXCLUDED = {
    'tornado': {
        'tornado.test.httputil_test.ParseCookieTest.test_unquote_large':
            'asserts that a CPU-bound parse takes under 1 s; no loop in it',
        'tornado.test.simple_httpclient_test.SimpleHTTPClientTestCase.'
        'test_request_timeout': _RACES_TIMEOUT,
        'tornado.test.simple_httpclient_test.SimpleHTTPSClientTestCase.'
        'test_request_timeout': _RACES_TIMEOUT,
    },
}


def tornado_tests():
    """Tornado's whole suite (runtests.all) minus EXCLUDED['tornado']."""
    import unittest
    from tornado.test import runtests

    def kept(suite):
        out = unittest.TestSuite()
        for test in suite:
            if isinstance(test, unittest.TestSuite):
                out.addTest(kept(test))
            elif test.id() not in EXCLUDED['tornado']:
                out.addTest(test)
        return out
    return kept(runtests.all())


def run_tornado():
    from tornado.test import runtests
    # This file runs as __main__ in the child.
    sys.argv = ['tornado.test.runtests', '__main__.tornado_tests']
    runtests.main()  # exits


def run_pytest(package, *files):
    """pytest on a package's test directory, or on some files in it."""
    import importlib
    import pytest
    where = os.path.dirname(importlib.import_module(package).__file__)
    paths = [os.path.join(where, f) for f in files] or [where]
    sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider'] + paths))


def run_aiosmtpd():
    run_pytest('aiosmtpd.tests')


def run_pyzmq():
    # The tests of zmq.asyncio, which waits on the sockets' shared fd with
    # add_reader and emulates its edge-triggered readiness with call_soon.
    run_pytest('zmq.tests', 'test_asyncio.py', 'test_future.py')


def unittest_counts(output):
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


def pytest_counts(output):
    """(run, failed, skipped) from pytest's closing line, or None."""
    lines = re.findall(r'^=*\s*(\d+ \w+.* in [\d.]+s.*)$', output, re.M)
    if not lines:
        return None
    counts = {word: int(n) for n, word in
              re.findall(r'(\d+) (passed|failed|errors?|skipped|xpassed)',
                         lines[-1])}
    failed = (counts.get('failed', 0) + counts.get('error', 0)
              + counts.get('errors', 0) + counts.get('xpassed', 0))
    skipped = counts.get('skipped', 0)
    return counts.get('passed', 0) + failed + skipped, failed, skipped


# suite -> (modules it needs, Debian packages, runner, output parser)
SUITES = {
    'tornado': (['tornado.test'], 'python3-tornado', run_tornado,
                unittest_counts),
    'aiosmtpd': (['aiosmtpd.tests', 'pytest_mock'],
                 'python3-aiosmtpd python3-pytest-mock', run_aiosmtpd,
                 pytest_counts),
    'pyzmq': (['zmq.tests'], 'python3-zmq', run_pyzmq, pytest_counts),
}


def child(suite, loop_kind, report_path):
    """Runs suite on loop_kind; writes the kinds of loop made to
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
    try:
        SUITES[suite][2]()
    finally:
        with open(report_path, 'w') as f:
            json.dump(dict(made), f)


def installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('suite', choices=sorted(SUITES))
    parser.add_argument('--loop', choices=('unixloop', 'asyncio'),
                        default='unixloop')
    parser.add_argument('--child', metavar='REPORT', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.suite, args.loop, args.child)

    name = args.suite
    modules, packages, _, counts_of = SUITES[name]
    missing = [m for m in modules if not installed(m)]
    if missing:
        print('{}: {} not installed (Debian: {}; make deps installs it), '
              'nothing run'.format(name, ' and '.join(missing), packages))
        return 0
    for test, reason in EXCLUDED.get(name, {}).items():
        print('{}: left out: {} ({})'.format(name, test, reason))
    fd, report = tempfile.mkstemp(prefix=name + '-suite-', suffix='.json')
    os.close(fd)
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), name,
             '--loop', args.loop, '--child', report],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b''  # bytes here, even with text=True
        sys.stdout.write(out.decode(errors='replace')
                         if isinstance(out, bytes) else out)
        print('{}: the suite did not finish in {} s'.format(name, TIMEOUT))
        os.remove(report)
        return 1
    output = proc.stdout
    sys.stdout.write(output)
    try:
        with open(report) as f:
            made = json.load(f)
    except ValueError:  # empty: the child died before it could write it
        print('{}: the suite did not finish (exit status {})'.format(
            name, proc.returncode))
        return 1
    finally:
        os.remove(report)
    counts = counts_of(output)
    if counts is None:
        print('{}: no summary in the output (exit status {})'.format(
            name, proc.returncode))
        return 1
    ran, failed, skipped = counts
    print('{}: {} passed, {} failed, {} skipped; loops made: {}'.format(
        name, ran - failed - skipped, failed, skipped, made))
    expected = args.loop + '.'
    wrong = {k: n for k, n in made.items() if not k.startswith(expected)}
    if wrong or not made:
        print('{}: loops that are not {}: {}'.format(
            name, args.loop, wrong or 'none made'))
        return 1
    if 'Exception ignored in' in output:  # a __del__ or callback failed
        print('{}: an exception was ignored (above)'.format(name))
        return 1
    return 0 if failed == 0 and proc.returncode == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
