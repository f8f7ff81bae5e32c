/*
 * _core.h -- what the C files of unixloop._core share: the module state,
 * the Handle and Loop objects, and the helpers other files call.
 */
#ifndef UNIXLOOP_CORE_H
#define UNIXLOOP_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "unixloop.h"

/* ---- module state --------------------------------------------------------- */

typedef struct {
  PyTypeObject *HandleType;
  PyTypeObject *TimerHandleType;
  PyTypeObject *LoopType;
  PyObject *helpers;          /* unixloop._helpers, imported lazily */
  PyObject *str_call_exception_handler;
  PyObject *str_check_thread;
  PyObject *str_check_callback;
  PyObject *tasks_module;     /* asyncio.tasks, looked up per call as asyncio
                                 does, so patching tasks.Task works */
  PyObject *futures_module;
  PyObject *str_Task;
  PyObject *str_Future;
  PyObject *kw_loop;          /* ("loop",) */
  PyObject *kw_task;          /* ("loop", "name", "context") */
  PyTypeObject *SockOpType;  /* _core_sock.c */
  PyTypeObject *TransportType; /* _core_transport.c */
  PyTypeObject *DgramType;     /* _core_dgram.c */
  PyTypeObject *ReadPipeType;  /* _core_pipe.c */
  PyTypeObject *WritePipeType;
  PyTypeObject *ChildProcessType; /* _core_process.c */
} core_state;

/* ---- objects ---------------------------------------------------------------- */

typedef struct LoopObj LoopObj;

typedef struct {
  PyObject_HEAD
  PyObject *callback;
  PyObject *args;          /* tuple, or NULL while the args are inline */
  PyObject *inline_args[2];
  PyObject *const *argv;   /* points into inline_args or args */
  Py_ssize_t nargs;
  PyObject *context;
  LoopObj *loop;
  PyObject *source_traceback;
  PyObject *repr;
  PyObject *weakreflist;
  char cancelled;
  char is_timer;
  double when;
  ul_timer *timer;         /* pending TimerHandle: its libunixloop timer */
} HandleObj;

struct LoopObj {
  PyObject_HEAD
  ul_loop *ul;
  core_state *st;
  PyObject *readers;       /* {fd: Handle} */
  PyObject *writers;
  PyObject *weakreflist;
  PyThreadState *released; /* set while polling without the GIL */
  int closed;
  int debug;
  int stopping;
  int failed;              /* a callback raised SystemExit/KeyboardInterrupt */
  PyObject *pending_exc_type; /* such an exception, kept aside while the */
  PyObject *pending_exc;      /* iteration's other callbacks run */
  PyObject *pending_exc_tb;
  PyObject *task_factory;  /* asyncio's loop._task_factory */
  PyObject *open_transports; /* set: the C transports (socket, pipe,
                                datagram) still open: the reference their C
                                side holds, visible to the GC */
  double slow_callback_duration;
};

/* _core.c */
PyObject *ulpy_helper(core_state *st, const char *name);
PyObject *ulpy_raise_errno(int err);
int ulpy_check_closed(LoopObj *self);
int ulpy_fileobj_to_fd(PyObject *fileobj);
int ulpy_is_fatal_exception(void);
/* Clears the current exception and returns it (a new reference, normalized,
 * its traceback attached), or NULL if none was set. */
PyObject *ulpy_take_exception(void);
PyObject *ulpy_add_watcher(LoopObj *self, PyObject *const *args,
                           Py_ssize_t nargs, int reading);
PyObject *ulpy_remove_watcher(LoopObj *self, PyObject *fileobj, int reading);
PyObject *ulpy_create_future(LoopObj *self);

/* _core_transport.c */
int ulpy_transport_exec(PyObject *mod, core_state *st);
/* Keeps the current SystemExit / KeyboardInterrupt aside and stops the loop
 * after this iteration (raised by a C-driven callback: stream, server). */
void ulpy_stash_fatal(LoopObj *loop);

/* _core_server.c */
int ulpy_server_exec(PyObject *mod);

/* _core.c: the reference a C transport holds on its Python object from
 * opening until connection_lost is kept in loop->open_transports.  When the
 * loop closes first, connection_lost(-ECANCELED) comes from ul_loop_close():
 * the binding calls nothing (asyncio's close() does not), keeps its socket
 * or pipe open, and the loop then drops the references; a transport
 * collected so warns "unclosed transport" (ResourceWarning), as asyncio's. */
int ulpy_transport_hold(LoopObj *loop, PyObject *transport);
void ulpy_transport_release(LoopObj *loop, PyObject *transport);
/* A transport's finalizer, as asyncio's __del__: warn "unclosed transport
 * <repr>" (ResourceWarning), then (the C side stopped) close its socket or
 * pipe object.  Both keep the current exception. */
void ulpy_warn_unclosed(PyObject *transport);
void ulpy_close_quietly(PyObject *transport, PyObject *fileobj);
/* close() / abort() of a transport whose loop closed under it: asyncio's
 * raise RuntimeError('Event loop is closed'); it counts as closing. */
PyObject *ulpy_orphan_close(LoopObj *loop, int *closing);
/* Helpers of every transport type: a fatal exception kept aside for the
 * loop; call_exception_handler with a transport's context; the current
 * exception reported that way. */
void ulpy_stash_fatal(LoopObj *loop);
void ulpy_transport_exception(LoopObj *loop, PyObject *transport,
                              PyObject *protocol, const char *message,
                              PyObject *exc);
void ulpy_transport_report(LoopObj *loop, PyObject *transport,
                           PyObject *protocol, const char *message);
/* protocol.pause_writing() (pause) or resume_writing(), errors reported. */
void ulpy_protocol_flow_call(LoopObj *loop, PyObject *transport,
                             PyObject *protocol, int pause);
/* tp_init of the C transport types (a no-op: they are set up in __new__). */
int ulpy_transport_init(PyObject *self, PyObject *args, PyObject *kw);
int ulpy_parse_water_marks(core_state *st, PyObject *args, PyObject *kw,
                           Py_ssize_t *high, Py_ssize_t *low);
int ulpy_count_lost_write(core_state *st, int *conn_lost);
/* The same, logged by _helpers.<warn_helper>() (the pipes' words). */
int ulpy_count_lost_write_as(core_state *st, int *conn_lost,
                             const char *warn_helper);

PyObject *ulpy_exception_from_errno(int err);
/* _FlowControlMixin's get_/set_write_buffer_limits on a stream (NULL once
 * the connection is lost). */
PyObject *ulpy_stream_get_write_buffer_limits(ul_stream *stream);
/* ul_stream_write of `view` (a buffer of `data`): an exact bytes object
 * from 16 KiB on is queued by reference (held until sent), not copied. */
int ulpy_stream_write(ul_stream *stream, PyObject *data, const Py_buffer *view);
PyObject *ulpy_stream_set_write_buffer_limits(LoopObj *loop,
                                              ul_stream *stream,
                                              PyObject *args, PyObject *kw);
/* Reads straight into the bytes object data_received gets (a stream
 * protocol's get_buffer / buffer_updated).  ulpy_read_bytes_buffer makes
 * *slot a bytes object of `size` (keeping one of that size) and returns its
 * memory, or NULL with no error set when memory is short;
 * ulpy_read_bytes_take hands it over cut to the `n` bytes read (NULL when
 * that fails, or when there was none), leaving *slot NULL. */
char *ulpy_read_bytes_buffer(PyObject **slot, Py_ssize_t size);
PyObject *ulpy_read_bytes_take(PyObject **slot, size_t n);

/* _core_pipe.c: ReadPipeTransport, WritePipeTransport */
int ulpy_pipe_exec(PyObject *mod, core_state *st);

/* _core_dgram.c */
int ulpy_dgram_exec(PyObject *mod, core_state *st);

/* _core_process.c */
int ulpy_process_exec(PyObject *mod, core_state *st);

/* _core_sock.c */
int ulpy_sock_exec(PyObject *mod, core_state *st);
PyObject *ulpy_sock_recv_wait(LoopObj *self, PyObject *const *args,
                              Py_ssize_t nargs);
PyObject *ulpy_sock_try_recv(LoopObj *self, PyObject *const *args,
                             Py_ssize_t nargs);
PyObject *ulpy_sock_try_send(LoopObj *self, PyObject *const *args,
                             Py_ssize_t nargs);

#endif /* UNIXLOOP_CORE_H */
