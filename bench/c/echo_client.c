/*
 * echo_client -- a raw-epoll echo load generator (no event-loop library).
 *
 *   echo_client -a HOST:PORT | -u PATH  [-c 16] [-s 1024] [-d 2] [-w 0.5] [-V]
 *               [-H URL_PATH] [-T]
 *
 * Opens `c` stream connections (TCP with TCP_NODELAY, or UNIX-domain).  Each
 * connection sends one message of `s` bytes, waits until all `s` bytes have
 * come back, and sends the next one (one request in flight per connection).
 * With -T each connection speaks TLS (OpenSSL, the server's certificate not
 * checked): the handshakes are done before the warm-up, blocking.
 * With -H the message is an HTTP/1.1 request, "GET URL_PATH" on a kept-alive
 * connection, and what must come back is one response: a 200 status line,
 * headers with a Content-Length, and that many bytes of body (-s is unused).
 * The first `w` seconds are a warm-up; then it prints the line
 *
 *   {"event": "start"}
 *
 * (flushed) so that a server can start measuring, counts the requests
 * completed in the next `d` seconds, and prints, before closing anything,
 *
 *   {"requests": N, "seconds": S, "rps": R, "connections": C, "size": B}
 *
 * -V checks the content of every echo (costs client CPU; off by default).
 * Exit status: 0, or 1 on a usage, connect or I/O error (message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define HTTP_RESPONSE_MAX 16384

typedef struct conn {
  int fd;
  size_t sent;     /* bytes of the current request written */
  size_t got;      /* bytes of the current echo (or response) read */
  int want_out;    /* EPOLLOUT armed */
  char *response;  /* -H: the response so far, HTTP_RESPONSE_MAX bytes */
  SSL *ssl;        /* -T */
} conn;

static size_t msg_size = 1024;
static char *out_buf;
static char *in_buf;
static int verify;
static int http;   /* -H */
static SSL_CTX *tls; /* -T */
static int epfd = -1;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "echo_client: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(void) {
  fprintf(stderr,
          "usage: echo_client (-a HOST:PORT | -u PATH) [-c CONNS] [-s BYTES] "
          "[-d SECONDS] [-w WARMUP_SECONDS] [-V] [-H URL_PATH] [-T]\n");
  exit(1);
}

static int open_tcp(const char *hostport) {
  char host[256];
  const char *colon = strrchr(hostport, ':');
  struct addrinfo hints, *res, *ai;
  int fd = -1, one = 1, r;

  if (colon == NULL || (size_t)(colon - hostport) >= sizeof host) usage();
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = '\0';
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  r = getaddrinfo(host, colon + 1, &hints, &res);
  if (r != 0) {
    fprintf(stderr, "echo_client: getaddrinfo(%s): %s\n", hostport,
            gai_strerror(r));
    exit(1);
  }
  for (ai = res; ai != NULL; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    do r = connect(fd, ai->ai_addr, ai->ai_addrlen);
    while (r == -1 && errno == EINTR);
    if (r == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) die("connect");
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
    die("setsockopt(TCP_NODELAY)");
  return fd;
}

static int open_unix(const char *path) {
  struct sockaddr_un sa;
  int fd, r;

  if (strlen(path) >= sizeof sa.sun_path) usage();
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  strcpy(sa.sun_path, path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  do r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  while (r == -1 && errno == EINTR);
  if (r < 0) die("connect");
  return fd;
}

static void die_tls(const char *what) {
  fprintf(stderr, "echo_client: %s: ", what);
  ERR_print_errors_fp(stderr);
  fputc('\n', stderr);
  exit(1);
}

/* -T: the TLS session over the (still blocking) connection. */
static void start_tls(conn *c) {
  c->ssl = SSL_new(tls);
  if (c->ssl == NULL || !SSL_set_fd(c->ssl, c->fd)) die_tls("SSL_new");
  if (SSL_connect(c->ssl) != 1) die_tls("TLS handshake");
  SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
                           SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

/* write(2), or SSL_write under -T: bytes written, or -1 with errno (EAGAIN
 * when the connection cannot take more now). */
static ssize_t send_some(conn *c, const char *buf, size_t len) {
  int n, err;
  if (c->ssl == NULL) return write(c->fd, buf, len);
  n = SSL_write(c->ssl, buf, (int)len);
  if (n > 0) return n;
  err = SSL_get_error(c->ssl, n);
  if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
    errno = EAGAIN;
    return -1;
  }
  die_tls("SSL_write");
  return -1;
}

/* read(2), or SSL_read under -T: as send_some, and 0 at the end. */
static ssize_t recv_some(conn *c, char *buf, size_t len) {
  int n, err;
  if (c->ssl == NULL) return read(c->fd, buf, len);
  n = SSL_read(c->ssl, buf, (int)len);
  if (n > 0) return n;
  err = SSL_get_error(c->ssl, n);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    errno = EAGAIN;
    return -1;
  }
  if (err == SSL_ERROR_ZERO_RETURN) return 0;
  die_tls("SSL_read");
  return -1;
}

static void set_out(conn *c, int on) {
  struct epoll_event ev;
  if (c->want_out == on) return;
  c->want_out = on;
  ev.events = EPOLLIN | (on ? EPOLLOUT : 0);
  ev.data.ptr = c;
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
}

/* Writes what it can of the current request. */
static void do_write(conn *c) {
  while (c->sent < msg_size) {
    ssize_t n = send_some(c, out_buf + c->sent, msg_size - c->sent);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        set_out(c, 1);
        return;
      }
      die("write");
    }
    c->sent += (size_t)n;
  }
  set_out(c, 0);
}

/* One read of up to `want` bytes into buf; returns how many came, 0 if
 * nothing is there yet.  Exits on an error or a closed connection. */
static size_t read_some(conn *c, char *buf, size_t want) {
  for (;;) {
    ssize_t n = recv_some(c, buf, want);
    if (n > 0) return (size_t)n;
    if (n == 0) {
      fprintf(stderr, "echo_client: server closed a connection\n");
      exit(1);
    }
    if (errno == EAGAIN) return 0;
    if (errno != EINTR) die("read");
  }
}

/* The reply to the current request is in: the next request goes out. */
static int next_request(conn *c) {
  c->got = 0;
  c->sent = 0;
  do_write(c);
  return 1;
}

/* Reads what is there; returns the number of requests completed (0 or 1). */
static int do_read(conn *c) {
  while (c->got < msg_size) {
    size_t n = read_some(c, in_buf + c->got, msg_size - c->got);
    if (n == 0) return 0;
    if (verify && memcmp(in_buf + c->got, out_buf + c->got, n) != 0) {
      fprintf(stderr, "echo_client: echo does not match what was sent\n");
      exit(1);
    }
    c->got += n;
  }
  if (c->sent != msg_size) {
    fprintf(stderr, "echo_client: got more than was sent\n");
    exit(1);
  }
  return next_request(c);
}

/* The length of the HTTP response in buf[0, len) once its headers are
 * complete (0 before); exits if it is not a 200 with a Content-Length. */
static size_t http_response_length(const char *buf, size_t len) {
  const char *end = memmem(buf, len, "\r\n\r\n", 4);
  const char *p;
  if (end == NULL) {
    if (len == HTTP_RESPONSE_MAX) {
      fprintf(stderr, "echo_client: response headers too long\n");
      exit(1);
    }
    return 0;
  }
  if (len < 12 || memcmp(buf, "HTTP/1.1 200", 12) != 0) {
    const char *eol = memchr(buf, '\r', len); /* there is one: end */
    fprintf(stderr, "echo_client: not an HTTP/1.1 200 response: %.*s\n",
            (int)(eol - buf), buf);
    exit(1);
  }
  for (p = buf; p + 16 <= end; p++) {
    if (p[0] == '\n' && strncasecmp(p + 1, "content-length:", 15) == 0)
      return (size_t)(end + 4 - buf) + strtoull(p + 16, NULL, 10);
  }
  fprintf(stderr, "echo_client: response without Content-Length\n");
  exit(1);
}

/* do_read for -H: reads what is there; returns the number of responses
 * completed (0 or 1). */
static int do_read_http(conn *c) {
  for (;;) {
    size_t n = read_some(c, c->response + c->got, HTTP_RESPONSE_MAX - c->got);
    size_t total;
    if (n == 0) return 0;
    c->got += n;
    total = http_response_length(c->response, c->got);
    if (total > HTTP_RESPONSE_MAX) {
      fprintf(stderr, "echo_client: response too long\n");
      exit(1);
    }
    if (total == 0 || c->got < total) continue;
    if (c->got > total || c->sent != msg_size) {
      fprintf(stderr, "echo_client: more than one response\n");
      exit(1);
    }
    return next_request(c);
  }
}

int main(int argc, char **argv) {
  const char *tcp = NULL, *unix_path = NULL;
  int nconn = 16, opt, i;
  double duration = 2.0, warmup = 0.5;
  conn *conns;
  struct epoll_event events[256];
  double t_begin, t_start = 0, t_end, t;
  int started = 0;
  uint64_t requests = 0;
  const char *url_path = NULL;

  while ((opt = getopt(argc, argv, "a:u:c:s:d:w:VH:T")) != -1) {
    switch (opt) {
      case 'a': tcp = optarg; break;
      case 'u': unix_path = optarg; break;
      case 'c': nconn = atoi(optarg); break;
      case 's': msg_size = (size_t)strtoull(optarg, NULL, 10); break;
      case 'd': duration = atof(optarg); break;
      case 'w': warmup = atof(optarg); break;
      case 'V': verify = 1; break;
      case 'H': url_path = optarg; break;
      case 'T':
        if ((tls = SSL_CTX_new(TLS_client_method())) == NULL)
          die_tls("SSL_CTX_new");
        break;
      default: usage();
    }
  }
  if ((tcp == NULL) == (unix_path == NULL) || nconn < 1 || msg_size < 1 ||
      duration <= 0 || warmup < 0)
    usage();

  if (url_path != NULL) {
    int len = snprintf(NULL, 0, "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n",
                       url_path);
    http = 1;
    msg_size = (size_t)len;
    out_buf = malloc(msg_size + 1);
    if (out_buf != NULL)
      snprintf(out_buf, msg_size + 1,
               "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", url_path);
  } else {
    out_buf = malloc(msg_size);
    if (out_buf != NULL)
      for (i = 0; (size_t)i < msg_size; i++) out_buf[i] = (char)('a' + i % 26);
  }
  in_buf = malloc(msg_size);
  conns = calloc((size_t)nconn, sizeof *conns);
  if (out_buf == NULL || in_buf == NULL || conns == NULL) die("malloc");

  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) die("epoll_create1");
  for (i = 0; i < nconn; i++) {
    struct epoll_event ev;
    conn *c = &conns[i];
    c->fd = tcp ? open_tcp(tcp) : open_unix(unix_path);
    if (http && (c->response = malloc(HTTP_RESPONSE_MAX)) == NULL)
      die("malloc");
    if (tls != NULL) start_tls(c);
    if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
      die("fcntl");
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
  }

  t_begin = now_s();
  t_end = t_begin + warmup + duration;
  for (i = 0; i < nconn; i++) do_write(&conns[i]);

  for (;;) {
    int n, timeout_ms;
    t = now_s();
    if (!started && t >= t_begin + warmup) {
      started = 1;
      requests = 0;
      t_start = t;
      t_end = t + duration;
      printf("{\"event\": \"start\"}\n");
      fflush(stdout);
    }
    if (started && t >= t_end) break;
    timeout_ms = (int)(((started ? t_end : t_begin + warmup) - t) * 1000) + 1;
    n = epoll_wait(epfd, events, 256, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (i = 0; i < n; i++) {
      conn *c = events[i].data.ptr;
      if (events[i].events & EPOLLOUT) do_write(c);
      if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        requests += (uint64_t)(http ? do_read_http(c) : do_read(c));
    }
  }
  t = now_s() - t_start;
  printf("{\"requests\": %llu, \"seconds\": %.6f, \"rps\": %.1f, "
         "\"connections\": %d, \"size\": %zu}\n",
         (unsigned long long)requests, t, (double)requests / t, nconn,
         msg_size);
  fflush(stdout);
  for (i = 0; i < nconn; i++) {
    SSL_free(conns[i].ssl);
    close(conns[i].fd);
    free(conns[i].response);
  }
  SSL_CTX_free(tls);
  close(epfd);
  free(conns);
  free(in_buf);
  free(out_buf);
  return 0;
}
