"""Cold paths of unixloop's C core, written in Python.

The C core calls these only when something unusual happens (a callback
raised, debug mode, repr), so they may be as slow as asyncio's own code;
they produce exactly what asyncio produces.
"""
import socket
import sys
from asyncio import base_events, format_helpers, selector_events, unix_events


def format_callback_failure(callback, args, exc, handle):
    """The context asyncio's Handle._run passes to call_exception_handler."""
    cb = format_helpers._format_callback_source(callback, args)
    context = {
        'message': f'Exception in callback {cb}',
        'exception': exc,
        'handle': handle,
    }
    if handle._source_traceback:
        context['source_traceback'] = handle._source_traceback
    return context


def handle_repr(handle):
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append('cancelled')
    if hasattr(handle, 'when'):
        info.insert(2 if handle._cancelled else 1, f'when={handle.when()}')
    if handle._callback is not None:
        info.append(format_helpers._format_callback_source(
            handle._callback, handle._args))
    if handle._source_traceback:
        frame = handle._source_traceback[-1]
        info.append(f'created at {frame[0]}:{frame[1]}')
    return '<{}>'.format(' '.join(info))


def extract_stack():
    """The stack of the code that scheduled a callback (debug mode)."""
    return format_helpers.extract_stack(sys._getframe(1))


def warn_slow_callback(handle, seconds):
    # base_events.logger looked up now: tests patch it.
    base_events.logger.warning('Executing %s took %.3f seconds',
                               base_events._format_handle(handle), seconds)


# asyncio's create_task of the running interpreter, for what the C one does
# not do itself (a task factory, arguments other than name and context).
base_create_task = base_events.BaseEventLoop.create_task


def warn_send_after_close():
    # asyncio's transports say this from the fifth write after the
    # connection was lost.
    selector_events.logger.warning('socket.send() raised exception.')


def warn_pipe_write_after_close():
    # asyncio's write pipe transport's words for the same.
    unix_events.logger.warning('pipe closed by peer or '
                               'os.write(pipe, data) raised exception.')


def water_marks(high, low):
    """asyncio's _set_write_buffer_limits arithmetic and checks."""
    if high is None:
        high = 64 * 1024 if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(
            f'high ({high!r}) must be >= low ({low!r}) must be >= 0')
    return high, low


def transport_debug_log(fmt, transport, message, exc):
    """A debug-mode message of a C transport, worded as asyncio's."""
    args = (transport,) if message is None else (transport, message)
    selector_events.logger.debug(fmt, *args, exc_info=exc)


def warn_slow_transport_callback(transport, what, seconds):
    """A slow protocol callback of a C transport, named as the handle that
    runs it in asyncio."""
    if what == 'connection_made':
        protocol = transport.get_protocol()
        source = format_helpers._format_callback_source(
            protocol.connection_made, (transport,))
    else:
        source = f'{type(transport).__name__}.{what}()'
    base_events.logger.warning('Executing %s took %.3f seconds',
                               f'<Handle {source}>', seconds)
def numeric_address(sock, family, addr):
    """The numeric form of an address socket.sendto() would resolve (a host
    name), for a datagram the C transport must queue."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise TypeError(f'unsupported address {addr!r}')
    host, port, *rest = addr
    host = {'': None, '<broadcast>': '255.255.255.255'}.get(host, host)
    if host is None:
        host = '0.0.0.0' if family == socket.AF_INET else '::'
    info = socket.getaddrinfo(host, port, family, sock.type)[0][4]
    return info[:2] + tuple(rest) if rest else info[:2]
