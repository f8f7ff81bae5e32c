/* TCP and UNIX-domain connect / listen / accept (src/net.c). */
#include "test.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */

/* Set while a ul_*_connect call runs: its callback must not be called from
 * inside it. */
static int in_connect_call;

static void assert_fd_flags(int fd, int tcp) {
  int flags = fcntl(fd, F_GETFL);
  ASSERT_NE(-1, flags);
  ASSERT_NE(0, flags & O_NONBLOCK);
  flags = fcntl(fd, F_GETFD);
  ASSERT_NE(-1, flags);
  ASSERT_NE(0, flags & FD_CLOEXEC);
  if (tcp) {
    int v = 0;
    socklen_t len = sizeof v;
    ASSERT_OK(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len));
    ASSERT_NE(0, v);
  }
}

/* Makes a directory of our own under /tmp; *path gets "<dir>/s". */
static void make_tmpdir(char dir[64], char path[80]) {
  snprintf(dir, 64, "/tmp/ul-test-net-XXXXXX");
  ASSERT_NOT_NULL(mkdtemp(dir));
  snprintf(path, 80, "%s/s", dir);
}

static int path_exists(const char *path) {
  struct stat st;
  if (lstat(path, &st) == 0)
    return 1;
  ASSERT_EQ(ENOENT, errno);
  return 0;
}

static ino_t path_inode(const char *path) {
  struct stat st;
  ASSERT_OK(lstat(path, &st));
  return st.st_ino;
}

static socklen_t unix_sockaddr(struct sockaddr_un *sun, const char *name,
                               size_t len) {
  memset(sun, 0, sizeof *sun);
  sun->sun_family = AF_UNIX;
  ASSERT_LT(len, sizeof sun->sun_path);
  memcpy(sun->sun_path, name, len);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
                     (name[0] != '\0'));
}

/* A blocking client connected to a UNIX name; -errno on failure. */
static int unix_client(const char *name, size_t len) {
  struct sockaddr_un sun;
  socklen_t sl = unix_sockaddr(&sun, name, len);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  if (connect(fd, (struct sockaddr *)&sun, sl) != 0) {
    int err = -errno;
    test_close(fd);
    return err;
  }
  return fd;
}

/* A raw socket bound to a UNIX name (listening if `backlog` > 0). */
static int unix_raw_server(const char *name, size_t len, int backlog) {
  struct sockaddr_un sun;
  socklen_t sl = unix_sockaddr(&sun, name, len);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_OK(bind(fd, (struct sockaddr *)&sun, sl));
  if (backlog > 0)
    ASSERT_OK(listen(fd, backlog));
  return fd;
}

static void loopback4(struct sockaddr_in *sin, in_port_t port) {
  memset(sin, 0, sizeof *sin);
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin->sin_port = port;
}

/* The port a socket is bound to (network order). */
static in_port_t bound_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ASSERT_OK(getsockname(fd, (struct sockaddr *)&ss, &len));
  if (ss.ss_family == AF_INET6)
    return ((struct sockaddr_in6 *)&ss)->sin6_port;
  ASSERT_EQ(AF_INET, ss.ss_family);
  return ((struct sockaddr_in *)&ss)->sin_port;
}

/* A blocking TCP client connected to 127.0.0.1:port. */
static int tcp_client(in_port_t port) {
  struct sockaddr_in sin;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  loopback4(&sin, port);
  ASSERT_OK(connect(fd, (struct sockaddr *)&sin, sizeof sin));
  return fd;
}

/* A raw TCP socket listening on 127.0.0.1, port chosen by the kernel. */
static int tcp_raw_server(int backlog, int nonblock) {
  struct sockaddr_in sin;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC |
                  (nonblock ? SOCK_NONBLOCK : 0), 0);
  ASSERT_GE(fd, 0);
  loopback4(&sin, 0);
  ASSERT_OK(bind(fd, (struct sockaddr *)&sin, sizeof sin));
  ASSERT_OK(listen(fd, backlog));
  return fd;
}

static ul_server *tcp4_server(ul_loop *loop, int backlog, ul_accept_cb cb,
                              ul_server_error_cb on_error, void *arg) {
  struct sockaddr_in sin;
  ul_server *server = NULL;
  loopback4(&sin, 0);
  ASSERT_OK(ul_tcp_listen(loop, (struct sockaddr *)&sin, sizeof sin, backlog,
                          UL_LISTEN_REUSEADDR, cb, on_error, arg, &server));
  ASSERT_NOT_NULL(server);
  return server;
}

/* 1 if the two sockets are the two ends of one connection. */
static int same_connection(int a, int b) {
  struct sockaddr_storage la, pb;
  socklen_t lla = sizeof la, lpb = sizeof pb;
  ASSERT_OK(getsockname(a, (struct sockaddr *)&la, &lla));
  ASSERT_OK(getpeername(b, (struct sockaddr *)&pb, &lpb));
  return lla == lpb && memcmp(&la, &pb, lla) == 0;
}

/* Data goes from `from` to `to` (non-blocking: wait with poll(2)). */
static void assert_byte_passes(int from, int to) {
  struct pollfd pfd = {to, POLLIN, 0};
  char c = 0;
  test_write_byte(from);
  ASSERT_EQ(1, poll(&pfd, 1, 5000));
  ASSERT_EQ(1, read(to, &c, 1));
  ASSERT_EQ('x', c);
}

/* ------------------------------------------------------------------------ */
/* One connection: ul_*_connect on one side, the server on the other.      */

struct pair {
  ul_loop *loop;
  int connect_calls;
  int connected;      /* fd or -errno from the connect callback */
  int accept_calls;
  int accepted;
  int stop_after;     /* stop the loop once this many callbacks ran */
};

static void pair_init(struct pair *p, ul_loop *loop, int stop_after) {
  memset(p, 0, sizeof *p);
  p->loop = loop;
  p->connected = p->accepted = -1;
  p->stop_after = stop_after;
}

static void pair_maybe_stop(struct pair *p) {
  if (p->connect_calls + p->accept_calls == p->stop_after)
    ASSERT_OK(ul_loop_stop(p->loop));
}

static void pair_connect_cb(ul_loop *loop, int fd, void *arg) {
  struct pair *p = arg;
  ASSERT_EQ(0, in_connect_call);
  ASSERT_PTR_EQ(p->loop, loop);
  p->connect_calls++;
  p->connected = fd;
  pair_maybe_stop(p);
}

static void pair_accept_cb(ul_server *server, int fd, void *arg) {
  struct pair *p = arg;
  ASSERT_NOT_NULL(server);
  ASSERT_GE(fd, 0);
  p->accept_calls++;
  p->accepted = fd;
  pair_maybe_stop(p);
}

static int tcp_roundtrip(int family) {
  int fds_before = test_count_fds();
  ul_loop *loop = test_loop_new();
  struct sockaddr_storage ss;
  socklen_t sslen;
  ul_server *server = NULL;
  struct pair p;

  memset(&ss, 0, sizeof ss);
  if (family == AF_INET6) {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) {
      CLOSE_LOOP(loop);
      RETURN_SKIP("IPv6 is not available (socket(AF_INET6) failed)");
    }
    test_close(probe);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = in6addr_loopback;
    sslen = sizeof *sin6;
  } else {
    loopback4((struct sockaddr_in *)&ss, 0);
    sslen = sizeof(struct sockaddr_in);
  }

  pair_init(&p, loop, 2);
  int r = ul_tcp_listen(loop, (struct sockaddr *)&ss, sslen, 0,
                        UL_LISTEN_REUSEADDR |
                        (family == AF_INET6 ? UL_LISTEN_IPV6ONLY : 0),
                        pair_accept_cb, NULL, &p, &server);
  if (family == AF_INET6 && (r == -EADDRNOTAVAIL || r == -EAFNOSUPPORT)) {
    CLOSE_LOOP(loop);
    RETURN_SKIP("IPv6 is not available (cannot bind ::1)");
  }
  ASSERT_OK(r);
  ASSERT_EQ(1, ul_server_is_serving(server));
  int lfd = ul_server_fileno(server);
  ASSERT_GE(lfd, 0);
  assert_fd_flags(lfd, 0);

  if (family == AF_INET6)
    ((struct sockaddr_in6 *)&ss)->sin6_port = bound_port(lfd);
  else
    ((struct sockaddr_in *)&ss)->sin_port = bound_port(lfd);

  in_connect_call = 1;
  ASSERT_OK(ul_tcp_connect(loop, (struct sockaddr *)&ss, sslen,
                           pair_connect_cb, &p));
  in_connect_call = 0;
  ASSERT_EQ(0, p.connect_calls);
  ASSERT_OK(ul_loop_run(loop));

  ASSERT_EQ(1, p.connect_calls);
  ASSERT_EQ(1, p.accept_calls);
  ASSERT_GE(p.connected, 0);
  ASSERT_GE(p.accepted, 0);
  assert_fd_flags(p.connected, 1);
  assert_fd_flags(p.accepted, 1);
  ASSERT(same_connection(p.connected, p.accepted));
  ASSERT(same_connection(p.accepted, p.connected));
  assert_byte_passes(p.connected, p.accepted);
  assert_byte_passes(p.accepted, p.connected);

  test_close(p.connected);
  test_close(p.accepted);
  ASSERT_OK(ul_server_close(server));
  ASSERT_EQ(0, test_fd_is_open(lfd));
  CLOSE_LOOP(loop);
  ASSERT_EQ(fds_before, test_count_fds());
  return 0;
}

TEST_IMPL(net_tcp_connect_accept_ipv4) {
  return tcp_roundtrip(AF_INET);
}

TEST_IMPL(net_tcp_connect_accept_ipv6) {
  return tcp_roundtrip(AF_INET6);
}

TEST_IMPL(net_tcp_connect_refused) {
  int fds_before = test_count_fds();
  ul_loop *loop = test_loop_new();
  struct sockaddr_in sin;
  struct pair p;

  /* A bound socket that does not listen: the port is ours, and refuses. */
  int bound = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(bound, 0);
  loopback4(&sin, 0);
  ASSERT_OK(bind(bound, (struct sockaddr *)&sin, sizeof sin));
  sin.sin_port = bound_port(bound);

  pair_init(&p, loop, 1);
  in_connect_call = 1;
  ASSERT_OK(ul_tcp_connect(loop, (struct sockaddr *)&sin, sizeof sin,
                           pair_connect_cb, &p));
  in_connect_call = 0;
  ASSERT_EQ(0, p.connect_calls);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, p.connect_calls);
  ASSERT_EQ(-ECONNREFUSED, p.connected);

  test_close(bound);
  CLOSE_LOOP(loop);
  ASSERT_EQ(fds_before, test_count_fds());
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Several connections: the accept callback keeps them all.               */

struct many {
  ul_loop *loop;
  int accepted;
  int fds[256];
  int stop_at;        /* stop the loop at this count (0: never) */
  int server_stop_at; /* ul_server_stop at this count (0: never) */
  int close_at;       /* ul_server_close at this count (0: never) */
  ul_server *server;
};

static void many_accept_cb(ul_server *server, int fd, void *arg) {
  struct many *m = arg;
  ASSERT_PTR_EQ(m->server, server);
  ASSERT_GE(fd, 0);
  ASSERT_LT(m->accepted, 256);
  assert_fd_flags(fd, 0);
  m->fds[m->accepted++] = fd;
  if (m->accepted == m->server_stop_at) {
    ASSERT_OK(ul_server_stop(server));
    ASSERT_EQ(0, ul_server_is_serving(server));
  }
  if (m->accepted == m->close_at)
    ASSERT_OK(ul_server_close(server));
  if (m->accepted == m->stop_at)
    ASSERT_OK(ul_loop_stop(m->loop));
}

static void many_close_all(struct many *m) {
  for (int i = 0; i < m->accepted; i++)
    test_close(m->fds[i]);
}

/* ------------------------------------------------------------------------ */
/* UNIX-domain                                                              */

TEST_IMPL(net_unix_connect_accept) {
  int fds_before = test_count_fds();
  ul_loop *loop = test_loop_new();
  ul_server *server = NULL;
  char dir[64], path[80];
  struct pair p;

  make_tmpdir(dir, path);
  pair_init(&p, loop, 2);
  ASSERT_OK(ul_unix_listen(loop, path, strlen(path), 0, pair_accept_cb, NULL,
                           &p, &server));
  struct stat st;
  ASSERT_OK(lstat(path, &st));
  ASSERT(S_ISSOCK(st.st_mode));

  in_connect_call = 1;
  ASSERT_OK(ul_unix_connect(loop, path, strlen(path), pair_connect_cb, &p));
  in_connect_call = 0;
  ASSERT_EQ(0, p.connect_calls);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, p.connect_calls);
  ASSERT_EQ(1, p.accept_calls);
  ASSERT_GE(p.connected, 0);
  assert_fd_flags(p.connected, 0);
  assert_fd_flags(p.accepted, 0);
  assert_byte_passes(p.connected, p.accepted);
  assert_byte_passes(p.accepted, p.connected);
  test_close(p.connected);
  test_close(p.accepted);

  /* A length that counts the terminating NUL names the same path. */
  pair_init(&p, loop, 2);
  ASSERT_OK(ul_unix_connect(loop, path, strlen(path) + 1, pair_connect_cb,
                            &p));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, p.connect_calls);
  ASSERT_EQ(1, p.accept_calls);
  ASSERT_GE(p.connected, 0);
  ASSERT(same_connection(p.connected, p.accepted));
  test_close(p.connected);
  test_close(p.accepted);

  ASSERT_OK(ul_server_close(server));
  ASSERT_EQ(0, path_exists(path));
  ASSERT_OK(rmdir(dir));   /* empty: nothing left behind */
  CLOSE_LOOP(loop);
  ASSERT_EQ(fds_before, test_count_fds());
  return 0;
}

TEST_IMPL(net_unix_connect_missing_path) {
  ul_loop *loop = test_loop_new();
  char dir[64], path[80];
  struct pair p;

  make_tmpdir(dir, path);
  pair_init(&p, loop, 1);
  in_connect_call = 1;
  ASSERT_OK(ul_unix_connect(loop, path, strlen(path), pair_connect_cb, &p));
  in_connect_call = 0;
  ASSERT_EQ(0, p.connect_calls);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, p.connect_calls);
  ASSERT_EQ(-ENOENT, p.connected);

  /* A socket file nobody listens on. */
  int stale = unix_raw_server(path, strlen(path), 0);
  pair_init(&p, loop, 1);
  ASSERT_OK(ul_unix_connect(loop, path, strlen(path), pair_connect_cb, &p));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(-ECONNREFUSED, p.connected);
  test_close(stale);
  ASSERT_OK(unlink(path));
  ASSERT_OK(rmdir(dir));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(net_unix_abstract) {
  ul_loop *loop = test_loop_new();
  ul_server *server = NULL, *second = NULL;
  char name[64];
  size_t len;
  struct pair p;

  name[0] = '\0';
  len = 1 + (size_t)snprintf(name + 1, sizeof name - 1,
                             "ul-test-net-abstract-%ld", (long)getpid());
  pair_init(&p, loop, 2);
  ASSERT_OK(ul_unix_listen(loop, name, len, 0, pair_accept_cb, NULL, &p,
                           &server));
  /* The name has no file: not even one named after the rest of it. */
  ASSERT_EQ(0, path_exists(name + 1));
  /* Abstract names are never "stale": in use is in use. */
  ASSERT_EQ(-EADDRINUSE, ul_unix_listen(loop, name, len, 0, pair_accept_cb,
                                        NULL, &p, &second));
  ASSERT_NULL(second);

  in_connect_call = 1;
  ASSERT_OK(ul_unix_connect(loop, name, len, pair_connect_cb, &p));
  in_connect_call = 0;
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, p.connect_calls);
  ASSERT_EQ(1, p.accept_calls);
  ASSERT_GE(p.connected, 0);
  assert_byte_passes(p.connected, p.accepted);
  test_close(p.connected);
  test_close(p.accepted);

  /* A raw client sees the same name. */
  int c = unix_client(name, len);
  ASSERT_GE(c, 0);
  test_close(c);
  pair_init(&p, loop, 1);
  ASSERT_OK(ul_loop_run(loop));
  test_close(p.accepted);

  ASSERT_OK(ul_server_close(server));
  /* Closed: the name is free again. */
  ASSERT_EQ(-ECONNREFUSED, unix_client(name, len));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(net_unix_stale_socket_removed) {
  ul_loop *loop = test_loop_new();
  ul_server *server = NULL;
  char dir[64], path[80];
  struct pair p;

  make_tmpdir(dir, path);
  /* A dead server's file: bound, listened, closed without unlink. */
  test_close(unix_raw_server(path, strlen(path), 5));
  ASSERT(path_exists(path));
  ASSERT_EQ(-ECONNREFUSED, unix_client(path, strlen(path)));
  ino_t stale_ino = path_inode(path);

  pair_init(&p, loop, 1);
  ASSERT_OK(ul_unix_listen(loop, path, strlen(path), 0, pair_accept_cb, NULL,
                           &p, &server));
  ASSERT(path_exists(path));
  int c = unix_client(path, strlen(path));
  ASSERT_GE(c, 0);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, p.accept_calls);
  test_close(c);
  test_close(p.accepted);
  (void)stale_ino;  /* inode numbers may be reused: the connect is proof */

  ASSERT_OK(ul_server_close(server));
  ASSERT_EQ(0, path_exists(path));
  ASSERT_OK(rmdir(dir));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(net_unix_live_server_addrinuse) {
  ul_loop *loop = test_loop_new();
  ul_server *second = NULL;
  char dir[64], path[80];
  struct many m;
  int fds_before;

  make_tmpdir(dir, path);

  /* A live server of another program (a raw socket). */
  int raw = unix_raw_server(path, strlen(path), 5);
  ino_t ino = path_inode(path);
  fds_before = test_count_fds();
  ASSERT_EQ(-EADDRINUSE, ul_unix_listen(loop, path, strlen(path), 0,
                                        pair_accept_cb, NULL, NULL, &second));
  ASSERT_NULL(second);
  ASSERT_EQ(fds_before, test_count_fds());
  ASSERT_EQ(ino, path_inode(path));   /* not removed */
  int c = unix_client(path, strlen(path));
  ASSERT_GE(c, 0);                    /* still answers */
  test_close(c);
  test_close(raw);
  ASSERT_OK(unlink(path));

  /* A live unixloop server. */
  memset(&m, 0, sizeof m);
  m.loop = loop;
  m.stop_at = 2;
  ASSERT_OK(ul_unix_listen(loop, path, strlen(path), 0, many_accept_cb, NULL,
                           &m, &m.server));
  ino = path_inode(path);
  ASSERT_EQ(-EADDRINUSE, ul_unix_listen(loop, path, strlen(path), 0,
                                        pair_accept_cb, NULL, NULL, &second));
  ASSERT_NULL(second);
  ASSERT_EQ(ino, path_inode(path));
  c = unix_client(path, strlen(path));
  ASSERT_GE(c, 0);
  ASSERT_OK(ul_loop_run(loop));
  /* The probe connection of the refused listen, then the client. */
  ASSERT_EQ(2, m.accepted);
  ASSERT(same_connection(c, m.fds[1]));
  many_close_all(&m);
  test_close(c);

  ASSERT_OK(ul_server_close(m.server));
  ASSERT_EQ(0, path_exists(path));
  ASSERT_OK(rmdir(dir));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(net_unix_not_socket_eexist) {
  int fds_before = test_count_fds();
  ul_loop *loop = test_loop_new();
  ul_server *server = NULL;
  char dir[64], path[80];

  make_tmpdir(dir, path);
  int f = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(f, 0);
  ASSERT_EQ(5, write(f, "hello", 5));
  test_close(f);

  ASSERT_EQ(-EEXIST, ul_unix_listen(loop, path, strlen(path), 0,
                                    pair_accept_cb, NULL, NULL, &server));
  ASSERT_NULL(server);
  struct stat st;
  ASSERT_OK(lstat(path, &st));
  ASSERT(S_ISREG(st.st_mode));
  ASSERT_EQ(5, st.st_size);
  ASSERT_OK(unlink(path));

  /* A directory. */
  ASSERT_OK(mkdir(path, 0700));
  ASSERT_EQ(-EEXIST, ul_unix_listen(loop, path, strlen(path), 0,
                                    pair_accept_cb, NULL, NULL, &server));
  ASSERT_OK(rmdir(path));

  /* A symlink to a socket is not removed either. */
  char target[96];
  snprintf(target, sizeof target, "%s/t", dir);
  int raw = unix_raw_server(target, strlen(target), 0);  /* stale socket */
  test_close(raw);
  ASSERT_OK(symlink(target, path));
  ASSERT_EQ(-EEXIST, ul_unix_listen(loop, path, strlen(path), 0,
                                    pair_accept_cb, NULL, NULL, &server));
  ASSERT(path_exists(target));
  ASSERT_OK(unlink(path));
  ASSERT_OK(unlink(target));

  ASSERT_OK(rmdir(dir));
  CLOSE_LOOP(loop);
  ASSERT_EQ(fds_before, test_count_fds());
  return 0;
}

TEST_IMPL(net_unix_file_removed_on_close) {
  ul_loop *loop = test_loop_new();
  ul_server *server = NULL;
  char dir[64], path[80];

  make_tmpdir(dir, path);
  ASSERT_OK(ul_unix_listen(loop, path, strlen(path), 0, pair_accept_cb, NULL,
                           NULL, &server));
  ASSERT(path_exists(path));
  ASSERT_OK(ul_server_close(server));
  ASSERT_EQ(0, path_exists(path));

  /* The file was replaced meanwhile by someone else's: leave that. */
  ASSERT_OK(ul_unix_listen(loop, path, strlen(path), 0, pair_accept_cb, NULL,
                           NULL, &server));
  ASSERT_OK(unlink(path));
  int other = unix_raw_server(path, strlen(path), 5);
  ASSERT_OK(ul_server_close(server));
  ASSERT(path_exists(path));
  int c = unix_client(path, strlen(path));
  ASSERT_GE(c, 0);   /* still the other server's */
  test_close(c);
  test_close(other);
  ASSERT_OK(unlink(path));

  /* ... and a regular file put in its place is left too. */
  ASSERT_OK(ul_unix_listen(loop, path, strlen(path), 0, pair_accept_cb, NULL,
                           NULL, &server));
  ASSERT_OK(unlink(path));
  int f = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(f, 0);
  test_close(f);
  ASSERT_OK(ul_server_close(server));
  ASSERT(path_exists(path));
  ASSERT_OK(unlink(path));

  ASSERT_OK(rmdir(dir));
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Accepting several connections                                            */

TEST_IMPL(net_accept_batching) {
  ul_loop *loop = test_loop_new();
  struct many m;
  int clients[50];

  memset(&m, 0, sizeof m);
  m.loop = loop;
  m.server = tcp4_server(loop, 0, many_accept_cb, NULL, &m);
  in_port_t port = bound_port(ul_server_fileno(m.server));
  for (int i = 0; i < 50; i++)
    clients[i] = tcp_client(port);

  /* One iteration: one wake-up of the reader accepts all 50. */
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(50, m.accepted);
  for (int i = 0; i < 50; i++)
    assert_fd_flags(m.fds[i], 1);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(50, m.accepted);

  many_close_all(&m);
  for (int i = 0; i < 50; i++)
    test_close(clients[i]);
  ASSERT_OK(ul_server_close(m.server));
  CLOSE_LOOP(loop);
  return 0;
}

/* `backlog` bounds the accepts per wake-up (asyncio's _accept_connection),
 * and defaults to 100. */
TEST_IMPL(net_accept_batch_limit) {
  ul_loop *loop = test_loop_new();
  struct many m;
  int clients[120];

  /* backlog 10 on a socket that listens with 200. */
  memset(&m, 0, sizeof m);
  m.loop = loop;
  int lfd = tcp_raw_server(200, 1);
  ASSERT_OK(ul_server_open(loop, lfd, 10, many_accept_cb, NULL, &m,
                           &m.server));
  for (int i = 0; i < 50; i++)
    clients[i] = tcp_client(bound_port(lfd));
  for (int round = 1; round <= 5; round++) {
    ASSERT_OK(ul_loop_run_once(loop, 1));
    ASSERT_EQ(10 * round, m.accepted);
  }
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(50, m.accepted);
  many_close_all(&m);
  for (int i = 0; i < 50; i++)
    test_close(clients[i]);
  ASSERT_OK(ul_server_close(m.server));

  /* backlog 0: 100 per wake-up. */
  memset(&m, 0, sizeof m);
  m.loop = loop;
  lfd = tcp_raw_server(200, 1);
  ASSERT_OK(ul_server_open(loop, lfd, 0, many_accept_cb, NULL, &m,
                           &m.server));
  for (int i = 0; i < 120; i++)
    clients[i] = tcp_client(bound_port(lfd));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(100, m.accepted);
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(120, m.accepted);
  many_close_all(&m);
  for (int i = 0; i < 120; i++)
    test_close(clients[i]);
  ASSERT_OK(ul_server_close(m.server));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(net_server_stop_start) {
  ul_loop *loop = test_loop_new();
  struct many m;
  int clients[10];

  memset(&m, 0, sizeof m);
  m.loop = loop;
  m.server = tcp4_server(loop, 0, many_accept_cb, NULL, &m);
  int lfd = ul_server_fileno(m.server);
  in_port_t port = bound_port(lfd);
  ASSERT_EQ(1, ul_server_is_serving(m.server));
  ASSERT_PTR_EQ(m.server, ul_loop_get_reader(loop, lfd));

  ASSERT_OK(ul_server_stop(m.server));
  ASSERT_OK(ul_server_stop(m.server));   /* again: nothing */
  ASSERT_EQ(0, ul_server_is_serving(m.server));
  ASSERT_NULL(ul_loop_get_reader(loop, lfd));
  for (int i = 0; i < 10; i++)
    clients[i] = tcp_client(port);
  for (int i = 0; i < 3; i++)
    ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, m.accepted);

  /* Started again: the queued connections are accepted, until the accept
   * callback stops the server in the middle of a wake-up. */
  m.server_stop_at = 4;
  ASSERT_OK(ul_server_start(m.server));
  ASSERT_OK(ul_server_start(m.server));  /* again: nothing */
  ASSERT_EQ(1, ul_server_is_serving(m.server));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(4, m.accepted);
  ASSERT_EQ(0, ul_server_is_serving(m.server));
  for (int i = 0; i < 3; i++)
    ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(4, m.accepted);

  ASSERT_OK(ul_server_start(m.server));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(10, m.accepted);
  ASSERT_EQ(1, ul_server_is_serving(m.server));

  many_close_all(&m);
  for (int i = 0; i < 10; i++)
    test_close(clients[i]);
  ASSERT_OK(ul_server_close(m.server));
  ASSERT_NULL(ul_loop_get_reader(loop, lfd));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(net_server_close_in_accept_cb) {
  int fds_before = test_count_fds();
  ul_loop *loop = test_loop_new();
  struct many m;
  int clients[3];

  memset(&m, 0, sizeof m);
  m.loop = loop;
  m.close_at = 1;
  m.server = tcp4_server(loop, 0, many_accept_cb, NULL, &m);
  int lfd = ul_server_fileno(m.server);
  in_port_t port = bound_port(lfd);
  for (int i = 0; i < 3; i++)
    clients[i] = tcp_client(port);

  /* The server is closed (and freed once the callback returns) by the
   * first accept: the two other connections are never accepted. */
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, m.accepted);
  ASSERT_NULL(ul_loop_get_reader(loop, lfd));
  for (int i = 0; i < 3; i++)
    ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, m.accepted);
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  many_close_all(&m);
  for (int i = 0; i < 3; i++)
    test_close(clients[i]);

  /* The listening socket is gone. */
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sin;
  loopback4(&sin, port);
  ASSERT_EQ(-1, connect(c, (struct sockaddr *)&sin, sizeof sin));
  ASSERT_EQ(ECONNREFUSED, errno);
  test_close(c);

  CLOSE_LOOP(loop);
  ASSERT_EQ(fds_before, test_count_fds());
  return 0;
}

/* ul_server_open on a listening socket that the caller made (blocking, and
 * not close-on-exec: the server makes it non-blocking). */
TEST_IMPL(net_server_open_existing) {
  int fds_before = test_count_fds();
  ul_loop *loop = test_loop_new();
  struct many m;

  memset(&m, 0, sizeof m);
  m.loop = loop;
  m.stop_at = 1;
  int lfd = tcp_raw_server(5, 0);
  ASSERT_EQ(0, fcntl(lfd, F_GETFL) & O_NONBLOCK);
  ASSERT_OK(ul_server_open(loop, lfd, 0, many_accept_cb, NULL, &m,
                           &m.server));
  ASSERT_EQ(lfd, ul_server_fileno(m.server));
  ASSERT_EQ(1, ul_server_is_serving(m.server));
  ASSERT_NE(0, fcntl(lfd, F_GETFL) & O_NONBLOCK);

  int c = tcp_client(bound_port(lfd));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, m.accepted);
  assert_fd_flags(m.fds[0], 1);   /* TCP found out: TCP_NODELAY is set */
  assert_byte_passes(c, m.fds[0]);
  many_close_all(&m);
  test_close(c);

  ASSERT_OK(ul_server_close(m.server));
  ASSERT_EQ(0, test_fd_is_open(lfd));   /* taken over: closed */

  /* A UNIX socket bound to a path: not ours to remove. */
  char dir[64], path[80];
  make_tmpdir(dir, path);
  memset(&m, 0, sizeof m);
  m.loop = loop;
  m.stop_at = 1;
  lfd = unix_raw_server(path, strlen(path), 5);
  ASSERT_OK(ul_server_open(loop, lfd, 0, many_accept_cb, NULL, &m,
                           &m.server));
  c = unix_client(path, strlen(path));
  ASSERT_GE(c, 0);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, m.accepted);
  many_close_all(&m);
  test_close(c);
  ASSERT_OK(ul_server_close(m.server));
  ASSERT_EQ(0, test_fd_is_open(lfd));
  ASSERT(path_exists(path));
  ASSERT_OK(unlink(path));
  ASSERT_OK(rmdir(dir));

  CLOSE_LOOP(loop);
  ASSERT_EQ(fds_before, test_count_fds());
  return 0;
}

/* ul_server_release_fd: the caller keeps the listening fd, also through
 * ul_loop_close. */
TEST_IMPL(net_server_release_fd) {
  ul_loop *loop = test_loop_new();
  struct many m;

  memset(&m, 0, sizeof m);
  m.loop = loop;
  m.stop_at = 1;
  int lfd = tcp_raw_server(5, 0);
  ASSERT_OK(ul_server_open(loop, lfd, 0, many_accept_cb, NULL, &m,
                           &m.server));
  ASSERT_EQ(lfd, ul_server_release_fd(m.server));
  int c = tcp_client(bound_port(lfd));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, m.accepted);
  many_close_all(&m);
  test_close(c);
  ASSERT_OK(ul_server_close(m.server));
  ASSERT_EQ(1, test_fd_is_open(lfd));   /* still the caller's */
  ASSERT_EQ(-EINVAL, ul_server_release_fd(NULL));

  /* Left open at ul_loop_close: closed as a server, the fd kept. */
  ASSERT_OK(ul_server_open(loop, lfd, 0, many_accept_cb, NULL, &m,
                           &m.server));
  ASSERT_EQ(lfd, ul_server_release_fd(m.server));
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, test_fd_is_open(lfd));
  test_close(lfd);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Running out of fds: EMFILE                                               */

struct emfile {
  ul_loop *loop;
  ul_server *server;
  int *fillers;
  int nfillers;
  int errors;
  int last_err;
  int close_in_error;   /* close the server from the error callback */
  double error_time;
  double accept_time;
  int accepted;
  int expect;           /* stop when this many were accepted */
  int iterations;       /* polls (before_poll hook) */
  int serving_in_error;
};

static void emfile_free_fds(struct emfile *e) {
  for (int i = 0; i < e->nfillers; i++)
    test_close(e->fillers[i]);
  e->nfillers = 0;
}

static void emfile_error(struct emfile *e, int err) {
  e->errors++;
  e->last_err = err;
  e->error_time = test_now();
  e->serving_in_error = ul_server_is_serving(e->server);
  emfile_free_fds(e);
  if (e->close_in_error) {
    ASSERT_OK(ul_server_close(e->server));
    ASSERT_OK(ul_loop_stop(e->loop));
  }
}

static void emfile_on_error(ul_server *server, int err, void *arg) {
  struct emfile *e = arg;
  ASSERT_PTR_EQ(e->server, server);
  emfile_error(e, err);
}

static void emfile_loop_handler(ul_loop *loop, int err, const char *message,
                                void *arg) {
  struct emfile *e = arg;
  ASSERT_PTR_EQ(e->loop, loop);
  ASSERT_NOT_NULL(message);
  emfile_error(e, err);
}

static void emfile_accept_cb(ul_server *server, int fd, void *arg) {
  struct emfile *e = arg;
  ASSERT_PTR_EQ(e->server, server);
  ASSERT_GE(fd, 0);
  test_close(fd);
  e->accepted++;
  e->accept_time = test_now();
  if (e->accepted == e->expect)
    ASSERT_OK(ul_loop_stop(e->loop));
}

static void emfile_before_poll(ul_loop *loop, int timeout_ms, void *arg) {
  struct emfile *e = arg;
  (void)loop;
  (void)timeout_ms;
  e->iterations++;
}

/* A server with `nclients` connections waiting, in a process where no fd
 * can be created: RLIMIT_NOFILE is lowered to just above the highest open
 * fd, and every free number below it is taken by a dup. */
static void emfile_setup(struct emfile *e, ul_loop *loop, int use_on_error,
                         int nclients, int *clients, struct rlimit *saved) {
  struct rlimit rl;
  int maxfd = -1;

  memset(e, 0, sizeof *e);
  e->loop = loop;
  e->expect = nclients;
  if (!use_on_error)
    ASSERT_OK(ul_loop_set_error_handler(loop, emfile_loop_handler, e));
  e->server = tcp4_server(loop, 0, emfile_accept_cb,
                          use_on_error ? emfile_on_error : NULL, e);
  in_port_t port = bound_port(ul_server_fileno(e->server));
  for (int i = 0; i < nclients; i++)
    clients[i] = tcp_client(port);
  ASSERT_OK(ul_loop_set_poll_hooks(loop, emfile_before_poll, NULL, e));

  e->fillers = calloc(4096, sizeof *e->fillers);
  ASSERT_NOT_NULL(e->fillers);
  ASSERT_OK(getrlimit(RLIMIT_NOFILE, saved));
  for (int fd = 0; fd < 4096; fd++)
    if (test_fd_is_open(fd))
      maxfd = fd;
  ASSERT_GE(maxfd, 0);
  ASSERT_LT(maxfd + 8, 4096);
  ASSERT(saved->rlim_cur == RLIM_INFINITY ||
         saved->rlim_cur > (rlim_t)(maxfd + 8));
  rl = *saved;
  rl.rlim_cur = (rlim_t)(maxfd + 8);
  ASSERT_OK(setrlimit(RLIMIT_NOFILE, &rl));
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(devnull, 0);
  e->fillers[e->nfillers++] = devnull;
  for (;;) {
    int fd = fcntl(devnull, F_DUPFD_CLOEXEC, 0);
    if (fd == -1) {
      ASSERT_EQ(EMFILE, errno);
      break;
    }
    e->fillers[e->nfillers++] = fd;
  }
  ASSERT_GE(e->nfillers, 7);
}

static void emfile_teardown(struct emfile *e, const struct rlimit *saved) {
  emfile_free_fds(e);
  free(e->fillers);
  ASSERT_OK(setrlimit(RLIMIT_NOFILE, saved));
}

static int emfile_test(int use_on_error) {
  ul_loop *loop = test_loop_new();
  struct emfile e;
  struct rlimit saved;
  int clients[3];

  emfile_setup(&e, loop, use_on_error, 3, clients, &saved);
  double start = test_now();
  ASSERT_OK(ul_loop_run(loop));

  /* One failed accept, reported once; then the reader was off for the
   * retry delay (no spinning: a handful of polls), and the fds freed by the
   * error callback let the server accept everything when it came back. */
  ASSERT_EQ(1, e.errors);
  ASSERT_EQ(-EMFILE, e.last_err);
  ASSERT_EQ(1, e.serving_in_error);
  ASSERT_EQ(3, e.accepted);
  ASSERT_DOUBLE_GE(e.error_time, start);
  /* The retry timer starts just before the error callback, at an unknown
   * moment after `start` (a loaded machine may pause the process between
   * the two): measure the delay from `start`, which cannot come later. */
  ASSERT_DOUBLE_GE(e.accept_time - start,
                   UL_SERVER_ACCEPT_RETRY_DELAY -
                   ul_loop_clock_resolution(loop));
  ASSERT_LE(e.iterations, 6);
  ASSERT_EQ(1, ul_server_is_serving(e.server));

  emfile_teardown(&e, &saved);
  for (int i = 0; i < 3; i++)
    test_close(clients[i]);
  ASSERT_OK(ul_server_close(e.server));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(net_accept_emfile) {
  return emfile_test(1);
}

TEST_IMPL(net_accept_emfile_loop_handler) {
  return emfile_test(0);
}

/* The server closed from its error callback: the retry timer goes too. */
TEST_IMPL(net_server_close_in_error_cb) {
  ul_loop *loop = test_loop_new();
  struct emfile e;
  struct rlimit saved;
  int clients[2];

  emfile_setup(&e, loop, 1, 2, clients, &saved);
  e.close_in_error = 1;
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, e.errors);
  ASSERT_EQ(-EMFILE, e.last_err);
  ASSERT_EQ(0, e.accepted);
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  for (int i = 0; i < 3; i++)
    ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, e.errors);
  ASSERT_EQ(0, e.accepted);

  emfile_teardown(&e, &saved);
  for (int i = 0; i < 2; i++)
    test_close(clients[i]);
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Loop close, bad arguments                                                */

/* A connect that completed at once is still waiting in the ready queue when
 * the loop closes: its callback gets -ECANCELED and the fd is closed. */
TEST_IMPL(net_connect_cancelled_by_loop_close) {
  int fds_base = test_count_fds();
  ul_loop *loop = test_loop_new();
  char name[64];
  size_t len;
  struct pair p;

  name[0] = '\0';
  len = 1 + (size_t)snprintf(name + 1, sizeof name - 1,
                             "ul-test-net-cancel-%ld", (long)getpid());
  int raw = unix_raw_server(name, len, 5);
  int fds_before = test_count_fds();
  pair_init(&p, loop, 0);
  ASSERT_OK(ul_unix_connect(loop, name, len, pair_connect_cb, &p));
  ASSERT_EQ(fds_before + 1, test_count_fds());
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, p.connect_calls);
  ASSERT_EQ(-ECANCELED, p.connected);
  test_close(raw);
  ASSERT_EQ(fds_base, test_count_fds());
  return 0;
}

static int never_called;

static void never_accept_cb(ul_server *server, int fd, void *arg) {
  (void)server;
  (void)fd;
  (void)arg;
  never_called++;
}

static void never_connect_cb(ul_loop *loop, int fd, void *arg) {
  (void)loop;
  (void)fd;
  (void)arg;
  never_called++;
}

/* ul_loop_close() with connects not yet reported: one answered at once
 * (UNIX: its result queued through call_soon), one in progress that the
 * loop never ran (the writer registered), and one in progress whose SYN the
 * kernel drops (a loopback listener whose accept queue is full), checked to
 * be still pending after the loop ran.  Each callback runs once, with
 * -ECANCELED, and every socket is closed. */
static void stop_timer_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  if (status == 0)
    ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(net_loop_close_cancels_connects) {
  int fds_base = test_count_fds();
  ul_loop *loop = test_loop_new();
  struct sockaddr_in sin;
  struct pair queued, idle, dropped;
  char name[64];
  size_t len;

  /* A listener that answers (its queue has room), and one whose queue is
   * full: listen(0) takes one connection, the next SYN is dropped. */
  name[0] = '\0';
  len = 1 + (size_t)snprintf(name + 1, sizeof name - 1,
                             "ul-test-net-close-connects-%ld", (long)getpid());
  int unix_raw = unix_raw_server(name, len, 5);
  int open_raw = tcp_raw_server(5, 0);
  int full_raw = tcp_raw_server(0, 0);
  int filler = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  ASSERT_GE(filler, 0);
  loopback4(&sin, bound_port(full_raw));
  int r = connect(filler, (struct sockaddr *)&sin, sizeof sin);
  ASSERT(r == 0 || errno == EINPROGRESS);
  struct pollfd pfd = {filler, POLLOUT, 0};
  ASSERT_EQ(1, poll(&pfd, 1, 5000));   /* established: the queue is full */
  int fds_before = test_count_fds();

  pair_init(&dropped, loop, 0);
  in_connect_call = 1;
  ASSERT_OK(ul_tcp_connect(loop, (struct sockaddr *)&sin, sizeof sin,
                           pair_connect_cb, &dropped));
  in_connect_call = 0;
  /* Run the loop 100 ms: the connect stays in progress. */
  ASSERT_OK(ul_loop_call_later(loop, 0.1, stop_timer_cb, NULL, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(0, dropped.connect_calls);

  pair_init(&queued, loop, 0);
  pair_init(&idle, loop, 0);
  in_connect_call = 1;
  ASSERT_OK(ul_unix_connect(loop, name, len, pair_connect_cb, &queued));
  loopback4(&sin, bound_port(open_raw));
  ASSERT_OK(ul_tcp_connect(loop, (struct sockaddr *)&sin, sizeof sin,
                           pair_connect_cb, &idle));
  in_connect_call = 0;
  ASSERT_EQ(fds_before + 3, test_count_fds());

  CLOSE_LOOP(loop);
  ASSERT_EQ(1, queued.connect_calls);
  ASSERT_EQ(-ECANCELED, queued.connected);
  ASSERT_EQ(1, idle.connect_calls);
  ASSERT_EQ(-ECANCELED, idle.connected);
  ASSERT_EQ(1, dropped.connect_calls);
  ASSERT_EQ(-ECANCELED, dropped.connected);
  /* The loop's own fds and the three sockets are gone. */
  ASSERT_EQ(fds_base + 4, test_count_fds());
  test_close(filler);
  test_close(full_raw);
  test_close(open_raw);
  test_close(unix_raw);
  ASSERT_EQ(fds_base, test_count_fds());
  return 0;
}

/* ul_loop_close() with servers still open: TCP, UNIX on a path, abstract
 * UNIX, a stopped one and one taken over by ul_server_open, one with a
 * connection waiting in its queue.  Their fds are closed, the socket file
 * removed, the TCP port no longer listens, and ASan sees nothing leak. */
TEST_IMPL(net_loop_close_closes_servers) {
  int fds_base = test_count_fds();
  ul_loop *loop = test_loop_new();
  ul_server *tcp, *file, *abstract = NULL, *stopped, *opened = NULL;
  char dir[64], path[80], name[64];
  size_t len;
  struct pair p;

  pair_init(&p, loop, 0);
  make_tmpdir(dir, path);
  tcp = tcp4_server(loop, 0, pair_accept_cb, NULL, &p);
  in_port_t port = bound_port(ul_server_fileno(tcp));
  ASSERT_OK(ul_unix_listen(loop, path, strlen(path), 0, pair_accept_cb, NULL,
                           &p, &file));
  ASSERT(path_exists(path));
  name[0] = '\0';
  len = 1 + (size_t)snprintf(name + 1, sizeof name - 1,
                             "ul-test-net-close-servers-%ld", (long)getpid());
  ASSERT_OK(ul_unix_listen(loop, name, len, 0, pair_accept_cb, NULL, &p,
                           &abstract));
  stopped = tcp4_server(loop, 0, pair_accept_cb, NULL, &p);
  ASSERT_OK(ul_server_stop(stopped));
  ASSERT_OK(ul_server_open(loop, tcp_raw_server(5, 0), 0, pair_accept_cb,
                           NULL, &p, &opened));
  /* A server closed before the loop is not closed again. */
  ul_server *early = tcp4_server(loop, 0, pair_accept_cb, NULL, &p);
  ASSERT_OK(ul_server_close(early));
  /* A connection waits in the TCP server's queue, never accepted. */
  int client = tcp_client(port);

  CLOSE_LOOP(loop);
  ASSERT_EQ(0, p.accept_calls);
  ASSERT_EQ(0, path_exists(path));
  ASSERT_OK(rmdir(dir));
  ASSERT_EQ(fds_base + 1, test_count_fds());   /* only the client */
  test_close(client);
  ASSERT_EQ(fds_base, test_count_fds());

  /* Nobody listens on the port or the abstract name any more. */
  struct sockaddr_in sin;
  loopback4(&sin, port);
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(c, 0);
  ASSERT_EQ(-1, connect(c, (struct sockaddr *)&sin, sizeof sin));
  ASSERT_EQ(ECONNREFUSED, errno);
  test_close(c);
  ASSERT_EQ(-ECONNREFUSED, unix_client(name, len));

  /* A closed loop leaves a fresh one nothing to trip on. */
  loop = test_loop_new();
  CLOSE_LOOP(loop);
  ASSERT_EQ(fds_base, test_count_fds());
  return 0;
}

/* The connect callbacks that ul_loop_close() runs come before the servers
 * are closed: they may still close a server themselves.  They cannot start
 * new connects or servers (-ESHUTDOWN). */
struct close_ctx {
  ul_server *server;
  struct sockaddr_in sin;
  int calls;
  int status;
};

static void close_ctx_connect_cb(ul_loop *loop, int fd, void *arg) {
  struct close_ctx *ctx = arg;
  ul_server *s = NULL;
  ctx->calls++;
  ctx->status = fd;
  if (fd >= 0) {
    test_close(fd);
    return;
  }
  ASSERT_EQ(-ESHUTDOWN,
            ul_tcp_connect(loop, (struct sockaddr *)&ctx->sin,
                           sizeof ctx->sin, never_connect_cb, NULL));
  ASSERT_EQ(-ESHUTDOWN, ul_unix_connect(loop, "\0ul-x", 5, never_connect_cb,
                                        NULL));
  ASSERT_EQ(-ESHUTDOWN,
            ul_tcp_listen(loop, (struct sockaddr *)&ctx->sin,
                          sizeof ctx->sin, 0, 0, never_accept_cb, NULL, NULL,
                          &s));
  ASSERT_EQ(-ESHUTDOWN, ul_unix_listen(loop, "\0ul-x", 5, 0, never_accept_cb,
                                       NULL, NULL, &s));
  ASSERT_NULL(s);
  ASSERT_OK(ul_server_close(ctx->server));
  ctx->server = NULL;
}

TEST_IMPL(net_loop_close_connect_cb_closes_server) {
  int fds_base = test_count_fds();
  ul_loop *loop = test_loop_new();
  struct close_ctx ctx;

  memset(&ctx, 0, sizeof ctx);
  ctx.server = tcp4_server(loop, 0, never_accept_cb, NULL, NULL);
  loopback4(&ctx.sin, bound_port(ul_server_fileno(ctx.server)));
  ASSERT_OK(ul_tcp_connect(loop, (struct sockaddr *)&ctx.sin, sizeof ctx.sin,
                           close_ctx_connect_cb, &ctx));
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, ctx.calls);
  ASSERT_EQ(-ECANCELED, ctx.status);
  ASSERT_NULL(ctx.server);
  ASSERT_EQ(0, never_called);
  ASSERT_EQ(fds_base, test_count_fds());
  return 0;
}

TEST_IMPL(net_bad_arguments) {
  int fds_before = test_count_fds();
  ul_loop *loop = test_loop_new();
  ul_server *server = NULL;
  struct sockaddr_in sin;
  struct sockaddr_un sun;
  char longpath[200];
  int fds[2];

  loopback4(&sin, htons(9));
  memset(&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  memset(longpath, 'a', sizeof longpath);
  longpath[0] = '/';

  /* ul_tcp_connect */
  ASSERT_EQ(-EINVAL, ul_tcp_connect(NULL, (struct sockaddr *)&sin,
                                    sizeof sin, never_connect_cb, NULL));
  ASSERT_EQ(-EINVAL, ul_tcp_connect(loop, NULL, sizeof sin,
                                    never_connect_cb, NULL));
  ASSERT_EQ(-EINVAL, ul_tcp_connect(loop, (struct sockaddr *)&sin,
                                    sizeof sin, NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_tcp_connect(loop, (struct sockaddr *)&sin,
                                    sizeof sin - 1, never_connect_cb, NULL));
  ASSERT_EQ(-EINVAL, ul_tcp_connect(loop, (struct sockaddr *)&sun,
                                    sizeof sun, never_connect_cb, NULL));

  /* ul_unix_connect */
  ASSERT_EQ(-EINVAL, ul_unix_connect(NULL, "/x", 2, never_connect_cb, NULL));
  ASSERT_EQ(-EINVAL, ul_unix_connect(loop, NULL, 2, never_connect_cb, NULL));
  ASSERT_EQ(-EINVAL, ul_unix_connect(loop, "/x", 0, never_connect_cb, NULL));
  ASSERT_EQ(-EINVAL, ul_unix_connect(loop, "/x", 2, NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_unix_connect(loop, longpath, sizeof longpath,
                                     never_connect_cb, NULL));
  ASSERT_EQ(-EINVAL, ul_unix_connect(loop, "/x\0y", 4, never_connect_cb,
                                     NULL));
  longpath[0] = '\0';   /* abstract: 200 bytes do not fit either */
  ASSERT_EQ(-EINVAL, ul_unix_connect(loop, longpath, sizeof longpath,
                                     never_connect_cb, NULL));
  longpath[0] = '/';

  /* ul_tcp_listen */
  ASSERT_EQ(-EINVAL, ul_tcp_listen(NULL, (struct sockaddr *)&sin, sizeof sin,
                                   0, 0, never_accept_cb, NULL, NULL,
                                   &server));
  ASSERT_EQ(-EINVAL, ul_tcp_listen(loop, NULL, sizeof sin, 0, 0,
                                   never_accept_cb, NULL, NULL, &server));
  ASSERT_EQ(-EINVAL, ul_tcp_listen(loop, (struct sockaddr *)&sin, sizeof sin,
                                   0, 0, NULL, NULL, NULL, &server));
  ASSERT_EQ(-EINVAL, ul_tcp_listen(loop, (struct sockaddr *)&sin, sizeof sin,
                                   0, 0, never_accept_cb, NULL, NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_tcp_listen(loop, (struct sockaddr *)&sin, 4, 0, 0,
                                   never_accept_cb, NULL, NULL, &server));
  ASSERT_EQ(-EINVAL, ul_tcp_listen(loop, (struct sockaddr *)&sun, sizeof sun,
                                   0, 0, never_accept_cb, NULL, NULL,
                                   &server));
  ASSERT_EQ(-EINVAL, ul_tcp_listen(loop, (struct sockaddr *)&sin, sizeof sin,
                                   0, 64, never_accept_cb, NULL, NULL,
                                   &server));
  ASSERT_NULL(server);

  /* A port in use. */
  int busy = tcp_raw_server(5, 1);
  sin.sin_port = bound_port(busy);
  ASSERT_EQ(-EADDRINUSE, ul_tcp_listen(loop, (struct sockaddr *)&sin,
                                       sizeof sin, 0, 0, never_accept_cb,
                                       NULL, NULL, &server));
  ASSERT_NULL(server);

  /* ul_unix_listen */
  ASSERT_EQ(-EINVAL, ul_unix_listen(NULL, "/x", 2, 0, never_accept_cb, NULL,
                                    NULL, &server));
  ASSERT_EQ(-EINVAL, ul_unix_listen(loop, NULL, 2, 0, never_accept_cb, NULL,
                                    NULL, &server));
  ASSERT_EQ(-EINVAL, ul_unix_listen(loop, "/x", 0, 0, never_accept_cb, NULL,
                                    NULL, &server));
  ASSERT_EQ(-EINVAL, ul_unix_listen(loop, "/x", 2, 0, NULL, NULL, NULL,
                                    &server));
  ASSERT_EQ(-EINVAL, ul_unix_listen(loop, "/x", 2, 0, never_accept_cb, NULL,
                                    NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_unix_listen(loop, longpath, sizeof longpath, 0,
                                    never_accept_cb, NULL, NULL, &server));
  ASSERT_NULL(server);

  /* ul_server_open: the fd is left open when it fails. */
  ASSERT_EQ(-EBADF, ul_server_open(loop, -1, 0, never_accept_cb, NULL, NULL,
                                   &server));
  test_pipe(fds);
  ASSERT_EQ(-ENOTSOCK, ul_server_open(loop, fds[0], 0, never_accept_cb, NULL,
                                      NULL, &server));
  ASSERT(test_fd_is_open(fds[0]));
  test_close(fds[0]);
  test_close(fds[1]);
  ASSERT_EQ(-EBADF, ul_server_open(loop, fds[0], 0, never_accept_cb, NULL,
                                   NULL, &server));
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);   /* no listen */
  ASSERT_EQ(-EINVAL, ul_server_open(loop, s, 0, never_accept_cb, NULL, NULL,
                                    &server));
  ASSERT(test_fd_is_open(s));
  test_close(s);
  s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(-EINVAL, ul_server_open(loop, s, 0, never_accept_cb, NULL, NULL,
                                    &server));
  test_close(s);
  ASSERT_EQ(-EINVAL, ul_server_open(loop, busy, 0, NULL, NULL, NULL,
                                    &server));
  ASSERT_EQ(-EINVAL, ul_server_open(NULL, busy, 0, never_accept_cb, NULL,
                                    NULL, &server));
  ASSERT_EQ(-EINVAL, ul_server_open(loop, busy, 0, never_accept_cb, NULL,
                                    NULL, NULL));
  ASSERT_NULL(server);
  ASSERT(test_fd_is_open(busy));
  test_close(busy);

  /* The server functions. */
  ASSERT_EQ(-EINVAL, ul_server_stop(NULL));
  ASSERT_EQ(-EINVAL, ul_server_start(NULL));
  ASSERT_EQ(0, ul_server_is_serving(NULL));
  ASSERT_EQ(-EINVAL, ul_server_fileno(NULL));
  ASSERT_EQ(-EINVAL, ul_server_close(NULL));

  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, never_called);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(fds_before, test_count_fds());
  return 0;
}
