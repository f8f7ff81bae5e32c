"""python -m unixloop: an asyncio program run on unixloop unchanged, as a
script or as a module, each in a fresh interpreter."""
import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

# What the program under test reports: the loop asyncio.run() ran it on,
# its argv, its __name__, and that its own directory is importable.
REPORT = textwrap.dedent('''
    import asyncio, sys
    import sibling
    async def main():
        return type(asyncio.get_running_loop()).__module__
    print(asyncio.run(main()), sys.argv[1:], __name__, sibling.NAME)
''')


def unixloop_main(*args, cwd=None, **kwargs):
    return subprocess.run(
        [sys.executable, '-m', 'unixloop'] + list(args), cwd=cwd,
        capture_output=True, text=True, timeout=60, **kwargs)


@pytest.fixture
def program(tmp_path):
    """A directory holding prog.py and the sibling module it imports."""
    (tmp_path / 'prog.py').write_text(REPORT)
    (tmp_path / 'sibling.py').write_text('NAME = "sibling"\n')
    return tmp_path


def test_script(program):
    # Run from elsewhere: the script's own directory goes first on sys.path.
    proc = unixloop_main(str(program / 'prog.py'), 'a', '--b',
                         cwd=os.path.dirname(str(program)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "unixloop ['a', '--b'] __main__ sibling\n"


def test_module(program):
    proc = unixloop_main('-m', 'prog', 'x', cwd=str(program))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "unixloop ['x'] __main__ sibling\n"


def test_exit_status_and_errors_are_the_programs(tmp_path):
    (tmp_path / 'exits.py').write_text('import sys; sys.exit(3)\n')
    (tmp_path / 'raises.py').write_text('raise KeyError("boom")\n')
    assert unixloop_main(str(tmp_path / 'exits.py')).returncode == 3
    proc = unixloop_main(str(tmp_path / 'raises.py'))
    assert proc.returncode == 1
    assert proc.stderr.rstrip().endswith("KeyError: 'boom'")


@pytest.mark.parametrize('args, status, message', [
    ((), 2, 'usage:'),
    (('-m',), 2, 'usage:'),
    (('--bogus',), 2, "unknown option '--bogus'"),
    (('no-such-script.py',), 2, "can't open file 'no-such-script.py'"),
    (('-m', 'no_such_module'), 1, 'No module named no_such_module'),
    (('-m', 'no_such_package.sub'), 1,
     'No module named no_such_package.sub'),
])
def test_bad_command_lines(tmp_path, args, status, message):
    proc = unixloop_main(*args, cwd=str(tmp_path))
    assert proc.returncode == status
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_help():
    proc = unixloop_main('--help')
    assert proc.returncode == 0
    assert 'python -m unixloop -m MODULE' in proc.stdout


def test_uvicorn_command_line(tmp_path):
    # uvicorn's own command line, its server on unixloop; SIGINT stops it.
    pytest.importorskip('uvicorn', reason='python3-uvicorn is not '
                        'installed (make deps installs it)')
    (tmp_path / 'app.py').write_text(textwrap.dedent('''
        import asyncio
        async def app(scope, receive, send):
            assert scope['type'] == 'http'
            body = type(asyncio.get_running_loop()).__module__.encode()
            await send({'type': 'http.response.start', 'status': 200,
                        'headers': [(b'content-length', b'%d' % len(body))]})
            await send({'type': 'http.response.body', 'body': body})
    '''))
    sock_path = str(tmp_path / 'uvicorn.sock')
    # --loop asyncio: uvicorn keeps the installed policy (auto would pick
    # uvloop); a UNIX socket: no port to find.
    proc = subprocess.Popen(
        [sys.executable, '-m', 'unixloop', '-m', 'uvicorn', '--loop',
         'asyncio', '--uds', sock_path, '--no-access-log', 'app:app'],
        cwd=str(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # uvicorn logs to stderr
            if 'Uvicorn running on' in line:
                break
        else:
            pytest.fail('uvicorn exited with {}'.format(proc.wait()))
        conn = http.client.HTTPConnection('localhost')
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(sock_path)
        conn.request('GET', '/')
        got = conn.getresponse().read().decode()
        conn.close()
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert got == 'unixloop'
    assert 'Finished server process' in rest
