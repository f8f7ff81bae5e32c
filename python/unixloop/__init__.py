"""unixloop: asyncio's Unix event loop, written in C.

Use it as asyncio's loop with no other change to a program::

    import unixloop
    unixloop.run(main())            # like asyncio.run(main())

or::

    unixloop.install()              # every new asyncio loop is a unixloop
    loop = unixloop.new_event_loop()

The C core (unixloop._core) runs callbacks, timers and fd watchers.  What it
does not do yet comes from asyncio's own Unix selector loop, which unixloop.Loop
also derives from (transports, servers, pipes, subprocesses, signals), running
on top of the C core.
"""
import asyncio
import errno
import functools
import io
import os
import selectors
import stat
import sys
import threading
import warnings
import weakref
import socket
from asyncio import (base_events, constants, events, exceptions, futures,
                     sslproto, trsock, unix_events)
from asyncio.log import logger

from . import _core
from . import _process

__all__ = ('Loop', 'new_event_loop', 'EventLoopPolicy', 'install', 'run')
__version__ = _core.libunixloop_version


class _SelectorView:
    """What asyncio's code reads of loop._selector (transport reprs ask
    whether an fd is polled), answered from the C core's fd tables."""

    def __init__(self, loop):
        self._loop = weakref.ref(loop)

    def get_key(self, fileobj):
        fd = selectors._fileobj_to_fd(fileobj)
        loop = self._loop()
        reader = loop._readers.get(fd) if loop is not None else None
        writer = loop._writers.get(fd) if loop is not None else None
        events = ((selectors.EVENT_READ if reader is not None else 0) |
                  (selectors.EVENT_WRITE if writer is not None else 0))
        if not events:
            raise KeyError(f'{fileobj!r} is not registered')
        return selectors.SelectorKey(fileobj, fd, events, (reader, writer))

    def close(self):
        pass


def _transport_extra(sock, extra):
    """What asyncio's _SelectorTransport.__init__ does besides I/O: the
    extra info of a socket transport."""
    extra = dict(extra) if extra else {}
    extra['socket'] = trsock.TransportSocket(sock)
    try:
        extra['sockname'] = sock.getsockname()
    except OSError:
        extra['sockname'] = None
    if 'peername' not in extra:
        try:
            extra['peername'] = sock.getpeername()
        except socket.error:
            extra['peername'] = None
    return extra


class Loop(_core.Loop, unix_events.SelectorEventLoop):
    """An asyncio event loop whose core is libunixloop."""

    def __init__(self):
        # The selector loop's own __init__ would create a selector: the C
        # core replaces it.  The rest of its state is kept as asyncio has it.
        base_events.BaseEventLoop.__init__(self)
        self._selector = _SelectorView(self)
        self._transports = weakref.WeakValueDictionary()
        self._signal_handlers = {}
        # asyncio's self-pipe only carries signal numbers here (the C core
        # wakes itself for call_soon_threadsafe): make it when a signal
        # handler is first added, so that a loop watching no fd never polls
        # while callbacks are ready.
        self._ssock = self._csock = None
        self._internal_fds = 1  # the C core's wake-up eventfd
        if sys.version_info >= (3, 13):
            # create_unix_server(cleanup_socket=True): the sockets to unlink.
            self._unix_server_sockets = {}
        self._acceptors = {}    # listening fd -> _core.Acceptor

    def add_signal_handler(self, sig, callback, *args):
        """Add a handler for a signal, as asyncio's (same checks, same
        errors); the handler is a C Handle that the self-pipe's C reader
        queues directly."""
        if self._ssock is None and not self.is_closed():
            self._make_self_pipe()
        super().add_signal_handler(sig, callback, *args)
        self._signal_handlers[sig] = self._make_handle(callback, *args)

    def _make_self_pipe(self):
        super()._make_self_pipe()
        # Replace asyncio's Python reader with the C one.
        self._add_reader(self._ssock.fileno(), self._read_signals,
                         self._ssock.fileno(), self._signal_handlers)

    def _close_self_pipe(self):
        if self._ssock is not None:
            super()._close_self_pipe()

    def run_forever(self):
        """Run until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            self._run()
        finally:
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    # sock_recv and friends: asyncio's code, with the waiting half in C
    # (_sock_recv_wait registers the reader and removes it when done).

    def _check_sock(self, sock):
        """asyncio's checks before every sock_* call."""
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    async def sock_recv(self, sock, n):
        """Receive up to n bytes from a non-blocking socket."""
        # _check_sock's lines, inline: this is the hottest sock_* call.
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        data = self._sock_try_recv(sock, n)
        if data is not None:
            return data
        return await self._sock_recv_wait(sock, 'recv', n)

    async def _sock_read(self, sock, method, arg):
        # Try sock.<method>(arg) now; wait for readability if it would block.
        self._check_sock(sock)
        try:
            return getattr(sock, method)(arg)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._sock_recv_wait(sock, method, arg)

    async def sock_recv_into(self, sock, buf):
        """Receive data from a non-blocking socket into buf."""
        return await self._sock_read(sock, 'recv_into', buf)

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to bufsize bytes: (data, address)."""
        return await self._sock_read(sock, 'recvfrom', bufsize)

    async def sock_sendall(self, sock, data):
        """Send all of data to a connected non-blocking socket."""
        base_events._check_ssl_socket(sock)  # _check_sock, inline (hot)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        n = self._sock_try_send(sock, data)
        if n == len(data):
            return
        # What is left waits for writability, exactly as in asyncio.
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_writer(fd, self._sock_sendall, fut, sock,
                                  memoryview(data), [n])
        fut.add_done_callback(
            functools.partial(self._sock_write_done, fd, handle=handle))
        return await fut

    def _make_socket_transport(self, sock, protocol, waiter=None, *,
                               extra=None, server=None):
        """asyncio's socket transport, on a libunixloop stream."""
        if type(sock) is not socket.socket:
            return super()._make_socket_transport(
                sock, protocol, waiter, extra=extra, server=server)
        extra = _transport_extra(sock, extra)
        base_events._set_nodelay(sock)
        transport = _core.SocketTransport(self, sock, protocol, extra, server)
        self._transports[sock.fileno()] = transport
        if server is not None:
            if sys.version_info >= (3, 13):
                server._attach(transport)  # Server.close_clients() (3.13)
            else:
                server._attach()
        if waiter is not None:
            self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        return transport

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None,
                            *, server_side=False, server_hostname=None,
                            extra=None, server=None,
                            ssl_handshake_timeout=(
                                constants.SSL_HANDSHAKE_TIMEOUT),
                            ssl_shutdown_timeout=(
                                constants.SSL_SHUTDOWN_TIMEOUT)):
        """asyncio's sslproto over the C socket transport (asyncio's own
        version puts it over its Python selector transport)."""
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra,
                                    server=server)
        return ssl_protocol._app_transport

    def _make_datagram_transport(self, sock, protocol, address=None,
                                 waiter=None, extra=None):
        """asyncio's datagram transport, on a libunixloop ul_dgram."""
        if type(sock) is not socket.socket:
            return super()._make_datagram_transport(
                sock, protocol, address, waiter, extra)
        extra = _transport_extra(sock, extra)
        transport = _core.DatagramTransport(self, sock, protocol, address,
                                            extra)
        self._transports[sock.fileno()] = transport
        if waiter is not None:
            self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        return transport

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None,
                                  extra=None):
        """asyncio's read pipe transport, on a libunixloop pipe."""
        transport = _core.ReadPipeTransport(self, pipe, protocol, extra)
        if waiter is not None:
            # After connection_made, as asyncio does.
            self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        return transport

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None,
                                   extra=None):
        """asyncio's write pipe transport, on a libunixloop pipe."""
        transport = _core.WritePipeTransport(self, pipe, protocol, extra)
        if waiter is not None:
            self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        return transport

    async def _make_subprocess_transport(self, protocol, args, shell,
                                         stdin, stdout, stderr, bufsize,
                                         extra=None, **kwargs):
        """A child started and watched by libunixloop (no copy of the
        parent, a pidfd on the loop's poller), unless the user picked a
        child watcher or an argument needs subprocess.Popen: then asyncio's
        own path (Popen and the policy's watcher)."""
        if not (_core_watches_children() and
                _process.can_spawn(stdin, stdout, stderr, kwargs)):
            return await super()._make_subprocess_transport(
                protocol, args, shell, stdin, stdout, stderr, bufsize,
                extra=extra, **kwargs)
        waiter = self.create_future()
        transp = _process.SubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    async def _sendfile_native(self, transp, file, offset, count):
        """asyncio's loop.sendfile() natively, with the transfer in C
        (ul_stream_sendfile: it waits for the write buffer to drain)."""
        if type(transp) is not _core.SocketTransport:
            return await super()._sendfile_native(transp, file, offset, count)
        # What asyncio's sock_sendfile and _sock_sendfile_native check.
        self._check_sendfile_params(transp._sock, file, offset, count)
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            st = os.fstat(fileno)
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        if not (count or st.st_size):
            return 0  # asyncio's "empty file"
        if not stat.S_ISREG(st.st_mode):
            # os.sendfile fails there: asyncio falls back to file.readinto.
            raise exceptions.SendfileNotAvailableError(
                "os.sendfile call failed")
        fd = transp._sock_fd
        self._transports.pop(fd, None)
        resume_reading = transp.is_reading()
        transp.pause_reading()
        try:
            return await transp._sendfile(fileno, offset, count or 0)
        finally:
            transp._sendfile_end()
            if resume_reading:
                transp.resume_reading()
            self._transports[fd] = transp

    # Servers: asyncio's Server calls _start_serving / _stop_serving; the
    # accept loop is C (_core.Acceptor on a ul_server: batches of up to
    # `backlog` accepts per wake-up, EMFILE back-off), and each connection
    # goes straight into a transport (asyncio starts a Task per connection).

    def _start_serving(self, protocol_factory, sock, sslcontext=None,
                       server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        if sslcontext is not None or type(sock) is not socket.socket:
            return super()._start_serving(
                protocol_factory, sock, sslcontext, server, backlog,
                ssl_handshake_timeout, ssl_shutdown_timeout)
        fd = sock.fileno()
        old = self._acceptors.pop(fd, None)
        if old is not None:
            old.close()
        self._acceptors[fd] = _core.Acceptor(
            self, fd, backlog,
            functools.partial(self._accept_fd, protocol_factory, sock, server),
            functools.partial(self._accept_error, sock))

    def _stop_serving(self, sock):
        acceptor = self._acceptors.pop(sock.fileno(), None)
        if acceptor is None:
            return super()._stop_serving(sock)
        acceptor.close()
        sock.close()

    def _accept_fd(self, protocol_factory, sock, server, fd):
        """A connection the C acceptor took: asyncio's
        _accept_connection2, without its Task."""
        conn = socket.socket(sock.family, sock.type | socket.SOCK_NONBLOCK,
                             sock.proto, fd)
        if self._debug:
            try:
                addr = conn.getpeername()
            except OSError:
                addr = None
            logger.debug("%r got a new connection from %r: %r",
                         server, addr, conn)
        protocol = transport = None
        try:
            protocol = protocol_factory()
            transport = self._make_socket_transport(conn, protocol,
                                                    server=server)
        except (SystemExit, KeyboardInterrupt):
            if transport is None:
                conn.close()
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            if self._debug:
                context = {
                    'message':
                        'Error on transport creation for incoming connection',
                    'exception': exc,
                }
                if protocol is not None:
                    context['protocol'] = protocol
                self.call_exception_handler(context)

    def _accept_error(self, sock, err):
        """accept() failed; the C acceptor stops accepting for
        ACCEPT_RETRY_DELAY seconds, as asyncio does."""
        if err in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            message = 'socket.accept() out of system resource'
        else:
            message = 'socket.accept() failed'
        self.call_exception_handler({
            'message': message,
            'exception': OSError(err, os.strerror(err)),
            'socket': trsock.TransportSocket(sock),
        })

    def _add_callback(self, handle):
        # asyncio's signal path hands us its own Handle objects.
        if not handle._cancelled:
            self.call_soon(handle._run)

    def _process_events(self, event_list):
        # The C core dispatches fd events itself.
        raise NotImplementedError

    def __del__(self, _warn=warnings.warn, _finalizing=sys.is_finalizing):
        # BaseEventLoop.__del__, except at interpreter exit.  A loop never
        # closed (the one get_event_loop() made, say) is freed then as the
        # modules are torn down: asyncio's own, in a reference cycle, by
        # the garbage collector while their globals are intact; this one,
        # in none, when whatever held it is cleared, by which time the
        # globals that asyncio's close() reads may be None.  Its C core is
        # all there is left to close.
        if self.is_closed():
            return
        _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
        if self.is_running():
            return
        if _finalizing():
            self._close_core()
        else:
            self.close()

    def close(self):
        super().close()
        if self.is_closed():
            self._close_core()  # also stops the acceptors' C servers
            self._acceptors.clear()
            self._internal_fds = 0

    def __repr__(self):
        return (f'<{type(self).__name__} running={self.is_running()} '
                f'closed={self.is_closed()} debug={self.get_debug()}>')


# What asyncio's code asks of a socket transport: loop.sendfile() may use
# os.sendfile on its socket; start_tls() may wrap it.
_core.SocketTransport._sendfile_compatible = constants._SendfileMode.TRY_NATIVE
_core.SocketTransport._start_tls_compatible = True


def _core_watches_children():
    """True unless the user set a child watcher on asyncio's policy
    (set_child_watcher, or get_child_watcher, which makes one)."""
    policy = events.get_event_loop_policy()
    return (isinstance(policy, unix_events.DefaultEventLoopPolicy) and
            policy._watcher is None)


def new_event_loop():
    """Return a new unixloop event loop."""
    return Loop()


class EventLoopPolicy(unix_events.DefaultEventLoopPolicy):
    """asyncio's Unix event loop policy, making unixloop loops."""

    _loop_factory = Loop


def install():
    """Make unixloop the loop of asyncio.run() and asyncio.new_event_loop()."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Run a coroutine on a new unixloop loop, as asyncio.run() does."""
    if events._get_running_loop() is not None:
        # The check asyncio.run() makes, before anything is created.
        raise RuntimeError(
            "unixloop.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
