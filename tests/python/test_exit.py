"""Interpreter exit with unixloop objects alive, under ``python -X dev``.

-X dev turns on the debug memory allocator, which fills freed memory and
checks every block it frees: a use of freed memory while the interpreter
tears unixloop._core down crashes there (it crashed once in the Handle
freelist, freed after the Handle type).  Each case runs in a fresh
interpreter and must exit with status 0 and no fatal error.
"""
import subprocess
import sys

import pytest

CASES = {
    'run': 'unixloop.run(asyncio.sleep(0))',
    'run_debug': 'unixloop.run(asyncio.sleep(0.001), debug=True)',
    'closed_loop': '''
loop = unixloop.new_event_loop()
loop.call_soon(len, '')
loop.run_until_complete(asyncio.sleep(0))
loop.close()
''',
    # A loop never closed, with callbacks and timers queued: its Handles are
    # freed by the last garbage collection, after the module's types.
    'unclosed_loop_pending': '''
import warnings
warnings.simplefilter('ignore')
loop = unixloop.new_event_loop()
for i in range(300):
    loop.call_soon(len, '')
    loop.call_later(100 + i, print)
loop.run_until_complete(asyncio.sleep(0))
for i in range(10):
    loop.call_soon(len, '')
''',
    # The same, the loop only reachable through a reference cycle.
    'loop_in_cycle': '''
import warnings
warnings.simplefilter('ignore')
class Box: pass
box = Box()
box.loop = unixloop.new_event_loop()
box.loop.box = box
box.loop.call_soon(box.loop.stop)
box.loop.run_forever()
box.loop.call_later(100, print, box)
del box
''',
    'task_pending': '''
import warnings
warnings.simplefilter('ignore')
loop = unixloop.new_event_loop()
async def forever():
    await asyncio.sleep(3600)
task = loop.create_task(forever())
loop.run_until_complete(asyncio.sleep(0.001))
''',
    'transport_and_server_open': '''
import warnings
warnings.simplefilter('ignore')
loop = unixloop.new_event_loop()
async def main():
    srv = await asyncio.start_server(lambda r, w: None, '127.0.0.1', 0)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    writer.write(b'x' * 10)
    return srv, writer
keep = loop.run_until_complete(main())
''',
    # A loop still running in a daemon thread when the interpreter exits
    # (the thread is stopped while polling without the GIL).
    'daemon_thread_running_loop': '''
import threading
started = threading.Event()
def run():
    loop = unixloop.new_event_loop()
    async def main():
        started.set()
        while True:
            await asyncio.sleep(0.001)
    loop.run_until_complete(main())
threading.Thread(target=run, daemon=True).start()
started.wait(10)
''',
    # A second instance of the extension module (importlib makes one per
    # spec): both share the process-wide freelist.
    'two_module_instances': '''
import importlib.util, unixloop._core as first
spec = importlib.util.find_spec('unixloop._core')
second = importlib.util.module_from_spec(spec)
spec.loader.exec_module(second)
class L(second.Loop):
    pass
l2 = L()
for i in range(50):
    l2.call_soon(print)
l2._close_core()
del l2, second, L, spec
loop = unixloop.new_event_loop()
loop.call_soon(len, '')
loop.run_until_complete(asyncio.sleep(0))
loop.close()
''',
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_exit_under_dev_mode(case):
    code = 'import asyncio, unixloop\n' + CASES[case]
    proc = subprocess.run([sys.executable, '-X', 'dev', '-c', code],
                          capture_output=True, text=True, errors='replace', timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'Fatal Python error' not in proc.stderr, proc.stderr
    assert 'Debug memory block' not in proc.stderr, proc.stderr


def test_run_under_dev_mode_prints_nothing():
    # asyncio.run() under -X dev closes everything: nothing to warn about.
    proc = subprocess.run(
        [sys.executable, '-X', 'dev', '-c',
         'import asyncio, unixloop; unixloop.run(asyncio.sleep(0))'],
        capture_output=True, text=True, errors='replace', timeout=60)
    assert proc.returncode == 0
    assert proc.stderr == ''


# The loop get_event_loop() makes, never closed: the old way to run asyncio.
# It is freed at exit, as the modules are torn down: asyncio's loop (in a
# reference cycle) by the garbage collector, unixloop's (in none) when the
# policy holding it is cleared, after part of asyncio's globals are gone.
LEFT_OPEN = '''
import asyncio, sys, unixloop
if sys.argv[1] == 'unixloop':
    unixloop.install()
loop = asyncio.get_event_loop()
loop.run_until_complete(asyncio.sleep(0))
'''


def run_left_open(kind, *options):
    return subprocess.run(
        [sys.executable] + list(options) + ['-c', LEFT_OPEN, kind],
        capture_output=True, text=True, errors='replace', timeout=60)


@pytest.mark.parametrize('kind', ['asyncio', 'unixloop'])
def test_loop_left_open_at_exit_prints_nothing(kind):
    proc = run_left_open(kind)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ''


def test_loop_left_open_at_exit_under_dev_mode_only_warns():
    # ResourceWarnings are shown under -X dev: the loop's own, and no error
    # from closing it.  (asyncio's loop is finalized at another point of
    # the exit, where its warning does not get printed.)
    proc = run_left_open('unixloop', '-X', 'dev')
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count('\n') == 1, proc.stderr
    assert 'ResourceWarning: unclosed event loop <Loop' in proc.stderr
