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

/* _core_sock.c */
int ulpy_sock_exec(PyObject *mod, core_state *st);
PyObject *ulpy_sock_recv_wait(LoopObj *self, PyObject *const *args,
                              Py_ssize_t nargs);
PyObject *ulpy_sock_try_recv(LoopObj *self, PyObject *const *args,
                             Py_ssize_t nargs);
PyObject *ulpy_sock_try_send(LoopObj *self, PyObject *const *args,
                             Py_ssize_t nargs);

#endif /* UNIXLOOP_CORE_H */
