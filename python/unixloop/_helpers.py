"""Cold paths of unixloop's C core, written in Python.

The C core calls these only when something unusual happens (a callback
raised, debug mode, repr), so they may be as slow as asyncio's own code;
they produce exactly what asyncio produces.
"""
import sys
from asyncio import base_events, format_helpers
from asyncio.log import logger


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
    logger.warning('Executing %s took %.3f seconds',
                   base_events._format_handle(handle), seconds)


def create_task_with_factory(loop, coro, name, context):
    """asyncio's create_task() when a task factory is set."""
    from asyncio import tasks
    if context is None:
        # The legacy factory signature, when no context is needed.
        task = loop._task_factory(loop, coro)
    else:
        task = loop._task_factory(loop, coro, context=context)
    tasks._set_task_name(task, name)
    return task



def warn_send_after_close():
    # asyncio's transports say this from the fifth write after the
    # connection was lost.
    logger.warning('socket.send() raised exception.')


def warn_pipe_write_after_close():
    # asyncio's write pipe transport's words for the same.
    logger.warning('pipe closed by peer or '
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
