"""Subprocesses started and watched by libunixloop.

asyncio's Unix loop starts a child with subprocess.Popen and learns of its
exit from the policy's child watcher (a thread per child by default in
3.11).  unixloop starts it with ul_process_spawn (clone(CLONE_VM |
CLONE_VFORK): no copy of the parent, whatever its heap) and watches it with
the loop's own watcher (a pidfd on the loop's poller).  The transport is
asyncio's own BaseSubprocessTransport, so asyncio.subprocess.Process, the
protocol calls and their order are asyncio's; only what Popen did is
replaced, by _ChildProcess.

Used when the user did not pick a child watcher (the policy's is unset) and
every argument is one this path handles; otherwise asyncio's path runs.
"""
import os
import subprocess
import warnings

from asyncio import base_subprocess

from . import _core

# Popen arguments this path handles, with the values that mean "not used".
_SUPPORTED = {
    'executable': None, 'close_fds': True, 'pass_fds': (), 'cwd': None,
    'env': None, 'start_new_session': False, 'restore_signals': True,
    'process_group': None, 'umask': -1, 'preexec_fn': None, 'user': None,
    'group': None, 'extra_groups': None, 'startupinfo': None,
    'creationflags': 0,
}
# Of those, the ones that must keep their "not used" value here.
_UNSUPPORTED_UNLESS_DEFAULT = ('preexec_fn', 'startupinfo', 'creationflags')


_Popen = subprocess.Popen


def can_spawn(stdin, stdout, stderr, kwargs):
    """True when this path handles these Popen arguments (and
    subprocess.Popen is still Popen: code that replaced it, a mock or an
    instrumentation, wants it called)."""
    if subprocess.Popen is not _Popen:
        return False
    for key, value in kwargs.items():
        if key not in _SUPPORTED:
            return False
        if key in _UNSUPPORTED_UNLESS_DEFAULT and value != _SUPPORTED[key]:
            return False
    return True


def _fsencode_checked(value):
    b = os.fsencode(value)
    if b'\0' in b:
        raise ValueError("embedded null byte")
    return b


def _stdio(value, which):
    """(mode, fd) for one of Popen's stdin / stdout / stderr values."""
    if value is None:
        return _core.STDIO_INHERIT, -1
    if value == subprocess.PIPE:
        return _core.STDIO_PIPE, -1
    if value == subprocess.DEVNULL:
        return _core.STDIO_DEVNULL, -1
    if value == subprocess.STDOUT:
        if which != 2:
            raise ValueError("STDOUT can only be used for stderr")
        return _core.STDIO_STDOUT, -1
    if isinstance(value, int):
        return _core.STDIO_FD, value
    return _core.STDIO_FD, value.fileno()


class _ChildProcess:
    """What BaseSubprocessTransport uses of subprocess.Popen (pid,
    returncode, poll, send_signal, terminate, kill, stdin / stdout / stderr),
    over a child that the loop watches: poll() never reaps it."""

    def __init__(self, args, child, stdin, stdout, stderr):
        self.args = args
        self._child = child
        self.pid = child.pid
        self.returncode = None
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self):
        return (f"<{self.__class__.__name__}: "
                f"returncode: {self.returncode} args: {self.args!r}>")

    def poll(self):
        if self.returncode is None:
            # The loop may have reaped it before the transport was told.
            self.returncode = self._child.returncode
        return self.returncode

    def wait(self, timeout=None):
        """Block until the child has exited (without reaping it: the loop
        does), as Popen.wait."""
        if self.poll() is not None:
            return self.returncode
        if timeout is not None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        if info.si_code == os.CLD_EXITED:
            self.returncode = info.si_status
        else:
            self.returncode = -info.si_status
        return self.returncode

    def send_signal(self, sig):
        if self.returncode is not None:
            return
        try:
            self._child.send_signal(sig)
        except ProcessLookupError:
            pass  # exited meanwhile, as Popen.send_signal (bpo-40550)

    def terminate(self):
        self.send_signal(15)

    def kill(self):
        self.send_signal(9)


def _ids(user, group, extra_groups):
    """Popen's checks and name look-ups of user, group and extra_groups:
    (uid, gid, gids) with -1 / None for "not given"."""
    gids = None
    if extra_groups is not None:
        import grp
        gids = []
        for g in extra_groups:
            if isinstance(g, str):
                gids.append(grp.getgrnam(g).gr_gid)
            elif isinstance(g, int):
                gids.append(g)
            else:
                raise TypeError("Items in extra_groups must be a string "
                                "or integer, got {}".format(type(g)))
        for g in gids:
            if g < 0:
                raise ValueError(f"Group ID cannot be negative, got {g}")
    gid = -1
    if group is not None:
        if isinstance(group, str):
            import grp
            gid = grp.getgrnam(group).gr_gid
        elif isinstance(group, int):
            gid = group
        else:
            raise TypeError("Group must be a string or an integer, not {}"
                            .format(type(group)))
        if gid < 0:
            raise ValueError(f"Group ID cannot be negative, got {gid}")
    uid = -1
    if user is not None:
        if isinstance(user, str):
            import pwd
            uid = pwd.getpwnam(user).pw_uid
        elif isinstance(user, int):
            uid = user
        else:
            raise TypeError("User must be a string or an integer")
        if uid < 0:
            raise ValueError(f"User ID cannot be negative, got {uid}")
    return uid, gid, gids


def _spawn(loop, on_exit, args, shell, stdin, stdout, stderr, *,
           executable=None, close_fds=True, pass_fds=(), cwd=None, env=None,
           start_new_session=False, restore_signals=True,
           process_group=None, umask=-1, user=None, group=None,
           extra_groups=None, **ignored):
    """Popen's argument handling (Lib/subprocess.py, _execute_child), then
    ul_process_spawn.  Returns a _ChildProcess."""
    if isinstance(args, (str, bytes)):
        args = [args]
    elif isinstance(args, os.PathLike):
        if shell:
            raise TypeError('path-like args is not allowed when shell is true')
        args = [args]
    else:
        args = list(args)
    if shell:
        args = ['/bin/sh', '-c'] + args
        if executable:
            args[0] = executable
    if executable is None:
        executable = args[0]
    orig_executable = executable
    if pass_fds and not close_fds:
        warnings.warn("pass_fds overriding close_fds.", RuntimeWarning)
        close_fds = True

    argv = [_fsencode_checked(a) for a in args]
    exe = _fsencode_checked(executable)
    env_list = None
    if env is not None:
        env_list = []
        for k, v in env.items():
            k = os.fsencode(k)
            if b'=' in k:
                raise ValueError("illegal environment variable name")
            item = k + b'=' + os.fsencode(v)
            if b'\0' in item:
                raise ValueError("embedded null byte")
            env_list.append(item)
    cwd_b = _fsencode_checked(cwd) if cwd is not None else None
    stdio = _stdio(stdin, 0) + _stdio(stdout, 1) + _stdio(stderr, 2)
    flags = 0
    if close_fds:
        flags |= _core.SPAWN_CLOSE_FDS
    if start_new_session:
        flags |= _core.SPAWN_NEW_SESSION
    if restore_signals:
        flags |= _core.SPAWN_RESTORE_SIGNALS
    pgid = -1 if process_group is None else int(process_group)
    if pgid < -1:
        pgid = -1
    fds = tuple(sorted(map(int, pass_fds)))
    uid, gid, gids = _ids(user, group, extra_groups)

    result = _core.ChildProcess.spawn(
        loop, on_exit, exe, argv, env_list, cwd_b, stdio, flags, fds, pgid,
        int(umask), uid, gid, gids)
    if result[0] is None:
        _, err, step = result
        # As Popen: an error before exec names the cwd, exec's the program.
        filename = orig_executable if step == _core.SPAWN_STEP_EXEC else cwd
        raise OSError(err, os.strerror(err), filename)
    child, fd0, fd1, fd2 = result
    return _ChildProcess(
        args, child,
        open(fd0, 'wb', buffering=0) if fd0 >= 0 else None,
        open(fd1, 'rb', buffering=0) if fd1 >= 0 else None,
        open(fd2, 'rb', buffering=0) if fd2 >= 0 else None)


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """asyncio's subprocess transport over a child that libunixloop started
    and watches."""

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs):
        self._proc = _spawn(self._loop, self._child_exited, args, shell,
                            stdin, stdout, stderr, **kwargs)

    def _child_exited(self, pid, returncode):
        # Two hops, as asyncio's watchers take (_child_watcher_callback:
        # call_soon_threadsafe(call_soon, ...)), so that the pipes are
        # connected first whenever asyncio's would be.
        self._loop.call_soon(self._loop.call_soon, self._process_exited,
                             returncode)
