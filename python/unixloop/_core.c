/*
 * _core.c -- the CPython binding of libunixloop: unixloop._core.
 *
 * Types:
 *   Handle       a callback scheduled on the loop (asyncio.Handle's API)
 *   TimerHandle  a Handle with a deadline (asyncio.TimerHandle's API)
 *   Loop         the base type of unixloop.Loop: the hot half of an asyncio
 *                event loop (scheduling, timers, fd watchers, running).
 *
 * The Python class unixloop.Loop puts this type first in its bases and
 * asyncio's Unix selector loop after it, so everything not defined here
 * (futures, tasks, executors, exception handler, sockets, transports,
 * signals, subprocesses) comes from asyncio and runs on this core.
 *
 * Reference ownership between C and Python:
 *   - a Handle in the ready queue or a pending TimerHandle holds one
 *     reference, owned by the libunixloop entry; it is released when the
 *     callback runs, when the timer is cancelled, or when the loop closes
 *     (libunixloop then calls the callback with -ECANCELED);
 *   - a reader / writer Handle is owned by the Loop's `readers` / `writers`
 *     dict; libunixloop holds a borrowed pointer.
 */
#include "_core.h"

#include <structmember.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sys/socket.h>

#include "unixloop.h"

static struct PyModuleDef core_module;

static core_state *state_of_type(PyTypeObject *tp) {
  PyObject *mod = PyType_GetModuleByDef(tp, &core_module);
  return mod ? (core_state *)PyModule_GetState(mod) : NULL;
}

/* Returns a borrowed attribute of unixloop._helpers (the cold paths written
 * in Python: formatting, debug stacks, logging). */
PyObject *ulpy_helper(core_state *st, const char *name) {
  if (st->helpers == NULL) {
    st->helpers = PyImport_ImportModule("unixloop._helpers");
    if (st->helpers == NULL)
      return NULL;
  }
  PyObject *f = PyObject_GetAttrString(st->helpers, name);
  if (f != NULL)
    Py_DECREF(f); /* the module keeps it alive */
  return f;
}

PyObject *ulpy_raise_errno(int err) {
  errno = -err;
  return PyErr_SetFromErrno(PyExc_OSError);
}

/* ---- Handle ---------------------------------------------------------------- */

/* Freed plain Handles kept for reuse: one is made and freed per call_soon,
 * and the allocator's GC bookkeeping is a visible share of a task switch.
 * Process-wide and used only with the GIL held.
 *
 * An entry keeps the reference to its type that the Handle held: freeing
 * the memory (PyObject_GC_Del) reads the type, so the type must outlive the
 * entry.  The list is emptied when the last module instance is freed, and
 * no Handle is kept after that (at interpreter exit, Handles can be freed
 * after the module: their types were collected in the same cycle). */
#define HANDLE_FREELIST_MAX 256
static HandleObj *handle_freelist[HANDLE_FREELIST_MAX];
static int handle_freelist_len;
static int live_modules; /* module instances executed and not yet freed */

static HandleObj *handle_alloc(PyTypeObject *tp, core_state *st) {
  if (tp == st->HandleType && handle_freelist_len > 0) {
    HandleObj *h = handle_freelist[--handle_freelist_len];
    PyTypeObject *old = Py_TYPE(h);
    /* Memory from PyObject_GC_New, untracked: make it a new object (this
     * takes a new reference to tp), then drop the entry's reference. */
    PyObject_Init((PyObject *)h, tp);
    Py_DECREF(old);
    return h;
  }
  return PyObject_GC_New(HandleObj, tp);
}

static void handle_freelist_clear(void) {
  while (handle_freelist_len > 0) {
    HandleObj *h = handle_freelist[--handle_freelist_len];
    PyTypeObject *tp = Py_TYPE(h);
    PyObject_GC_Del(h);
    Py_DECREF(tp);
  }
}

static HandleObj *handle_new(LoopObj *loop, PyTypeObject *tp,
                             PyObject *callback, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *context) {
  HandleObj *h = handle_alloc(tp, loop->st);
  if (h == NULL)
    return NULL;
  h->callback = Py_NewRef(callback);
  h->args = NULL;
  h->inline_args[0] = h->inline_args[1] = NULL;
  h->nargs = nargs;
  if (nargs <= 2) {
    for (Py_ssize_t i = 0; i < nargs; i++)
      h->inline_args[i] = Py_NewRef(args[i]);
    h->argv = h->inline_args;
  } else {
    h->args = PyTuple_New(nargs);
    if (h->args == NULL) {
      h->nargs = 0;
      h->context = NULL;
      h->loop = NULL;
      h->source_traceback = h->repr = h->weakreflist = NULL;
      h->timer = NULL;
      Py_DECREF(h);
      return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
      PyTuple_SET_ITEM(h->args, i, Py_NewRef(args[i]));
    h->argv = &PyTuple_GET_ITEM(h->args, 0);
  }
  if (context == NULL || context == Py_None)
    h->context = PyContext_CopyCurrent();
  else
    h->context = Py_NewRef(context);
  h->loop = (LoopObj *)Py_NewRef((PyObject *)loop);
  h->source_traceback = NULL;
  h->repr = NULL;
  h->weakreflist = NULL;
  h->cancelled = 0;
  h->is_timer = 0;
  h->when = 0.0;
  h->timer = NULL;
  PyObject_GC_Track(h);
  if (h->context == NULL) {
    Py_DECREF(h);
    return NULL;
  }
  return h;
}

/* Drops the callback and its arguments (asyncio does it on cancel, which
 * frees whatever they hold at once). */
static void handle_clear_callback(HandleObj *h) {
  Py_CLEAR(h->callback);
  Py_CLEAR(h->inline_args[0]);
  Py_CLEAR(h->inline_args[1]);
  Py_CLEAR(h->args);
  h->argv = h->inline_args;
  h->nargs = 0;
}

static int Handle_traverse(HandleObj *h, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(h));
  Py_VISIT(h->callback);
  Py_VISIT(h->args);
  Py_VISIT(h->inline_args[0]);
  Py_VISIT(h->inline_args[1]);
  Py_VISIT(h->context);
  Py_VISIT(h->loop);
  Py_VISIT(h->source_traceback);
  Py_VISIT(h->repr);
  return 0;
}

static int Handle_clear(HandleObj *h) {
  handle_clear_callback(h);
  Py_CLEAR(h->context);
  Py_CLEAR(h->loop);
  Py_CLEAR(h->source_traceback);
  Py_CLEAR(h->repr);
  return 0;
}

static void Handle_dealloc(HandleObj *h) {
  PyTypeObject *tp = Py_TYPE(h);
  PyObject_GC_UnTrack(h);
  if (h->weakreflist != NULL)
    PyObject_ClearWeakRefs((PyObject *)h);
  (void)Handle_clear(h);
  /* A plain Handle or TimerHandle (same layout; a Python subclass has
   * another tp_dealloc): keep its memory, with its type reference.  Asked
   * after the clear: the objects it released may have been the last
   * references to other Handles, freed (and kept) in the meantime. */
  int reuse = live_modules > 0 &&
              tp->tp_dealloc == (destructor)Handle_dealloc &&
              handle_freelist_len < HANDLE_FREELIST_MAX;
  if (reuse) {
    handle_freelist[handle_freelist_len++] = h;
    return;
  }
  tp->tp_free(h);
  Py_DECREF(tp);
}

/* Reports an exception raised by a callback the way asyncio's Handle._run
 * does: through loop.call_exception_handler(). */
PyObject *ulpy_take_exception(void) {
  PyObject *type, *exc, *tb;
  PyErr_Fetch(&type, &exc, &tb);
  PyErr_NormalizeException(&type, &exc, &tb);
  if (tb != NULL && exc != NULL)
    PyException_SetTraceback(exc, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return exc;
}

static void handle_report_exception(HandleObj *h) {
  PyObject *exc = ulpy_take_exception();

  core_state *st = h->loop->st;
  PyObject *fmt = ulpy_helper(st, "format_callback_failure");
  PyObject *context = NULL;
  if (fmt != NULL) {
    PyObject *args = h->args;
    if (args == NULL)
      args = PyTuple_Pack(h->nargs, h->inline_args[0], h->inline_args[1]);
    else
      Py_INCREF(args);
    if (args != NULL) {
      context = PyObject_CallFunctionObjArgs(
          fmt, h->callback ? h->callback : Py_None, args,
          exc ? exc : Py_None, (PyObject *)h, NULL);
      Py_DECREF(args);
    }
  }
  Py_XDECREF(exc);
  if (context == NULL)
    return; /* the error of the formatting propagates */
  PyObject *r = PyObject_CallMethodOneArg(
      (PyObject *)h->loop, st->str_call_exception_handler, context);
  Py_DECREF(context);
  Py_XDECREF(r);
}

int ulpy_is_fatal_exception(void) {
  return PyErr_ExceptionMatches(PyExc_SystemExit) ||
         PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

/* Runs the callback in its context.  Returns 0, or -1 with SystemExit or
 * KeyboardInterrupt set (they escape the loop, as in asyncio). */
static int handle_run(HandleObj *h) {
  PyObject *res = NULL;
  if (h->callback == NULL)
    return 0;
  Py_INCREF(h);
  if (PyContext_Enter(h->context) == 0) {
    res = PyObject_Vectorcall(h->callback, h->argv, (size_t)h->nargs, NULL);
    if (PyContext_Exit(h->context) < 0)
      Py_CLEAR(res);
  }
  int rc = 0;
  if (res != NULL) {
    Py_DECREF(res);
  } else if (ulpy_is_fatal_exception()) {
    rc = -1;
  } else {
    handle_report_exception(h);
    if (PyErr_Occurred()) {
      if (ulpy_is_fatal_exception())
        rc = -1;
      else
        PyErr_WriteUnraisable((PyObject *)h);
    }
  }
  Py_DECREF(h);
  return rc;
}

/* Debug mode: time the callback and warn when it is slow, as asyncio. */
static int handle_run_debug(HandleObj *h) {
  LoopObj *loop = h->loop;
  Py_INCREF(loop);
  if (PyObject_SetAttrString((PyObject *)loop, "_current_handle",
                             (PyObject *)h) < 0)
    PyErr_Clear();
  double t0 = ul_loop_time(loop->ul);
  int rc = handle_run(h);
  double dt = ul_loop_time(loop->ul) - t0;
  PyObject *exc_type, *exc, *tb;
  PyErr_Fetch(&exc_type, &exc, &tb);
  if (PyObject_SetAttrString((PyObject *)loop, "_current_handle", Py_None) <
      0)
    PyErr_Clear();
  if (dt >= loop->slow_callback_duration) {
    PyObject *warn = ulpy_helper(loop->st, "warn_slow_callback");
    PyObject *r = warn ? PyObject_CallFunction(warn, "Od", (PyObject *)h, dt)
                       : NULL;
    if (r == NULL)
      PyErr_WriteUnraisable((PyObject *)h);
    Py_XDECREF(r);
  }
  PyErr_Restore(exc_type, exc, tb);
  Py_DECREF(loop);
  return rc;
}

/* The libunixloop callback of every queued Handle.  Owns one reference. */
static void handle_ready_cb(ul_loop *ul, void *arg, int status) {
  HandleObj *h = arg;
  LoopObj *loop = h->loop;
  if (h->is_timer)
    h->timer = NULL;
  if (status == 0 && !h->cancelled && loop != NULL) {
    int rc = loop->debug ? handle_run_debug(h) : handle_run(h);
    if (rc < 0) {
      loop->failed = 1;
      ul_loop_break(ul, -EINTR);
    }
  }
  Py_DECREF(h);
}

static PyObject *Handle_cancel(HandleObj *h, PyObject *Py_UNUSED(ignored)) {
  if (h->cancelled)
    Py_RETURN_NONE;
  h->cancelled = 1;
  if (h->loop != NULL && h->loop->debug && h->repr == NULL) {
    /* Keep a description of what was cancelled, as asyncio does. */
    h->repr = PyObject_Repr((PyObject *)h);
    if (h->repr == NULL)
      return NULL;
  }
  handle_clear_callback(h);
  if (h->timer != NULL) {
    ul_timer_cancel(h->timer);
    h->timer = NULL;
    Py_DECREF(h); /* the reference the timer held */
  }
  Py_RETURN_NONE;
}

static PyObject *Handle_cancelled(HandleObj *h, PyObject *Py_UNUSED(ignored)) {
  return PyBool_FromLong(h->cancelled);
}

static PyObject *Handle_run_method(HandleObj *h,
                                   PyObject *Py_UNUSED(ignored)) {
  if (!h->cancelled && handle_run(h) < 0)
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *Handle_get_context(HandleObj *h,
                                    PyObject *Py_UNUSED(ignored)) {
  return Py_NewRef(h->context ? h->context : Py_None);
}

static PyObject *Handle_when(HandleObj *h, PyObject *Py_UNUSED(ignored)) {
  return PyFloat_FromDouble(h->when);
}

static PyObject *Handle_get_args(HandleObj *h, void *closure) {
  (void)closure;
  if (h->callback == NULL)
    Py_RETURN_NONE;
  if (h->args == NULL) {
    PyObject *t = PyTuple_New(h->nargs);
    if (t == NULL)
      return NULL;
    for (Py_ssize_t i = 0; i < h->nargs; i++)
      PyTuple_SET_ITEM(t, i, Py_NewRef(h->inline_args[i]));
    return t;
  }
  return Py_NewRef(h->args);
}

static PyObject *Handle_get_callback(HandleObj *h, void *closure) {
  (void)closure;
  return Py_NewRef(h->callback ? h->callback : Py_None);
}

static PyObject *Handle_get_loop(HandleObj *h, void *closure) {
  (void)closure;
  return Py_NewRef(h->loop ? (PyObject *)h->loop : Py_None);
}

static PyObject *Handle_get_source_traceback(HandleObj *h, void *closure) {
  (void)closure;
  return Py_NewRef(h->source_traceback ? h->source_traceback : Py_None);
}

static PyObject *Handle_get_when(HandleObj *h, void *closure) {
  (void)closure;
  return PyFloat_FromDouble(h->when);
}

static PyObject *Handle_repr(HandleObj *h) {
  if (h->repr != NULL)
    return Py_NewRef(h->repr);
  core_state *st = state_of_type(Py_TYPE(h));
  PyObject *f = st ? ulpy_helper(st, "handle_repr") : NULL;
  return f ? PyObject_CallOneArg(f, (PyObject *)h) : NULL;
}

/* TimerHandles compare by deadline, as asyncio's. */
static PyObject *TimerHandle_richcompare(PyObject *a, PyObject *b, int op) {
  core_state *st = state_of_type(Py_TYPE(a));
  if (st == NULL || !PyObject_TypeCheck(b, st->TimerHandleType))
    Py_RETURN_NOTIMPLEMENTED;
  HandleObj *x = (HandleObj *)a, *y = (HandleObj *)b;
  if (op == Py_EQ || op == Py_NE) {
    int eq = x == y || (x->when == y->when && x->cancelled == y->cancelled &&
                        x->callback == y->callback && x->nargs == y->nargs);
    for (Py_ssize_t i = 0; eq && x != y && i < x->nargs; i++) {
      int r = PyObject_RichCompareBool(x->argv[i], y->argv[i], Py_EQ);
      if (r < 0)
        return NULL;
      eq = r;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
  }
  Py_RETURN_RICHCOMPARE(x->when, y->when, op);
}

static Py_hash_t TimerHandle_hash(HandleObj *h) {
  PyObject *when = PyFloat_FromDouble(h->when);
  if (when == NULL)
    return -1;
  Py_hash_t hash = PyObject_Hash(when);
  Py_DECREF(when);
  return hash;
}

static PyMethodDef Handle_methods[] = {
    {"cancel", (PyCFunction)Handle_cancel, METH_NOARGS, NULL},
    {"cancelled", (PyCFunction)Handle_cancelled, METH_NOARGS, NULL},
    {"get_context", (PyCFunction)Handle_get_context, METH_NOARGS, NULL},
    {"_run", (PyCFunction)Handle_run_method, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyMethodDef TimerHandle_methods[] = {
    {"when", (PyCFunction)Handle_when, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Handle_getset[] = {
    {"_callback", (getter)Handle_get_callback, NULL, NULL, NULL},
    {"_args", (getter)Handle_get_args, NULL, NULL, NULL},
    {"_loop", (getter)Handle_get_loop, NULL, NULL, NULL},
    {"_source_traceback", (getter)Handle_get_source_traceback, NULL, NULL,
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyGetSetDef TimerHandle_getset[] = {
    {"_when", (getter)Handle_get_when, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Handle_members[] = {
    {"_cancelled", T_BOOL, offsetof(HandleObj, cancelled), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(HandleObj, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyType_Slot Handle_slots[] = {
    {Py_tp_dealloc, Handle_dealloc},
    {Py_tp_traverse, Handle_traverse},
    {Py_tp_clear, Handle_clear},
    {Py_tp_repr, Handle_repr},
    {Py_tp_methods, Handle_methods},
    {Py_tp_getset, Handle_getset},
    {Py_tp_members, Handle_members},
    {0, NULL}};

static PyType_Spec Handle_spec = {
    .name = "unixloop._core.Handle",
    .basicsize = sizeof(HandleObj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Handle_slots};

static PyType_Slot TimerHandle_slots[] = {
    {Py_tp_dealloc, Handle_dealloc},
    {Py_tp_traverse, Handle_traverse},
    {Py_tp_clear, Handle_clear},
    {Py_tp_methods, TimerHandle_methods},
    {Py_tp_getset, TimerHandle_getset},
    {Py_tp_richcompare, TimerHandle_richcompare},
    {Py_tp_hash, TimerHandle_hash},
    {0, NULL}};

static PyType_Spec TimerHandle_spec = {
    .name = "unixloop._core.TimerHandle",
    .basicsize = sizeof(HandleObj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = TimerHandle_slots};

/* ---- Loop: helpers ---------------------------------------------------------- */

int ulpy_check_closed(LoopObj *self) {
  if (self->closed || self->ul == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return -1;
  }
  return 0;
}

/* Debug-mode checks of asyncio's call_soon / call_at, done in Python. */
static int debug_checks(LoopObj *self, PyObject *callback, const char *method,
                        int check_thread) {
  PyObject *r;
  if (check_thread) {
    r = PyObject_CallMethodNoArgs((PyObject *)self, self->st->str_check_thread);
    if (r == NULL)
      return -1;
    Py_DECREF(r);
  }
  PyObject *name = PyUnicode_FromString(method);
  if (name == NULL)
    return -1;
  PyObject *args[3] = {(PyObject *)self, callback, name};
  r = PyObject_VectorcallMethod(self->st->str_check_callback, args, 3, NULL);
  Py_DECREF(name);
  if (r == NULL)
    return -1;
  Py_DECREF(r);
  return 0;
}

static int debug_source_traceback(LoopObj *self, HandleObj *h) {
  PyObject *f = ulpy_helper(self->st, "extract_stack");
  if (f == NULL)
    return -1;
  h->source_traceback = PyObject_CallNoArgs(f);
  return h->source_traceback ? 0 : -1;
}

/* Parses (callback, *args, context=None) from a fastcall. */
static int parse_callback_args(PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames, Py_ssize_t skip,
                               const char *method, PyObject **context) {
  *context = NULL;
  if (nargs < skip + 1) {
    PyErr_Format(PyExc_TypeError, "%s() missing required argument", method);
    return -1;
  }
  if (kwnames != NULL) {
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
      PyObject *key = PyTuple_GET_ITEM(kwnames, i);
      if (!PyUnicode_Check(key) ||
          PyUnicode_CompareWithASCIIString(key, "context") != 0) {
        PyErr_Format(PyExc_TypeError,
                     "%s() got an unexpected keyword argument '%S'", method,
                     key);
        return -1;
      }
      *context = args[nargs + i];
    }
  }
  return 0;
}

static HandleObj *schedule_soon(LoopObj *self, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames,
                                const char *method, int threadsafe) {
  PyObject *context;
  if (parse_callback_args(args, nargs, kwnames, 0, method, &context) < 0)
    return NULL;
  if (ulpy_check_closed(self) < 0)
    return NULL;
  if (self->debug && debug_checks(self, args[0], method, !threadsafe) < 0)
    return NULL;
  HandleObj *h = handle_new(self, self->st->HandleType, args[0], args + 1,
                            nargs - 1, context);
  if (h == NULL)
    return NULL;
  if (self->debug && debug_source_traceback(self, h) < 0) {
    Py_DECREF(h);
    return NULL;
  }
  Py_INCREF(h); /* owned by the queue entry */
  int err = threadsafe
                ? ul_loop_call_soon_threadsafe(self->ul, handle_ready_cb, h)
                : ul_loop_call_soon(self->ul, handle_ready_cb, h);
  if (err < 0) {
    Py_DECREF(h);
    Py_DECREF(h);
    return (HandleObj *)ulpy_raise_errno(err);
  }
  return h;
}

/* ---- Loop: scheduling ------------------------------------------------------- */

static PyObject *Loop_call_soon(LoopObj *self, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames) {
  return (PyObject *)schedule_soon(self, args, nargs, kwnames, "call_soon", 0);
}

static PyObject *Loop_call_soon_threadsafe(LoopObj *self,
                                           PyObject *const *args,
                                           Py_ssize_t nargs,
                                           PyObject *kwnames) {
  return (PyObject *)schedule_soon(self, args, nargs, kwnames,
                                   "call_soon_threadsafe", 1);
}

static PyObject *schedule_at(LoopObj *self, double when,
                             PyObject *const *args, Py_ssize_t nargs,
                             PyObject *context, const char *method) {
  if (ulpy_check_closed(self) < 0)
    return NULL;
  if (self->debug && debug_checks(self, args[0], method, 1) < 0)
    return NULL;
  if (isnan(when)) {
    PyErr_SetString(PyExc_ValueError, "the deadline must not be NaN");
    return NULL;
  }
  HandleObj *h = handle_new(self, self->st->TimerHandleType, args[0],
                            args + 1, nargs - 1, context);
  if (h == NULL)
    return NULL;
  h->is_timer = 1;
  h->when = when;
  if (self->debug && debug_source_traceback(self, h) < 0) {
    Py_DECREF(h);
    return NULL;
  }
  Py_INCREF(h); /* owned by the timer */
  int err = ul_loop_call_at(self->ul, when, handle_ready_cb, h, &h->timer);
  if (err < 0) {
    Py_DECREF(h);
    Py_DECREF(h);
    return ulpy_raise_errno(err);
  }
  return (PyObject *)h;
}

static PyObject *Loop_call_at(LoopObj *self, PyObject *const *args,
                              Py_ssize_t nargs, PyObject *kwnames) {
  PyObject *context;
  if (parse_callback_args(args, nargs, kwnames, 1, "call_at", &context) < 0)
    return NULL;
  double when = PyFloat_AsDouble(args[0]);
  if (when == -1.0 && PyErr_Occurred())
    return NULL;
  return schedule_at(self, when, args + 1, nargs - 1, context, "call_at");
}

static PyObject *Loop_call_later(LoopObj *self, PyObject *const *args,
                                 Py_ssize_t nargs, PyObject *kwnames) {
  PyObject *context;
  if (parse_callback_args(args, nargs, kwnames, 1, "call_later", &context) <
      0)
    return NULL;
  if (args[0] == Py_None) {
    PyErr_SetString(PyExc_TypeError, "delay must not be None");
    return NULL;
  }
  double delay = PyFloat_AsDouble(args[0]);
  if (delay == -1.0 && PyErr_Occurred())
    return NULL;
  /* "call_at" in messages: asyncio's call_later goes through call_at. */
  return schedule_at(self, ul_loop_time(self->ul) + delay, args + 1,
                     nargs - 1, context, "call_at");
}

static PyObject *Loop_time(LoopObj *self, PyObject *Py_UNUSED(ignored)) {
  return PyFloat_FromDouble(ul_loop_time(self->ul));
}

/* ---- Loop: futures and tasks --------------------------------------------- */

static int import_asyncio_modules(core_state *st) {
  if (st->tasks_module == NULL) {
    st->tasks_module = PyImport_ImportModule("asyncio.tasks");
    if (st->tasks_module == NULL)
      return -1;
  }
  if (st->futures_module == NULL) {
    st->futures_module = PyImport_ImportModule("asyncio.futures");
    if (st->futures_module == NULL)
      return -1;
  }
  return 0;
}

/* asyncio's create_future: futures.Future(loop=self). */
PyObject *ulpy_create_future(LoopObj *self) {
  core_state *st = self->st;
  if (import_asyncio_modules(st) < 0)
    return NULL;
  PyObject *cls = PyObject_GetAttr(st->futures_module, st->str_Future);
  if (cls == NULL)
    return NULL;
  PyObject *args[2] = {NULL, (PyObject *)self};
  PyObject *fut = PyObject_Vectorcall(
      cls, args + 1, 0 | PY_VECTORCALL_ARGUMENTS_OFFSET, st->kw_loop);
  Py_DECREF(cls);
  return fut;
}

static PyObject *Loop_create_future(LoopObj *self,
                                    PyObject *Py_UNUSED(ignored)) {
  return ulpy_create_future(self);
}

/* asyncio's create_task: the interpreter's own BaseEventLoop.create_task
 * (its signature and task factory protocol change between versions: 3.13
 * passes extra keyword arguments such as eager_start on to the Task or the
 * factory).  Called as an unbound function, without a frame of ours, so
 * that its debug-mode source traceback is asyncio's. */
static PyObject *create_task_asyncio(LoopObj *self, PyObject *const *args,
                                     Py_ssize_t nargs, PyObject *kwnames) {
  PyObject *f = ulpy_helper(self->st, "base_create_task");
  if (f == NULL)
    return NULL;
  Py_ssize_t n = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
  PyObject **stack = PyMem_Malloc((size_t)(n + 1) * sizeof(PyObject *));
  if (stack == NULL)
    return PyErr_NoMemory();
  stack[0] = (PyObject *)self;
  for (Py_ssize_t i = 0; i < n; i++)
    stack[i + 1] = args[i];
  PyObject *task = PyObject_Vectorcall(f, stack, (size_t)nargs + 1, kwnames);
  PyMem_Free(stack);
  return task;
}

/* create_task(coro, *, name=None, context=None): the common case (no task
 * factory, no other argument) in C; the rest is asyncio's own code. */
static PyObject *Loop_create_task(LoopObj *self, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames) {
  core_state *st = self->st;
  PyObject *name = Py_None, *context = Py_None;
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  if (nargs != 1 ||
      (self->task_factory != NULL && self->task_factory != Py_None))
    return create_task_asyncio(self, args, nargs, kwnames);
  for (Py_ssize_t i = 0; i < nkw; i++) {
    PyObject *key = PyTuple_GET_ITEM(kwnames, i);
    if (PyUnicode_CompareWithASCIIString(key, "name") == 0)
      name = args[nargs + i];
    else if (PyUnicode_CompareWithASCIIString(key, "context") == 0)
      context = args[nargs + i];
    else
      return create_task_asyncio(self, args, nargs, kwnames);
  }
  if (ulpy_check_closed(self) < 0)
    return NULL;
  if (import_asyncio_modules(st) < 0)
    return NULL;
  PyObject *cls = PyObject_GetAttr(st->tasks_module, st->str_Task);
  if (cls == NULL)
    return NULL;
  /* Task(coro, loop=self, name=name, context=context).  In debug mode the
   * task's source traceback ends at our caller: this create_task has no
   * Python frame for asyncio's `del task._source_traceback[-1]` to drop. */
  PyObject *stack[5] = {NULL, args[0], (PyObject *)self, name, context};
  PyObject *task = PyObject_Vectorcall(
      cls, stack + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, st->kw_task);
  Py_DECREF(cls);
  return task;
}

static PyObject *Loop_get_task_factory_attr(LoopObj *self, void *c) {
  (void)c;
  return Py_NewRef(self->task_factory ? self->task_factory : Py_None);
}

static int Loop_set_task_factory_attr(LoopObj *self, PyObject *v, void *c) {
  (void)c;
  Py_XINCREF(v);
  Py_XSETREF(self->task_factory, v);
  return 0;
}

/* ---- Loop: fd watchers ----------------------------------------------------- */

/* An int from a Python int; -1 with an exception set on overflow. */
static int long_as_fd(PyObject *v) {
  long l = PyLong_AsLong(v);
  if (l == -1 && PyErr_Occurred())
    return -1;
  if (l < INT_MIN || l > INT_MAX) {
    PyErr_SetString(PyExc_OverflowError,
                    "Python int too large to convert to C int");
    return -1;
  }
  return (int)l;
}

/* selectors._fileobj_to_fd: an int, or an object with fileno(). */
int ulpy_fileobj_to_fd(PyObject *fileobj) {
  int fd;
  if (PyLong_Check(fileobj)) {
    fd = long_as_fd(fileobj);
  } else {
    static PyObject *str_fileno = NULL; /* interned once, never freed */
    if (str_fileno == NULL &&
        (str_fileno = PyUnicode_InternFromString("fileno")) == NULL)
      return -1;
    /* int(fileobj.fileno()), as selectors does (a mock's fileno() too) */
    PyObject *r = PyObject_CallMethodNoArgs(fileobj, str_fileno);
    PyObject *n = r ? PyNumber_Long(r) : NULL;
    Py_XDECREF(r);
    if (n == NULL) {
      if (PyErr_ExceptionMatches(PyExc_AttributeError) ||
          PyErr_ExceptionMatches(PyExc_TypeError) ||
          PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "Invalid file object: %R", fileobj);
      }
      return -1;
    }
    fd = long_as_fd(n);
    Py_DECREF(n);
  }
  if (fd == -1 && PyErr_Occurred())
    return -1;
  if (fd < 0) {
    PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %d", fd);
    return -1;
  }
  return fd;
}

/* The libunixloop callback of an fd: queue its Handle, as asyncio's
 * _process_events does; a cancelled one is removed instead. */
static void io_ready(LoopObj *self, int fd, HandleObj *h, int reading) {
  if (h->cancelled) {
    PyObject *key = PyLong_FromLong(fd);
    if (key == NULL) {
      PyErr_WriteUnraisable((PyObject *)self);
      return;
    }
    PyObject *table = reading ? self->readers : self->writers;
    if (reading)
      ul_loop_remove_reader(self->ul, fd);
    else
      ul_loop_remove_writer(self->ul, fd);
    if (PyDict_DelItem(table, key) < 0)
      PyErr_Clear();
    Py_DECREF(key);
    return;
  }
  Py_INCREF(h);
  if (ul_loop_call_soon(self->ul, handle_ready_cb, h) < 0)
    Py_DECREF(h);
}

static void io_read_cb(ul_loop *ul, int fd, int events, void *arg) {
  (void)events;
  io_ready(ul_loop_get_data(ul), fd, arg, 1);
}

static void io_write_cb(ul_loop *ul, int fd, int events, void *arg) {
  (void)events;
  io_ready(ul_loop_get_data(ul), fd, arg, 0);
}

PyObject *ulpy_add_watcher(LoopObj *self, PyObject *const *args,
                             Py_ssize_t nargs, int reading) {
  const char *method = reading ? "_add_reader" : "_add_writer";
  if (nargs < 2) {
    PyErr_Format(PyExc_TypeError, "%s() takes at least 2 arguments", method);
    return NULL;
  }
  if (ulpy_check_closed(self) < 0)
    return NULL;
  int fd = ulpy_fileobj_to_fd(args[0]);
  if (fd < 0)
    return NULL;
  HandleObj *h = handle_new(self, self->st->HandleType, args[1], args + 2,
                            nargs - 2, NULL);
  if (h == NULL)
    return NULL;
  int err = reading ? ul_loop_add_reader(self->ul, fd, io_read_cb, h)
                    : ul_loop_add_writer(self->ul, fd, io_write_cb, h);
  if (err < 0) {
    Py_DECREF(h);
    return ulpy_raise_errno(err);
  }
  PyObject *table = reading ? self->readers : self->writers;
  PyObject *key = PyLong_FromLong(fd);
  PyObject *old = NULL;
  if (key == NULL)
    goto fail;
  old = PyDict_GetItemWithError(table, key);
  Py_XINCREF(old);
  if (PyErr_Occurred() || PyDict_SetItem(table, key, (PyObject *)h) < 0)
    goto fail;
  Py_DECREF(key);
  if (old != NULL) {
    PyObject *r = Handle_cancel((HandleObj *)old, NULL);
    Py_XDECREF(r);
    Py_DECREF(old);
  }
  return (PyObject *)h; /* the table keeps its own reference */

fail:
  if (reading)
    ul_loop_remove_reader(self->ul, fd);
  else
    ul_loop_remove_writer(self->ul, fd);
  Py_XDECREF(key);
  Py_XDECREF(old);
  Py_DECREF(h);
  return NULL;
}

PyObject *ulpy_remove_watcher(LoopObj *self, PyObject *fileobj,
                                int reading) {
  if (self->closed || self->ul == NULL)
    Py_RETURN_FALSE;
  int fd = ulpy_fileobj_to_fd(fileobj);
  if (fd < 0)
    return NULL;
  int found = reading ? ul_loop_remove_reader(self->ul, fd)
                      : ul_loop_remove_writer(self->ul, fd);
  PyObject *table = reading ? self->readers : self->writers;
  PyObject *key = PyLong_FromLong(fd);
  if (key == NULL)
    return NULL;
  PyObject *h = PyDict_GetItemWithError(table, key);
  if (h == NULL) {
    Py_DECREF(key);
    if (PyErr_Occurred())
      return NULL;
    return PyBool_FromLong(found > 0);
  }
  Py_INCREF(h);
  int r = PyDict_DelItem(table, key);
  Py_DECREF(key);
  if (r < 0) {
    Py_DECREF(h);
    return NULL;
  }
  int was_cancelled = ((HandleObj *)h)->cancelled;
  PyObject *c = Handle_cancel((HandleObj *)h, NULL);
  Py_DECREF(h);
  if (c == NULL)
    return NULL;
  Py_DECREF(c);
  return PyBool_FromLong(!was_cancelled);
}

static PyObject *Loop_add_reader(LoopObj *self, PyObject *const *args,
                                 Py_ssize_t nargs) {
  return ulpy_add_watcher(self, args, nargs, 1);
}

static PyObject *Loop_add_writer(LoopObj *self, PyObject *const *args,
                                 Py_ssize_t nargs) {
  return ulpy_add_watcher(self, args, nargs, 0);
}

static PyObject *Loop_remove_reader(LoopObj *self, PyObject *fd) {
  return ulpy_remove_watcher(self, fd, 1);
}

static PyObject *Loop_remove_writer(LoopObj *self, PyObject *fd) {
  return ulpy_remove_watcher(self, fd, 0);
}

/* ---- Loop: signals ---------------------------------------------------------
 *
 * CPython's signal module owns the dispositions (see unixloop.h): asyncio's
 * add_signal_handler() installs a no-op Python handler and points
 * signal.set_wakeup_fd() at the loop's self-pipe, where the C-level handler
 * writes each signal number.  The reading side is here: it turns those
 * bytes into the registered Handles without a Python frame.
 */

/* A Handle that is not scheduled (for signal handlers). */
static PyObject *Loop_make_handle(LoopObj *self, PyObject *const *args,
                                  Py_ssize_t nargs) {
  if (nargs < 1) {
    PyErr_SetString(PyExc_TypeError, "_make_handle() needs a callback");
    return NULL;
  }
  return (PyObject *)handle_new(self, self->st->HandleType, args[0],
                                args + 1, nargs - 1, NULL);
}

/* Queues an existing Handle, as asyncio's _add_callback. */
static int queue_handle(LoopObj *self, HandleObj *h) {
  Py_INCREF(h);
  int err = ul_loop_call_soon(self->ul, handle_ready_cb, h);
  if (err < 0) {
    Py_DECREF(h);
    ulpy_raise_errno(err);
    return -1;
  }
  return 0;
}

static int dispatch_signal(LoopObj *self, PyObject *handlers, int signum) {
  PyObject *key = PyLong_FromLong(signum);
  if (key == NULL)
    return -1;
  PyObject *h = PyDict_GetItemWithError(handlers, key);
  Py_XINCREF(h);
  int rc = 0;
  if (h == NULL) {
    rc = PyErr_Occurred() ? -1 : 0; /* a race with removal: ignore */
  } else if (Py_TYPE(h) != self->st->HandleType) {
    /* Not one of ours: asyncio's own path. */
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_handle_signal",
                                      "(O)", key);
    rc = r ? 0 : -1;
    Py_XDECREF(r);
  } else if (((HandleObj *)h)->cancelled) {
    PyObject *r = PyObject_CallMethod((PyObject *)self,
                                      "remove_signal_handler", "(O)", key);
    rc = r ? 0 : -1;
    Py_XDECREF(r);
  } else {
    rc = queue_handle(self, (HandleObj *)h);
  }
  Py_XDECREF(h);
  Py_DECREF(key);
  return rc;
}

/* The self-pipe's reader: _read_signals(fd, handlers). */
static PyObject *Loop_read_signals(LoopObj *self, PyObject *const *args,
                                   Py_ssize_t nargs) {
  if (nargs != 2 || !PyDict_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "_read_signals(fd, handlers)");
    return NULL;
  }
  int fd = ulpy_fileobj_to_fd(args[0]);
  if (fd < 0)
    return NULL;
  if (ulpy_check_closed(self) < 0)
    return NULL;
  unsigned char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == -1 && errno == EINTR)
      continue;
    if (n <= 0)
      break; /* EAGAIN: drained; other errors: as asyncio, ignore */
    for (ssize_t i = 0; i < n; i++) {
      /* Zero bytes are plain wake-ups (_write_to_self). */
      if (buf[i] != 0 && dispatch_signal(self, args[1], buf[i]) < 0)
        return NULL;
    }
  }
  Py_RETURN_NONE;
}

/* ---- Loop: running -------------------------------------------------------- */

static void before_poll(ul_loop *ul, int timeout_ms, void *arg) {
  LoopObj *self = arg;
  (void)ul;
  /* A zero-timeout poll is too short to be worth handing the GIL over. */
  if (timeout_ms != 0)
    self->released = PyEval_SaveThread();
}

static int after_poll(ul_loop *ul, int poll_err, void *arg) {
  LoopObj *self = arg;
  (void)ul;
  if (self->released != NULL) {
    PyEval_RestoreThread(self->released);
    self->released = NULL;
  }
  /* Run Python's signal handlers now: Ctrl-C must interrupt a loop that
   * was waiting (KeyboardInterrupt, or asyncio.Runner's handler). */
  if (PyErr_CheckSignals() < 0) {
    self->failed = 1;
    return -EINTR;
  }
  if (poll_err < 0 && poll_err != -EINTR) {
    self->failed = 1;
    ulpy_raise_errno(poll_err);
    return poll_err;
  }
  return 0;
}

static PyObject *run_result(LoopObj *self, int err) {
  if (self->failed) {
    self->failed = 0;
    if (self->pending_exc_type != NULL) {
      if (PyErr_Occurred()) {
        Py_CLEAR(self->pending_exc_type);
        Py_CLEAR(self->pending_exc);
        Py_CLEAR(self->pending_exc_tb);
      } else {
        PyErr_Restore(self->pending_exc_type, self->pending_exc,
                      self->pending_exc_tb);
        self->pending_exc_type = self->pending_exc = NULL;
        self->pending_exc_tb = NULL;
      }
    }
    if (PyErr_Occurred())
      return NULL;
  }
  if (err < 0 && err != -EINTR)
    return ulpy_raise_errno(err);
  Py_RETURN_NONE;
}

/* Runs until stop(); the Python run_forever() sets up around it. */
static PyObject *Loop_run(LoopObj *self, PyObject *Py_UNUSED(ignored)) {
  if (ulpy_check_closed(self) < 0)
    return NULL;
  self->failed = 0;
  int err = ul_loop_run(self->ul);
  self->stopping = 0;
  return run_result(self, err);
}

static PyObject *Loop_run_once(LoopObj *self, PyObject *Py_UNUSED(ignored)) {
  if (ulpy_check_closed(self) < 0)
    return NULL;
  self->failed = 0;
  return run_result(self, ul_loop_run_once(self->ul, 1));
}

static PyObject *Loop_stop(LoopObj *self, PyObject *Py_UNUSED(ignored)) {
  self->stopping = 1;
  if (self->ul != NULL)
    ul_loop_stop(self->ul);
  Py_RETURN_NONE;
}

static PyObject *Loop_is_running(LoopObj *self, PyObject *Py_UNUSED(ignored)) {
  return PyBool_FromLong(self->ul != NULL && ul_loop_is_running(self->ul));
}

static PyObject *Loop_is_closed(LoopObj *self, PyObject *Py_UNUSED(ignored)) {
  return PyBool_FromLong(self->closed);
}

int ulpy_transport_hold(LoopObj *loop, PyObject *transport) {
  return PySet_Add(loop->open_transports, transport);
}

/* May free the transport; keeps the current exception. */
void ulpy_transport_release(LoopObj *loop, PyObject *transport) {
  if (loop->open_transports == NULL)
    return; /* cleared with the loop: the reference is gone already */
  PyObject *type, *v, *tb;
  PyErr_Fetch(&type, &v, &tb);
  if (PySet_Discard(loop->open_transports, transport) < 0)
    PyErr_WriteUnraisable(transport);
  PyErr_Restore(type, v, tb);
}

void ulpy_warn_unclosed(PyObject *transport) {
  PyObject *type, *v, *tb;
  PyErr_Fetch(&type, &v, &tb);
  if (PyErr_ResourceWarning(transport, 1, "unclosed transport %R",
                            transport) < 0)
    PyErr_WriteUnraisable(transport);
  PyErr_Restore(type, v, tb);
}

void ulpy_close_quietly(PyObject *transport, PyObject *fileobj) {
  PyObject *type, *v, *tb;
  PyErr_Fetch(&type, &v, &tb);
  PyObject *r = PyObject_CallMethod(fileobj, "close", NULL);
  if (r == NULL)
    PyErr_WriteUnraisable(transport);
  Py_XDECREF(r);
  PyErr_Restore(type, v, tb);
}

PyObject *ulpy_orphan_close(LoopObj *loop, int *closing) {
  *closing = 1;
  ulpy_check_closed(loop);
  return NULL;
}

/* After ul_loop_close(): drop the references of the transports it ended
 * (collected now unless the program holds them: "unclosed transport"). */
static void release_transports(LoopObj *self) {
  if (self->open_transports == NULL)
    return;
  PyObject *type, *v, *tb;
  PyErr_Fetch(&type, &v, &tb);
  if (PySet_Clear(self->open_transports) < 0)
    PyErr_WriteUnraisable((PyObject *)self);
  PyErr_Restore(type, v, tb);
}

/* Frees the C loop: queued callbacks and timers are dropped (asyncio's
 * close() clears _ready and _scheduled), fd watchers are forgotten. */
static void loop_close_core(LoopObj *self) {
  if (self->ul == NULL)
    return;
  ul_loop *ul = self->ul;
  int was_closed = self->closed;
  self->closed = 1; /* streams losing their connection now see it closed */
  if (ul_loop_close(ul) != 0) {
    self->closed = was_closed;
    return; /* running: the caller checked; keep everything */
  }
  self->ul = NULL;
  release_transports(self);
  PyObject *r = PyObject_CallMethod(self->readers, "clear", NULL);
  Py_XDECREF(r);
  r = PyObject_CallMethod(self->writers, "clear", NULL);
  Py_XDECREF(r);
}

static PyObject *Loop_close_core(LoopObj *self, PyObject *Py_UNUSED(ignored)) {
  if (self->ul != NULL && ul_loop_is_running(self->ul)) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot close a running event loop");
    return NULL;
  }
  loop_close_core(self);
  if (PyErr_Occurred())
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *Loop_backend(LoopObj *self, PyObject *Py_UNUSED(ignored)) {
  if (self->ul == NULL)
    Py_RETURN_NONE;
  return PyUnicode_FromString(ul_loop_backend_name(self->ul));
}

/* ---- Loop: attributes ----------------------------------------------------- */

static PyObject *Loop_get_closed(LoopObj *self, void *c) {
  (void)c;
  return PyBool_FromLong(self->closed);
}

static int Loop_set_closed(LoopObj *self, PyObject *v, void *c) {
  (void)c;
  int t = v ? PyObject_IsTrue(v) : 0;
  if (t < 0)
    return -1;
  self->closed = t || self->ul == NULL;
  return 0;
}

static PyObject *Loop_get_debug_attr(LoopObj *self, void *c) {
  (void)c;
  return PyBool_FromLong(self->debug);
}

static int Loop_set_debug_attr(LoopObj *self, PyObject *v, void *c) {
  (void)c;
  int t = v ? PyObject_IsTrue(v) : 0;
  if (t < 0)
    return -1;
  self->debug = t;
  return 0;
}

/* asyncio's Future and Task ask for it at creation: one per request in a
 * streams server, so not BaseEventLoop's Python method. */
static PyObject *Loop_get_debug(LoopObj *self, PyObject *Py_UNUSED(ignored)) {
  return PyBool_FromLong(self->debug);
}

static PyObject *Loop_get_stopping(LoopObj *self, void *c) {
  (void)c;
  return PyBool_FromLong(self->stopping);
}

static int Loop_set_stopping(LoopObj *self, PyObject *v, void *c) {
  (void)c;
  int t = v ? PyObject_IsTrue(v) : 0;
  if (t < 0)
    return -1;
  self->stopping = t;
  if (t && self->ul != NULL)
    ul_loop_stop(self->ul);
  return 0;
}

static PyObject *Loop_get_slow(LoopObj *self, void *c) {
  (void)c;
  return PyFloat_FromDouble(self->slow_callback_duration);
}

static int Loop_set_slow(LoopObj *self, PyObject *v, void *c) {
  (void)c;
  if (v == NULL) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete");
    return -1;
  }
  double d = PyFloat_AsDouble(v);
  if (d == -1.0 && PyErr_Occurred())
    return -1;
  self->slow_callback_duration = d;
  return 0;
}

static PyObject *Loop_get_readers(LoopObj *self, void *c) {
  (void)c;
  return Py_NewRef(self->readers);
}

static PyObject *Loop_get_writers(LoopObj *self, void *c) {
  (void)c;
  return Py_NewRef(self->writers);
}

/* ---- Loop: life cycle ----------------------------------------------------- */

static PyObject *Loop_new(PyTypeObject *tp, PyObject *args, PyObject *kw) {
  (void)args;
  (void)kw;
  core_state *st = state_of_type(tp);
  if (st == NULL)
    return NULL;
  LoopObj *self = (LoopObj *)tp->tp_alloc(tp, 0);
  if (self == NULL)
    return NULL;
  self->st = st;
  self->slow_callback_duration = 0.1;
  self->readers = PyDict_New();
  self->writers = PyDict_New();
  self->open_transports = PySet_New(NULL);
  if (self->readers == NULL || self->writers == NULL ||
      self->open_transports == NULL) {
    Py_DECREF(self);
    return NULL;
  }
  int err = ul_loop_new(&self->ul, NULL);
  if (err < 0) {
    self->ul = NULL;
    self->closed = 1;
    Py_DECREF(self);
    if (err == -EINVAL) {
      PyErr_SetString(PyExc_ValueError,
                      "UNIXLOOP_BACKEND must be 'epoll' or 'poll'");
      return NULL;
    }
    return ulpy_raise_errno(err);
  }
  ul_loop_set_data(self->ul, self);
  ul_loop_set_poll_hooks(self->ul, before_poll, after_poll, self);
  return (PyObject *)self;
}

typedef struct {
  visitproc visit;
  void *arg;
} traverse_ctx;

/* Every callback this binding queues is a Handle run by handle_ready_cb. */
static int traverse_pending(ul_cb cb, void *arg, void *ctx) {
  traverse_ctx *t = ctx;
  if (cb != handle_ready_cb)
    return 0;
  return t->visit((PyObject *)arg, t->arg);
}

static int Loop_traverse(LoopObj *self, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(self));
  /* The ready queue and the timers own references too: without them an
   * unclosed loop with work pending would never be collected. */
  if (self->ul != NULL) {
    traverse_ctx t = {visit, arg};
    int r = ul_loop_walk_pending(self->ul, traverse_pending, &t);
    if (r)
      return r;
  }
  Py_VISIT(self->readers);
  Py_VISIT(self->writers);
  Py_VISIT(self->task_factory);
  Py_VISIT(self->open_transports);
  return 0;
}

static int Loop_clear(LoopObj *self) {
  /* The C loop holds borrowed pointers to the handles in the tables: free
   * it before the tables go. */
  if (self->ul != NULL && !ul_loop_is_running(self->ul)) {
    self->closed = 1;
    ul_loop_close(self->ul);
    self->ul = NULL;
    release_transports(self);
  }
  Py_CLEAR(self->readers);
  Py_CLEAR(self->writers);
  Py_CLEAR(self->task_factory);
  Py_CLEAR(self->open_transports);
  return 0;
}

static void Loop_dealloc(LoopObj *self) {
  PyTypeObject *tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  if (self->weakreflist != NULL)
    PyObject_ClearWeakRefs((PyObject *)self);
  (void)Loop_clear(self);
  tp->tp_free(self);
  Py_DECREF(tp);
}

static PyMethodDef Loop_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))Loop_call_soon,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"call_soon_threadsafe",
     (PyCFunction)(void (*)(void))Loop_call_soon_threadsafe,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"call_later", (PyCFunction)(void (*)(void))Loop_call_later,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"call_at", (PyCFunction)(void (*)(void))Loop_call_at,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"time", (PyCFunction)Loop_time, METH_NOARGS, NULL},
    {"get_debug", (PyCFunction)Loop_get_debug, METH_NOARGS, NULL},
    {"create_future", (PyCFunction)Loop_create_future, METH_NOARGS, NULL},
    {"create_task", (PyCFunction)(void (*)(void))Loop_create_task,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"_add_reader", (PyCFunction)(void (*)(void))Loop_add_reader,
     METH_FASTCALL, NULL},
    {"_add_writer", (PyCFunction)(void (*)(void))Loop_add_writer,
     METH_FASTCALL, NULL},
    {"_remove_reader", (PyCFunction)Loop_remove_reader, METH_O, NULL},
    {"_remove_writer", (PyCFunction)Loop_remove_writer, METH_O, NULL},
    {"_make_handle", (PyCFunction)(void (*)(void))Loop_make_handle,
     METH_FASTCALL, NULL},
    {"_sock_recv_wait", (PyCFunction)(void (*)(void))ulpy_sock_recv_wait,
     METH_FASTCALL, NULL},
    {"_sock_try_recv", (PyCFunction)(void (*)(void))ulpy_sock_try_recv,
     METH_FASTCALL, NULL},
    {"_sock_try_send", (PyCFunction)(void (*)(void))ulpy_sock_try_send,
     METH_FASTCALL, NULL},
    {"_read_signals", (PyCFunction)(void (*)(void))Loop_read_signals,
     METH_FASTCALL, NULL},
    {"_run", (PyCFunction)Loop_run, METH_NOARGS, NULL},
    {"_run_once", (PyCFunction)Loop_run_once, METH_NOARGS, NULL},
    {"stop", (PyCFunction)Loop_stop, METH_NOARGS, NULL},
    {"is_running", (PyCFunction)Loop_is_running, METH_NOARGS, NULL},
    {"is_closed", (PyCFunction)Loop_is_closed, METH_NOARGS, NULL},
    {"_close_core", (PyCFunction)Loop_close_core, METH_NOARGS, NULL},
    {"_backend", (PyCFunction)Loop_backend, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Loop_getset[] = {
    {"_closed", (getter)Loop_get_closed, (setter)Loop_set_closed, NULL, NULL},
    {"_debug", (getter)Loop_get_debug_attr, (setter)Loop_set_debug_attr, NULL,
     NULL},
    {"_stopping", (getter)Loop_get_stopping, (setter)Loop_set_stopping, NULL,
     NULL},
    {"slow_callback_duration", (getter)Loop_get_slow, (setter)Loop_set_slow,
     NULL, NULL},
    {"_readers", (getter)Loop_get_readers, NULL, NULL, NULL},
    {"_task_factory", (getter)Loop_get_task_factory_attr,
     (setter)Loop_set_task_factory_attr, NULL, NULL},
    {"_writers", (getter)Loop_get_writers, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Loop_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(LoopObj, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyType_Slot Loop_slots[] = {
    {Py_tp_new, Loop_new},
    {Py_tp_dealloc, Loop_dealloc},
    {Py_tp_traverse, Loop_traverse},
    {Py_tp_clear, Loop_clear},
    {Py_tp_methods, Loop_methods},
    {Py_tp_getset, Loop_getset},
    {Py_tp_members, Loop_members},
    {0, NULL}};

static PyType_Spec Loop_spec = {
    .name = "unixloop._core.Loop",
    .basicsize = sizeof(LoopObj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = Loop_slots};

/* ---- module --------------------------------------------------------------- */

static int core_exec(PyObject *mod) {
  core_state *st = PyModule_GetState(mod);
  live_modules++; /* core_free runs for every module with a state */
  st->HandleType =
      (PyTypeObject *)PyType_FromModuleAndSpec(mod, &Handle_spec, NULL);
  if (st->HandleType == NULL)
    return -1;
  st->TimerHandleType = (PyTypeObject *)PyType_FromModuleAndSpec(
      mod, &TimerHandle_spec, (PyObject *)st->HandleType);
  if (st->TimerHandleType == NULL)
    return -1;
  st->LoopType =
      (PyTypeObject *)PyType_FromModuleAndSpec(mod, &Loop_spec, NULL);
  if (st->LoopType == NULL)
    return -1;
  st->str_call_exception_handler =
      PyUnicode_InternFromString("call_exception_handler");
  st->str_check_thread = PyUnicode_InternFromString("_check_thread");
  st->str_check_callback = PyUnicode_InternFromString("_check_callback");
  st->str_Task = PyUnicode_InternFromString("Task");
  st->str_Future = PyUnicode_InternFromString("Future");
  PyObject *loop_str = PyUnicode_InternFromString("loop");
  PyObject *name_str = PyUnicode_InternFromString("name");
  PyObject *context_str = PyUnicode_InternFromString("context");
  st->kw_loop = loop_str ? PyTuple_Pack(1, loop_str) : NULL;
  st->kw_task = loop_str && name_str && context_str
                    ? PyTuple_Pack(3, loop_str, name_str, context_str)
                    : NULL;
  Py_XDECREF(loop_str);
  Py_XDECREF(name_str);
  Py_XDECREF(context_str);
  if (!st->str_call_exception_handler || !st->str_check_thread ||
      !st->str_check_callback || !st->str_Task || !st->str_Future ||
      !st->kw_loop || !st->kw_task)
    return -1;
  if (ulpy_sock_exec(mod, st) < 0 || ulpy_transport_exec(mod, st) < 0 ||
      ulpy_dgram_exec(mod, st) < 0 ||
      ulpy_pipe_exec(mod, st) < 0)
    return -1;
  if (ulpy_process_exec(mod, st) < 0)
    return -1;
  if (ulpy_server_exec(mod) < 0)
    return -1;
  if (PyModule_AddType(mod, st->HandleType) < 0 ||
      PyModule_AddType(mod, st->TimerHandleType) < 0 ||
      PyModule_AddType(mod, st->LoopType) < 0)
    return -1;
  if (PyModule_AddStringConstant(mod, "libunixloop_version", ul_version()) <
      0)
    return -1;
  return 0;
}

static int core_traverse(PyObject *mod, visitproc visit, void *arg) {
  core_state *st = PyModule_GetState(mod);
  Py_VISIT(st->HandleType);
  Py_VISIT(st->TimerHandleType);
  Py_VISIT(st->LoopType);
  Py_VISIT(st->SockOpType);
  Py_VISIT(st->TransportType);
  Py_VISIT(st->DgramType);
  Py_VISIT(st->ReadPipeType);
  Py_VISIT(st->WritePipeType);
  Py_VISIT(st->ChildProcessType);
  Py_VISIT(st->helpers);
  Py_VISIT(st->tasks_module);
  Py_VISIT(st->futures_module);
  return 0;
}

static int core_clear(PyObject *mod) {
  core_state *st = PyModule_GetState(mod);
  Py_CLEAR(st->HandleType);
  Py_CLEAR(st->TimerHandleType);
  Py_CLEAR(st->LoopType);
  Py_CLEAR(st->SockOpType);
  Py_CLEAR(st->TransportType);
  Py_CLEAR(st->DgramType);
  Py_CLEAR(st->ReadPipeType);
  Py_CLEAR(st->WritePipeType);
  Py_CLEAR(st->ChildProcessType);
  Py_CLEAR(st->helpers);
  Py_CLEAR(st->str_call_exception_handler);
  Py_CLEAR(st->str_check_thread);
  Py_CLEAR(st->str_check_callback);
  Py_CLEAR(st->tasks_module);
  Py_CLEAR(st->futures_module);
  Py_CLEAR(st->str_Task);
  Py_CLEAR(st->str_Future);
  Py_CLEAR(st->kw_loop);
  Py_CLEAR(st->kw_task);
  return 0;
}

static void core_free(void *mod) {
  (void)core_clear((PyObject *)mod);
  if (--live_modules == 0)
    handle_freelist_clear();
}

static PyModuleDef_Slot core_slots[] = {{Py_mod_exec, core_exec},
                                        {0, NULL}};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "unixloop._core",
    .m_doc = "The C core of unixloop: Loop, Handle and TimerHandle.",
    .m_size = sizeof(core_state),
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
