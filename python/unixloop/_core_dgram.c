/*
 * _core_dgram.c -- DatagramTransport: asyncio's datagram transport
 * (selector_events._SelectorDatagramTransport) on a libunixloop ul_dgram.
 *
 * The type derives from asyncio's _FlowControlMixin and DatagramTransport,
 * as asyncio's own class does, so isinstance() checks, get_extra_info() and
 * the flow-control attributes are asyncio's.  Receiving (recvmmsg batches),
 * sending (at once, queued only on EAGAIN), flow control and closing are
 * libunixloop's; this file converts addresses between sockaddr and Python
 * tuples / paths, and turns the ul_dgram callbacks into calls of the Python
 * protocol with asyncio's error handling:
 *   - an OSError of receiving or sending goes to protocol.error_received;
 *   - an exception escaping datagram_received / error_received is reported
 *     to the loop's exception handler and the transport stays open (in
 *     asyncio it escapes the reader callback, with the same effect);
 *   - an address sendto cannot convert in C (a host name, a bad type) is
 *     passed to socket.sendto(), so errors and messages are the socket's.
 *
 * Lifetime: the ul_dgram holds a reference to the transport from
 * ul_dgram_open() until connection_lost, which also closes the Python
 * socket object (the ul_dgram was told not to close the fd itself).  That
 * reference is kept in the loop's `open_transports` set (_core.h).  When the
 * loop closes first, asyncio calls nothing: the transport keeps its socket
 * ("orphaned") until it is collected, which warns "unclosed transport".
 */
#include "_core.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <structmember.h>
#include <sys/un.h>

/* Recent senders' IP addresses and their Python tuples: a server answering
 * a few peers reuses the tuple of each instead of building one per
 * datagram, and a sendto() given back that very tuple skips converting it. */
#define ADDR_CACHE_SIZE 32

typedef struct {
  PyObject *tuple;          /* NULL: empty slot */
  socklen_t len;
  struct sockaddr_in6 addr; /* large enough for AF_INET and AF_INET6 */
} addr_entry;

typedef struct {
  PyObject_HEAD
  PyObject *extra;          /* asyncio BaseTransport.__slots__ = ('_extra',) */
  PyObject *fc_slots[4];    /* _FlowControlMixin's four slots: unused, their
                               names are served by the getters below */
  ul_dgram *dgram;          /* NULL once the connection is lost */
  LoopObj *loop;
  PyObject *protocol;
  PyObject *datagram_received;  /* the protocol's bound method */
  PyObject *sock;
  PyObject *address;        /* asyncio's _address: remote_addr, or None */
  PyObject *lost_exc;       /* what connection_lost will be given */
  PyObject *dict;
  PyObject *weakreflist;
  int fd;
  int family;
  int connected;            /* extra['peername'] is set: send() to it */
  int conn_lost;            /* asyncio's _conn_lost */
  int protocol_paused;
  int orphaned;             /* the loop closed with the transport open */
  int orphan_closing;       /* close() called after that */
  addr_entry cache[ADDR_CACHE_SIZE];
  addr_entry *last;         /* the entry of the last datagram received */
} DgramObj;

/* ---- addresses ------------------------------------------------------------- */

/* socket.recvfrom()'s address for a sockaddr (CPython's makesockaddr). */
static PyObject *addr_to_python(const struct sockaddr *sa, socklen_t len) {
  if (len == 0)
    Py_RETURN_NONE;
  switch (sa->sa_family) {
  case AF_INET: {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    char host[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host) == NULL)
      break;
    PyObject *h = PyUnicode_FromString(host);
    PyObject *p = h ? PyLong_FromLong(ntohs(a->sin_port)) : NULL;
    PyObject *r = p ? PyTuple_Pack(2, h, p) : NULL;
    Py_XDECREF(h);
    Py_XDECREF(p);
    return r;
  }
  case AF_INET6: {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    char host[NI_MAXHOST];
    /* As CPython: numeric, with the %scope of a link-local address. */
    if (getnameinfo(sa, len, host, sizeof host, NULL, 0, NI_NUMERICHOST))
      break;
    return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                         (unsigned)ntohl(a->sin6_flowinfo),
                         (unsigned)a->sin6_scope_id);
  }
  case AF_UNIX: {
    const struct sockaddr_un *a = (const struct sockaddr_un *)sa;
    size_t n = len - offsetof(struct sockaddr_un, sun_path);
    if (n > 0 && a->sun_path[0] == '\0') /* Linux abstract name */
      return PyBytes_FromStringAndSize(a->sun_path, (Py_ssize_t)n);
    n = strnlen(a->sun_path, n);
    return PyUnicode_DecodeFSDefaultAndSize(a->sun_path, (Py_ssize_t)n);
  }
  default:
    break;
  }
  return Py_BuildValue("(iy#)", (int)sa->sa_family, sa->sa_data,
                       (Py_ssize_t)(len > sizeof(sa_family_t)
                                        ? len - sizeof(sa_family_t)
                                        : 0));
}

static void cache_clear(DgramObj *t) {
  for (int i = 0; i < ADDR_CACHE_SIZE; i++)
    Py_CLEAR(t->cache[i].tuple);
  t->last = NULL;
}

/* The sender's address as a Python object, from the cache for IP
 * addresses. */
static PyObject *sender_address(DgramObj *t, const struct sockaddr *sa,
                                socklen_t len) {
  if ((sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
      len > sizeof(struct sockaddr_in6))
    return addr_to_python(sa, len);
  uint32_t h;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    h = a->sin_addr.s_addr ^ ((uint32_t)a->sin_port * 2654435761u);
  } else {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    uint32_t w;
    memcpy(&w, &a->sin6_addr.s6_addr[12], sizeof w);
    h = w ^ ((uint32_t)a->sin6_port * 2654435761u);
  }
  addr_entry *e = &t->cache[(h ^ (h >> 16)) % ADDR_CACHE_SIZE];
  if (e->tuple != NULL && e->len == len && memcmp(&e->addr, sa, len) == 0) {
    t->last = e;
    return Py_NewRef(e->tuple);
  }
  PyObject *tuple = addr_to_python(sa, len);
  if (tuple == NULL)
    return NULL;
  Py_XSETREF(e->tuple, Py_NewRef(tuple));
  e->len = len;
  memcpy(&e->addr, sa, len);
  t->last = e;
  return tuple;
}

static int long_in_range(PyObject *o, long lo, long hi, long *out) {
  if (!PyLong_CheckExact(o))
    return 0;
  long v = PyLong_AsLong(o);
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return 0;
  }
  *out = v;
  return v >= lo && v <= hi;
}

/* The numeric IP host of an address tuple, as UTF-8 (NULL if not a str). */
static const char *tuple_host(PyObject *addr, Py_ssize_t min, Py_ssize_t max) {
  if (!PyTuple_CheckExact(addr) || PyTuple_GET_SIZE(addr) < min ||
      PyTuple_GET_SIZE(addr) > max ||
      !PyUnicode_CheckExact(PyTuple_GET_ITEM(addr, 0)))
    return NULL;
  const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
  if (host == NULL)
    PyErr_Clear();
  return host;
}

/* Converts what socket.sendto() would accept as an address, when it is
 * numeric: returns its length, or 0 when the address needs the socket
 * module (a host name, another type, a value out of range). */
static socklen_t addr_from_python(int family, PyObject *addr,
                                  struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(struct sockaddr_in6));
  long port, flow = 0, scope = 0;
  const char *host;
  switch (family) {
  case AF_INET: {
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    host = tuple_host(addr, 2, 2);
    if (host == NULL || host[0] == '\0' ||
        !long_in_range(PyTuple_GET_ITEM(addr, 1), 0, 65535, &port) ||
        inet_pton(AF_INET, host, &a->sin_addr) != 1)
      return 0;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    return sizeof *a;
  }
  case AF_INET6: {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    Py_ssize_t n;
    host = tuple_host(addr, 2, 4);
    if (host == NULL)
      return 0;
    n = PyTuple_GET_SIZE(addr);
    if (!long_in_range(PyTuple_GET_ITEM(addr, 1), 0, 65535, &port) ||
        (n > 2 && !long_in_range(PyTuple_GET_ITEM(addr, 2), 0, 0xfffff,
                                 &flow)) ||
        (n > 3 && !long_in_range(PyTuple_GET_ITEM(addr, 3), 0, 0xffffffffL,
                                 &scope)) ||
        inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
      return 0;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    a->sin6_flowinfo = htonl((uint32_t)flow);
    a->sin6_scope_id = (uint32_t)scope;
    return sizeof *a;
  }
  case AF_UNIX: {
    struct sockaddr_un *a = (struct sockaddr_un *)ss;
    PyObject *path = NULL;
    if (PyUnicode_CheckExact(addr))
      path = PyUnicode_EncodeFSDefault(addr);
    else if (PyBytes_CheckExact(addr))
      path = Py_NewRef(addr);
    if (path == NULL) {
      PyErr_Clear();
      return 0;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(path);
    socklen_t len = 0;
    if (n > 0 && n < (Py_ssize_t)sizeof a->sun_path) {
      a->sun_family = AF_UNIX;
      memcpy(a->sun_path, PyBytes_AS_STRING(path), (size_t)n);
      len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n);
    }
    Py_DECREF(path);
    return len;
  }
  default:
    return 0;
  }
}

/* ---- calling the protocol --------------------------------------------------- */

static void report(DgramObj *t, const char *message) {
  ulpy_transport_report(t->loop, (PyObject *)t, t->protocol, message);
}

/* protocol.error_received(OSError(err)); returns -1 with the exception set
 * if that raised. */
static int call_error_received(DgramObj *t, int err) {
  PyObject *exc = ulpy_exception_from_errno(err);
  PyObject *r = exc ? PyObject_CallMethod(t->protocol, "error_received", "(O)",
                                          exc)
                    : NULL;
  Py_XDECREF(exc);
  if (r == NULL)
    return -1;
  Py_DECREF(r);
  return 0;
}

static void on_made(ul_dgram *d, void *ctx) {
  DgramObj *t = ctx;
  (void)d;
  PyObject *r = PyObject_CallMethod(t->protocol, "connection_made", "(O)",
                                    (PyObject *)t);
  if (r == NULL)
    report(t, "Exception in callback connection_made()");
  Py_XDECREF(r);
}

static void on_datagram(ul_dgram *d, const char *data, size_t len,
                        const struct sockaddr *addr, socklen_t addrlen,
                        void *ctx) {
  DgramObj *t = ctx;
  (void)d;
  PyObject *args[2];
  args[0] = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
  args[1] = args[0] ? sender_address(t, addr, addrlen) : NULL;
  PyObject *r = args[1] ? PyObject_Vectorcall(t->datagram_received, args, 2,
                                              NULL)
                        : NULL;
  Py_XDECREF(args[0]);
  Py_XDECREF(args[1]);
  if (r == NULL)
    report(t, "Exception in callback DatagramTransport._read_ready()");
  Py_XDECREF(r);
}

static void on_error(ul_dgram *d, int err, void *ctx) {
  DgramObj *t = ctx;
  (void)d;
  if (call_error_received(t, err) < 0)
    report(t, "Exception in callback DatagramTransport._read_ready()");
}

static void on_pause_writing(ul_dgram *d, void *ctx) {
  (void)d;
  DgramObj *t = ctx;
  t->protocol_paused = 1;
  ulpy_protocol_flow_call(t->loop, (PyObject *)t, t->protocol, 1);
}

static void on_resume_writing(ul_dgram *d, void *ctx) {
  (void)d;
  DgramObj *t = ctx;
  t->protocol_paused = 0;
  ulpy_protocol_flow_call(t->loop, (PyObject *)t, t->protocol, 0);
}

/* asyncio's _call_connection_lost. */
static void on_lost(ul_dgram *d, int err, void *ctx) {
  DgramObj *t = ctx;
  (void)d;
  t->dgram = NULL;
  if (err == -ECANCELED) {
    t->orphaned = 1; /* ul_loop_close(); the loop drops our reference */
    return;
  }
  PyObject *exc = t->lost_exc;
  t->lost_exc = NULL;
  if (exc == NULL && err != 0 && err != -ECANCELED)
    exc = ulpy_exception_from_errno(err);
  PyErr_Clear();
  PyObject *r = PyObject_CallMethod(t->protocol, "connection_lost", "(O)",
                                    exc ? exc : Py_None);
  if (r == NULL)
    report(t, "Exception in callback connection_lost()");
  Py_XDECREF(r);
  Py_XDECREF(exc);
  /* The socket object owns the fd. */
  PyObject *type, *e, *tb;
  PyErr_Fetch(&type, &e, &tb);
  r = PyObject_CallMethod(t->sock, "close", NULL);
  if (r == NULL)
    PyErr_WriteUnraisable((PyObject *)t);
  Py_XDECREF(r);
  PyErr_Restore(type, e, tb);
  /* asyncio forgets the protocol once it lost its connection. */
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->datagram_received);
  cache_clear(t);
  ulpy_transport_release(t->loop, (PyObject *)t); /* the ul_dgram's ref. */
}

static const ul_dgram_protocol dgram_protocol = {
    .connection_made = on_made,
    .datagram_received = on_datagram,
    .error_received = on_error,
    .connection_lost = on_lost,
    .pause_writing = on_pause_writing,
    .resume_writing = on_resume_writing,
};

/* asyncio's _fatal_error for an exception that is not an OSError: report
 * it, then abort with it as connection_lost's argument.  Takes the current
 * exception. */
static void fatal_error(DgramObj *t, const char *message) {
  if (ulpy_is_fatal_exception())
    return; /* SystemExit, KeyboardInterrupt: the caller sees it */
  PyObject *exc = ulpy_take_exception();
  ulpy_transport_exception(t->loop, (PyObject *)t, t->protocol, message, exc);
  if (t->lost_exc == NULL)
    t->lost_exc = exc;
  else
    Py_DECREF(exc);
  if (t->dgram != NULL && !t->conn_lost) {
    t->conn_lost++;
    ul_dgram_abort(t->dgram);
  }
}

/* ---- Python methods ------------------------------------------------------------ */

static int set_protocol(DgramObj *t, PyObject *protocol) {
  PyObject *dr = PyObject_GetAttrString(protocol, "datagram_received");
  if (dr == NULL)
    return -1;
  Py_INCREF(protocol);
  Py_XSETREF(t->protocol, protocol);
  Py_XSETREF(t->datagram_received, dr);
  return 0;
}

/* DatagramTransport(loop, sock, protocol, address, extra) */
static PyObject *Dgram_new(PyTypeObject *tp, PyObject *args, PyObject *kw) {
  PyObject *loop, *sock, *protocol, *address, *extra;
  (void)kw;
  if (!PyArg_ParseTuple(args, "OOOOO!", &loop, &sock, &protocol, &address,
                        &PyDict_Type, &extra))
    return NULL;
  int fd = ulpy_fileobj_to_fd(sock);
  if (fd < 0)
    return NULL;
  PyObject *family = PyObject_GetAttrString(sock, "family");
  int fam = family ? (int)PyLong_AsLong(family) : -1;
  Py_XDECREF(family);
  if (fam == -1 && PyErr_Occurred())
    return NULL;
  PyObject *peer = PyDict_GetItemString(extra, "peername");
  int connected = peer != NULL ? PyObject_IsTrue(peer) : 0;
  if (connected < 0)
    return NULL;
  DgramObj *t = (DgramObj *)tp->tp_alloc(tp, 0);
  if (t == NULL)
    return NULL;
  t->extra = Py_NewRef(extra);
  t->loop = (LoopObj *)Py_NewRef(loop);
  t->sock = Py_NewRef(sock);
  t->address = Py_NewRef(address);
  t->fd = fd;
  t->family = fam;
  t->connected = connected;
  if (set_protocol(t, protocol) < 0 || ulpy_check_closed(t->loop) < 0) {
    Py_DECREF(t);
    return NULL;
  }
  /* The ul_dgram's reference, until connection_lost. */
  if (ulpy_transport_hold(t->loop, (PyObject *)t) < 0) {
    Py_DECREF(t);
    return NULL;
  }
  /* The socket object owns the fd: the ul_dgram must not close it. */
  int err = ul_dgram_open(t->loop->ul, fd, &dgram_protocol, t, &t->dgram);
  if (err < 0) {
    ulpy_transport_release(t->loop, (PyObject *)t);
    /* ul_dgram_open closed the fd: the socket object must not close it
     * again (the number may be reused by then). */
    t->dgram = NULL;
    PyObject *r = PyObject_CallMethod(sock, "detach", NULL);
    Py_XDECREF(r);
    PyErr_Clear();
    Py_DECREF(t);
    return ulpy_raise_errno(err);
  }
  ul_dgram_release_fd(t->dgram);
  return (PyObject *)t;
}

static int Dgram_traverse(DgramObj *t, visitproc visit, void *arg) {
  Py_VISIT(Py_TYPE(t));
  Py_VISIT(t->extra);
  Py_VISIT(t->loop);
  Py_VISIT(t->protocol);
  Py_VISIT(t->datagram_received);
  Py_VISIT(t->sock);
  Py_VISIT(t->address);
  Py_VISIT(t->lost_exc);
  Py_VISIT(t->dict);
  for (int i = 0; i < ADDR_CACHE_SIZE; i++)
    Py_VISIT(t->cache[i].tuple);
  return 0;
}

static int Dgram_clear(DgramObj *t) {
  cache_clear(t);
  Py_CLEAR(t->extra);
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->datagram_received);
  Py_CLEAR(t->address);
  Py_CLEAR(t->lost_exc);
  Py_CLEAR(t->dict);
  return 0;
}

/* asyncio's _SelectorTransport.__del__: a transport collected before its
 * connection was lost warns and closes its socket. */
static void Dgram_finalize(DgramObj *t) {
  if (t->sock == NULL || (t->dgram == NULL && !t->orphaned))
    return;
  ulpy_warn_unclosed((PyObject *)t);
  if (t->dgram != NULL)
    ul_dgram_abort(t->dgram); /* its loop is garbage too: stop watching */
  t->orphaned = 0;            /* warn once */
  ulpy_close_quietly((PyObject *)t, t->sock);
}

static void Dgram_dealloc(DgramObj *t) {
  PyTypeObject *tp = Py_TYPE(t);
  if (PyObject_CallFinalizerFromDealloc((PyObject *)t) < 0)
    return; /* resurrected */
  PyObject_GC_UnTrack(t);
  if (t->weakreflist != NULL)
    PyObject_ClearWeakRefs((PyObject *)t);
  (void)Dgram_clear(t);
  Py_CLEAR(t->sock);
  Py_CLEAR(t->loop);
  tp->tp_free(t);
  Py_DECREF(tp);
}

/* The slow path, for an address the C code does not convert: send with
 * socket.sendto() itself when nothing is queued (its errors and messages
 * are asyncio's); otherwise (or when that would block) resolve the address
 * to a numeric one and queue it. */
static PyObject *sendto_python(DgramObj *t, PyObject *data, Py_buffer *view,
                               PyObject *addr) {
  struct sockaddr_storage ss;
  socklen_t len = 0;
  if (ul_dgram_get_write_buffer_size(t->dgram) == 0) {
    PyObject *r = PyObject_CallMethod(t->sock, "sendto", "(OO)", data, addr);
    if (r != NULL) {
      Py_DECREF(r);
      Py_RETURN_NONE;
    }
    if (!PyErr_ExceptionMatches(PyExc_BlockingIOError) &&
        !PyErr_ExceptionMatches(PyExc_InterruptedError))
      goto failed;
    PyErr_Clear();
  }
  PyObject *f = ulpy_helper(t->loop->st, "numeric_address");
  PyObject *num = f ? PyObject_CallFunction(f, "OiO", t->sock, t->family, addr)
                    : NULL;
  if (num == NULL)
    goto failed;
  len = addr_from_python(t->family, num, &ss);
  Py_DECREF(num);
  if (len == 0) {
    PyErr_Format(PyExc_TypeError, "unsupported address %R", addr);
    goto failed;
  }
  int err = ul_dgram_sendto(t->dgram, view->buf, (size_t)view->len,
                            (struct sockaddr *)&ss, len);
  if (err == -ENOMEM)
    return PyErr_NoMemory();
  if (err < 0 && call_error_received(t, err) < 0)
    return NULL;
  Py_RETURN_NONE;
failed:
  if (ulpy_is_fatal_exception())
    return NULL;
  if (PyErr_ExceptionMatches(PyExc_OSError)) {
    PyObject *exc = ulpy_take_exception();
    PyObject *r = PyObject_CallMethod(t->protocol, "error_received", "(O)",
                                      exc);
    Py_DECREF(exc);
    if (r == NULL)
      return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
  }
  fatal_error(t, "Fatal write error on datagram transport");
  Py_RETURN_NONE;
}

/* sendto(data, addr=None): asyncio's checks and messages, then at once to
 * the kernel (libunixloop queues only what would block). */
static PyObject *Dgram_sendto(DgramObj *t, PyObject *const *args,
                              Py_ssize_t nargs, PyObject *kwnames) {
  PyObject *data, *addr = Py_None;
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  if (nargs + nkw < 1 || nargs + nkw > 2 || nargs < 1) {
    PyErr_SetString(PyExc_TypeError,
                    "sendto() takes data and an optional addr");
    return NULL;
  }
  data = args[0];
  if (nargs == 2) {
    addr = args[1];
  } else if (nkw == 1) {
    if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0),
                                         "addr") != 0) {
      PyErr_Format(PyExc_TypeError,
                   "sendto() got an unexpected keyword argument %R",
                   PyTuple_GET_ITEM(kwnames, 0));
      return NULL;
    }
    addr = args[1];
  }
  if (!PyBytes_Check(data) && !PyByteArray_Check(data) &&
      !PyMemoryView_Check(data)) {
    PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(data),
                                            "__name__");
    if (name != NULL)
      PyErr_Format(PyExc_TypeError,
                   "data argument must be a bytes-like object, not %R", name);
    Py_XDECREF(name);
    return NULL;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
    return NULL;
  PyObject *result = NULL;
  if (view.len == 0) {
    result = Py_NewRef(Py_None);
    goto done;
  }
  if (t->address != Py_None) {
    int truthy = PyObject_IsTrue(t->address);
    if (truthy < 0)
      goto done;
    if (truthy && addr != Py_None) {
      int same = PyObject_RichCompareBool(addr, t->address, Py_EQ);
      if (same < 0)
        goto done;
      if (!same) {
        PyErr_Format(PyExc_ValueError, "Invalid address: must be None or %S",
                     t->address);
        goto done;
      }
    }
    if (truthy)
      addr = t->address;
  }
  if (t->dgram == NULL || t->conn_lost ||
      ul_dgram_is_closing(t->dgram)) {
    if (ulpy_count_lost_write(t->loop->st, &t->conn_lost) == 0)
      result = Py_NewRef(Py_None);
    goto done;
  }
  int err;
  if (t->connected) {
    err = ul_dgram_sendto(t->dgram, view.buf, (size_t)view.len, NULL, 0);
  } else {
    struct sockaddr_storage ss;
    socklen_t len;
    if (t->last != NULL && t->last->tuple == addr) { /* answering it */
      len = t->last->len;
      memcpy(&ss, &t->last->addr, len);
    } else {
      len = addr_from_python(t->family, addr, &ss);
    }
    if (len == 0) {
      result = sendto_python(t, data, &view, addr);
      goto done;
    }
    err = ul_dgram_sendto(t->dgram, view.buf, (size_t)view.len,
                          (struct sockaddr *)&ss, len);
  }
  if (err == -ENOMEM) {
    PyErr_NoMemory();
    goto done;
  }
  /* A send error (ECONNREFUSED, EMSGSIZE, ...) is the protocol's, as in
   * asyncio; what error_received raises escapes sendto. */
  if (err < 0 && call_error_received(t, err) < 0)
    goto done;
  if (PyErr_Occurred())
    goto done; /* pause_writing raised fatally */
  result = Py_NewRef(Py_None);
done:
  PyBuffer_Release(&view);
  return result;
}

static PyObject *Dgram_close(DgramObj *t, PyObject *Py_UNUSED(ignored)) {
  if (t->orphaned && !t->orphan_closing)
    return ulpy_orphan_close(t->loop, &t->orphan_closing);
  if (t->dgram != NULL && !ul_dgram_is_closing(t->dgram)) {
    t->conn_lost += ul_dgram_get_write_buffer_size(t->dgram) == 0;
    ul_dgram_close(t->dgram);
  }
  Py_RETURN_NONE;
}

static PyObject *Dgram_abort(DgramObj *t, PyObject *Py_UNUSED(ignored)) {
  if (t->orphaned && !t->conn_lost) {
    t->conn_lost++;
    return ulpy_orphan_close(t->loop, &t->orphan_closing);
  }
  if (t->dgram != NULL && !t->conn_lost) {
    t->conn_lost++;
    ul_dgram_abort(t->dgram);
  }
  Py_RETURN_NONE;
}

static PyObject *Dgram_is_closing(DgramObj *t, PyObject *Py_UNUSED(ignored)) {
  if (t->orphaned)
    return PyBool_FromLong(t->orphan_closing);
  return PyBool_FromLong(t->dgram == NULL || ul_dgram_is_closing(t->dgram));
}

static PyObject *Dgram_get_write_buffer_size(DgramObj *t,
                                             PyObject *Py_UNUSED(ignored)) {
  return PyLong_FromSize_t(t->dgram ? ul_dgram_get_write_buffer_size(t->dgram)
                                    : 0);
}

static PyObject *Dgram_get_write_buffer_limits(DgramObj *t,
                                               PyObject *Py_UNUSED(ignored)) {
  size_t low = UL_DGRAM_HIGH_WATER / 4, high = UL_DGRAM_HIGH_WATER;
  if (t->dgram != NULL)
    ul_dgram_get_write_buffer_limits(t->dgram, &low, &high);
  return Py_BuildValue("(nn)", (Py_ssize_t)low, (Py_ssize_t)high);
}

static PyObject *Dgram_set_write_buffer_limits(DgramObj *t, PyObject *args,
                                               PyObject *kw) {
  Py_ssize_t high, low;
  if (ulpy_parse_water_marks(t->loop->st, args, kw, &high, &low) < 0)
    return NULL;
  if (t->dgram != NULL)
    ul_dgram_set_write_buffer_limits(t->dgram, high, low);
  if (PyErr_Occurred())
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *Dgram_get_protocol(DgramObj *t,
                                    PyObject *Py_UNUSED(ignored)) {
  return Py_NewRef(t->protocol ? t->protocol : Py_None);
}

static PyObject *Dgram_set_protocol(DgramObj *t, PyObject *protocol) {
  if (set_protocol(t, protocol) < 0)
    return NULL;
  Py_RETURN_NONE;
}

/* asyncio's _SelectorTransport.__repr__. */
static PyObject *Dgram_repr(DgramObj *t) {
  const char *name = Py_TYPE(t)->tp_name;
  const char *dot = strrchr(name, '.');
  name = dot ? dot + 1 : name;
  if (t->orphaned)
    return PyUnicode_FromFormat("<%s%s fd=%d>", name,
                                t->orphan_closing ? " closing" : "", t->fd);
  if (t->dgram == NULL)
    return PyUnicode_FromFormat("<%s closed fd=%d>", name, t->fd);
  int reading = ul_loop_get_reader(t->loop->ul, t->fd) != NULL;
  int writing = ul_loop_get_writer(t->loop->ul, t->fd) != NULL;
  return PyUnicode_FromFormat(
      "<%s%s fd=%d read=%s write=<%s, bufsize=%zu>>", name,
      ul_dgram_is_closing(t->dgram) ? " closing" : "", t->fd,
      reading ? "polling" : "idle", writing ? "polling" : "idle",
      ul_dgram_get_write_buffer_size(t->dgram));
}

static PyObject *Dgram_get_sock(DgramObj *t, void *c) {
  (void)c;
  return Py_NewRef(t->dgram ? t->sock : Py_None);
}

static PyObject *Dgram_get_loop(DgramObj *t, void *c) {
  (void)c;
  return Py_NewRef(t->dgram ? (PyObject *)t->loop : Py_None);
}

static PyObject *Dgram_get_protocol_paused(DgramObj *t, void *c) {
  (void)c;
  return PyBool_FromLong(t->protocol_paused);
}

static PyObject *Dgram_get_closing(DgramObj *t, void *c) {
  (void)c;
  return PyBool_FromLong(t->dgram == NULL || ul_dgram_is_closing(t->dgram));
}

static PyMethodDef Dgram_methods[] = {
    {"sendto", (PyCFunction)(void (*)(void))Dgram_sendto,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"close", (PyCFunction)Dgram_close, METH_NOARGS, NULL},
    {"abort", (PyCFunction)Dgram_abort, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)Dgram_is_closing, METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)Dgram_get_write_buffer_size,
     METH_NOARGS, NULL},
    {"get_write_buffer_limits", (PyCFunction)Dgram_get_write_buffer_limits,
     METH_NOARGS, NULL},
    {"set_write_buffer_limits",
     (PyCFunction)(void (*)(void))Dgram_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_protocol", (PyCFunction)Dgram_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", (PyCFunction)Dgram_set_protocol, METH_O, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Dgram_getset[] = {
    {"_sock", (getter)Dgram_get_sock, NULL, NULL, NULL},
    {"_loop", (getter)Dgram_get_loop, NULL, NULL, NULL},
    {"_protocol_paused", (getter)Dgram_get_protocol_paused, NULL, NULL,
     NULL},
    {"_closing", (getter)Dgram_get_closing, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMemberDef Dgram_members[] = {
    {"_sock_fd", T_INT, offsetof(DgramObj, fd), READONLY, NULL},
    {"_protocol", T_OBJECT, offsetof(DgramObj, protocol), READONLY, NULL},
    {"_address", T_OBJECT, offsetof(DgramObj, address), READONLY, NULL},
    {"_conn_lost", T_INT, offsetof(DgramObj, conn_lost), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(DgramObj, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(DgramObj, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL}};

static PyType_Slot Dgram_slots[] = {
    {Py_tp_new, Dgram_new},
    {Py_tp_init, ulpy_transport_init},
    {Py_tp_dealloc, Dgram_dealloc},
    {Py_tp_finalize, Dgram_finalize},
    {Py_tp_traverse, Dgram_traverse},
    {Py_tp_clear, Dgram_clear},
    {Py_tp_repr, Dgram_repr},
    {Py_tp_methods, Dgram_methods},
    {Py_tp_getset, Dgram_getset},
    {Py_tp_members, Dgram_members},
    {0, NULL}};

static PyType_Spec Dgram_spec = {
    .name = "unixloop._core.DatagramTransport",
    .basicsize = sizeof(DgramObj),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Dgram_slots};

int ulpy_dgram_exec(PyObject *mod, core_state *st) {
  PyObject *transports = PyImport_ImportModule("asyncio.transports");
  if (transports == NULL)
    return -1;
  /* As asyncio's _SelectorDatagramTransport: _FlowControlMixin (through
   * _SelectorTransport) and DatagramTransport. */
  PyObject *bases = Py_BuildValue(
      "(NN)", PyObject_GetAttrString(transports, "_FlowControlMixin"),
      PyObject_GetAttrString(transports, "DatagramTransport"));
  Py_DECREF(transports);
  if (bases == NULL)
    return -1;
  /* Our struct starts with asyncio's layout: the object header, the
   * `_extra` slot and _FlowControlMixin's four.  Refuse anything else. */
  if (((PyTypeObject *)PyTuple_GET_ITEM(bases, 0))->tp_basicsize !=
      (Py_ssize_t)offsetof(DgramObj, dgram)) {
    Py_DECREF(bases);
    PyErr_SetString(PyExc_ImportError,
                    "asyncio's _FlowControlMixin has an unexpected layout");
    return -1;
  }
  st->DgramType =
      (PyTypeObject *)PyType_FromModuleAndSpec(mod, &Dgram_spec, bases);
  Py_DECREF(bases);
  if (st->DgramType == NULL)
    return -1;
  return PyModule_AddType(mod, st->DgramType);
}
