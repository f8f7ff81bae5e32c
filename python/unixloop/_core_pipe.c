/*
 * _core_pipe.c -- ReadPipeTransport and WritePipeTransport: asyncio's
 * _UnixReadPipeTransport and _UnixWritePipeTransport on libunixloop's pipe
 * transports (ul_pipe_open_read / ul_pipe_open_write).
 *
 * The types derive from asyncio.ReadTransport and from asyncio's
 * _FlowControlMixin (a WriteTransport), so isinstance() checks,
 * get_extra_info() and writelines() are asyncio's own.  Behaviour follows
 * CPython 3.11's unix_events: the same errors and messages, the 'pipe'
 * extra, the repr, which errors go to the exception handler.
 *
 * Lifetime: the stream holds a reference to the transport from
 * ul_pipe_open_*() until connection_lost, which then closes the pipe object
 * (the stream was told not to close the fd itself).  A loop closed with the
 * transport still open drops that reference without calling
 * connection_lost, as asyncio does: the transport stays "open", and when it
 * is collected it warns (ResourceWarning) and closes the pipe.
 */
#include "_core.h"

#include <structmember.h>
#include <sys/ioctl.h>

#define MAX_READ_SIZE (256 * 1024) /* asyncio's max_size */

typedef struct {
  PyObject_HEAD
  PyObject *extra;          /* asyncio BaseTransport.__slots__ = ('_extra',) */
  PyObject *fc_slots[4];    /* write pipe: _FlowControlMixin's four slots,
                               unused (their names are getters below) */
  ul_stream *stream;        /* NULL once the connection is lost */
  LoopObj *loop;
  PyObject *pipe;           /* NULL once closed */
  PyObject *protocol;
  PyObject *data_received;  /* read pipe: the bound method */
  PyObject *lost_exc;       /* what connection_lost will be given */
  PyObject *rbytes;         /* read pipe: the bytes object read into next */
  PyObject *dict;
  PyObject *weakreflist;
  int fd;
  int writing;              /* WritePipeTransport */
  int conn_lost;            /* asyncio's _conn_lost */
  int protocol_paused;
} PipeObj;

static void report(PipeObj *t, const char *message) {
  ulpy_transport_report(t->loop, (PyObject *)t, t->protocol, message);
}

/* ---- the stream's callbacks ------------------------------------------------ */

static void on_made(ul_stream *stream, void *ctx) {
  PipeObj *t = ctx;
  (void)stream;
  PyObject *r = PyObject_CallMethod(t->protocol, "connection_made", "(O)",
                                    (PyObject *)t);
  if (r == NULL)
    report(t, "Exception in callback connection_made()");
  Py_XDECREF(r);
}

/* Reads go straight into a new bytes object (no copy) of the size that is
 * waiting in the pipe (FIONREAD), so that it need not be shrunk: shrinking
 * a large block makes malloc give it back to the kernel, and every read
 * would then map and unmap its buffer. */
static char *on_get_buffer(ul_stream *stream, size_t hint, size_t *len,
                           void *ctx) {
  PipeObj *t = ctx;
  (void)hint;
  int avail = 0;
  Py_ssize_t size = MAX_READ_SIZE;
  if (ioctl(ul_stream_fileno(stream), FIONREAD, &avail) == 0)
    size = avail <= 0 ? 1 : avail < MAX_READ_SIZE ? avail : MAX_READ_SIZE;
  *len = (size_t)size;
  /* NULL: the stream ends with -ENOBUFS */
  return ulpy_read_bytes_buffer(&t->rbytes, size);
}

/* asyncio calls data_received from the reader's callback: an exception is
 * reported as a callback's, and reading goes on. */
static void on_buffer_updated(ul_stream *stream, size_t n, void *ctx) {
  PipeObj *t = ctx;
  (void)stream;
  PyObject *bytes = ulpy_read_bytes_take(&t->rbytes, n);
  PyObject *r = bytes ? PyObject_CallOneArg(t->data_received, bytes) : NULL;
  Py_XDECREF(bytes);
  if (r == NULL)
    report(t, "Exception in callback _read_ready()");
  Py_XDECREF(r);
}

/* EOF: eof_received (its result ignored), then connection_lost(None). */
static int on_eof(ul_stream *stream, void *ctx) {
  PipeObj *t = ctx;
  (void)stream;
  PyObject *r = PyObject_CallMethod(t->protocol, "eof_received", NULL);
  if (r == NULL)
    report(t, "Exception in callback eof_received()");
  Py_XDECREF(r);
  return 0;
}

static void on_pause_writing(ul_stream *stream, void *ctx) {
  PipeObj *t = ctx;
  (void)stream;
  t->protocol_paused = 1;
  ulpy_protocol_flow_call(t->loop, (PyObject *)t, t->protocol, 1);
}

static void on_resume_writing(ul_stream *stream, void *ctx) {
  PipeObj *t = ctx;
  (void)stream;
  t->protocol_paused = 0;
  ulpy_protocol_flow_call(t->loop, (PyObject *)t, t->protocol, 0);
}

/* asyncio's _call_connection_lost: the protocol, then pipe.close(). */
static void on_lost(ul_stream *stream, int err, void *ctx) {
  PipeObj *t = ctx;
  (void)stream;
  t->stream = NULL;
  if (err == -ECANCELED) {
    /* ul_loop_close(): asyncio leaves an open pipe transport alone; the
     * loop drops the stream's reference afterwards. */
    return;
  }
  PyObject *exc = t->lost_exc;
  t->lost_exc = NULL;
  if (exc == NULL && err != 0)
    exc = ulpy_exception_from_errno(err);
  PyErr_Clear();
  /* asyncio reports a read pipe's errors but EIO (a PTY whose other side
   * closed); a write pipe's errors are all OSErrors, never reported. */
  if (exc != NULL && !t->writing && err != -EIO)
    ulpy_transport_exception(t->loop, (PyObject *)t, t->protocol,
                                "Fatal read error on pipe transport", exc);
  PyObject *r = PyObject_CallMethod(t->protocol, "connection_lost", "(O)",
                                    exc ? exc : Py_None);
  if (r == NULL)
    report(t, "Exception in callback connection_lost()");
  Py_XDECREF(r);
  Py_XDECREF(exc);
  PyObject *type, *e, *tb;
  PyErr_Fetch(&type, &e, &tb);
  PyObject *pipe = t->pipe;
  t->pipe = NULL;
  r = pipe ? PyObject_CallMethod(pipe, "close", NULL) : NULL;
  Py_XDECREF(r);
  Py_XDECREF(pipe);
  if (PyErr_Occurred())
    PyErr_WriteUnraisable((PyObject *)t);
  PyErr_Restore(type, e, tb);
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->data_received);
  Py_CLEAR(t->rbytes);
  ulpy_transport_release(t->loop, (PyObject *)t); /* the stream's reference */
}

static const ul_stream_protocol read_protocol = {
    .connection_made = on_made,
    .get_buffer = on_get_buffer,
    .buffer_updated = on_buffer_updated,
    .eof_received = on_eof,
    .connection_lost = on_lost,
};

static const ul_stream_protocol write_protocol = {
    .connection_made = on_made,
    .connection_lost = on_lost,
    .pause_writing = on_pause_writing,
    .resume_writing = on_resume_writing,
};

/* ---- construction and life cycle -------------------------------------------- */

static int set_protocol(PipeObj *t, PyObject *protocol) {
  if (!t->writing) {
    PyObject *dr = PyObject_GetAttrString(protocol, "data_received");
    if (dr == NULL)
      return -1;
    Py_XSETREF(t->data_received, dr);
  }
  Py_XSETREF(t->protocol, Py_NewRef(protocol));
  return 0;
}

/* ReadPipeTransport(loop, pipe, protocol, extra=None),
 * WritePipeTransport(loop, pipe, protocol, extra=None) */
static PyObject *Pipe_new(PyTypeObject *tp, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"loop", "pipe", "protocol", "extra", NULL};
  PyObject *loop, *pipe, *protocol, *extra = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|O", kwlist, &loop, &pipe,
                                   &protocol, &extra))
    return NULL;
  /* asyncio calls pipe.fileno(): a bare int is an AttributeError. */
  PyObject *fileno = PyObject_CallMethod(pipe, "fileno", NULL);
  if (fileno == NULL)
    return NULL;
  int fd = PyObject_AsFileDescriptor(fileno);
  Py_DECREF(fileno);
  if (fd < 0)
    return NULL;
  PipeObj *t = (PipeObj *)tp->tp_alloc(tp, 0);
  if (t == NULL)
    return NULL;
  core_state *st = ((LoopObj *)loop)->st;
  t->writing = tp == st->WritePipeType;
  t->extra = extra == Py_None ? PyDict_New() : Py_NewRef(extra);
  t->loop = (LoopObj *)Py_NewRef(loop);
  t->fd = fd;
  if (t->extra == NULL || PyMapping_SetItemString(t->extra, "pipe", pipe) < 0 ||
      set_protocol(t, protocol) < 0 || ulpy_check_closed(t->loop) < 0) {
    Py_DECREF(t);
    return NULL;
  }
  if (ulpy_transport_hold(t->loop, (PyObject *)t) < 0) {
    Py_DECREF(t);
    return NULL;
  }
  int err = t->writing ? ul_pipe_open_write(t->loop->ul, fd, &write_protocol,
                                            t, &t->stream)
                       : ul_pipe_open_read(t->loop->ul, fd, &read_protocol,
                                           t, &t->stream);
  if (err < 0) {
    t->stream = NULL;
    ulpy_transport_release(t->loop, (PyObject *)t);
    Py_DECREF(t);
    if (err == -EINVAL) {
      PyErr_SetString(PyExc_ValueError,
                      tp == st->WritePipeType
                          ? "Pipe transport is only for pipes, sockets and "
                            "character devices"
                          : "Pipe transport is for pipes/sockets only.");
      return NULL;
    }
    return ulpy_raise_errno(err);
  }
  ul_stream_release_fd(t->stream); /* the pipe object owns the fd */
  t->pipe = Py_NewRef(pipe);
  return (PyObject *)t;
}

/* asyncio's __del__: an unclosed transport warns and closes its pipe. */
static void Pipe_finalize(PipeObj *t) {
  if (t->pipe == NULL || t->pipe == Py_None)
    return;
  PyObject *type, *e, *tb;
  PyErr_Fetch(&type, &e, &tb);
  if (PyErr_ResourceWarning((PyObject *)t, 1, "unclosed transport %R",
                            (PyObject *)t) < 0)
    PyErr_WriteUnraisable((PyObject *)t);
  if (t->stream != NULL)
    ul_stream_abort(t->stream); /* its loop is garbage too: stop watching */
  PyObject *pipe = t->pipe;
  t->pipe = NULL;
  PyObject *r = PyObject_CallMethod(pipe, "close", NULL);
  if (r == NULL)
    PyErr_WriteUnraisable((PyObject *)t);
  Py_XDECREF(r);
  Py_DECREF(pipe);
  PyErr_Restore(type, e, tb);
}

static int Pipe_traverse(PipeObj *t, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(t));
  Py_VISIT(t->extra);
  Py_VISIT(t->loop);
  Py_VISIT(t->pipe);
  Py_VISIT(t->protocol);
  Py_VISIT(t->data_received);
  Py_VISIT(t->lost_exc);
  Py_VISIT(t->dict);
  return 0;
}

static int Pipe_clear(PipeObj *t) {
  Py_CLEAR(t->extra);
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->data_received);
  Py_CLEAR(t->lost_exc);
  Py_CLEAR(t->rbytes);
  Py_CLEAR(t->dict);
  return 0;
}

static void Pipe_dealloc(PipeObj *t) {
  PyTypeObject *tp = Py_TYPE(t);
  if (PyObject_CallFinalizerFromDealloc((PyObject *)t) < 0)
    return; /* resurrected */
  PyObject_GC_UnTrack(t);
  if (t->weakreflist != NULL)
    PyObject_ClearWeakRefs((PyObject *)t);
  (void)Pipe_clear(t);
  Py_CLEAR(t->pipe);
  Py_CLEAR(t->loop);
  tp->tp_free(t);
  Py_DECREF(tp);
}

/* After the loop closed with the transport open (stream gone, pipe kept),
 * asyncio's transport is not closing. */
static int is_closing(PipeObj *t) {
  return t->stream == NULL ? t->pipe == NULL
                           : ul_stream_is_closing(t->stream);
}

/* ---- methods both have -------------------------------------------------------- */

static PyObject *Pipe_is_closing(PipeObj *t, PyObject *Py_UNUSED(ignored)) {
  return PyBool_FromLong(is_closing(t));
}

static PyObject *Pipe_close(PipeObj *t, PyObject *Py_UNUSED(ignored)) {
  if (t->stream != NULL)
    ul_stream_close(t->stream); /* a write pipe flushes first */
  Py_RETURN_NONE;
}

static PyObject *Pipe_get_protocol(PipeObj *t, PyObject *Py_UNUSED(ignored)) {
  return Py_NewRef(t->protocol ? t->protocol : Py_None);
}

static PyObject *Pipe_set_protocol(PipeObj *t, PyObject *protocol) {
  if (set_protocol(t, protocol) < 0)
    return NULL;
  Py_RETURN_NONE;
}

/* asyncio's: <Name [closed|closing] fd=N polling|idle [bufsize=N]>, or
 * "open" once the loop is closed. */
static PyObject *Pipe_repr(PipeObj *t) {
  const char *name = Py_TYPE(t)->tp_name;
  const char *dot = strrchr(name, '.');
  name = dot ? dot + 1 : name;
  const char *state = t->pipe == NULL ? " closed"
                      : is_closing(t) ? " closing"
                                      : "";
  if (t->pipe == NULL)
    return PyUnicode_FromFormat("<%s%s fd=%d closed>", name, state, t->fd);
  if (t->stream == NULL || t->loop->closed)
    return PyUnicode_FromFormat("<%s%s fd=%d open>", name, state, t->fd);
  if (!t->writing)
    return PyUnicode_FromFormat(
        "<%s%s fd=%d %s>", name, state, t->fd,
        ul_stream_is_reading(t->stream) ? "polling" : "idle");
  size_t size = ul_stream_get_write_buffer_size(t->stream);
  return PyUnicode_FromFormat("<%s%s fd=%d %s bufsize=%zu>", name, state,
                              t->fd, size > 0 ? "polling" : "idle", size);
}

/* ---- ReadPipeTransport ----------------------------------------------------------- */

static PyObject *Pipe_pause_reading(PipeObj *t, PyObject *Py_UNUSED(ignored)) {
  if (t->stream != NULL)
    (void)ul_stream_pause_reading(t->stream); /* closing: nothing */
  Py_RETURN_NONE;
}

static PyObject *Pipe_resume_reading(PipeObj *t,
                                     PyObject *Py_UNUSED(ignored)) {
  if (t->stream != NULL)
    (void)ul_stream_resume_reading(t->stream);
  Py_RETURN_NONE;
}

/* ---- WritePipeTransport ------------------------------------------------------------- */

static PyObject *Pipe_write(PipeObj *t, PyObject *data) {
  if (!PyBytes_Check(data) && !PyByteArray_Check(data) &&
      !PyMemoryView_Check(data)) {
    /* asyncio: assert isinstance(data, (bytes, bytearray, memoryview)) */
    PyObject *r = PyObject_Repr(data);
    if (r != NULL)
      PyErr_SetObject(PyExc_AssertionError, r);
    Py_XDECREF(r);
    return NULL;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
    return NULL;
  if (view.len == 0) {
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
  }
  if (t->stream == NULL || t->conn_lost || ul_stream_is_closing(t->stream)) {
    PyBuffer_Release(&view);
    if (ulpy_count_lost_write_as(t->loop->st, &t->conn_lost,
                                 "warn_pipe_write_after_close") < 0)
      return NULL;
    Py_RETURN_NONE;
  }
  int err = ulpy_stream_write(t->stream, data, &view);
  PyBuffer_Release(&view);
  if (err < 0)
    return ulpy_raise_errno(err);
  if (ul_stream_is_closing(t->stream))
    t->conn_lost++; /* the write failed: connection_lost is coming */
  if (PyErr_Occurred())
    return NULL; /* pause_writing raised fatally */
  Py_RETURN_NONE;
}

static PyObject *Pipe_can_write_eof(PipeObj *t, PyObject *Py_UNUSED(ignored)) {
  (void)t;
  Py_RETURN_TRUE;
}

static PyObject *Pipe_abort(PipeObj *t, PyObject *Py_UNUSED(ignored)) {
  if (t->stream != NULL)
    ul_stream_abort(t->stream);
  Py_RETURN_NONE;
}

static PyObject *Pipe_get_write_buffer_size(PipeObj *t,
                                            PyObject *Py_UNUSED(ignored)) {
  return PyLong_FromSize_t(
      t->stream ? ul_stream_get_write_buffer_size(t->stream) : 0);
}

static PyObject *Pipe_get_write_buffer_limits(PipeObj *t,
                                              PyObject *Py_UNUSED(ignored)) {
  return ulpy_stream_get_write_buffer_limits(t->stream);
}

static PyObject *Pipe_set_write_buffer_limits(PipeObj *t, PyObject *args,
                                              PyObject *kw) {
  return ulpy_stream_set_write_buffer_limits(t->loop, t->stream, args, kw);
}

/* ---- attributes asyncio's code and tests read -------------------------------------- */

static PyObject *Pipe_get_pipe(PipeObj *t, void *c) {
  (void)c;
  return Py_NewRef(t->pipe ? t->pipe : Py_None);
}

/* Tests drop the pipe of a transport left open: `transport._pipe = None`. */
static int Pipe_set_pipe(PipeObj *t, PyObject *value, void *c) {
  (void)c;
  if (value == NULL || value == Py_None) {
    Py_CLEAR(t->pipe);
    return 0;
  }
  Py_XSETREF(t->pipe, Py_NewRef(value));
  return 0;
}

static PyObject *Pipe_get_fileno(PipeObj *t, void *c) {
  (void)c;
  return PyLong_FromLong(t->fd);
}

static PyObject *Pipe_get_loop(PipeObj *t, void *c) {
  (void)c;
  return Py_NewRef(t->pipe ? (PyObject *)t->loop : Py_None);
}

static PyObject *Pipe_get_protocol_attr(PipeObj *t, void *c) {
  (void)c;
  return Py_NewRef(t->protocol ? t->protocol : Py_None);
}

static PyObject *Pipe_get_closing(PipeObj *t, void *c) {
  (void)c;
  return PyBool_FromLong(is_closing(t));
}

static PyObject *Pipe_get_protocol_paused(PipeObj *t, void *c) {
  (void)c;
  return PyBool_FromLong(t->protocol_paused);
}

#define COMMON_METHODS                                                       \
  {"close", (PyCFunction)Pipe_close, METH_NOARGS, NULL},                     \
  {"is_closing", (PyCFunction)Pipe_is_closing, METH_NOARGS, NULL},           \
  {"get_protocol", (PyCFunction)Pipe_get_protocol, METH_NOARGS, NULL},       \
  {"set_protocol", (PyCFunction)Pipe_set_protocol, METH_O, NULL}

static PyMethodDef ReadPipe_methods[] = {
    COMMON_METHODS,
    {"pause_reading", (PyCFunction)Pipe_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)Pipe_resume_reading, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyMethodDef WritePipe_methods[] = {
    COMMON_METHODS,
    {"write", (PyCFunction)Pipe_write, METH_O, NULL},
    /* asyncio: write_eof is close (the reader's EOF). */
    {"write_eof", (PyCFunction)Pipe_close, METH_NOARGS, NULL},
    {"can_write_eof", (PyCFunction)Pipe_can_write_eof, METH_NOARGS, NULL},
    {"abort", (PyCFunction)Pipe_abort, METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)Pipe_get_write_buffer_size,
     METH_NOARGS, NULL},
    {"get_write_buffer_limits", (PyCFunction)Pipe_get_write_buffer_limits,
     METH_NOARGS, NULL},
    {"set_write_buffer_limits",
     (PyCFunction)(void (*)(void))Pipe_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Pipe_getset[] = {
    {"_pipe", (getter)Pipe_get_pipe, (setter)Pipe_set_pipe, NULL, NULL},
    {"_fileno", (getter)Pipe_get_fileno, NULL, NULL, NULL},
    {"_loop", (getter)Pipe_get_loop, NULL, NULL, NULL},
    {"_protocol", (getter)Pipe_get_protocol_attr, NULL, NULL, NULL},
    {"_closing", (getter)Pipe_get_closing, NULL, NULL, NULL},
    {"_protocol_paused", (getter)Pipe_get_protocol_paused, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Pipe_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(PipeObj, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(PipeObj, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

#define PIPE_SLOTS(methods)                                                  \
  {Py_tp_new, Pipe_new}, {Py_tp_init, ulpy_transport_init},                            \
      {Py_tp_dealloc, Pipe_dealloc}, {Py_tp_finalize, Pipe_finalize},        \
      {Py_tp_traverse, Pipe_traverse}, {Py_tp_clear, Pipe_clear},            \
      {Py_tp_repr, Pipe_repr}, {Py_tp_methods, methods},                     \
      {Py_tp_getset, Pipe_getset}, {Py_tp_members, Pipe_members}, {0, NULL}

static PyType_Slot ReadPipe_slots[] = {PIPE_SLOTS(ReadPipe_methods)};
static PyType_Slot WritePipe_slots[] = {PIPE_SLOTS(WritePipe_methods)};

static PyType_Spec ReadPipe_spec = {
    .name = "unixloop._core.ReadPipeTransport",
    .basicsize = sizeof(PipeObj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = ReadPipe_slots};

static PyType_Spec WritePipe_spec = {
    .name = "unixloop._core.WritePipeTransport",
    .basicsize = sizeof(PipeObj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = WritePipe_slots};

/* Makes the type from `spec` on asyncio.transports.<base_name>, whose
 * instance layout must end where ours says. */
static PyTypeObject *make_type(PyObject *mod, PyObject *transports,
                               const char *base_name, size_t base_size,
                               PyType_Spec *spec) {
  PyObject *base = PyObject_GetAttrString(transports, base_name);
  if (base == NULL)
    return NULL;
  if (((PyTypeObject *)base)->tp_basicsize != (Py_ssize_t)base_size) {
    Py_DECREF(base);
    PyErr_Format(PyExc_ImportError, "asyncio's %s has an unexpected layout",
                 base_name);
    return NULL;
  }
  PyTypeObject *tp =
      (PyTypeObject *)PyType_FromModuleAndSpec(mod, spec, base);
  Py_DECREF(base);
  if (tp != NULL && PyModule_AddType(mod, tp) < 0)
    Py_CLEAR(tp);
  return tp;
}

int ulpy_pipe_exec(PyObject *mod, core_state *st) {
  PyObject *transports = PyImport_ImportModule("asyncio.transports");
  if (transports == NULL)
    return -1;
  st->ReadPipeType = make_type(mod, transports, "ReadTransport",
                               offsetof(PipeObj, fc_slots), &ReadPipe_spec);
  st->WritePipeType =
      st->ReadPipeType == NULL
          ? NULL
          : make_type(mod, transports, "_FlowControlMixin",
                      offsetof(PipeObj, stream), &WritePipe_spec);
  Py_DECREF(transports);
  return st->WritePipeType == NULL ? -1 : 0;
}
