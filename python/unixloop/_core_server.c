/*
 * _core_server.c -- Acceptor: the accept loop of asyncio's servers on a
 * libunixloop ul_server.
 *
 * asyncio's _accept_connection accepts up to `backlog` connections per
 * wake-up and starts a Task per connection (_accept_connection2) to make
 * its transport; on EMFILE / ENFILE / ENOBUFS / ENOMEM it reports the error
 * through call_exception_handler and stops accepting for
 * ACCEPT_RETRY_DELAY seconds.  Here ul_server does the accepting, the
 * batching and the back-off in C, and hands each accepted fd to
 * `on_accept(fd)` (the loop's _accept_fd: the socket, the protocol and the
 * transport at once, no Task) and each error to `on_error(errno)`.
 *
 * The listening socket stays the Python socket object's (the server's fd is
 * released): Server.close() closes it after Acceptor.close().
 */
#include "_core.h"

#include <unistd.h>

typedef struct {
  PyObject_HEAD
  LoopObj *loop;
  ul_server *server;    /* NULL once closed */
  PyObject *on_accept;
  PyObject *on_error;
} AcceptorObj;

/* A callback raised: SystemExit / KeyboardInterrupt stop the loop (as
 * asyncio lets them escape); anything else cannot be raised anywhere. */
static void acceptor_failed(AcceptorObj *a) {
  if (ulpy_is_fatal_exception()) {
    ulpy_stash_fatal(a->loop);
    return;
  }
  PyErr_WriteUnraisable(a->on_accept);
}

static void on_accept(ul_server *server, int fd, void *arg) {
  AcceptorObj *a = arg;
  (void)server;
  PyObject *fdo = PyLong_FromLong(fd);
  if (fdo == NULL) {
    close(fd);
    acceptor_failed(a);
    return;
  }
  Py_INCREF(a); /* on_accept may close the server */
  PyObject *r = PyObject_CallOneArg(a->on_accept, fdo);
  Py_DECREF(fdo);
  if (r == NULL)
    acceptor_failed(a);
  Py_XDECREF(r);
  Py_DECREF(a);
}

static void on_error(ul_server *server, int err, void *arg) {
  AcceptorObj *a = arg;
  (void)server;
  Py_INCREF(a);
  PyObject *r = PyObject_CallFunction(a->on_error, "i", -err);
  if (r == NULL)
    acceptor_failed(a);
  Py_XDECREF(r);
  Py_DECREF(a);
}

/* The loop closed its C loop first: ul_loop_close() freed the server. */
static void acceptor_close(AcceptorObj *a) {
  if (a->server != NULL && a->loop != NULL && a->loop->ul != NULL)
    ul_server_close(a->server);
  a->server = NULL;
}

/* Acceptor(loop, fd, backlog, on_accept, on_error) */
static PyObject *Acceptor_new(PyTypeObject *tp, PyObject *args,
                              PyObject *kw) {
  PyObject *loop, *on_accept_cb, *on_error_cb;
  int fd, backlog;
  (void)kw;
  if (!PyArg_ParseTuple(args, "OiiOO", &loop, &fd, &backlog, &on_accept_cb,
                        &on_error_cb))
    return NULL;
  AcceptorObj *a = (AcceptorObj *)tp->tp_alloc(tp, 0);
  if (a == NULL)
    return NULL;
  a->loop = (LoopObj *)Py_NewRef(loop);
  a->on_accept = Py_NewRef(on_accept_cb);
  a->on_error = Py_NewRef(on_error_cb);
  if (ulpy_check_closed(a->loop) < 0) {
    Py_DECREF(a);
    return NULL;
  }
  int err = ul_server_open(a->loop->ul, fd, backlog, on_accept, on_error, a,
                           &a->server);
  if (err < 0) {
    a->server = NULL;
    Py_DECREF(a);
    return ulpy_raise_errno(err);
  }
  ul_server_release_fd(a->server);
  return (PyObject *)a;
}

static int Acceptor_traverse(AcceptorObj *a, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(a));
  Py_VISIT(a->loop);
  Py_VISIT(a->on_accept);
  Py_VISIT(a->on_error);
  return 0;
}

static int Acceptor_clear(AcceptorObj *a) {
  acceptor_close(a);
  Py_CLEAR(a->loop);
  Py_CLEAR(a->on_accept);
  Py_CLEAR(a->on_error);
  return 0;
}

static void Acceptor_dealloc(AcceptorObj *a) {
  PyTypeObject *tp = Py_TYPE(a);
  PyObject_GC_UnTrack(a);
  (void)Acceptor_clear(a);
  tp->tp_free(a);
  Py_DECREF(tp);
}

static PyObject *Acceptor_close_method(AcceptorObj *a,
                                       PyObject *Py_UNUSED(ignored)) {
  acceptor_close(a);
  Py_RETURN_NONE;
}

static PyObject *Acceptor_is_serving(AcceptorObj *a,
                                     PyObject *Py_UNUSED(ignored)) {
  return PyBool_FromLong(a->server != NULL && a->loop->ul != NULL &&
                         ul_server_is_serving(a->server));
}

static PyMethodDef Acceptor_methods[] = {
    {"close", (PyCFunction)Acceptor_close_method, METH_NOARGS, NULL},
    {"is_serving", (PyCFunction)Acceptor_is_serving, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyType_Slot Acceptor_slots[] = {
    {Py_tp_new, Acceptor_new},
    {Py_tp_dealloc, Acceptor_dealloc},
    {Py_tp_traverse, Acceptor_traverse},
    {Py_tp_clear, Acceptor_clear},
    {Py_tp_methods, Acceptor_methods},
    {0, NULL}};

static PyType_Spec Acceptor_spec = {
    .name = "unixloop._core.Acceptor",
    .basicsize = sizeof(AcceptorObj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Acceptor_slots};

int ulpy_server_exec(PyObject *mod) {
  PyTypeObject *tp =
      (PyTypeObject *)PyType_FromModuleAndSpec(mod, &Acceptor_spec, NULL);
  if (tp == NULL)
    return -1;
  int r = PyModule_AddType(mod, tp);
  Py_DECREF(tp);
  return r;
}
