#!/usr/bin/env python3
"""Run CPython's own test_asyncio against unixloop and against stock asyncio.

    python tests/conformance/run.py                      # both sides, report
    python tests/conformance/run.py --loop unixloop      # one side
    python tests/conformance/run.py --modules test_events,test_tasks
    python tests/conformance/run.py --only '*test_sendfile*'
    python tests/conformance/run.py --check              # CI: unixloop side
                                                         # vs known_failures
    python tests/conformance/run.py --update-known       # rewrite
                                                         # known_failures.txt
                                                         # from results/last.json

The tests are the interpreter's own (`test.test_asyncio`; on Debian they come
with libpython3.X-testsuite under /usr/lib/python3.X/test/test_asyncio).
Every module runs in its own worker process (worker.py), one at a time by
default, with a per-test watchdog; a test that hangs or crashes the worker
costs that test only: the worker is restarted after it.

How the loop under test is injected, how on-loop tests are counted, and the
data files (exclusions.txt, known_failures.txt) are described in README.md
next to this file.
"""

import argparse
import concurrent.futures
import datetime
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / 'worker.py'
EXCLUSIONS = HERE / 'exclusions.txt'
KNOWN = HERE / 'known_failures.txt'
RESULTS = HERE / 'results'
LAST = RESULTS / 'last.json'

MODULES = [
    'test_base_events', 'test_buffered_proto', 'test_context', 'test_events',
    'test_futures', 'test_futures2', 'test_locks', 'test_pep492',
    'test_protocols', 'test_queues', 'test_runners', 'test_sendfile',
    'test_server', 'test_sock_lowlevel', 'test_ssl', 'test_sslproto',
    'test_streams', 'test_subprocess', 'test_taskgroups', 'test_tasks',
    'test_threads', 'test_timeouts', 'test_transports', 'test_unix_events',
    'test_waitfor',
]

SIDES = ('asyncio', 'unixloop')
PASSING = {'pass', 'xfail'}
NEUTRAL = {'skip'}
FAILING = {'fail', 'error', 'upass', 'hung', 'crash', 'notrun'}
RETRYABLE = {'fail', 'error'}
MAX_RETRY_PER_MODULE = 25
STOCK_REASON = 'fails on stock asyncio here'
NEW_REASON = 'issue ?: not triaged'
REPLACED_REASON = ('replaced by the generated Unixloop* classes (they '
                   'hard-code asyncio.SelectorEventLoop or attach one of '
                   "asyncio's child watchers); run on neither side")

PRINT_LOCK = threading.Lock()


def say(*a, **k):
    with PRINT_LOCK:
        print(*a, **k, flush=True)


# --------------------------------------------------------------------------
# data files

def read_patterns(path):
    """'pattern  # reason' lines -> [(pattern, reason)], order kept."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding='utf-8').splitlines():
        s = line.strip()
        if not s or s.startswith('#'):
            continue
        pat, _, reason = s.partition('#')
        if pat.strip():
            out.append((pat.strip(), reason.strip()))
    return out


def read_known(path=KNOWN):
    return dict(read_patterns(path))


def write_known(entries, path=KNOWN):
    header = []
    if path.exists():
        for line in path.read_text(encoding='utf-8').splitlines():
            if line.startswith('#') or not line.strip():
                header.append(line)
            else:
                break
    while header and not header[-1].strip():
        header.pop()
    lines = header + ([''] if header else [])
    width = max((len(t) for t in entries), default=0)
    width = min(width, 100)
    for tid in sorted(entries):
        lines.append('%-*s  # %s' % (width, tid, entries[tid]))
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')


# --------------------------------------------------------------------------
# running one module on one side

class Options:
    pass


def _tail(path, start, limit=6000):
    try:
        with open(path, 'rb') as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return ''
    text = data.decode('utf-8', 'replace')
    i = text.rfind('Timeout (')     # the watchdog's dump: keep its start
    if i >= 0:
        return text[i:i + limit]
    if limit and len(text) > limit:
        return '[...]\n' + text[-limit:]
    return text


def _kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.kill()
    except ProcessLookupError:
        pass
    p.wait()


def _spawn_worker(side, module, opts, events, skip, only, log, cwd):
    cmd = [sys.executable, str(WORKER), '--side', side, '--module', module,
           '--events', str(events), '--timeout', str(opts.timeout),
           '--exclusions', str(EXCLUSIONS)]
    if skip is not None:
        cmd += ['--skip-file', str(skip)]
    if only is not None:
        cmd += ['--only-file', str(only)]
    env = dict(os.environ)
    env.pop('PYTHONASYNCIODEBUG', None)
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, cwd=cwd, env=env,
                            start_new_session=True)


def run_module(side, module, opts, only=None, tag=''):
    """Run one module on one side; returns a dict (see last.json)."""
    t0 = time.monotonic()
    deadline = t0 + opts.module_timeout
    logdir = RESULTS / 'logs'
    logdir.mkdir(parents=True, exist_ok=True)
    log_path = logdir / ('%s-%s%s.log' % (side, module, tag))
    log_path.write_bytes(b'')
    if not tag:
        for old in logdir.glob('%s-%s.retry*.log' % (side, module)):
            old.unlink()
    work = Path(tempfile.mkdtemp(prefix='ulconf-%s-%s-' % (side, module)))
    recs = {}
    collected = None
    excluded = {}
    replaced = []
    fixtures = []
    error = None
    attempts = 0
    only_path = None
    if only is not None:
        only_path = work / 'only.json'
        only_path.write_text(json.dumps(sorted(only)))

    def wanted(tid):
        return only is None or any(fnmatch.fnmatchcase(tid, p) for p in only)

    try:
        while True:
            attempts += 1
            events = work / ('events-%d.jsonl' % attempts)
            skip_path = work / ('skip-%d.json' % attempts)
            skip_path.write_text(json.dumps(sorted(recs)))
            log_start = log_path.stat().st_size
            cwd = work / 'cwd'
            cwd.mkdir(exist_ok=True)
            with open(log_path, 'ab') as log:
                p = _spawn_worker(side, module, opts, events, skip_path,
                                  only_path, log, cwd)
            try:
                rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(p)
                rc = None
            except BaseException:
                _kill_group(p)
                raise
            else:
                # Reap anything the tests left behind in the group.
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

            in_progress = None
            done = False
            n_before = len(recs)
            if events.exists():
                for line in events.read_text(encoding='utf-8').splitlines():
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    kind = ev.pop('e')
                    if kind == 'collected':
                        if collected is None:
                            collected = ev['tests']
                            excluded = ev['excluded']
                            replaced = ev['replaced']
                    elif kind == 'start':
                        in_progress = ev['id']
                    elif kind == 'result':
                        recs[ev.pop('id')] = ev
                    elif kind == 'end':
                        in_progress = None
                    elif kind == 'fixture':
                        fixtures.append(ev)
                    elif kind == 'fatal':
                        error = ev['detail']
                    elif kind == 'done':
                        done = True

            if rc is None:
                why = 'module timeout (%ds) reached' % opts.module_timeout
                if in_progress:
                    recs[in_progress] = {
                        'outcome': 'hung', 'onloop': False, 'loops': 0,
                        'time': None,
                        'detail': why + '\n' + _tail(log_path, log_start)}
                for tid in collected or ():
                    if tid not in recs and wanted(tid):
                        recs[tid] = {'outcome': 'hung', 'onloop': False,
                                     'loops': 0, 'time': None,
                                     'detail': 'not run: ' + why}
                if collected is None:
                    error = error or why + ' before tests were collected'
                break
            if done:
                break
            if collected is None:
                error = error or ('worker exited with status %s before '
                                  'collecting tests:\n%s'
                                  % (rc, _tail(log_path, log_start)))
                break
            tail = _tail(log_path, log_start)
            if rc < 0:
                how = 'crash'
                what = 'worker killed by signal %d' % -rc
            elif 'Timeout (' in tail:
                how = 'hung'
                what = 'per-test timeout (%ss)' % opts.timeout
            else:
                how = 'crash'
                what = 'worker exited with status %d' % rc
            if in_progress:
                prev = recs.get(in_progress) or {}
                recs[in_progress] = {'outcome': how,
                                     'onloop': prev.get('onloop', False),
                                     'loops': prev.get('loops', 0),
                                     'time': None,
                                     'detail': what + '\n' + tail}
            else:
                fixtures.append({'id': 'between tests', 'outcome': how,
                                 'detail': what + '\n' + tail})
            remaining = [t for t in collected
                         if t not in recs and wanted(t)]
            if not remaining:
                break
            if len(recs) == n_before or attempts > opts.max_restarts:
                for tid in remaining:
                    recs[tid] = {'outcome': 'notrun', 'onloop': False,
                                 'loops': 0, 'time': None,
                                 'detail': 'not run: worker died (%s) and '
                                 'was not restarted' % what}
                break
    finally:
        shutil.rmtree(work, ignore_errors=True)

    return {'tests': {t: recs[t] for t in (collected or []) if t in recs},
            'collected': collected or [],
            'excluded': excluded, 'replaced': replaced,
            'fixtures': fixtures, 'error': error, 'attempts': attempts,
            'duration': round(time.monotonic() - t0, 2)}


def run_module_with_retry(side, module, opts):
    res = run_module(side, module, opts, only=opts.only)
    if opts.retries <= 0 or res['error']:
        return res
    for attempt in range(opts.retries):
        failed = [t for t, r in res['tests'].items()
                  if r['outcome'] in RETRYABLE]
        if not failed or len(failed) > MAX_RETRY_PER_MODULE:
            break
        again = run_module(side, module, opts, only=set(failed),
                           tag='.retry%d' % (attempt + 1))
        for tid in failed:
            r2 = again['tests'].get(tid)
            if r2 and r2['outcome'] in PASSING | NEUTRAL:
                r2['flaky'] = True
                r2['first_detail'] = res['tests'][tid].get('detail')
                res['tests'][tid] = r2
        res['duration'] = round(res['duration'] + again['duration'], 2)
    return res


# --------------------------------------------------------------------------
# figures

def stats(modres):
    s = {'tests': 0, 'passed': 0, 'skipped': 0, 'failed': 0,
         'onloop': 0, 'onloop_passed': 0}
    if modres is None:
        return s
    for r in modres['tests'].values():
        s['tests'] += 1
        o = r['outcome']
        ok = o in PASSING
        s['passed'] += ok
        s['skipped'] += o in NEUTRAL
        s['failed'] += o in FAILING
        if r.get('onloop'):
            s['onloop'] += 1
            s['onloop_passed'] += ok
    return s


def fmt_side(s):
    return '%6d %5d %5d %7d %7d' % (s['passed'], s['skipped'], s['failed'],
                                    s['onloop'], s['onloop_passed'])


def report(results, modules, sides, patterns):
    side_hdr = '%6s %5s %5s %7s %7s' % ('passed', 'skip', 'fail',
                                        'on-loop', 'ol-pass')
    w = max(len(m) for m in modules + ['TOTAL'])
    line1 = '%-*s %6s' % (w, '', '')
    line2 = '%-*s %6s' % (w, 'module', 'tests')
    for side in sides:
        line1 += ' | %-*s' % (len(side_hdr), side)
        line2 += ' | ' + side_hdr
    say()
    say(line1)
    say(line2)
    say('-' * len(line2))
    tot = {side: None for side in sides}
    for m in modules:
        row = None
        ntests = 0
        parts = []
        for side in sides:
            mr = results[side].get(m)
            s = stats(mr)
            ntests = max(ntests, s['tests'])
            if mr is not None and mr['error']:
                parts.append(' | %-*s' % (len(side_hdr), 'MODULE ERROR'))
            elif mr is None:
                parts.append(' | %-*s' % (len(side_hdr), '-'))
            else:
                parts.append(' | ' + fmt_side(s))
            t = tot[side] or {k: 0 for k in s}
            for k in s:
                t[k] += s[k]
            tot[side] = t
        row = '%-*s %6d' % (w, m, ntests) + ''.join(parts)
        say(row)
    say('-' * len(line2))
    ntot = max((tot[s]['tests'] for s in sides if tot[s]), default=0)
    say('%-*s %6d' % (w, 'TOTAL', ntot)
        + ''.join(' | ' + fmt_side(tot[s]) for s in sides))
    say('(passed includes expected failures; fail = fail/error/hung/crash/'
        'not run; on-loop = tests that created a loop of the side under '
        'test; ol-pass = on-loop tests passed)')

    for side in sides:
        for m in modules:
            mr = results[side].get(m)
            if mr and mr['error']:
                say('\n[%s] %s: MODULE ERROR\n%s' % (side, m, mr['error']))
            for fx in (mr or {}).get('fixtures', ()):
                if fx['outcome'] != 'skip':
                    say('[%s] %s: fixture %s: %s' % (
                        side, m, fx['outcome'], fx['id']))

    # exclusions
    counts = {}
    for side in sides:
        for m in modules:
            mr = results[side].get(m)
            for tid, pat in (mr or {}).get('excluded', {}).items():
                counts.setdefault(pat, set()).add(tid)
    say('\nExcluded (run on neither side):')
    hidden = 0
    for pat, reason in patterns:
        mod = pat.split('.', 1)[0]
        if mod in modules:
            n = '%d tests' % len(counts.get(pat, ()))
        elif mod not in MODULES:
            n = 'module'
        else:
            hidden += 1
            continue
        say('  %-58s %-11s %s' % (pat, '(' + n + ')', reason))
    for m in modules:
        rep = set()
        for side in sides:
            rep.update((results[side].get(m) or {}).get('replaced', ()))
        if rep:
            say('  %s.{%s}\n  %-58s %-11s %s' % (
                m, ','.join(sorted(rep)), '', '(classes)', REPLACED_REASON))
    if hidden:
        say('  (%d more entries for modules not run this time)' % hidden)


def differences(results, modules, limit):
    """Tests stock asyncio passes and unixloop does not, and vice versa."""
    worse, better = [], []
    for m in modules:
        a = results['asyncio'].get(m)
        u = results['unixloop'].get(m)
        if not a or not u:
            continue
        for tid, ra in a['tests'].items():
            ru = u['tests'].get(tid)
            if ru is None:
                continue
            if ra['outcome'] in PASSING and ru['outcome'] in FAILING:
                worse.append((tid, ru['outcome']))
            elif ra['outcome'] in FAILING and ru['outcome'] in PASSING:
                better.append((tid, ra['outcome']))
    say('\nPassed by stock asyncio, not by unixloop: %d' % len(worse))
    for tid, o in worse[:limit]:
        say('  %-7s %s' % (o, tid))
    if len(worse) > limit:
        say('  ... %d more in %s' % (len(worse) - limit, LAST))
    if better:
        say('Passed by unixloop, not by stock asyncio: %d' % len(better))
        for tid, o in better[:limit]:
            say('  %-7s %s (asyncio)' % (o, tid))


def compare_known(results, modules, known):
    """-> (unexpected failures, unexpected passes, stale known entries)."""
    unexp_fail, unexp_pass, seen = [], [], set()
    for m in modules:
        mr = results['unixloop'].get(m)
        if not mr:
            continue
        if mr['error']:
            unexp_fail.append(('%s (module)' % m, 'module error'))
            continue
        seen.update(mr.get('collected', ()))
        seen.update(mr['excluded'])
        for tid, r in mr['tests'].items():
            o = r['outcome']
            if o in FAILING and tid not in known:
                unexp_fail.append((tid, o))
            elif o in PASSING and tid in known:
                unexp_pass.append((tid, known[tid]))
    stale = sorted(t for t in known
                   if t.split('.', 1)[0] in modules and t not in seen)
    return unexp_fail, unexp_pass, stale


# --------------------------------------------------------------------------
# preflight

def preflight(sides):
    import importlib.util
    spec = importlib.util.find_spec('test.test_asyncio')
    debian = '/usr/lib/python%d.%d/test/test_asyncio' % sys.version_info[:2]
    if spec is None:
        sys.exit('conformance: test.test_asyncio is not importable by %s.\n'
                 'On Debian install libpython%d.%d-testsuite (it provides %s) '
                 'and run with the interpreter it belongs to.'
                 % (sys.executable, sys.version_info[0], sys.version_info[1],
                    debian))
    where = os.path.dirname(spec.origin)
    if 'unixloop' in sides:
        code = ('import unixloop, asyncio\n'
                'loop = unixloop.new_event_loop()\n'
                'loop.close()\n'
                'unixloop.EventLoopPolicy()\n')
        p = subprocess.run([sys.executable, '-c', code],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            say('conformance: unixloop is not usable by %s:\n%s'
                % (sys.executable, p.stderr.strip()))
            say('conformance: 0 passed, 1 failed')
            sys.exit(1)
    return where


# --------------------------------------------------------------------------
# commands

def update_known():
    if not LAST.exists():
        sys.exit('conformance: no %s; run the tests first' % LAST)
    data = json.loads(LAST.read_text(encoding='utf-8'))
    u = data['results'].get('unixloop')
    if not u:
        sys.exit('conformance: last run has no unixloop side; run '
                 '--loop unixloop or --loop both first')
    a = data['results'].get('asyncio') or {}
    known = read_known()
    new = dict(known)
    added = removed = 0
    for m, mr in u.items():
        for tid, r in mr['tests'].items():
            o = r['outcome']
            if o in FAILING:
                if tid not in known:
                    ra = (a.get(m) or {}).get('tests', {}).get(tid)
                    stock_fails = ra is not None and ra['outcome'] in FAILING
                    new[tid] = STOCK_REASON if stock_fails else NEW_REASON
                    added += 1
            elif o in PASSING and tid in new:
                del new[tid]
                removed += 1
    write_known(new)
    say('conformance: %s: %d entries (%d added, %d removed; tests not in '
        'the last run kept)' % (KNOWN.name, len(new), added, removed))


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description='Run CPython test_asyncio against unixloop and asyncio.')
    ap.add_argument('--loop', choices=('unixloop', 'asyncio', 'both'),
                    default='both')
    ap.add_argument('--modules', help='comma-separated module names '
                    '(default: all %d)' % len(MODULES))
    ap.add_argument('--only', action='append', metavar='GLOB',
                    help='run only test ids matching GLOB (repeatable), '
                    'e.g. "test_events.*.test_sendfile*"')
    ap.add_argument('--check', action='store_true',
                    help='unixloop side only; compare with '
                    'known_failures.txt; exit 1 on any difference')
    ap.add_argument('--update-known', action='store_true',
                    help='rewrite known_failures.txt from results/last.json '
                    '(runs no tests)')
    ap.add_argument('--jobs', type=int, default=1,
                    help='modules run in parallel (default 1: the suites '
                    'have timing checks)')
    ap.add_argument('--timeout', type=float, default=60.0,
                    help='per-test watchdog, seconds (default 60)')
    ap.add_argument('--module-timeout', type=float, default=900.0,
                    help='per-module limit, seconds (default 900)')
    ap.add_argument('--retries', type=int, default=1,
                    help='re-run failed/errored tests this many times in a '
                    'fresh worker; a pass then counts, marked flaky '
                    '(default 1; at most %d tests per module)'
                    % MAX_RETRY_PER_MODULE)
    ap.add_argument('--max-restarts', type=int, default=20,
                    help='worker restarts per module after a hang or crash')
    ap.add_argument('--list-limit', type=int, default=60,
                    help='how many differing tests to list (default 60)')
    ap.add_argument('--json', type=Path, default=LAST,
                    help='results file (default results/last.json)')
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.update_known:
        update_known()
        return 0
    if args.check:
        sides = ['unixloop']
    elif args.loop == 'both':
        sides = list(SIDES)
    else:
        sides = [args.loop]
    if args.modules:
        modules = []
        for m in args.modules.split(','):
            m = m.strip()
            if not m:
                continue
            if not m.startswith('test_'):
                m = 'test_' + m
            modules.append(m)
    else:
        modules = list(MODULES)

    where = preflight(sides)
    opts = Options()
    opts.timeout = args.timeout
    opts.module_timeout = args.module_timeout
    opts.retries = args.retries
    opts.max_restarts = args.max_restarts
    opts.only = set(args.only) if args.only else None

    patterns = read_patterns(EXCLUSIONS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    say('conformance: %s (Python %s), tests from %s' % (
        sys.executable, sys.version.split()[0], where))
    say('conformance: sides %s; %d modules; per-test timeout %ss; '
        'logs in %s' % ('+'.join(sides), len(modules), args.timeout,
                        RESULTS / 'logs'))

    results = {side: {} for side in sides}
    tasks = [(m, side) for m in modules for side in sides]
    t0 = time.monotonic()

    def one(task):
        m, side = task
        res = run_module_with_retry(side, m, opts)
        results[side][m] = res
        s = stats(res)
        flaky = sum(1 for r in res['tests'].values() if r.get('flaky'))
        say('  %-9s %-20s %4d tests %4d passed %3d skipped %4d failed '
            '%4d on-loop %5.1fs%s%s' % (
                side, m, s['tests'], s['passed'], s['skipped'], s['failed'],
                s['onloop'], res['duration'],
                ' (%d flaky)' % flaky if flaky else '',
                ' MODULE ERROR' if res['error'] else ''))

    interrupted = False
    try:
        if args.jobs <= 1:
            for task in tasks:
                one(task)
        else:
            with concurrent.futures.ThreadPoolExecutor(args.jobs) as ex:
                for f in [ex.submit(one, t) for t in tasks]:
                    f.result()
    except KeyboardInterrupt:
        interrupted = True
        say('\nconformance: interrupted; reporting what ran')
    elapsed = time.monotonic() - t0
    modules_run = [m for m in modules
                   if any(m in results[s] for s in sides)]

    data = {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'python': sys.version, 'executable': sys.executable,
        'argv': sys.argv[1:] if argv is None else argv,
        'sides': sides, 'modules': modules_run, 'elapsed': round(elapsed, 1),
        'interrupted': interrupted,
        'exclusions': patterns,
        'results': results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix('.tmp')
    tmp.write_text(json.dumps(data, indent=1), encoding='utf-8')
    os.replace(tmp, args.json)

    if modules_run:
        report(results, modules_run, sides, patterns)
    if 'asyncio' in sides and 'unixloop' in sides:
        differences(results, modules_run, args.list_limit)
    say('\nconformance: wall time %.1fs; results in %s' % (elapsed,
                                                           args.json))

    if 'unixloop' not in sides:
        return 130 if interrupted else 0

    known = read_known()
    unexp_fail, unexp_pass, stale = compare_known(results, modules_run, known)
    tot_pass = sum(stats(results['unixloop'].get(m))['passed']
                   for m in modules_run)
    if args.check or unexp_fail or unexp_pass:
        say('\nAgainst %s (%d entries):' % (KNOWN.name, len(known)))
        say('  unexpected failures (not listed): %d' % len(unexp_fail))
        for tid, o in unexp_fail:
            say('    %-7s %s' % (o, tid))
        say('  unexpected passes (listed, now pass): %d' % len(unexp_pass))
        for tid, reason in unexp_pass:
            say('    %s  # %s' % (tid, reason))
        if stale:
            say('  listed but not collected (stale?): %d' % len(stale))
            for tid in stale:
                say('    %s' % tid)
        if unexp_fail or unexp_pass:
            say('  (after triage: %s %s --update-known)'
                % (os.path.basename(sys.executable),
                   os.path.relpath(__file__)))
    nfail = len(unexp_fail) + len(unexp_pass)
    say('conformance: %d passed, %d failed' % (tot_pass, nfail))
    if interrupted:
        return 130
    if args.check and nfail:
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
