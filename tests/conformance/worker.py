"""Child process of run.py: runs one test_asyncio module on one loop.

Usage (run.py starts it; it is not meant to be run by hand, but it can be):

    python worker.py --side unixloop|asyncio --module test_events \
        --events EVENTS.jsonl [--exclusions FILE] [--skip-file FILE]
        [--only-file FILE] [--timeout SECS]

(--skip-file: JSON list of ids not to run; --only-file: JSON list of globs,
run only ids matching one.)

It writes one JSON object per line to EVENTS (flushed after each line, so
the parent can read what happened even if this process is killed or
crashes):

    {"e": "collected", "tests": [...ids to run...],
     "excluded": {"id": "pattern", ...}, "replaced": [...class names...]}
    {"e": "start", "id": ...}
    {"e": "result", "id": ..., "outcome": ..., "onloop": bool,
     "loops": n, "time": secs, "detail": "..."}   (a later one wins)
    {"e": "end", "id": ...}
    {"e": "fixture", "id": "setUpClass (...)", "outcome": ..., "detail": ...}
    {"e": "done"}

Test ids are short: "<module>.<Class>.<method>", e.g.
"test_events.UnixloopEventLoopTests.test_run_until_complete".
"""

import argparse
import faulthandler
import fnmatch
import importlib
import json
import os
import signal
import sys
import time
import traceback
import unittest

# Filled in by setup_side().
SIDE = None
LOOP_CLASS = None          # loops of this class count as "loop under test"
BASE_FACTORY = None        # returns a fresh loop under test
POLICY_CLASS = None        # counting policy class installed before each test
ORIG_NEW_EVENT_LOOP = None
LOOPS_CREATED = 0          # loops under test created so far in this process

PACKAGE = 'test.test_asyncio'


# --------------------------------------------------------------------------
# process hygiene

def reset_signals():
    """Undo what a background shell / nohup / CI may have left us with.

    A job started with '&' in a non-interactive shell inherits SIGINT and
    SIGQUIT ignored; nohup ignores SIGHUP; some CI runners block signals.
    test_runners (Ctrl-C tests) and the subprocess tests hang or fail then.
    Python itself ignores SIGPIPE and SIGXFSZ at start-up: leave those.
    """
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    except (AttributeError, OSError):
        pass
    keep = {signal.SIGKILL, signal.SIGSTOP}
    for name in ('SIGPIPE', 'SIGXFSZ'):
        if hasattr(signal, name):
            keep.add(getattr(signal, name))
    for sig in signal.valid_signals():
        if sig in keep:
            continue
        if sig == signal.SIGINT:
            signal.signal(sig, signal.default_int_handler)
            continue
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass


# --------------------------------------------------------------------------
# the loop under test and how we count it

def _count(loop):
    global LOOPS_CREATED
    if LOOP_CLASS is None or isinstance(loop, LOOP_CLASS):
        LOOPS_CREATED += 1
    return loop


def loop_factory():
    """Factory used by the generated mixin classes (counts its loops)."""
    return _count(BASE_FACTORY())


def _counting_new_event_loop():
    # Same semantics as asyncio.events.new_event_loop (ask the current
    # policy: tests that install their own policy must get its loops);
    # only loops of the class under test are counted.
    return _count(ORIG_NEW_EVENT_LOOP())


def setup_side(side):
    global SIDE, LOOP_CLASS, BASE_FACTORY, POLICY_CLASS, ORIG_NEW_EVENT_LOOP
    import asyncio
    import asyncio.events
    SIDE = side
    if side == 'unixloop':
        import unixloop
        BASE_FACTORY = unixloop.new_event_loop
        LOOP_CLASS = getattr(unixloop, 'Loop', None)
        policy_base = unixloop.EventLoopPolicy
    elif side == 'asyncio':
        BASE_FACTORY = asyncio.SelectorEventLoop
        LOOP_CLASS = asyncio.SelectorEventLoop
        policy_base = asyncio.DefaultEventLoopPolicy
    else:
        raise SystemExit('unknown side %r' % side)

    try:
        class CountingPolicy(policy_base):
            def new_event_loop(self):
                return _count(super().new_event_loop())
        POLICY_CLASS = CountingPolicy
    except TypeError:
        # Policy type cannot be subclassed: wrap each instance instead.
        def make_policy():
            p = policy_base()
            orig = p.new_event_loop
            p.new_event_loop = lambda: _count(orig())
            return p
        POLICY_CLASS = make_policy

    ORIG_NEW_EVENT_LOOP = asyncio.events.new_event_loop


def install_loop_under_test():
    """Before each test: fresh policy of the side, counting new_event_loop."""
    import asyncio
    import asyncio.events
    asyncio.set_event_loop_policy(POLICY_CLASS())
    asyncio.new_event_loop = _counting_new_event_loop
    asyncio.events.new_event_loop = _counting_new_event_loop


# --------------------------------------------------------------------------
# generated classes: the suites' mixins with our factory
#
# Each builder returns (generated classes, names of the module's own concrete
# classes they replace).  The replaced classes hard-code
# asyncio.SelectorEventLoop (or a child watcher) and are run on neither side;
# both sides run the generated classes, so both sides run the same test ids.

def _side_loop_setup(test, tu):
    """setUp of a test_utils.TestCase whose own setUp hard-codes
    asyncio.SelectorEventLoop(): the same, with the side's loop."""
    tu.TestCase.setUp(test)
    test.loop = loop_factory()
    test.set_event_loop(test.loop)


def _gen_test_events(mod, tu):
    class UnixloopEventLoopTests(mod.UnixEventLoopTestsMixin,
                                 mod.SubprocessTestsMixin,
                                 tu.TestCase):
        def create_event_loop(self):
            return loop_factory()
    # PolicyTests make their loops with asyncio.DefaultEventLoopPolicy():
    # give them the side's policy class under that name.
    class UnixloopPolicyTests(mod.PolicyTests):
        def setUp(self):
            import asyncio
            saved = asyncio.DefaultEventLoopPolicy
            asyncio.DefaultEventLoopPolicy = POLICY_CLASS
            self.addCleanup(setattr, asyncio, 'DefaultEventLoopPolicy',
                            saved)
            super().setUp()
    return [UnixloopEventLoopTests, UnixloopPolicyTests], [
        'KqueueEventLoopTests', 'EPollEventLoopTests',
        'PollEventLoopTests', 'SelectEventLoopTests', 'PolicyTests']


def _gen_test_sock_lowlevel(mod, tu):
    class UnixloopSockTests(mod.BaseSockTestsMixin, tu.TestCase):
        def create_event_loop(self):
            return loop_factory()
    return [UnixloopSockTests], [
        'KqueueEventLoopTests', 'EPollEventLoopTests',
        'PollEventLoopTests', 'SelectEventLoopTests']


def _gen_test_sendfile(mod, tu):
    class UnixloopSendfileTests(mod.SendfileTestsBase, tu.TestCase):
        def create_event_loop(self):
            return loop_factory()
    return [UnixloopSendfileTests], [
        'KqueueEventLoopTests', 'EPollEventLoopTests',
        'PollEventLoopTests', 'SelectEventLoopTests']


def _gen_test_subprocess(mod, tu):
    # Like SubprocessWatcherMixin, without attaching one of asyncio's child
    # watchers: the loop's policy (installed before each test) decides.
    class UnixloopSubprocessTests(mod.SubprocessMixin, tu.TestCase):
        def setUp(self):
            super().setUp()
            self.loop = loop_factory()
            self.set_event_loop(self.loop)
    generated = [UnixloopSubprocessTests]
    # And with each of asyncio's child watchers set on the policy, as the
    # module's own classes do (the module's skips are inherited).
    replaced = ['SubprocessThreadedWatcherTests',
                'SubprocessMultiLoopWatcherTests',
                'SubprocessSafeWatcherTests', 'SubprocessFastWatcherTests',
                'SubprocessPidfdWatcherTests']
    for name in replaced:
        base = getattr(mod, name, None)
        if base is None:
            continue

        def setUp(self):
            import asyncio
            tu.TestCase.setUp(self)
            self.loop = loop_factory()
            self.set_event_loop(self.loop)
            watcher = self.Watcher()
            watcher.attach_loop(self.loop)
            asyncio.get_event_loop_policy().set_child_watcher(watcher)
        generated.append(type('Unixloop' + name, (base,), {'setUp': setUp}))
    return generated, replaced + ['SubprocessProactorTests']


def _gen_test_server(mod, tu):
    # SelectorStartServerTests adds test_start_unix_server_1 to the mixin,
    # which is loop-generic: derive from it so that test runs too.
    class UnixloopStartServerTests(mod.SelectorStartServerTests):
        def new_loop(self):
            return loop_factory()
    return [UnixloopStartServerTests], [
        'SelectorStartServerTests', 'ProactorStartServerTests']


def _gen_test_sslproto(mod, tu):
    base = (mod.BaseStartTLS, unittest.TestCase)
    if getattr(mod, 'ssl', True) is None:
        base = (unittest.skip('No ssl module')(mod.BaseStartTLS),
                unittest.TestCase)

    class UnixloopStartTLSTests(*base):
        def new_loop(self):
            return loop_factory()
    return [UnixloopStartTLSTests], [
        'SelectorStartTLSTests', 'ProactorStartTLSTests']


def _gen_test_buffered_proto(mod, tu):
    class UnixloopBufferedProtocolTests(mod.BaseTestBufferedProtocol,
                                        unittest.TestCase):
        def new_loop(self):
            return loop_factory()
    return [UnixloopBufferedProtocolTests], [
        'BufferedProtocolSelectorTests', 'BufferedProtocolProactorTests']


def _gen_test_unix_events(mod, tu):
    class UnixloopUnixSocketTests(mod.SelectorEventLoopUnixSocketTests):
        def setUp(self):
            _side_loop_setup(self, tu)

    class UnixloopFunctionalTests(mod.TestFunctional):
        def setUp(self):
            import asyncio
            self.loop = loop_factory()
            asyncio.set_event_loop(self.loop)

    # add_signal_handler & co. with the signal module mocked: unixloop's go
    # through asyncio's code, so they run too.
    class UnixloopSignalTests(mod.SelectorEventLoopSignalTests):
        def setUp(self):
            _side_loop_setup(self, tu)

    # The policy's child-watcher bookkeeping, with the side's policy.
    class UnixloopPolicyTests(mod.PolicyTests):
        def create_policy(self):
            return POLICY_CLASS()
    return [UnixloopUnixSocketTests, UnixloopFunctionalTests,
            UnixloopSignalTests, UnixloopPolicyTests], [
        'SelectorEventLoopUnixSocketTests', 'TestFunctional',
        'SelectorEventLoopSignalTests', 'PolicyTests']


def _gen_test_base_events(mod, tu):
    # Public loop API (create_connection, create_server,
    # create_datagram_endpoint, ... and their errors) on a real loop, with
    # sockets or getaddrinfo mocked.
    class UnixloopBaseEventLoopWithSelectorTests(
            mod.BaseEventLoopWithSelectorTests):
        def setUp(self):
            _side_loop_setup(self, tu)

    # sock_sendfile's argument checks and its result, on the side's loop
    # (the module's class runs asyncio's BaseSelectorEventLoop, which has
    # no native sendfile; the two tests of that lack are excluded).
    class UnixloopSockSendfileTests(mod.BaseLoopSockSendfileTests):
        def setUp(self):
            self.loop = loop_factory()
            self.set_event_loop(self.loop)
            self.file = open(mod.os_helper.TESTFN, 'rb')
            self.addCleanup(self.file.close)
            tu.TestCase.setUp(self)
    return [UnixloopBaseEventLoopWithSelectorTests,
            UnixloopSockSendfileTests], [
        'BaseEventLoopWithSelectorTests', 'BaseLoopSockSendfileTests']


GENERATORS = {
    'test_base_events': _gen_test_base_events,
    'test_events': _gen_test_events,
    'test_sock_lowlevel': _gen_test_sock_lowlevel,
    'test_sendfile': _gen_test_sendfile,
    'test_subprocess': _gen_test_subprocess,
    'test_server': _gen_test_server,
    'test_sslproto': _gen_test_sslproto,
    'test_buffered_proto': _gen_test_buffered_proto,
    'test_unix_events': _gen_test_unix_events,
}


def add_generated(mod, modname):
    gen = GENERATORS.get(modname)
    if gen is None:
        return set()
    from test.test_asyncio import utils as tu
    classes, replaced = gen(mod, tu)
    for cls in classes:
        cls.__module__ = mod.__name__
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    return set(replaced)


# --------------------------------------------------------------------------
# collecting

def short_id(test):
    tid = test.id()
    prefix = PACKAGE + '.'
    if tid.startswith(prefix):
        tid = tid[len(prefix):]
    return tid


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def read_patterns(path):
    """Lines 'pattern  # reason'; returns [(pattern, reason)]."""
    pats = []
    if not path or not os.path.exists(path):
        return pats
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            pat, _, reason = line.partition('#')
            pat = pat.strip()
            if pat:
                pats.append((pat, reason.strip()))
    return pats


def match_pattern(tid, patterns):
    for pat, _ in patterns:
        if fnmatch.fnmatchcase(tid, pat):
            return pat
    return None


# --------------------------------------------------------------------------
# running

class Emitter:
    def __init__(self, path):
        self.f = open(path, 'a', encoding='utf-8')

    def __call__(self, **obj):
        self.f.write(json.dumps(obj) + '\n')
        self.f.flush()


FAIL_ORDER = {'pass': 0, 'xfail': 0, 'skip': 1, 'upass': 2,
              'fail': 3, 'error': 4}


class Recorder(unittest.TestResult):
    def __init__(self, emit, timeout, selected_by_class):
        super().__init__()
        self.emit = emit
        self.timeout = timeout
        self.selected_by_class = selected_by_class
        self.cur = None

    def _arm(self):
        if self.timeout:
            faulthandler.dump_traceback_later(self.timeout, exit=True,
                                              file=sys.__stderr__)

    def _set(self, outcome, detail=None):
        c = self.cur
        if c is None or c['stopped']:
            return
        if FAIL_ORDER[outcome] >= FAIL_ORDER[c['outcome']]:
            c['outcome'] = outcome
            if detail:
                c['detail'] = detail

    def _fmt(self, err, test):
        try:
            s = self._exc_info_to_string(err, test)
        except Exception:
            s = repr(err[1])
        if len(s) > 6000:
            s = s[:2000] + '\n[...]\n' + s[-4000:]
        return s

    # begin()/end() bracket everything a test does, including what
    # IsolatedAsyncioTestCase does outside startTest()/stopTest() (creating
    # and closing its Runner); the parent attributes a hang or crash inside
    # the bracket to the test.
    def begin(self, test):
        install_loop_under_test()
        tid = short_id(test)
        self.cur = {'id': tid, 'outcome': 'pass', 'detail': None,
                    't0': time.monotonic(), 'n0': LOOPS_CREATED,
                    'stopped': False}
        self.emit(e='start', id=tid)
        sys.stderr.write('\n=== %s\n' % tid)
        sys.stderr.flush()
        self._arm()

    def end(self, test, exc_info=None):
        c = self.cur
        self.cur = None
        if c is not None and (exc_info is not None or not c['stopped']):
            # Something escaped test.run() (e.g. from the asyncio Runner's
            # clean-up in IsolatedAsyncioTestCase): the test errored.
            if exc_info is not None:
                detail = ('exception escaped the test run:\n'
                          + self._fmt(exc_info, test))
            else:
                detail = 'test did not report a result'
            n = LOOPS_CREATED - c['n0']
            self.emit(e='result', id=c['id'], outcome='error',
                      onloop=n > 0, loops=n,
                      time=round(time.monotonic() - c['t0'], 3),
                      detail=detail)
        if c is not None:
            self.emit(e='end', id=c['id'])
        # keep watching between tests (class/module fixtures)
        self._arm()

    def startTest(self, test):
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        c = self.cur
        if c is not None and not c['stopped']:
            c['stopped'] = True
            n = LOOPS_CREATED - c['n0']
            self.emit(e='result', id=c['id'], outcome=c['outcome'],
                      onloop=n > 0, loops=n,
                      time=round(time.monotonic() - c['t0'], 3),
                      detail=c['detail'])

    def _is_fixture(self, test):
        return isinstance(test, unittest.suite._ErrorHolder)

    def _fixture(self, test, outcome, detail):
        desc = test.description
        self.emit(e='fixture', id=desc, outcome=outcome, detail=detail)
        # "setUpClass (test.test_asyncio.test_x.Cls)" or
        # "setUpModule (test.test_asyncio.test_x)": the tests under it never
        # start; give them the fixture's outcome.
        kind, _, target = desc.partition(' ')
        target = target.strip('()')
        if kind not in ('setUpClass', 'setUpModule'):
            return
        prefix = PACKAGE + '.'
        if target.startswith(prefix):
            target = target[len(prefix):]
        for cls_id, tids in self.selected_by_class.items():
            if cls_id == target or cls_id.startswith(target + '.'):
                for tid in tids:
                    self.emit(e='result', id=tid, outcome=outcome,
                              onloop=False, loops=0, time=0.0,
                              detail='%s failed:\n%s' % (kind, detail)
                              if outcome == 'error' else detail)

    def addSuccess(self, test):
        super().addSuccess(test)

    def addError(self, test, err):
        super().addError(test, err)
        if self._is_fixture(test):
            self._fixture(test, 'error', self._fmt(err, test))
        else:
            self._set('error', self._fmt(err, test))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set('fail', self._fmt(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if self._is_fixture(test):
            self._fixture(test, 'skip', str(reason))
        else:
            self._set('skip', str(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set('xfail')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set('upass', 'unexpected success')

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            if issubclass(err[0], test.failureException):
                self._set('fail', '%s\n%s' % (subtest, self._fmt(err, test)))
            else:
                self._set('error', '%s\n%s' % (subtest, self._fmt(err, test)))


class SafeSuite(unittest.TestSuite):
    """TestSuite.run (3.11) with each test bracketed by result.begin/end and
    exceptions escaping a test's run() recorded instead of ending the run."""

    def run(self, result, debug=False):
        topLevel = False
        if getattr(result, '_testRunEntered', False) is False:
            result._testRunEntered = topLevel = True

        for index, test in enumerate(self):
            if result.shouldStop:
                break
            if unittest.suite._isnotsuite(test):
                self._tearDownPreviousClass(test, result)
                self._handleModuleFixture(test, result)
                self._handleClassSetUp(test, result)
                result._previousTestClass = test.__class__
                if (getattr(test.__class__, '_classSetupFailed', False) or
                        getattr(result, '_moduleSetUpFailed', False)):
                    continue
            result.begin(test)
            try:
                test(result)
            except (Exception, KeyboardInterrupt):
                result.end(test, sys.exc_info())
            else:
                result.end(test)
            if self._cleanup:
                self._removeTestAtIndex(index)

        if topLevel:
            self._tearDownPreviousClass(None, result)
            self._handleModuleTearDown(result)
            result._testRunEntered = False
        return result


def read_id_file(path):
    if not path:
        return None
    with open(path, encoding='utf-8') as f:
        return set(json.load(f))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--side', required=True)
    ap.add_argument('--module', required=True)
    ap.add_argument('--events', required=True)
    ap.add_argument('--exclusions')
    ap.add_argument('--skip-file')
    ap.add_argument('--only-file')
    ap.add_argument('--timeout', type=float, default=60.0)
    args = ap.parse_args()

    reset_signals()
    emit = Emitter(args.events)
    # Watch import and collection too.
    if args.timeout:
        faulthandler.dump_traceback_later(max(args.timeout, 60), exit=True,
                                          file=sys.__stderr__)

    try:
        setup_side(args.side)
        install_loop_under_test()
        mod = importlib.import_module(PACKAGE + '.' + args.module)
        replaced = add_generated(mod, args.module)
        suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
    except BaseException:
        emit(e='fatal', detail=traceback.format_exc())
        raise

    patterns = read_patterns(args.exclusions)
    skip = read_id_file(args.skip_file) or set()
    only = read_id_file(args.only_file)

    selected, ids, excluded = [], [], {}
    by_class = {}
    seen = set()
    for t in iter_tests(suite):
        if type(t).__name__ in replaced and type(t).__module__ == mod.__name__:
            continue
        tid = short_id(t)   # a _FailedTest (import error) is kept as a test
        if tid in seen:
            continue
        seen.add(tid)
        pat = match_pattern(tid, patterns)
        if pat is not None:
            excluded[tid] = pat
            continue
        ids.append(tid)
        if tid in skip or (only is not None and not any(
                fnmatch.fnmatchcase(tid, p) for p in only)):
            continue
        selected.append(t)
        by_class.setdefault(tid.rpartition('.')[0], []).append(tid)

    emit(e='collected', tests=ids, excluded=excluded,
         replaced=sorted(replaced))

    result = Recorder(emit, args.timeout, by_class)
    SafeSuite(selected).run(result)
    faulthandler.cancel_dump_traceback_later()
    emit(e='done')
    emit.f.close()
    # Do not wait for leaked non-daemon threads of a misbehaving test.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == '__main__':
    main()
