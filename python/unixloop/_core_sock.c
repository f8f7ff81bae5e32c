/*
 * _core_sock.c -- the waiting half of loop.sock_recv() and friends.
 *
 * asyncio's sock_recv() first tries sock.recv() at once; only when that
 * would block does it register a reader, a done-callback that removes the
 * reader, and await a future.  That second half is done here by one small
 * object, SockOp, which is both the reader's callback (called with no
 * argument: the socket is readable) and the future's done-callback (called
 * with the future: remove the reader).  Same behaviour as asyncio, without
 * its Python frames, functools.partial and the KeyError that
 * _ensure_fd_no_transport raises on every call.
 */
#include "_core.h"

#include <structmember.h>
#include <sys/socket.h>

typedef struct {
  PyObject_HEAD
  LoopObj *loop;
  PyObject *fut;
  PyObject *sock;
  PyObject *method;   /* "recv", "recv_into", "recvfrom" */
  PyObject *arg;      /* its one argument */
  PyObject *handle;   /* the reader's Handle */
  PyObject *fdobj;
} SockOpObj;

static int SockOp_traverse(SockOpObj *op, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(op));
  Py_VISIT(op->loop);
  Py_VISIT(op->fut);
  Py_VISIT(op->sock);
  Py_VISIT(op->method);
  Py_VISIT(op->arg);
  Py_VISIT(op->handle);
  Py_VISIT(op->fdobj);
  return 0;
}

static int SockOp_clear(SockOpObj *op) {
  Py_CLEAR(op->loop);
  Py_CLEAR(op->fut);
  Py_CLEAR(op->sock);
  Py_CLEAR(op->method);
  Py_CLEAR(op->arg);
  Py_CLEAR(op->handle);
  Py_CLEAR(op->fdobj);
  return 0;
}

static void SockOp_dealloc(SockOpObj *op) {
  PyTypeObject *tp = Py_TYPE(op);
  PyObject_GC_UnTrack(op);
  (void)SockOp_clear(op);
  tp->tp_free(op);
  Py_DECREF(tp);
}

/* The socket is readable: try the call, complete the future unless it
 * would still block (asyncio's _sock_recv). */
static PyObject *sockop_ready(SockOpObj *op) {
  if (op->fut == NULL)
    Py_RETURN_NONE;
  PyObject *done = PyObject_CallMethod(op->fut, "done", NULL);
  if (done == NULL)
    return NULL;
  int is_done = PyObject_IsTrue(done);
  Py_DECREF(done);
  if (is_done)
    Py_RETURN_NONE;
  PyObject *res = PyObject_CallMethodOneArg(op->sock, op->method, op->arg);
  if (res == NULL) {
    if (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
        PyErr_ExceptionMatches(PyExc_InterruptedError)) {
      PyErr_Clear();
      Py_RETURN_NONE; /* try again next time */
    }
    if (ulpy_is_fatal_exception())
      return NULL;
    PyObject *exc = ulpy_take_exception();
    PyObject *r = PyObject_CallMethod(op->fut, "set_exception", "(O)", exc);
    Py_XDECREF(exc);
    return r;
  }
  PyObject *r = PyObject_CallMethod(op->fut, "set_result", "(O)", res);
  Py_DECREF(res);
  return r;
}

/* The future is done: remove the reader unless it was replaced (asyncio's
 * _sock_read_done), and drop every reference (they form cycles). */
static PyObject *sockop_done(SockOpObj *op) {
  PyObject *r = NULL;
  int keep = op->handle != NULL && ((HandleObj *)op->handle)->cancelled;
  if (op->loop != NULL && op->fdobj != NULL && !keep)
    r = ulpy_remove_watcher(op->loop, op->fdobj, 1);
  else
    r = Py_NewRef(Py_None);
  (void)SockOp_clear(op);
  if (r == NULL)
    return NULL;
  Py_DECREF(r);
  Py_RETURN_NONE;
}

static PyObject *SockOp_vectorcall(PyObject *self, PyObject *const *args,
                                   size_t nargsf, PyObject *kwnames) {
  (void)args;
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
    PyErr_SetString(PyExc_TypeError, "no keyword arguments");
    return NULL;
  }
  if (nargs == 0)
    return sockop_ready((SockOpObj *)self);
  if (nargs == 1)
    return sockop_done((SockOpObj *)self);
  PyErr_SetString(PyExc_TypeError, "takes 0 or 1 arguments");
  return NULL;
}

static PyObject *SockOp_call(PyObject *self, PyObject *args, PyObject *kw) {
  return PyVectorcall_Call(self, args, kw);
}

static PyMemberDef SockOp_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, 0, READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

typedef struct {
  SockOpObj base;
  vectorcallfunc vectorcall;
} SockOpWithCall;

static PyType_Slot SockOp_slots[] = {
    {Py_tp_dealloc, SockOp_dealloc},
    {Py_tp_traverse, SockOp_traverse},
    {Py_tp_clear, SockOp_clear},
    {Py_tp_call, SockOp_call},
    {Py_tp_members, SockOp_members},
    {0, NULL}};

static PyType_Spec SockOp_spec = {
    .name = "unixloop._core.SockOp",
    .basicsize = sizeof(SockOpWithCall),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = SockOp_slots};

int ulpy_sock_exec(PyObject *mod, core_state *st) {
  (void)mod;
  SockOp_members[0].offset = offsetof(SockOpWithCall, vectorcall);
  st->SockOpType = (PyTypeObject *)PyType_FromModuleAndSpec(mod, &SockOp_spec,
                                                            NULL);
  return st->SockOpType ? 0 : -1;
}

/* asyncio's _ensure_fd_no_transport, checking the WeakValueDictionary's
 * own dict so that the common case (no transport) raises nothing. */
static int ensure_fd_no_transport(LoopObj *self, PyObject *fdobj) {
  PyObject *transports = PyObject_GetAttrString((PyObject *)self,
                                                "_transports");
  if (transports == NULL)
    return -1;
  PyObject *data = PyObject_GetAttrString(transports, "data");
  Py_DECREF(transports);
  if (data == NULL || !PyDict_Check(data)) {
    Py_XDECREF(data);
    PyErr_Clear();
    goto slow;
  }
  PyObject *ref = PyDict_GetItemWithError(data, fdobj);
  Py_DECREF(data);
  if (ref == NULL)
    return PyErr_Occurred() ? -1 : 0;
slow:;
  /* Maybe a live transport: let asyncio decide and word the error. */
  PyObject *r = PyObject_CallMethod((PyObject *)self,
                                    "_ensure_fd_no_transport", "(O)", fdobj);
  Py_XDECREF(r);
  return r ? 0 : -1;
}

/* _sock_recv_wait(sock, method, arg) -> future: completes with
 * sock.<method>(arg) once the socket is readable. */
PyObject *ulpy_sock_recv_wait(LoopObj *self, PyObject *const *args,
                              Py_ssize_t nargs) {
  if (nargs != 3 || !PyUnicode_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "_sock_recv_wait(sock, method, arg)");
    return NULL;
  }
  if (ulpy_check_closed(self) < 0)
    return NULL;
  int fd = ulpy_fileobj_to_fd(args[0]);
  if (fd < 0)
    return NULL;
  PyObject *fdobj = PyLong_FromLong(fd);
  if (fdobj == NULL)
    return NULL;
  if (ensure_fd_no_transport(self, fdobj) < 0) {
    Py_DECREF(fdobj);
    return NULL;
  }
  PyObject *fut = ulpy_create_future(self);
  if (fut == NULL) {
    Py_DECREF(fdobj);
    return NULL;
  }
  SockOpWithCall *op = PyObject_GC_New(SockOpWithCall, self->st->SockOpType);
  if (op == NULL) {
    Py_DECREF(fdobj);
    Py_DECREF(fut);
    return NULL;
  }
  op->vectorcall = SockOp_vectorcall;
  op->base.loop = (LoopObj *)Py_NewRef((PyObject *)self);
  op->base.fut = Py_NewRef(fut);
  op->base.sock = Py_NewRef(args[0]);
  op->base.method = Py_NewRef(args[1]);
  op->base.arg = Py_NewRef(args[2]);
  op->base.handle = NULL;
  op->base.fdobj = fdobj;
  PyObject_GC_Track(op);

  PyObject *watch_args[2] = {fdobj, (PyObject *)op};
  op->base.handle = ulpy_add_watcher(self, watch_args, 2, 1);
  PyObject *r = NULL;
  if (op->base.handle != NULL)
    r = PyObject_CallMethod(fut, "add_done_callback", "(O)", (PyObject *)op);
  if (r == NULL) {
    if (op->base.handle != NULL)
      Py_XDECREF(ulpy_remove_watcher(self, fdobj, 1));
    (void)SockOp_clear(&op->base);
    Py_DECREF(op);
    Py_DECREF(fut);
    return NULL;
  }
  Py_DECREF(r);
  Py_DECREF(op);
  return fut;
}

/* ---- the first, non-waiting try ----------------------------------------- */

/* Is `sock` exactly a socket.socket (not a subclass that could override
 * recv/send)?  Then its fd can be used directly, with the same results. */
static int is_plain_socket(PyObject *sock) {
  static PyObject *socket_type = NULL; /* socket.socket, never freed */
  if (socket_type == NULL) {
    PyObject *mod = PyImport_ImportModule("socket");
    if (mod == NULL)
      return -1;
    socket_type = PyObject_GetAttrString(mod, "socket");
    Py_DECREF(mod);
    if (socket_type == NULL)
      return -1;
  }
  return (PyObject *)Py_TYPE(sock) == socket_type;
}

/* Calls sock.<name>(arg); a BlockingIOError / InterruptedError becomes
 * *would_block = 1 and NULL without an exception. */
static PyObject *call_nonblocking(PyObject *sock, const char *name,
                                  PyObject *arg, int *would_block) {
  PyObject *r = PyObject_CallMethod(sock, name, "(O)", arg);
  *would_block = 0;
  if (r == NULL && (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
                    PyErr_ExceptionMatches(PyExc_InterruptedError))) {
    PyErr_Clear();
    *would_block = 1;
  }
  return r;
}

/* _sock_try_recv(sock, n) -> bytes, or None if it would block.  For a plain
 * socket the recv() is done here, so that "would block" costs no Python
 * exception (asyncio's sock_recv raises and catches one per wait). */
PyObject *ulpy_sock_try_recv(LoopObj *self, PyObject *const *args,
                             Py_ssize_t nargs) {
  (void)self;
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_sock_try_recv(sock, n)");
    return NULL;
  }
  int plain = is_plain_socket(args[0]);
  if (plain < 0)
    return NULL;
  Py_ssize_t n = PyLong_Check(args[1]) ? PyLong_AsSsize_t(args[1]) : -1;
  if (n == -1 && PyErr_Occurred())
    return NULL;
  if (!plain || n < 0) {
    int would_block;
    PyObject *r = call_nonblocking(args[0], "recv", args[1], &would_block);
    return (r == NULL && would_block) ? Py_NewRef(Py_None) : r;
  }
  int fd = ulpy_fileobj_to_fd(args[0]);
  if (fd < 0)
    return NULL;
  /* As socket.recv() does: receive straight into a bytes object of the
   * full size, then shrink it to what came (_PyBytes_Resize, documented
   * for building new bytes objects). */
  PyObject *data = PyBytes_FromStringAndSize(NULL, n);
  if (data == NULL)
    return NULL;
  ssize_t got;
  do
    got = recv(fd, PyBytes_AS_STRING(data), (size_t)n, 0);
  while (got == -1 && errno == EINTR);
  if (got == -1) {
    int err = errno;
    Py_DECREF(data);
    if (err == EAGAIN || err == EWOULDBLOCK)
      Py_RETURN_NONE;
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  if (got != n && _PyBytes_Resize(&data, got) < 0)
    return NULL;
  return data;
}

/* _sock_try_send(sock, data) -> bytes sent now (0 if it would block). */
PyObject *ulpy_sock_try_send(LoopObj *self, PyObject *const *args,
                             Py_ssize_t nargs) {
  (void)self;
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_sock_try_send(sock, data)");
    return NULL;
  }
  int plain = is_plain_socket(args[0]);
  if (plain < 0)
    return NULL;
  Py_buffer view;
  if (!plain || PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
    PyErr_Clear();
    int would_block;
    PyObject *r = call_nonblocking(args[0], "send", args[1], &would_block);
    return (r == NULL && would_block) ? PyLong_FromLong(0) : r;
  }
  int fd = ulpy_fileobj_to_fd(args[0]);
  if (fd < 0) {
    PyBuffer_Release(&view);
    return NULL;
  }
  ssize_t sent;
  do
    sent = send(fd, view.buf, (size_t)view.len, 0);
  while (sent == -1 && errno == EINTR);
  PyBuffer_Release(&view);
  if (sent == -1) {
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return PyLong_FromLong(0);
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  return PyLong_FromSsize_t(sent);
}
