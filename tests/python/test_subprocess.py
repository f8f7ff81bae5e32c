"""Subprocesses: asyncio's API on unixloop (a child started by
ul_process_spawn and watched by the loop's pidfd), compared with stock
asyncio where both must agree, and the cases where unixloop hands over to
asyncio's own path (a child watcher set by the user, Popen-only
arguments)."""
import asyncio
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

import unixloop
from unixloop import _process


@pytest.fixture(autouse=True)
def no_policy_watcher():
    """Each test starts and ends without a child watcher on the policy (a
    stock asyncio loop makes one, and unixloop then defers to it)."""
    policy = asyncio.get_event_loop_policy()
    policy.set_child_watcher(None)
    yield
    policy.set_child_watcher(None)


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, 30))


def transport_of(proc):
    return proc._transport


# ---- behaviour both loops share ---------------------------------------------

def test_exit_status_and_output(aloop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', 'printf out; printf err >&2; exit 3',
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await p.communicate()
        return out, err, p.returncode
    assert run(aloop, main()) == (b'out', b'err', 3)


def test_communicate_large_input(aloop):
    data = os.urandom(1 << 20)

    async def main():
        p = await asyncio.create_subprocess_exec(
            'cat', stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await p.communicate(data)
        return out, p.returncode
    assert run(aloop, main()) == (data, 0)


def test_shell(aloop):
    async def main():
        p = await asyncio.create_subprocess_shell(
            'echo "$0" && exit 7', stdout=subprocess.PIPE)
        out, _ = await p.communicate()
        return out, p.returncode
    assert run(aloop, main()) == (b'/bin/sh\n', 7)


def test_killed_by_signal(aloop):
    async def main():
        p = await asyncio.create_subprocess_exec('sleep', '30')
        p.terminate()
        rc1 = await p.wait()
        q = await asyncio.create_subprocess_exec('sleep', '30')
        q.send_signal(signal.SIGKILL)
        return rc1, await q.wait()
    assert run(aloop, main()) == (-signal.SIGTERM, -signal.SIGKILL)


def test_signal_after_exit(aloop):
    async def main():
        p = await asyncio.create_subprocess_exec('true')
        await p.wait()
        # Once the transport has closed, asyncio raises ProcessLookupError
        # (before that, Popen ignores a signal to a child that exited).
        await p._transport._wait()
        for send in (p.kill, p.terminate, lambda: p.send_signal(0)):
            try:
                send()
            except ProcessLookupError:
                pass
        return p.returncode
    assert run(aloop, main()) == 0


def test_program_not_found(aloop):
    async def main():
        await asyncio.create_subprocess_exec('/nonexistent/program', 'x')
    with pytest.raises(FileNotFoundError) as info:
        run(aloop, main())
    assert info.value.errno == 2
    assert info.value.filename == '/nonexistent/program'


def test_program_not_found_in_path(aloop):
    async def main():
        await asyncio.create_subprocess_exec('no-such-program-unixloop')
    with pytest.raises(FileNotFoundError) as info:
        run(aloop, main())
    assert info.value.filename == 'no-such-program-unixloop'


def test_program_not_executable(aloop, tmp_path):
    path = tmp_path / 'script'
    path.write_text('#!/bin/sh\n')
    path.chmod(0o644)

    async def main():
        await asyncio.create_subprocess_exec(str(path))
    with pytest.raises(PermissionError) as info:
        run(aloop, main())
    assert info.value.filename == str(path)


def test_missing_cwd(aloop):
    async def main():
        await asyncio.create_subprocess_exec('true', cwd='/nonexistent/dir')
    with pytest.raises(FileNotFoundError) as info:
        run(aloop, main())
    assert info.value.filename == '/nonexistent/dir'


def test_bad_arguments(aloop):
    async def main(**kw):
        await asyncio.create_subprocess_exec('true', **kw)
    with pytest.raises(ValueError):
        run(aloop, main(env={'A=B': 'x'}))
    with pytest.raises(ValueError):
        run(aloop, asyncio.create_subprocess_exec('tr\0ue'))
    with pytest.raises(ValueError):
        run(aloop, asyncio.create_subprocess_shell('x', text=True))


def test_env_cwd_umask(aloop, tmp_path):
    async def main():
        p = await asyncio.create_subprocess_exec(
            '/bin/sh', '-c', 'printf "$FOO:"; pwd; umask',
            env={'FOO': 'bar'}, cwd=tmp_path, umask=0o027,
            stdout=subprocess.PIPE)
        out, _ = await p.communicate()
        return out
    assert run(aloop, main()) == f'bar:{tmp_path}\n0027\n'.encode()


def test_stderr_to_stdout_and_devnull(aloop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', 'printf a; printf b >&2; cat',
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        out, _ = await p.communicate()
        return out
    assert run(aloop, main()) == b'ab'


def test_stdout_to_a_given_fd(aloop):
    r, w = os.pipe()

    async def main():
        p = await asyncio.create_subprocess_exec('printf', 'given', stdout=w)
        return await p.wait()
    try:
        assert run(aloop, main()) == 0
        os.close(w)
        w = -1
        assert os.read(r, 100) == b'given'
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_pass_fds_and_close_fds(aloop):
    keep_r, keep_w = os.pipe()
    drop_r, drop_w = os.pipe()
    os.set_inheritable(drop_r, True)
    script = (f'[ -e /dev/fd/{keep_r} ] && printf k; '
              f'[ -e /dev/fd/{drop_r} ] && printf d; true')

    async def main(**kw):
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', script, stdout=subprocess.PIPE, **kw)
        out, _ = await p.communicate()
        return out
    try:
        assert run(aloop, main(pass_fds=(keep_r,))) == b'k'
        assert run(aloop, main(close_fds=False)) == b'd'
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)
            assert run(aloop, main(close_fds=False, pass_fds=(keep_r,))) == b'k'
    finally:
        for fd in (keep_r, keep_w, drop_r, drop_w):
            os.close(fd)


def test_new_session(aloop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            'sleep', '30', start_new_session=True)
        sid = os.getsid(p.pid)
        p.kill()
        await p.wait()
        return sid == p.pid
    assert run(aloop, main())


def test_restore_signals(aloop):
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    script = ('m=$(grep SigIgn /proc/$$/status); m=${m#*:}; '
              '[ $(( 0x$(echo $m) & 0x1000 )) -ne 0 ] && printf ignored; true')

    async def main(**kw):
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', script, stdout=subprocess.PIPE, **kw)
        out, _ = await p.communicate()
        return out
    try:
        assert run(aloop, main()) == b''
        assert run(aloop, main(restore_signals=False)) == b'ignored'
    finally:
        signal.signal(signal.SIGPIPE, old)


class Recorder(asyncio.SubprocessProtocol):
    def __init__(self, loop):
        self.events = []
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.events.append('made')

    def pipe_data_received(self, fd, data):
        if ('data', fd) not in self.events:
            self.events.append(('data', fd))

    def pipe_connection_lost(self, fd, exc):
        self.events.append(('pipe_lost', fd))

    def process_exited(self):
        self.events.append('exited')

    def connection_lost(self, exc):
        self.events.append('lost')
        self.done.set_result(None)


def test_protocol_calls(aloop):
    async def main():
        proto = Recorder(aloop)
        transport, _ = await aloop.subprocess_exec(
            lambda: proto, 'sh', '-c', 'printf x; printf y >&2',
            stdin=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await proto.done
        assert isinstance(transport, asyncio.SubprocessTransport)
        assert transport.get_returncode() == 0
        assert transport.get_pipe_transport(0) is None
        transport.close()
        return proto.events
    events = run(aloop, main())
    assert events[0] == 'made'
    assert events[-1] == 'lost'
    assert sorted(map(str, events[1:-1])) == sorted(map(str, [
        ('data', 1), ('data', 2), ('pipe_lost', 1), ('pipe_lost', 2),
        'exited']))


def test_close_kills_running_child(aloop):
    async def main():
        proto = Recorder(aloop)
        transport, _ = await aloop.subprocess_exec(
            lambda: proto, 'sleep', '30', stdin=None, stdout=None,
            stderr=None)
        transport.close()
        await proto.done
        return transport.get_returncode()
    assert run(aloop, main()) == -signal.SIGKILL


def test_many_concurrent(aloop):
    async def one(i):
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', f'exit {i % 256}')
        return await p.wait()

    async def main():
        return await asyncio.gather(*(one(i) for i in range(200)))
    assert run(aloop, main()) == [i % 256 for i in range(200)]


# ---- unixloop: which path runs -------------------------------------------------

def test_core_path_by_default(loop):
    async def main():
        p = await asyncio.create_subprocess_exec('true')
        await p.wait()
        return p
    p = run(loop, main())
    t = transport_of(p)
    assert type(t) is _process.SubprocessTransport
    proc = t.get_extra_info('subprocess')
    assert proc.pid == p.pid and proc.poll() == 0
    assert repr(proc).startswith('<_ChildProcess: returncode: 0 args:')


def test_user_watcher_is_respected(loop):
    policy = asyncio.get_event_loop_policy()
    watcher = asyncio.SafeChildWatcher()
    watcher.attach_loop(loop)
    policy.set_child_watcher(watcher)

    async def main():
        p = await asyncio.create_subprocess_exec('sh', '-c', 'exit 4')
        return p, await p.wait()
    p, rc = run(loop, main())
    assert rc == 4
    assert type(transport_of(p)) is not _process.SubprocessTransport
    watcher.attach_loop(None)


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to change ids')
def test_user_group_extra_groups(aloop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', 'id -u; id -g; id -G', user=65534, group='nogroup',
            extra_groups=[65533], stdout=subprocess.PIPE)
        out, _ = await p.communicate()
        return out
    import grp
    gid = grp.getgrnam('nogroup').gr_gid
    # id -G: the primary group first, then the others.
    assert run(aloop, main()) == f'65534\n{gid}\n{gid} 65533\n'.encode()


def test_bad_user_group(aloop):
    with pytest.raises(ValueError):
        run(aloop, asyncio.create_subprocess_exec('true', user=-5))
    with pytest.raises(KeyError):
        run(aloop, asyncio.create_subprocess_exec(
            'true', group='no-such-group-unixloop'))
    with pytest.raises(TypeError):
        run(aloop, asyncio.create_subprocess_exec(
            'true', extra_groups=[1.5]))


def test_popen_only_arguments_use_asyncio_path(loop):
    marks = []

    async def main():
        p = await asyncio.create_subprocess_exec(
            'sh', '-c', 'exit 2', preexec_fn=lambda: None)
        marks.append(type(transport_of(p)))
        return await p.wait()
    assert run(loop, main()) == 2
    assert marks[0] is not _process.SubprocessTransport


def test_patched_popen_is_called(loop, monkeypatch):
    def boom(*args, **kwargs):
        raise ZeroDivisionError
    monkeypatch.setattr(subprocess, 'Popen', boom)
    with pytest.raises(ZeroDivisionError):
        run(loop, asyncio.create_subprocess_exec('true'))


def test_wait_on_the_popen_stand_in(loop):
    """transport.close() must not kill a child that exited but whose exit
    the loop has not seen yet (Popen.wait / poll as in asyncio's test)."""
    async def main():
        transport, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, 'sleep', '30')
        proc = transport.get_extra_info('subprocess')
        proc.kill()
        rc = proc.wait()
        assert proc.poll() == rc == -signal.SIGKILL
        transport.close()
        await transport._wait()
        return transport.get_returncode()
    assert run(loop, main()) == -signal.SIGKILL


def test_loop_close_leaves_no_zombie():
    loop = unixloop.new_event_loop()

    async def main():
        p = await asyncio.create_subprocess_exec('sleep', '30')
        return p.pid, transport_of(p)
    pid, transport = loop.run_until_complete(main())
    transport.close()  # kills it; the loop is closed before it is seen
    loop.close()
    deadline = time.monotonic() + 10
    while True:  # the reaper takes it once it is dead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, 'child not reaped'
        time.sleep(0.01)


def test_isinstance_and_get_pid(loop):
    async def main():
        transport, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, 'true')
        assert isinstance(transport, asyncio.SubprocessTransport)
        pid = transport.get_pid()
        proto = transport.get_protocol()
        assert isinstance(proto, asyncio.SubprocessProtocol)
        assert await transport._wait() == 0
        transport.close()
        return pid
    assert run(loop, main()) > 0


def test_kill_after_loop_close():
    """A transport closed after its loop (asyncio.run() leaving a child
    behind, then the garbage collector) still kills the child, as Popen
    would, and the child is reaped."""
    loop = unixloop.new_event_loop()

    async def main():
        p = await asyncio.create_subprocess_exec('sleep', '30')
        return p.pid, transport_of(p)
    pid, transport = loop.run_until_complete(main())
    loop.close()
    os.kill(pid, 0)  # still running
    transport.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, 'child not killed and reaped'
        time.sleep(0.01)
