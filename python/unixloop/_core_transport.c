/*
 * _core_transport.c -- SocketTransport: asyncio's socket transport on a
 * libunixloop stream.
 *
 * The type derives from asyncio.Transport (its struct starts with the
 * `_extra` slot of asyncio's BaseTransport), so isinstance() checks,
 * get_extra_info() and writelines() are asyncio's own.  Reading, writing,
 * flow control and closing are libunixloop's ul_stream; this file turns its
 * callbacks into calls of the Python protocol with asyncio's error handling.
 *
 * Lifetime: the stream holds a reference to the transport from
 * ul_stream_open() until connection_lost, which also closes the Python
 * socket object (the stream was told not to close the fd itself).  That
 * reference is kept in the loop's `open_transports` set (_core.h).  When the
 * loop closes first, the transport loses its stream without connection_lost
 * ("orphaned", as asyncio's): its socket stays open until the transport is
 * collected, which warns "unclosed transport" and closes it.
 */
#include "_core.h"

#include <structmember.h>

#include <string.h>

#define LOG_THRESHOLD_FOR_CONNLOST_WRITES 5

typedef struct {
  PyObject_HEAD
  PyObject *extra;          /* asyncio BaseTransport.__slots__ = ('_extra',) */
  PyObject *fc_slots[4];    /* _FlowControlMixin's four slots: unused, their
                               names are served by the getters below */
  ul_stream *stream;        /* NULL once the connection is lost */
  LoopObj *loop;
  PyObject *protocol;
  PyObject *data_received;  /* bound method, or NULL for a buffered one */
  PyObject *get_buffer;
  PyObject *buffer_updated;
  PyObject *sock;
  PyObject *server;
  PyObject *lost_exc;       /* what connection_lost will be given */
  PyObject *empty_waiter;   /* asyncio's: a future for an empty buffer */
  PyObject *dict;
  PyObject *weakreflist;
  Py_buffer rbuf;           /* the protocol's buffer during a read */
  PyObject *rbytes;         /* the bytes a big read goes into (on_read_bytes) */
  int has_rbuf;
  int protocol_paused;      /* pause_writing called, resume_writing not yet */
  int fd;
  int conn_lost;
  int eof;
  int orphaned;             /* the loop closed with the stream open */
  int orphan_closing;       /* close() called after that */
  int in_sendfile;          /* between _sendfile() and _sendfile_end() */
} TransportObj;

/* ---- calling the protocol --------------------------------------------------- */

/* A fatal exception (SystemExit, KeyboardInterrupt) raised inside a
 * transport callback: keep it aside and stop the loop after this iteration;
 * the other callbacks of the iteration still run (their data was already
 * read).  Shared with the datagram and pipe transports. */
void ulpy_stash_fatal(LoopObj *loop) {
  if (loop->pending_exc_type == NULL)
    PyErr_Fetch(&loop->pending_exc_type, &loop->pending_exc,
                &loop->pending_exc_tb);
  else
    PyErr_Clear();
  loop->failed = 1;
  if (loop->ul != NULL)
    ul_loop_break(loop->ul, -EINTR);
}

/* loop.call_exception_handler({message, exception, transport, protocol}). */
void ulpy_transport_exception(LoopObj *loop, PyObject *transport,
                              PyObject *protocol, const char *message,
                              PyObject *exc) {
  PyObject *ctx = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", message,
                                "exception", exc ? exc : Py_None,
                                "transport", transport, "protocol",
                                protocol ? protocol : Py_None);
  PyObject *r = ctx ? PyObject_CallMethod((PyObject *)loop,
                                          "call_exception_handler", "(O)",
                                          ctx)
                    : NULL;
  Py_XDECREF(ctx);
  if (r == NULL) {
    if (ulpy_is_fatal_exception())
      ulpy_stash_fatal(loop);
    else
      PyErr_WriteUnraisable(transport);
  }
  Py_XDECREF(r);
}

/* Reports the current exception through the loop's exception handler, as
 * asyncio does for an exception escaping a callback; a fatal one
 * (SystemExit, KeyboardInterrupt) is kept aside for the loop instead. */
void ulpy_transport_report(LoopObj *loop, PyObject *transport,
                           PyObject *protocol, const char *message) {
  if (ulpy_is_fatal_exception()) {
    ulpy_stash_fatal(loop);
    return;
  }
  PyObject *exc = ulpy_take_exception();
  ulpy_transport_exception(loop, transport, protocol, message, exc);
  Py_XDECREF(exc);
}

/* Debug mode: asyncio's logger.debug(fmt, transport[, message]), with the
 * exception's traceback when exc is given. */
static void debug_log(TransportObj *t, const char *fmt, const char *message,
                      PyObject *exc) {
  if (!t->loop->debug)
    return;
  PyObject *type, *v, *tb;
  PyErr_Fetch(&type, &v, &tb);
  PyObject *f = ulpy_helper(t->loop->st, "transport_debug_log");
  PyObject *r = f ? PyObject_CallFunction(f, "sOzO", fmt, (PyObject *)t,
                                          message, exc ? exc : Py_None)
                  : NULL;
  if (r == NULL)
    PyErr_WriteUnraisable((PyObject *)t);
  Py_XDECREF(r);
  PyErr_Restore(type, v, tb);
}

/* set_write_buffer_limits(high=None, low=None): asyncio's defaults and
 * checks (_helpers.water_marks).  0, or -1 with an exception set. */
int ulpy_parse_water_marks(core_state *st, PyObject *args, PyObject *kw,
                           Py_ssize_t *high, Py_ssize_t *low) {
  static char *kwlist[] = {"high", "low", NULL};
  PyObject *high_o = Py_None, *low_o = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO", kwlist, &high_o, &low_o))
    return -1;
  PyObject *f = ulpy_helper(st, "water_marks");
  PyObject *r = f ? PyObject_CallFunctionObjArgs(f, high_o, low_o, NULL)
                  : NULL;
  if (r == NULL)
    return -1;
  int ok = PyArg_ParseTuple(r, "nn", high, low);
  Py_DECREF(r);
  return ok ? 0 : -1;
}

/* A write after the connection was lost (or is being lost): asyncio drops
 * it, warning (_helpers.<warn_helper>()) from the fifth on.  0, or -1 with
 * an exception set. */
int ulpy_count_lost_write_as(core_state *st, int *conn_lost,
                             const char *warn_helper) {
  if (*conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES) {
    PyObject *f = ulpy_helper(st, warn_helper);
    PyObject *r = f ? PyObject_CallNoArgs(f) : NULL;
    if (r == NULL)
      return -1;
    Py_DECREF(r);
  }
  (*conn_lost)++;
  return 0;
}

int ulpy_count_lost_write(core_state *st, int *conn_lost) {
  return ulpy_count_lost_write_as(st, conn_lost, "warn_send_after_close");
}

static void stash_fatal(TransportObj *t) {
  ulpy_stash_fatal(t->loop);
}

static void call_exception_handler(TransportObj *t, const char *message,
                                   PyObject *exc) {
  ulpy_transport_exception(t->loop, (PyObject *)t, t->protocol, message, exc);
}

static void report_exception(TransportObj *t, const char *message) {
  ulpy_transport_report(t->loop, (PyObject *)t, t->protocol, message);
}

/* asyncio's _fatal_error: report (unless an OSError), then abort with the
 * exception as connection_lost's argument.  Takes the current exception. */
static void fatal_error(TransportObj *t, const char *message) {
  if (ulpy_is_fatal_exception()) {
    stash_fatal(t);
    return;
  }
  PyObject *exc = ulpy_take_exception();
  if (!PyObject_IsInstance(exc, PyExc_OSError) || PyErr_Occurred()) {
    PyErr_Clear();
    call_exception_handler(t, message, exc);
  } else {
    debug_log(t, "%r: %s", message, exc);
  }
  if (t->lost_exc == NULL)
    t->lost_exc = exc;
  else
    Py_DECREF(exc);
  if (t->stream != NULL)
    ul_stream_abort(t->stream);
}

/* Debug mode: a protocol callback slower than slow_callback_duration is
 * logged as asyncio logs the handle that ran it ("Executing <Handle
 * SocketTransport._read_ready()> took 0.105 seconds").  slow_start returns
 * 0 outside debug mode. */
static double slow_start(TransportObj *t) {
  return t->loop->debug ? ul_loop_time(t->loop->ul) : 0.0;
}

static void slow_end(TransportObj *t, double t0, const char *what) {
  if (t0 == 0.0)
    return;
  double dt = ul_loop_time(t->loop->ul) - t0;
  if (dt < t->loop->slow_callback_duration)
    return;
  PyObject *type, *v, *tb;
  PyErr_Fetch(&type, &v, &tb);
  PyObject *f = ulpy_helper(t->loop->st, "warn_slow_transport_callback");
  PyObject *r = f ? PyObject_CallFunction(f, "Osd", (PyObject *)t, what, dt)
                  : NULL;
  if (r == NULL)
    PyErr_WriteUnraisable((PyObject *)t);
  Py_XDECREF(r);
  PyErr_Restore(type, v, tb);
}

static void release_rbuf(TransportObj *t) {
  if (t->has_rbuf) {
    PyBuffer_Release(&t->rbuf);
    t->has_rbuf = 0;
  }
}

static void on_made(ul_stream *stream, void *ctx) {
  TransportObj *t = ctx;
  (void)stream;
  double t0 = slow_start(t);
  PyObject *r = PyObject_CallMethod(t->protocol, "connection_made", "(O)",
                                    (PyObject *)t);
  slow_end(t, t0, "connection_made");
  /* As an exception in asyncio's call_soon'd connection_made. */
  if (r == NULL)
    report_exception(t, "Exception in callback connection_made()");
  Py_XDECREF(r);
}

/* Calls data_received(bytes) and drops the reference; NULL (no memory)
 * ends the connection as data_received raising would. */
static void deliver_bytes(TransportObj *t, PyObject *bytes) {
  double t0 = slow_start(t);
  PyObject *r = bytes ? PyObject_CallOneArg(t->data_received, bytes) : NULL;
  slow_end(t, t0, "_read_ready");
  Py_XDECREF(bytes);
  if (r == NULL)
    fatal_error(t, "Fatal error: protocol.data_received() call failed.");
  Py_XDECREF(r);
}

static void on_data(ul_stream *stream, const char *data, size_t len,
                    void *ctx) {
  (void)stream;
  deliver_bytes(ctx, PyBytes_FromStringAndSize(data, (Py_ssize_t)len));
}

/* Big reads (the stream's last read was 16 KiB or more) go straight into
 * the bytes object data_received gets, sparing a copy of every byte.  Its
 * size stays under glibc's default mmap threshold (128 KiB), so that
 * shrinking it to the read is done in place: a mapped block would be
 * remapped by every shrink and unmapped by every free (asyncio's sock_recv
 * with 256 KiB does that).  More than that at once is read on. */
#define BIG_READ_SIZE (127 * 1024)

char *ulpy_read_bytes_buffer(PyObject **slot, Py_ssize_t size) {
  if (*slot != NULL && PyBytes_GET_SIZE(*slot) != size)
    Py_CLEAR(*slot);
  if (*slot == NULL) {
    *slot = PyBytes_FromStringAndSize(NULL, size);
    if (*slot == NULL) {
      PyErr_Clear();
      return NULL;
    }
  }
  return PyBytes_AS_STRING(*slot);
}

PyObject *ulpy_read_bytes_take(PyObject **slot, size_t n) {
  PyObject *bytes = *slot;
  *slot = NULL;
  if (bytes != NULL && (Py_ssize_t)n < PyBytes_GET_SIZE(bytes) &&
      _PyBytes_Resize(&bytes, (Py_ssize_t)n) < 0)
    return NULL;
  return bytes;
}

static char *on_read_bytes(ul_stream *stream, size_t hint, size_t *len,
                           void *ctx) {
  TransportObj *t = ctx;
  (void)stream;
  (void)hint;
  *len = BIG_READ_SIZE;
  /* NULL: the stream ends with -ENOBUFS */
  return ulpy_read_bytes_buffer(&t->rbytes, BIG_READ_SIZE);
}

static void on_bytes_read(ul_stream *stream, size_t n, void *ctx) {
  TransportObj *t = ctx;
  (void)stream;
  if (n == 0) {
    /* The read brought nothing: an idle connection holds no 127 KiB. */
    Py_CLEAR(t->rbytes);
    return;
  }
  deliver_bytes(t, ulpy_read_bytes_take(&t->rbytes, n));
}

static char *on_get_buffer(ul_stream *stream, size_t hint, size_t *len,
                           void *ctx) {
  TransportObj *t = ctx;
  (void)stream;
  (void)hint;
  release_rbuf(t);
  PyObject *minus_one = PyLong_FromLong(-1);
  PyObject *buf = minus_one ? PyObject_CallOneArg(t->get_buffer, minus_one)
                            : NULL;
  Py_XDECREF(minus_one);
  if (buf != NULL &&
      PyObject_GetBuffer(buf, &t->rbuf, PyBUF_WRITABLE | PyBUF_SIMPLE) == 0) {
    t->has_rbuf = 1;
    if (t->rbuf.len == 0) {
      release_rbuf(t);
      PyErr_SetString(PyExc_RuntimeError,
                      "get_buffer() returned an empty buffer");
    }
  }
  Py_XDECREF(buf);
  if (!t->has_rbuf) {
    fatal_error(t, "Fatal error: protocol.get_buffer() call failed.");
    /* The stream is aborted: give it a place to read nothing into. */
    static char sink[1];
    *len = 1;
    return sink;
  }
  *len = (size_t)t->rbuf.len;
  return t->rbuf.buf;
}

static void on_buffer_updated(ul_stream *stream, size_t nbytes, void *ctx) {
  TransportObj *t = ctx;
  (void)stream;
  release_rbuf(t);
  if (ul_stream_is_closing(t->stream))
    return; /* get_buffer failed and aborted */
  double t0 = slow_start(t);
  PyObject *n = PyLong_FromSize_t(nbytes);
  PyObject *r = n ? PyObject_CallOneArg(t->buffer_updated, n) : NULL;
  slow_end(t, t0, "_read_ready");
  Py_XDECREF(n);
  if (r == NULL)
    fatal_error(t, "Fatal error: protocol.buffer_updated() call failed.");
  Py_XDECREF(r);
}

static int on_eof(ul_stream *stream, void *ctx) {
  TransportObj *t = ctx;
  (void)stream;
  release_rbuf(t);
  debug_log(t, "%r received EOF", NULL, NULL);
  double t0 = slow_start(t);
  PyObject *r = PyObject_CallMethod(t->protocol, "eof_received", NULL);
  slow_end(t, t0, "_read_ready");
  if (r == NULL) {
    fatal_error(t, "Fatal error: protocol.eof_received() call failed.");
    return 1; /* aborted already */
  }
  int keep_open = PyObject_IsTrue(r);
  Py_DECREF(r);
  if (keep_open < 0) {
    fatal_error(t, "Fatal error: protocol.eof_received() call failed.");
    return 1;
  }
  return keep_open;
}

/* protocol.pause_writing() (pause != 0) or resume_writing(), an exception
 * reported as asyncio's _maybe_pause_protocol / _maybe_resume_protocol do.
 * Shared by every C transport type. */
void ulpy_protocol_flow_call(LoopObj *loop, PyObject *transport,
                             PyObject *protocol, int pause) {
  PyObject *r = PyObject_CallMethod(
      protocol, pause ? "pause_writing" : "resume_writing", NULL);
  if (r == NULL)
    ulpy_transport_report(loop, transport, protocol,
                          pause ? "protocol.pause_writing() failed"
                                : "protocol.resume_writing() failed");
  Py_XDECREF(r);
}

static void on_pause_writing(ul_stream *stream, void *ctx) {
  (void)stream;
  TransportObj *t = ctx;
  t->protocol_paused = 1;
  ulpy_protocol_flow_call(t->loop, (PyObject *)t, t->protocol, 1);
}

static void on_resume_writing(ul_stream *stream, void *ctx) {
  (void)stream;
  TransportObj *t = ctx;
  t->protocol_paused = 0;
  ulpy_protocol_flow_call(t->loop, (PyObject *)t, t->protocol, 0);
}

static void on_drained(ul_stream *stream, void *ctx) {
  TransportObj *t = ctx;
  (void)stream;
  if (t->empty_waiter == NULL)
    return;
  PyObject *r = PyObject_CallMethod(t->empty_waiter, "done", NULL);
  int done = r ? PyObject_IsTrue(r) : -1;
  Py_XDECREF(r);
  r = done == 0 ? PyObject_CallMethod(t->empty_waiter, "set_result", "(O)",
                                      Py_None)
                : NULL;
  if (r == NULL && PyErr_Occurred())
    PyErr_WriteUnraisable((PyObject *)t);
  Py_XDECREF(r);
}

/* asyncio: a sendfile waiting for an empty buffer learns the connection
 * is gone. */
static void fail_empty_waiter(TransportObj *t) {
  if (t->empty_waiter == NULL)
    return;
  PyObject *r = PyObject_CallMethod(t->empty_waiter, "done", NULL);
  int done = r ? PyObject_IsTrue(r) : -1;
  Py_XDECREF(r);
  if (done == 0) {
    PyObject *exc = PyObject_CallFunction(PyExc_ConnectionError, "s",
                                          "Connection is closed by peer");
    r = exc ? PyObject_CallMethod(t->empty_waiter, "set_exception", "(O)",
                                  exc)
            : NULL;
    Py_XDECREF(exc);
    Py_XDECREF(r);
  }
  if (PyErr_Occurred())
    PyErr_WriteUnraisable((PyObject *)t);
}

PyObject *ulpy_exception_from_errno(int err) {
  return PyObject_CallFunction(PyExc_OSError, "is", -err, strerror(-err));
}

/* asyncio's _call_connection_lost. */
static void on_lost(ul_stream *stream, int err, void *ctx) {
  TransportObj *t = ctx;
  (void)stream;
  release_rbuf(t);
  Py_CLEAR(t->rbytes);
  t->stream = NULL;
  if (err == -ECANCELED) {
    t->orphaned = 1; /* ul_loop_close(); the loop drops our reference */
    return;
  }
  fail_empty_waiter(t);
  PyObject *exc = t->lost_exc;
  t->lost_exc = NULL;
  if (exc == NULL && err != 0 && err != -ECANCELED)
    exc = ulpy_exception_from_errno(err);
  PyErr_Clear();
  double t0 = slow_start(t);
  PyObject *r = PyObject_CallMethod(t->protocol, "connection_lost", "(O)",
                                    exc ? exc : Py_None);
  slow_end(t, t0, "_call_connection_lost");
  if (r == NULL)
    report_exception(t, "Exception in callback connection_lost()");
  Py_XDECREF(r);
  Py_XDECREF(exc);
  /* The socket object owns the fd. */
  PyObject *type, *e, *tb;
  PyErr_Fetch(&type, &e, &tb);
  r = PyObject_CallMethod(t->sock, "close", NULL);
  Py_XDECREF(r);
  if (t->server != NULL && t->server != Py_None) {
#if PY_VERSION_HEX >= 0x030D0000
    /* 3.13: the server keeps its clients for close_clients(). */
    r = PyObject_CallMethod(t->server, "_detach", "(O)", (PyObject *)t);
#else
    r = PyObject_CallMethod(t->server, "_detach", NULL);
#endif
    Py_XDECREF(r);
  }
  if (PyErr_Occurred())
    PyErr_WriteUnraisable((PyObject *)t);
  Py_CLEAR(t->server);
  PyErr_Restore(type, e, tb);
  ulpy_transport_release(t->loop, (PyObject *)t); /* t may be freed here */
}


static const ul_stream_protocol plain_protocol = {
    .connection_made = on_made,
    .data_received = on_data,
    .get_buffer = on_read_bytes,
    .buffer_updated = on_bytes_read,
    .eof_received = on_eof,
    .connection_lost = on_lost,
    .pause_writing = on_pause_writing,
    .resume_writing = on_resume_writing,
    .write_drained = on_drained,
};

static const ul_stream_protocol buffered_protocol = {
    .connection_made = on_made,
    .get_buffer = on_get_buffer,
    .buffer_updated = on_buffer_updated,
    .eof_received = on_eof,
    .connection_lost = on_lost,
    .pause_writing = on_pause_writing,
    .resume_writing = on_resume_writing,
    .write_drained = on_drained,
};

/* ---- Python methods ------------------------------------------------------------ */

/* Caches the protocol's data methods; a BufferedProtocol is read into. */
static int set_protocol(TransportObj *t, PyObject *protocol) {
  static PyObject *buffered_type = NULL;
  if (buffered_type == NULL) {
    PyObject *mod = PyImport_ImportModule("asyncio.protocols");
    if (mod == NULL)
      return -1;
    buffered_type = PyObject_GetAttrString(mod, "BufferedProtocol");
    Py_DECREF(mod);
    if (buffered_type == NULL)
      return -1;
  }
  int buffered = PyObject_IsInstance(protocol, buffered_type);
  if (buffered < 0)
    return -1;
  PyObject *dr = NULL, *gb = NULL, *bu = NULL;
  if (buffered) {
    gb = PyObject_GetAttrString(protocol, "get_buffer");
    bu = gb ? PyObject_GetAttrString(protocol, "buffer_updated") : NULL;
    if (bu == NULL) {
      Py_XDECREF(gb);
      return -1;
    }
  } else {
    dr = PyObject_GetAttrString(protocol, "data_received");
    if (dr == NULL)
      return -1;
  }
  Py_INCREF(protocol);
  Py_XSETREF(t->protocol, protocol);
  Py_XSETREF(t->data_received, dr);
  Py_XSETREF(t->get_buffer, gb);
  Py_XSETREF(t->buffer_updated, bu);
  /* start_tls switches a plain protocol to a buffered one, and back. */
  if (t->stream != NULL)
    ul_stream_set_protocol(t->stream,
                           buffered ? &buffered_protocol : &plain_protocol, t);
  return 0;
}

/* SocketTransport(loop, sock, protocol, extra, server) */
static PyObject *Transport_new(PyTypeObject *tp, PyObject *args,
                               PyObject *kw) {
  PyObject *loop, *sock, *protocol, *extra, *server;
  (void)kw;
  if (!PyArg_ParseTuple(args, "OOOO!O", &loop, &sock, &protocol,
                        &PyDict_Type, &extra, &server))
    return NULL;
  int fd = ulpy_fileobj_to_fd(sock);
  if (fd < 0)
    return NULL;
  TransportObj *t = (TransportObj *)tp->tp_alloc(tp, 0);
  if (t == NULL)
    return NULL;
  t->extra = Py_NewRef(extra);
  t->loop = (LoopObj *)Py_NewRef(loop);
  t->sock = Py_NewRef(sock);
  t->server = Py_NewRef(server);
  t->fd = fd;
  if (set_protocol(t, protocol) < 0 || ulpy_check_closed(t->loop) < 0) {
    Py_DECREF(t);
    return NULL;
  }
  const ul_stream_protocol *proto =
      t->data_received ? &plain_protocol : &buffered_protocol;
  /* The stream's reference, until connection_lost. */
  if (ulpy_transport_hold(t->loop, (PyObject *)t) < 0) {
    Py_DECREF(t);
    return NULL;
  }
  int err = ul_stream_open(t->loop->ul, fd, proto, t, &t->stream);
  if (err < 0) {
    t->stream = NULL;
    ulpy_transport_release(t->loop, (PyObject *)t);
    Py_DECREF(t);
    return ulpy_raise_errno(err);
  }
  ul_stream_release_fd(t->stream);
  return (PyObject *)t;
}

/* tp_init of every C transport type: everything is done in __new__, and
 * asyncio's BaseTransport.__init__ must not run with our arguments. */
int ulpy_transport_init(PyObject *self, PyObject *args, PyObject *kw) {
  (void)self;
  (void)args;
  (void)kw;
  return 0;
}

static int Transport_traverse(TransportObj *t, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(t));
  Py_VISIT(t->extra);
  Py_VISIT(t->loop);
  Py_VISIT(t->protocol);
  Py_VISIT(t->data_received);
  Py_VISIT(t->get_buffer);
  Py_VISIT(t->buffer_updated);
  Py_VISIT(t->sock);
  Py_VISIT(t->server);
  Py_VISIT(t->lost_exc);
  Py_VISIT(t->empty_waiter);
  Py_VISIT(t->dict);
  return 0;
}

static int Transport_clear(TransportObj *t) {
  Py_CLEAR(t->extra);
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->data_received);
  Py_CLEAR(t->get_buffer);
  Py_CLEAR(t->buffer_updated);
  Py_CLEAR(t->rbytes);
  Py_CLEAR(t->server);
  Py_CLEAR(t->lost_exc);
  Py_CLEAR(t->empty_waiter);
  Py_CLEAR(t->dict);
  return 0;
}

/* asyncio's _SelectorTransport.__del__: a transport collected before its
 * connection was lost warns and closes its socket. */
static void Transport_finalize(TransportObj *t) {
  if (t->sock == NULL || (t->stream == NULL && !t->orphaned))
    return;
  ulpy_warn_unclosed((PyObject *)t);
  if (t->stream != NULL)
    ul_stream_abort(t->stream); /* stop watching the fd before closing it */
  t->orphaned = 0;              /* warn once */
  ulpy_close_quietly((PyObject *)t, t->sock);
}

static void Transport_dealloc(TransportObj *t) {
  PyTypeObject *tp = Py_TYPE(t);
  if (PyObject_CallFinalizerFromDealloc((PyObject *)t) < 0)
    return; /* resurrected */
  PyObject_GC_UnTrack(t);
  if (t->weakreflist != NULL)
    PyObject_ClearWeakRefs((PyObject *)t);
  release_rbuf(t);
  (void)Transport_clear(t);
  Py_CLEAR(t->sock);
  Py_CLEAR(t->loop);
  tp->tp_free(t);
  Py_DECREF(tp);
}

static PyObject *Transport_write(TransportObj *t, PyObject *data) {
  if (!PyBytes_Check(data) && !PyByteArray_Check(data) &&
      !PyMemoryView_Check(data)) {
    PyErr_Format(PyExc_TypeError,
                 "data argument must be a bytes-like object, not '%.200s'",
                 Py_TYPE(data)->tp_name);
    return NULL;
  }
  if (t->eof) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
    return NULL;
  }
  if (t->empty_waiter != NULL || t->in_sendfile) {
    PyErr_SetString(PyExc_RuntimeError,
                    "unable to write; sendfile is in progress");
    return NULL;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
    return NULL;
  if (view.len == 0) {
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
  }
  /* As asyncio's socket transport: bytes written while close() flushes
   * are sent; once the connection is lost (or closed with nothing left to
   * send) they are dropped and counted. */
  int err = t->stream != NULL ? ulpy_stream_write(t->stream, data, &view)
                              : -EPIPE;
  PyBuffer_Release(&view);
  if (err == -EPIPE)
    return ulpy_count_lost_write(t->loop->st, &t->conn_lost) < 0
               ? NULL
               : Py_NewRef(Py_None);
  if (err < 0)
    return ulpy_raise_errno(err);
  if (PyErr_Occurred())
    return NULL; /* a flow-control callback raised fatally */
  Py_RETURN_NONE;
}

static PyObject *Transport_write_eof(TransportObj *t,
                                     PyObject *Py_UNUSED(ignored)) {
  if (t->stream == NULL || ul_stream_is_closing(t->stream) || t->eof)
    Py_RETURN_NONE;
  t->eof = 1;
  int err = ul_stream_write_eof(t->stream);
  if (err < 0)
    return ulpy_raise_errno(err);
  Py_RETURN_NONE;
}

static PyObject *Transport_can_write_eof(TransportObj *t,
                                         PyObject *Py_UNUSED(ignored)) {
  (void)t;
  Py_RETURN_TRUE;
}

static PyObject *Transport_close(TransportObj *t,
                                 PyObject *Py_UNUSED(ignored)) {
  if (t->orphaned && !t->orphan_closing)
    return ulpy_orphan_close(t->loop, &t->orphan_closing);
  if (t->stream != NULL && !ul_stream_is_closing(t->stream)) {
    ul_stream_close(t->stream);
    t->conn_lost += ul_stream_get_write_buffer_size(t->stream) == 0;
  }
  Py_RETURN_NONE;
}

static PyObject *Transport_abort(TransportObj *t,
                                 PyObject *Py_UNUSED(ignored)) {
  if (t->orphaned && !t->conn_lost) {
    t->conn_lost++;
    return ulpy_orphan_close(t->loop, &t->orphan_closing);
  }
  if (t->stream != NULL && !t->conn_lost) {
    t->conn_lost++;
    ul_stream_abort(t->stream);
  }
  Py_RETURN_NONE;
}

/* asyncio's _SelectorTransport._force_close(exc), which asyncio's sslproto
 * calls on the transport under TLS when the handshake or shutdown fails:
 * abort, with exc as connection_lost's argument. */
static PyObject *Transport_force_close(TransportObj *t, PyObject *exc) {
  if (t->stream != NULL && !t->conn_lost && exc != Py_None &&
      t->lost_exc == NULL)
    t->lost_exc = Py_NewRef(exc);
  return Transport_abort(t, NULL);
}

static PyObject *Transport_is_closing(TransportObj *t,
                                      PyObject *Py_UNUSED(ignored)) {
  if (t->orphaned)
    return PyBool_FromLong(t->orphan_closing);
  return PyBool_FromLong(t->stream == NULL ||
                         ul_stream_is_closing(t->stream));
}

static PyObject *Transport_is_reading(TransportObj *t,
                                      PyObject *Py_UNUSED(ignored)) {
  return PyBool_FromLong(t->stream != NULL && ul_stream_is_reading(t->stream));
}

static PyObject *Transport_pause_reading(TransportObj *t,
                                         PyObject *Py_UNUSED(ignored)) {
  if (t->stream != NULL && ul_stream_is_reading(t->stream)) {
    (void)ul_stream_pause_reading(t->stream);
    debug_log(t, "%r pauses reading", NULL, NULL);
  }
  Py_RETURN_NONE;
}

static PyObject *Transport_resume_reading(TransportObj *t,
                                          PyObject *Py_UNUSED(ignored)) {
  if (t->stream != NULL && !ul_stream_is_closing(t->stream) &&
      !ul_stream_is_reading(t->stream)) {
    (void)ul_stream_resume_reading(t->stream);
    debug_log(t, "%r resumes reading", NULL, NULL);
  }
  Py_RETURN_NONE;
}

static PyObject *Transport_get_write_buffer_size(
    TransportObj *t, PyObject *Py_UNUSED(ignored)) {
  return PyLong_FromSize_t(t->stream ? ul_stream_get_write_buffer_size(t->stream)
                                     : 0);
}

#define WRITE_REF_MIN (16 * 1024)

static void release_bytes(void *arg) {
  Py_DECREF((PyObject *)arg); /* the loop runs with the GIL held */
}

int ulpy_stream_write(ul_stream *stream, PyObject *data,
                      const Py_buffer *view) {
  if (!PyBytes_CheckExact(data) || view->len < WRITE_REF_MIN)
    return ul_stream_write(stream, view->buf, (size_t)view->len);
  /* Immutable: what the kernel does not take now is sent from the bytes
   * object itself. */
  Py_INCREF(data);
  int err = ul_stream_write_ref(stream, view->buf, (size_t)view->len,
                                release_bytes, data);
  if (err != 1)
    Py_DECREF(data);
  return err < 0 ? err : 0;
}

PyObject *ulpy_stream_get_write_buffer_limits(ul_stream *stream) {
  size_t low = UL_STREAM_HIGH_WATER / 4, high = UL_STREAM_HIGH_WATER;
  if (stream != NULL)
    ul_stream_get_write_buffer_limits(stream, &low, &high);
  return Py_BuildValue("(nn)", (Py_ssize_t)low, (Py_ssize_t)high);
}

PyObject *ulpy_stream_set_write_buffer_limits(LoopObj *loop,
                                              ul_stream *stream,
                                              PyObject *args, PyObject *kw) {
  Py_ssize_t high, low;
  if (ulpy_parse_water_marks(loop->st, args, kw, &high, &low) < 0)
    return NULL;
  if (stream != NULL)
    ul_stream_set_write_buffer_limits(stream, high, low);
  if (PyErr_Occurred())
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *Transport_get_write_buffer_limits(
    TransportObj *t, PyObject *Py_UNUSED(ignored)) {
  return ulpy_stream_get_write_buffer_limits(t->stream);
}

static PyObject *Transport_set_write_buffer_limits(TransportObj *t,
                                                   PyObject *args,
                                                   PyObject *kw) {
  return ulpy_stream_set_write_buffer_limits(t->loop, t->stream, args, kw);
}

static PyObject *Transport_make_empty_waiter(TransportObj *t,
                                             PyObject *Py_UNUSED(ignored)) {
  if (t->empty_waiter != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "Empty waiter is already set");
    return NULL;
  }
  t->empty_waiter = ulpy_create_future(t->loop);
  if (t->empty_waiter == NULL)
    return NULL;
  if (t->stream == NULL || ul_stream_get_write_buffer_size(t->stream) == 0) {
    PyObject *r = PyObject_CallMethod(t->empty_waiter, "set_result", "(O)",
                                      Py_None);
    if (r == NULL)
      return NULL;
    Py_DECREF(r);
  }
  return Py_NewRef(t->empty_waiter);
}

static PyObject *Transport_reset_empty_waiter(TransportObj *t,
                                              PyObject *Py_UNUSED(ignored)) {
  Py_CLEAR(t->empty_waiter);
  Py_RETURN_NONE;
}

/* ---- loop.sendfile() natively: ul_stream_sendfile ---------------------- */

/* What asyncio's _sock_sendfile_native_impl raises: an error before the
 * first byte means "use the fallback"; a connection closed under the
 * sendfile is a ConnectionError (as the empty waiter's). */
static PyObject *sendfile_exception(int status, uint64_t sent) {
  if (status == -ECANCELED)
    return PyObject_CallFunction(PyExc_ConnectionError, "s",
                                 "Connection is closed by peer");
  if (sent == 0) {
    PyObject *mod = PyImport_ImportModule("asyncio.exceptions");
    PyObject *cls = mod ? PyObject_GetAttrString(mod, "SendfileNotAvailableError")
                        : NULL;
    Py_XDECREF(mod);
    PyObject *exc = cls ? PyObject_CallFunction(cls, "s",
                                                "os.sendfile call failed")
                        : NULL;
    Py_XDECREF(cls);
    return exc;
  }
  return ulpy_exception_from_errno(status);
}

/* The end of ul_stream_sendfile: `arg` is the future (a reference). */
static void on_sendfile_done(ul_stream *stream, int status, uint64_t sent,
                             void *arg) {
  PyObject *fut = arg, *r;
  (void)stream;
  r = PyObject_CallMethod(fut, "done", NULL);
  int done = r ? PyObject_IsTrue(r) : -1;
  Py_XDECREF(r);
  if (done == 0) {
    if (status == 0) {
      r = PyObject_CallMethod(fut, "set_result", "(K)",
                              (unsigned long long)sent);
    } else {
      PyObject *exc = sendfile_exception(status, sent);
      r = exc ? PyObject_CallMethod(fut, "set_exception", "(O)", exc) : NULL;
      Py_XDECREF(exc);
    }
    Py_XDECREF(r);
  }
  if (PyErr_Occurred())
    PyErr_WriteUnraisable(fut);
  Py_DECREF(fut);
}

/* _sendfile(fileno, offset, count) -> a future of the bytes sent; count 0
 * is up to the end of the file.  Writes are refused until _sendfile_end(). */
static PyObject *Transport_sendfile(TransportObj *t, PyObject *args) {
  int fd;
  long long offset;
  unsigned long long count;
  if (!PyArg_ParseTuple(args, "iLK", &fd, &offset, &count))
    return NULL;
  if (t->stream == NULL || ul_stream_is_closing(t->stream)) {
    PyErr_SetString(PyExc_RuntimeError, "Transport is closing");
    return NULL;
  }
  PyObject *fut = ulpy_create_future(t->loop);
  if (fut == NULL)
    return NULL;
  int err = ul_stream_sendfile(t->stream, fd, (off_t)offset, count,
                               on_sendfile_done, fut);
  if (err < 0) {
    Py_DECREF(fut);
    return ulpy_raise_errno(err);
  }
  t->in_sendfile = 1;
  return Py_NewRef(fut); /* the other reference is the callback's */
}

/* Stops a sendfile still running (the awaiting task was cancelled) and
 * allows writes again. */
static PyObject *Transport_sendfile_end(TransportObj *t,
                                        PyObject *Py_UNUSED(ignored)) {
  t->in_sendfile = 0;
  if (t->stream != NULL)
    (void)ul_stream_sendfile_cancel(t->stream);
  Py_RETURN_NONE;
}

static PyObject *Transport_get_protocol(TransportObj *t,
                                        PyObject *Py_UNUSED(ignored)) {
  return Py_NewRef(t->protocol ? t->protocol : Py_None);
}

static PyObject *Transport_set_protocol(TransportObj *t, PyObject *protocol) {
  if (set_protocol(t, protocol) < 0)
    return NULL;
  Py_RETURN_NONE;
}

/* asyncio's _SelectorTransport.__repr__, e.g.
 * <SocketTransport fd=6 read=polling write=<idle, bufsize=0>>. */
static PyObject *Transport_repr(TransportObj *t) {
  const char *name = strrchr(Py_TYPE(t)->tp_name, '.');
  name = name ? name + 1 : Py_TYPE(t)->tp_name;
  if (t->orphaned)
    return PyUnicode_FromFormat("<%s%s fd=%d>", name,
                                t->orphan_closing ? " closing" : "", t->fd);
  if (t->stream == NULL)
    return PyUnicode_FromFormat("<%s closed fd=%d>", name, t->fd);
  size_t bufsize = ul_stream_get_write_buffer_size(t->stream);
  return PyUnicode_FromFormat(
      "<%s%s fd=%d read=%s write=<%s, bufsize=%zu>>", name,
      ul_stream_is_closing(t->stream) ? " closing" : "", t->fd,
      ul_stream_is_reading(t->stream) ? "polling" : "idle",
      bufsize ? "polling" : "idle", bufsize);
}

static PyObject *Transport_get_sock(TransportObj *t, void *c) {
  (void)c;
  return Py_NewRef(t->stream ? t->sock : Py_None);
}

static PyObject *Transport_get_sock_fd(TransportObj *t, void *c) {
  (void)c;
  return PyLong_FromLong(t->fd);
}

static PyObject *Transport_get_loop(TransportObj *t, void *c) {
  (void)c;
  return Py_NewRef(t->stream ? (PyObject *)t->loop : Py_None);
}

static PyObject *Transport_get_protocol_attr(TransportObj *t, void *c) {
  (void)c;
  return Py_NewRef(t->protocol ? t->protocol : Py_None);
}

static PyObject *Transport_get_protocol_paused(TransportObj *t, void *c) {
  (void)c;
  return PyBool_FromLong(t->protocol_paused);
}

static PyMethodDef Transport_methods[] = {
    {"write", (PyCFunction)Transport_write, METH_O, NULL},
    {"write_eof", (PyCFunction)Transport_write_eof, METH_NOARGS, NULL},
    {"can_write_eof", (PyCFunction)Transport_can_write_eof, METH_NOARGS,
     NULL},
    {"close", (PyCFunction)Transport_close, METH_NOARGS, NULL},
    {"abort", (PyCFunction)Transport_abort, METH_NOARGS, NULL},
    {"_force_close", (PyCFunction)Transport_force_close, METH_O, NULL},
    {"is_closing", (PyCFunction)Transport_is_closing, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)Transport_is_reading, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)Transport_pause_reading, METH_NOARGS,
     NULL},
    {"resume_reading", (PyCFunction)Transport_resume_reading, METH_NOARGS,
     NULL},
    {"get_write_buffer_size", (PyCFunction)Transport_get_write_buffer_size,
     METH_NOARGS, NULL},
    {"get_write_buffer_limits",
     (PyCFunction)Transport_get_write_buffer_limits, METH_NOARGS, NULL},
    {"set_write_buffer_limits",
     (PyCFunction)(void (*)(void))Transport_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_protocol", (PyCFunction)Transport_get_protocol, METH_NOARGS, NULL},
    {"_make_empty_waiter", (PyCFunction)Transport_make_empty_waiter,
     METH_NOARGS, NULL},
    {"_reset_empty_waiter", (PyCFunction)Transport_reset_empty_waiter,
     METH_NOARGS, NULL},
    {"set_protocol", (PyCFunction)Transport_set_protocol, METH_O, NULL},
    {"_sendfile", (PyCFunction)Transport_sendfile, METH_VARARGS, NULL},
    {"_sendfile_end", (PyCFunction)Transport_sendfile_end, METH_NOARGS,
     NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Transport_getset[] = {
    {"_sock", (getter)Transport_get_sock, NULL, NULL, NULL},
    {"_sock_fd", (getter)Transport_get_sock_fd, NULL, NULL, NULL},
    {"_loop", (getter)Transport_get_loop, NULL, NULL, NULL},
    {"_protocol", (getter)Transport_get_protocol_attr, NULL, NULL, NULL},
    {"_protocol_paused", (getter)Transport_get_protocol_paused, NULL, NULL,
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Transport_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(TransportObj, dict), READONLY,
     NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TransportObj, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyType_Slot Transport_slots[] = {
    {Py_tp_new, Transport_new},
    {Py_tp_init, ulpy_transport_init},
    {Py_tp_dealloc, Transport_dealloc},
    {Py_tp_finalize, Transport_finalize},
    {Py_tp_traverse, Transport_traverse},
    {Py_tp_clear, Transport_clear},
    {Py_tp_repr, Transport_repr},
    {Py_tp_methods, Transport_methods},
    {Py_tp_getset, Transport_getset},
    {Py_tp_members, Transport_members},
    {0, NULL}};

static PyType_Spec Transport_spec = {
    .name = "unixloop._core.SocketTransport",
    .basicsize = sizeof(TransportObj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Transport_slots};

int ulpy_transport_exec(PyObject *mod, core_state *st) {
  PyObject *transports = PyImport_ImportModule("asyncio.transports");
  if (transports == NULL)
    return -1;
  /* _FlowControlMixin: asyncio's sendfile fallback insists on it. */
  PyObject *base = PyObject_GetAttrString(transports, "_FlowControlMixin");
  Py_DECREF(transports);
  if (base == NULL)
    return -1;
  /* Our struct starts with asyncio's layout: the object header, the
   * `_extra` slot and _FlowControlMixin's four.  Refuse anything else. */
  if (((PyTypeObject *)base)->tp_basicsize !=
      (Py_ssize_t)offsetof(TransportObj, stream)) {
    Py_DECREF(base);
    PyErr_SetString(PyExc_ImportError,
                    "asyncio's _FlowControlMixin has an unexpected layout");
    return -1;
  }
  st->TransportType =
      (PyTypeObject *)PyType_FromModuleAndSpec(mod, &Transport_spec, base);
  Py_DECREF(base);
  if (st->TransportType == NULL)
    return -1;
  return PyModule_AddType(mod, st->TransportType);
}
