/*
 * net.c -- TCP and UNIX-domain stream sockets: connect, listen, accept.
 *
 * The model is asyncio's selector_events (sock_connect, _accept_connection)
 * and unix_events.create_unix_server:
 *
 *   - A connect is started at once on a non-blocking socket; its callback
 *     runs from the loop, through call_soon when connect() answered at once
 *     (success or failure), else from the fd's writer when the kernel has
 *     finished (the result is SO_ERROR).
 *   - A server's reader accepts up to `backlog` connections per wake-up.
 *     When accept4() runs out of a resource (EMFILE, ENFILE, ENOBUFS,
 *     ENOMEM) or fails in a way that would make a level-triggered reader
 *     spin, the error is reported, the reader removed, and a timer puts it
 *     back after UL_SERVER_ACCEPT_RETRY_DELAY.
 *   - ul_unix_listen removes a stale socket file (one nobody answers on)
 *     before binding, and at close removes the file only if it is still the
 *     inode it created.
 *
 * A server may be closed from inside its own callbacks: it counts the
 * callbacks it is running (`depth`) and is freed only when that is 0.
 *
 * The loop keeps a list of its open servers (`loop->servers`) and of the
 * connects whose callback has not run yet (`loop->connects`), so that
 * ul_loop_close() can release them (ul__net_close_all): a connect still
 * waiting for writability gets -ECANCELED (one queued through call_soon
 * gets it from the loop's ready queue first), a server still open is
 * closed as by ul_server_close and freed.
 */
#define _GNU_SOURCE   /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_BACKLOG 100   /* asyncio's create_server default */

struct ul_server {
  ul_server *next;      /* the loop's list of open servers */
  ul_server *prev;
  ul_loop *loop;
  int fd;
  int backlog;          /* listen() backlog, and accepts per wake-up */
  ul_accept_cb cb;
  ul_server_error_cb on_error;
  void *arg;
  ul_timer *retry;      /* puts the reader back after an accept error */
  char *path;           /* the socket file ul_unix_listen created, or NULL */
  dev_t dev;            /* ... and its identity, checked before unlink */
  ino_t ino;
  int depth;            /* callbacks of this server running */
  unsigned is_tcp : 1;  /* set TCP_NODELAY on accepted sockets */
  unsigned serving : 1; /* between start and stop (asyncio's is_serving) */
  unsigned reading : 1; /* the reader is registered */
  unsigned closing : 1; /* ul_server_close was called */
  unsigned fd_released : 1; /* ul_server_release_fd: not ours to close */
};

typedef struct ul__connect {
  struct ul__connect *next;  /* the loop's list of connects */
  struct ul__connect *prev;
  ul_loop *loop;
  int fd;
  int err;              /* an immediate result, for connect_soon_cb */
  unsigned writing : 1; /* waiting for writability (connect_writable) */
  ul_connect_cb cb;
  void *arg;
} connect_req;

/* ---- helpers ------------------------------------------------------------- */

/* asyncio's _set_nodelay.  Best effort, as asyncio: a failure is ignored. */
static void set_nodelay(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int tcp_addr_ok(const struct sockaddr *addr, socklen_t addrlen) {
  if (addr == NULL)
    return 0;
  if (addr->sa_family == AF_INET)
    return addrlen >= (socklen_t)sizeof(struct sockaddr_in);
  if (addr->sa_family == AF_INET6)
    return addrlen >= (socklen_t)sizeof(struct sockaddr_in6);
  return 0;
}

/* Builds a UNIX address from `pathlen` bytes.  A leading NUL makes an
 * abstract name (taken as is).  A filesystem path may end with one NUL (a
 * length counted with its terminator), must not contain another, and must
 * fit sun_path with its terminator.  *cpath_out (may be NULL) receives a
 * pointer to the NUL-terminated path in *sun, or NULL for an abstract name. */
static int unix_addr(const char *path, size_t pathlen, struct sockaddr_un *sun,
                     socklen_t *len, const char **cpath_out) {
  if (path == NULL || pathlen == 0)
    return -EINVAL;
  memset(sun, 0, sizeof *sun);
  sun->sun_family = AF_UNIX;
  if (path[0] == '\0') {
    if (pathlen > sizeof sun->sun_path)
      return -EINVAL;
    memcpy(sun->sun_path, path, pathlen);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + pathlen);
    if (cpath_out != NULL)
      *cpath_out = NULL;
    return 0;
  }
  if (path[pathlen - 1] == '\0')
    pathlen--;
  if (pathlen >= sizeof sun->sun_path || memchr(path, '\0', pathlen) != NULL)
    return -EINVAL;
  memcpy(sun->sun_path, path, pathlen);
  sun->sun_path[pathlen] = '\0';
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + pathlen + 1);
  if (cpath_out != NULL)
    *cpath_out = sun->sun_path;
  return 0;
}

/* ---- connecting ------------------------------------------------------- */

static void connect_link(connect_req *req) {
  ul_loop *loop = req->loop;
  req->prev = NULL;
  req->next = loop->connects;
  if (loop->connects != NULL)
    loop->connects->prev = req;
  loop->connects = req;
}

static void connect_unlink(connect_req *req) {
  if (req->prev != NULL)
    req->prev->next = req->next;
  else
    req->loop->connects = req->next;
  if (req->next != NULL)
    req->next->prev = req->prev;
  req->next = req->prev = NULL;
}

/* Hands the result to the callback: the fd, or the error (fd closed). */
static void connect_finish(connect_req *req, int err) {
  ul_loop *loop = req->loop;
  ul_connect_cb cb = req->cb;
  void *arg = req->arg;
  int fd = req->fd;
  if (req->writing)
    ul_loop_remove_writer(loop, fd);
  connect_unlink(req);
  free(req);
  if (err != 0) {
    close(fd);
    fd = err;
  }
  cb(loop, fd, arg);
}

/* connect() answered at once.  At loop close (status -ECANCELED) the
 * callback still runs, with -ECANCELED, so that it can release `arg`. */
static void connect_soon_cb(ul_loop *loop, void *arg, int status) {
  connect_req *req = arg;
  (void)loop;
  connect_finish(req, status != 0 ? status : req->err);
}

/* The connect in progress has ended (asyncio's _sock_connect_cb). */
static void connect_writable(ul_loop *loop, int fd, int events, void *arg) {
  connect_req *req = arg;
  int soerr = 0;
  socklen_t len = sizeof soerr;
  (void)loop;
  (void)events;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
    soerr = errno;
  connect_finish(req, -soerr);
}

static int connect_start(ul_loop *loop, const struct sockaddr *addr,
                         socklen_t addrlen, int is_tcp, ul_connect_cb cb,
                         void *arg) {
  connect_req *req;
  int err, r;

  if (loop->closing)
    return -ESHUTDOWN;  /* from a callback that ul_loop_close() runs */
  req = calloc(1, sizeof *req);
  if (req == NULL)
    return -ENOMEM;
  req->loop = loop;
  req->cb = cb;
  req->arg = arg;
  req->fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                   0);
  if (req->fd == -1) {
    err = -errno;
    goto fail_socket;
  }
  if (is_tcp)
    set_nodelay(req->fd);

  /* No retry on EINTR: an interrupted connect goes on in the background
   * (POSIX), and a second connect() would fail with EALREADY.  Wait for
   * the result as for EINPROGRESS. */
  r = connect(req->fd, addr, addrlen);
  if (r == -1 && (errno == EINPROGRESS || errno == EINTR)) {
    err = ul_loop_add_writer(loop, req->fd, connect_writable, req);
    if (err)
      goto fail_schedule;
    req->writing = 1;
    connect_link(req);
    return 0;
  }
  /* Done at once: connected, or failed (-ECONNREFUSED, -ENOENT, and -EAGAIN
   * for a UNIX listener whose backlog is full, as libuv). */
  req->err = r == 0 ? 0 : -errno;
  err = ul_loop_call_soon(loop, connect_soon_cb, req);
  if (err)
    goto fail_schedule;
  connect_link(req);
  return 0;

fail_schedule:
  close(req->fd);
fail_socket:
  free(req);
  return err;
}

int ul_tcp_connect(ul_loop *loop, const struct sockaddr *addr,
                   socklen_t addrlen, ul_connect_cb cb, void *arg) {
  if (loop == NULL || cb == NULL || !tcp_addr_ok(addr, addrlen))
    return -EINVAL;
  return connect_start(loop, addr, addrlen, 1, cb, arg);
}

int ul_unix_connect(ul_loop *loop, const char *path, size_t pathlen,
                    ul_connect_cb cb, void *arg) {
  struct sockaddr_un sun;
  socklen_t len;
  if (loop == NULL || cb == NULL)
    return -EINVAL;
  int err = unix_addr(path, pathlen, &sun, &len, NULL);
  if (err)
    return err;
  return connect_start(loop, (const struct sockaddr *)&sun, len, 0, cb, arg);
}

/* ---- the server ------------------------------------------------------- */

static void server_readable(ul_loop *loop, int fd, int events, void *arg);

/* The server is unlinked from the loop's list when ul_server_close is
 * called; it is freed once none of its callbacks runs. */
static void server_link(ul_server *s) {
  ul_loop *loop = s->loop;
  s->prev = NULL;
  s->next = loop->servers;
  if (loop->servers != NULL)
    loop->servers->prev = s;
  loop->servers = s;
}

static void server_unlink(ul_server *s) {
  if (s->prev != NULL)
    s->prev->next = s->next;
  else
    s->loop->servers = s->next;
  if (s->next != NULL)
    s->next->prev = s->prev;
  s->next = s->prev = NULL;
}

/* Not inlined: at -O3 gcc 12 inlines it through server_report into
 * server_readable and then warns (-Wuse-after-free) about the depth check
 * there, which the depth held by server_readable makes safe. */
__attribute__((noinline)) static void server_free(ul_server *s) {
  free(s->path);
  free(s);
}

static int reader_start(ul_server *s) {
  if (s->reading)
    return 0;
  int err = ul_loop_add_reader(s->loop, s->fd, server_readable, s);
  if (err == 0)
    s->reading = 1;
  return err;
}

static void reader_stop(ul_server *s) {
  if (!s->reading)
    return;
  ul_loop_remove_reader(s->loop, s->fd);
  s->reading = 0;
}

static void retry_cancel(ul_server *s) {
  if (s->retry == NULL)
    return;
  ul_timer_cancel(s->retry);
  s->retry = NULL;
}

/* Passes an error to on_error, or else to the loop's error handler.  The
 * server may be freed when this returns, unless the caller holds `depth`. */
static void server_report(ul_server *s, int err, const char *message) {
  if (s->on_error == NULL) {
    ul_loop_report_error(s->loop, err, message);
    return;
  }
  s->depth++;
  s->on_error(s, err, s->arg);
  if (--s->depth == 0 && s->closing)
    server_free(s);
}

/* The retry delay is over (asyncio's call_later(ACCEPT_RETRY_DELAY,
 * _start_serving)).  -ECANCELED: the loop is closing; nothing to do. */
static void retry_cb(ul_loop *loop, void *arg, int status) {
  ul_server *s = arg;
  (void)loop;
  s->retry = NULL;
  if (status != 0 || !s->serving)
    return;
  int err = reader_start(s);
  if (err)
    server_report(s, err, "unixloop: cannot resume accepting connections");
}

/* accept4() failed with a real error: pause, then report. */
static void accept_failed(ul_server *s, int err) {
  int resource = err == -EMFILE || err == -ENFILE || err == -ENOBUFS ||
                 err == -ENOMEM;
  /* Pause first, so that on_error may stop, start or close the server. */
  if (ul_loop_call_later(s->loop, UL_SERVER_ACCEPT_RETRY_DELAY, retry_cb, s,
                         &s->retry) == 0)
    reader_stop(s);
  else
    s->retry = NULL;  /* no timer: keep the reader rather than stall */
  server_report(s, err,
                resource ? "socket.accept() out of system resource"
                         : "socket.accept() failed");
}

/* Errors of accept4() that concern one connection only: Linux passes the
 * pending network errors of the new socket up (accept(2), "Error
 * handling"); ECONNABORTED: the peer gave up.  Go on with the next. */
static int accept_error_is_transient(int err) {
  switch (-err) {
  case ECONNABORTED:
  case EPROTO:
  case EPERM:
  case ENETDOWN:
  case ENOPROTOOPT:
  case EHOSTDOWN:
  case ENONET:
  case EHOSTUNREACH:
  case EOPNOTSUPP:
  case ENETUNREACH:
    return 1;
  default:
    return 0;
  }
}

/* asyncio's _accept_connection: up to `backlog` accepts per wake-up. */
static void server_readable(ul_loop *loop, int fd, int events, void *arg) {
  ul_server *s = arg;
  (void)loop;
  (void)events;
  s->depth++;
  for (int i = 0; i < s->backlog && s->reading; i++) {
    int conn;
    do
      conn = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    while (conn == -1 && errno == EINTR);
    if (conn == -1) {
      int err = -errno;
      if (err == -EAGAIN || err == -EWOULDBLOCK)
        break;
      if (accept_error_is_transient(err))
        continue;
      accept_failed(s, err);
      break;
    }
    if (s->is_tcp)
      set_nodelay(conn);
    s->cb(s, conn, s->arg);  /* may stop or close the server */
  }
  if (--s->depth == 0 && s->closing)
    server_free(s);
}

/* Makes a server of a listening fd and starts accepting.  The fd is not
 * closed on failure. */
static int server_new(ul_loop *loop, int fd, int backlog, int is_tcp,
                      ul_accept_cb cb, ul_server_error_cb on_error, void *arg,
                      ul_server **server_out) {
  ul_server *s = calloc(1, sizeof *s);
  if (s == NULL)
    return -ENOMEM;
  s->loop = loop;
  s->fd = fd;
  s->backlog = backlog;
  s->cb = cb;
  s->on_error = on_error;
  s->arg = arg;
  s->is_tcp = is_tcp != 0;
  s->serving = 1;
  int err = reader_start(s);
  if (err) {
    free(s);
    return err;
  }
  server_link(s);
  *server_out = s;
  return 0;
}

int ul_tcp_listen(ul_loop *loop, const struct sockaddr *addr,
                  socklen_t addrlen, int backlog, unsigned flags,
                  ul_accept_cb cb, ul_server_error_cb on_error, void *arg,
                  ul_server **server_out) {
  const unsigned known = UL_LISTEN_REUSEADDR | UL_LISTEN_REUSEPORT |
                         UL_LISTEN_IPV6ONLY;
  int fd, err, one = 1;

  if (loop == NULL || cb == NULL || server_out == NULL ||
      !tcp_addr_ok(addr, addrlen) || (flags & ~known) != 0)
    return -EINVAL;
  if (loop->closing)
    return -ESHUTDOWN;  /* from a callback that ul_loop_close() runs */
  if (backlog <= 0)
    backlog = DEFAULT_BACKLOG;

  fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return -errno;
  if ((flags & UL_LISTEN_REUSEADDR) &&
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    err = -errno;
    goto fail;
  }
  if ((flags & UL_LISTEN_REUSEPORT) &&
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    err = -errno;
    goto fail;
  }
  if ((flags & UL_LISTEN_IPV6ONLY) && addr->sa_family == AF_INET6 &&
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) {
    err = -errno;
    goto fail;
  }
  if (bind(fd, addr, addrlen) != 0) {
    err = -errno;
    goto fail;
  }
  if (listen(fd, backlog) != 0) {
    err = -errno;
    goto fail;
  }
  err = server_new(loop, fd, backlog, 1, cb, on_error, arg, server_out);
  if (err)
    goto fail;
  return 0;

fail:
  close(fd);
  return err;
}

/* What is at `cpath` before we bind there (create_unix_server): nothing,
 * or a stale socket (removed) -> 0; a socket someone answers on ->
 * -EADDRINUSE; anything else -> -EEXIST. */
static int unix_clear_path(const struct sockaddr_un *sun, socklen_t len,
                           const char *cpath) {
  struct stat st;
  int fd, r, err;

  if (lstat(cpath, &st) != 0)
    return errno == ENOENT ? 0 : -errno;
  if (!S_ISSOCK(st.st_mode))
    return -EEXIST;

  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return -errno;
  r = connect(fd, (const struct sockaddr *)sun, len);
  err = r == 0 ? 0 : errno;
  close(fd);
  switch (err) {
  case ECONNREFUSED:  /* nobody listens: a dead server's file */
    if (unlink(cpath) != 0 && errno != ENOENT)
      return -errno;
    return 0;
  case ENOENT:        /* removed meanwhile */
    return 0;
  case 0:             /* a live server (EAGAIN: a busy one; EPROTOTYPE: */
  case EAGAIN:        /* a datagram socket) */
  case EINPROGRESS:
  case EINTR:
  case EPROTOTYPE:
    return -EADDRINUSE;
  default:
    return -err;
  }
}

int ul_unix_listen(ul_loop *loop, const char *path, size_t pathlen,
                   int backlog, ul_accept_cb cb, ul_server_error_cb on_error,
                   void *arg, ul_server **server_out) {
  struct sockaddr_un sun;
  struct stat st;
  socklen_t len;
  const char *cpath;
  char *path_copy = NULL;
  int fd = -1, bound = 0, err;
  ul_server *s;

  if (loop == NULL || cb == NULL || server_out == NULL)
    return -EINVAL;
  if (loop->closing)
    return -ESHUTDOWN;  /* from a callback that ul_loop_close() runs */
  memset(&st, 0, sizeof st);
  err = unix_addr(path, pathlen, &sun, &len, &cpath);
  if (err)
    return err;
  if (backlog <= 0)
    backlog = DEFAULT_BACKLOG;

  if (cpath != NULL) {
    path_copy = strdup(cpath);
    if (path_copy == NULL)
      return -ENOMEM;
    err = unix_clear_path(&sun, len, cpath);
    if (err)
      goto fail;
  }
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    err = -errno;
    goto fail;
  }
  if (bind(fd, (const struct sockaddr *)&sun, len) != 0) {
    err = -errno;
    goto fail;
  }
  bound = 1;
  if (cpath != NULL && lstat(cpath, &st) != 0) {
    err = -errno;
    goto fail;
  }
  if (listen(fd, backlog) != 0) {
    err = -errno;
    goto fail;
  }
  err = server_new(loop, fd, backlog, 0, cb, on_error, arg, server_out);
  if (err)
    goto fail;
  s = *server_out;
  if (cpath != NULL) {
    s->path = path_copy;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
  }
  return 0;

fail:
  if (bound && cpath != NULL)
    unlink(cpath);  /* ours: bind() created it a moment ago */
  if (fd != -1)
    close(fd);
  free(path_copy);
  return err;
}

int ul_server_open(ul_loop *loop, int fd, int backlog, ul_accept_cb cb,
                   ul_server_error_cb on_error, void *arg,
                   ul_server **server_out) {
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof ss;
  int flags, val, proto = 0, is_tcp;
  socklen_t len = sizeof val;

  if (loop == NULL || cb == NULL || server_out == NULL)
    return -EINVAL;
  if (loop->closing)
    return -ESHUTDOWN;  /* from a callback that ul_loop_close() runs */
  if (fd < 0)
    return -EBADF;
  flags = fcntl(fd, F_GETFL);
  if (flags == -1)
    return -errno;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &val, &len) != 0)
    return -errno;
  if (val != SOCK_STREAM)
    return -EINVAL;
  len = sizeof val;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &val, &len) != 0)
    return -errno;
  if (!val)
    return -EINVAL;  /* not listening */
  if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0)
    return -errno;
  len = sizeof proto;
  if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) != 0)
    proto = 0;
  is_tcp = (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) &&
           (proto == 0 || proto == IPPROTO_TCP);
  if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == -1)
    return -errno;
  if (backlog <= 0)
    backlog = DEFAULT_BACKLOG;
  return server_new(loop, fd, backlog, is_tcp, cb, on_error, arg, server_out);
}

int ul_server_stop(ul_server *s) {
  if (s == NULL || s->closing)
    return -EINVAL;
  s->serving = 0;
  reader_stop(s);
  retry_cancel(s);
  return 0;
}

int ul_server_start(ul_server *s) {
  if (s == NULL || s->closing)
    return -EINVAL;
  if (s->serving)
    return 0;
  int err = reader_start(s);
  if (err)
    return err;
  s->serving = 1;
  return 0;
}

int ul_server_is_serving(const ul_server *s) {
  return s != NULL && s->serving;
}

int ul_server_release_fd(ul_server *s) {
  if (s == NULL || s->closing)
    return -EINVAL;
  s->fd_released = 1;
  return s->fd;
}

int ul_server_fileno(const ul_server *s) {
  if (s == NULL)
    return -EINVAL;
  if (s->closing)
    return -EBADF;
  return s->fd;
}

/* Removes the socket file if it is still the one we created (asyncio 3.13's
 * cleanup_socket): another server may have replaced it since. */
static void unlink_ours(ul_server *s) {
  struct stat st;
  if (s->path == NULL)
    return;
  if (lstat(s->path, &st) == 0 && S_ISSOCK(st.st_mode) &&
      st.st_dev == s->dev && st.st_ino == s->ino)
    unlink(s->path);
}

int ul_server_close(ul_server *s) {
  if (s == NULL)
    return -EINVAL;
  if (s->closing)
    return 0;  /* again, from inside one of its callbacks */
  s->closing = 1;
  s->serving = 0;
  server_unlink(s);
  reader_stop(s);
  retry_cancel(s);
  unlink_ours(s);
  if (!s->fd_released)
    close(s->fd);
  s->fd = -1;
  if (s->depth == 0)
    server_free(s);
  return 0;
}

/* ---- ul_loop_close ----------------------------------------------------------- */

/* Called by ul_loop_close() after the ready queue, the timers and the
 * streams: the connects queued through call_soon have had their callback
 * (-ECANCELED) by then, and the servers' retry timers have been cancelled.
 * Connects first, so that their callbacks may still close servers.  The
 * callbacks cannot start new connects or servers (-ESHUTDOWN). */
void ul__net_close_all(ul_loop *loop) {
  connect_req *req;
  while ((req = loop->connects) != NULL) {
    if (!req->writing) {
      /* Still queued: cannot be, cancel_ready ran connect_soon_cb.  Drop it
       * from the list rather than free what the ready queue refers to. */
      connect_unlink(req);
      continue;
    }
    connect_finish(req, -ECANCELED);
  }
  while (loop->servers != NULL) {
    ul_server *s = loop->servers;
    ul_server_close(s);  /* unlinks it; depth is 0: the loop is not running */
  }
}
