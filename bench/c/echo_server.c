/*
 * echo_server -- a raw-epoll echo server (no event-loop library, no Python):
 * the floor the Python echo servers of pybench.py are measured against
 * (`pybench.py --loop raw,...`).
 *
 *   echo_server -a HOST:PORT | -u PATH
 *
 * Listens (TCP port 0 picks a free one), prints one line
 *
 *   {"event": "listening", "port": P}      (P is 0 for a UNIX socket)
 *
 * (flushed), then echoes every connection until it is killed.  Each
 * readable connection gets one recv() into a 256 KiB buffer (asyncio's and
 * uvloop's read size) and one send() of what came; what the kernel does not
 * take is kept, and the connection is not read again until it is sent, so
 * the memory a connection holds stays bounded.  TCP connections get
 * TCP_NODELAY, as asyncio sets it.
 * Exit status: 1 on a usage or setup error (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)

typedef struct conn {
  int fd;
  char *pending;   /* unsent bytes are pending[off, len) */
  size_t off;
  size_t len;
} conn;

static char read_buf[READ_SIZE];
static int epfd = -1;

static void die(const char *what) {
  fprintf(stderr, "echo_server: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(void) {
  fprintf(stderr, "usage: echo_server (-a HOST:PORT | -u PATH)\n");
  exit(1);
}

static int listen_tcp(const char *hostport, int *port) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  if (colon == NULL || (size_t)(colon - hostport) >= sizeof host)
    usage();
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = '\0';
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE};
  struct addrinfo *ai;
  int rc = getaddrinfo(host, colon + 1, &hints, &ai);
  if (rc != 0) {
    fprintf(stderr, "echo_server: %s: %s\n", hostport, gai_strerror(rc));
    exit(1);
  }
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
      bind(fd, ai->ai_addr, ai->ai_addrlen))
    die("bind");
  freeaddrinfo(ai);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl))
    die("getsockname");
  *port = ntohs(ss.ss_family == AF_INET6
                    ? ((struct sockaddr_in6 *)&ss)->sin6_port
                    : ((struct sockaddr_in *)&ss)->sin_port);
  return fd;
}

static int listen_unix(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path)
    usage();
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa))
    die("bind");
  return fd;
}

static void watch(conn *c, unsigned events, int op) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  if (epoll_ctl(epfd, op, c->fd, &ev))
    die("epoll_ctl");
}

static void drop(conn *c) {
  close(c->fd); /* also leaves the epoll set */
  free(c->pending);
  free(c);
}

/* Sends what is pending; returns -1 if the connection is gone. */
static int flush_pending(conn *c) {
  while (c->off < c->len) {
    ssize_t n = send(c->fd, c->pending + c->off, c->len - c->off,
                     MSG_NOSIGNAL);
    if (n < 0)
      return errno == EAGAIN || errno == EINTR ? 0 : -1;
    c->off += (size_t)n;
  }
  c->off = c->len = 0;
  watch(c, EPOLLIN, EPOLL_CTL_MOD); /* drained: read again */
  return 0;
}

static int echo_once(conn *c) {
  ssize_t n = recv(c->fd, read_buf, READ_SIZE, 0);
  if (n <= 0)
    return n == 0 || (errno != EAGAIN && errno != EINTR) ? -1 : 0;
  ssize_t sent = send(c->fd, read_buf, (size_t)n, MSG_NOSIGNAL);
  if (sent < 0) {
    if (errno != EAGAIN && errno != EINTR)
      return -1;
    sent = 0;
  }
  if (sent == n)
    return 0;
  size_t rest = (size_t)(n - sent);
  char *p = realloc(c->pending, rest);
  if (p == NULL)
    die("realloc");
  memcpy(p, read_buf + sent, rest);
  c->pending = p;
  c->off = 0;
  c->len = rest;
  watch(c, EPOLLOUT, EPOLL_CTL_MOD); /* stop reading until it is sent */
  return 0;
}

static void accept_all(int lfd, int is_tcp) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
        return;
      die("accept4");
    }
    int one = 1;
    if (is_tcp)
      (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn *c = calloc(1, sizeof *c);
    if (c == NULL)
      die("calloc");
    c->fd = fd;
    watch(c, EPOLLIN, EPOLL_CTL_ADD);
  }
}

int main(int argc, char **argv) {
  const char *addr = NULL, *path = NULL;
  int opt;
  while ((opt = getopt(argc, argv, "a:u:")) != -1) {
    if (opt == 'a')
      addr = optarg;
    else if (opt == 'u')
      path = optarg;
    else
      usage();
  }
  if ((addr == NULL) == (path == NULL) || optind != argc)
    usage();
  int port = 0;
  int lfd = addr ? listen_tcp(addr, &port) : listen_unix(path);
  if (listen(lfd, 128))
    die("listen");
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0)
    die("epoll_create1");
  struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev))
    die("epoll_ctl");
  printf("{\"event\": \"listening\", \"port\": %d}\n", port);
  fflush(stdout);

  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(epfd, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
      conn *c = evs[i].data.ptr;
      if (c == NULL) {
        accept_all(lfd, addr != NULL);
        continue;
      }
      int gone = c->len > 0 ? flush_pending(c) : echo_once(c);
      if (gone)
        drop(c);
    }
  }
}
