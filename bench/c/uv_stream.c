/*
 * uv_stream -- the stream benchmarks on libuv (raw_stream.c is the bare-epoll
 * limit, ul_stream.c the libunixloop side).  Same options, fds, bytes and
 * JSON line: see stream_common.h.
 *
 *   uv_stream pingpong [-t unix|tcp] [-c CONNS] [-s SIZE] [-n ROUNDTRIPS] [-V]
 *   uv_stream pump     [-t unix|tcp|pipe] [-n BYTES] [-q CHUNKS] [-V]
 *
 * The fds are wrapped with uv_tcp_open() (TCP) or uv_pipe_open() (UNIX
 * sockets and pipes).  Reads: uv_read_start() with an alloc_cb that hands out
 * one static 256 KiB buffer (what libunixloop reads into).
 *
 * Ping-pong writes as uvloop and Node.js do on libuv: uv_try_write() first;
 * only what the kernel did not take goes through uv_write() (the echo copies
 * it first, since the read buffer is reused).  With small messages the
 * remainder path never runs, so no uv_write_t is needed at all.
 *
 * Pump: uv_write() of 64 KiB chunks from a static buffer (no copy: libuv
 * keeps a reference).  -q N (default 4): at most N write requests
 * outstanding; a new chunk is written from the write_cb of an old one.
 * -q 0: chunks are written while the stream's write queue is empty (the
 * kernel took all so far), as libuv's benchmark-pump.c does; the write_cbs
 * go on.  uv_write() writes at once when its queue is empty, and queues
 * (waiting for POLLOUT) what the kernel did not take.
 */
#define _GNU_SOURCE /* pipe2, accept4 */
#include <uv.h>

#include "stream_common.h"

#define UV_CHECK(expr)                                                       \
  do {                                                                       \
    int uv_r_ = (expr);                                                      \
    if (uv_r_ < 0) {                                                         \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr,    \
              uv_strerror(uv_r_));                                           \
      exit(1);                                                               \
    }                                                                        \
  } while (0)

typedef union stream_u {
  uv_stream_t s;
  uv_tcp_t tcp;
  uv_pipe_t pipe;
} stream_u;

typedef struct wreq {
  uv_write_t req;
  struct wreq *next_free;
  char *copy; /* echo remainder (malloc), or NULL */
} wreq;

typedef struct end {
  stream_u h;          /* first: (end *)handle */
  int is_client;
  int conn;
  wreq *free_reqs;
  /* client side */
  char *msg;
  size_t recvd;
  uint64_t round;
} end;

static sb_opts opt;
static uv_loop_t loop_storage;
static uv_loop_t *loop = &loop_storage;
static char rbuf[SB_READ_SIZE];
static uint64_t issued, done;

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = rbuf;
  buf->len = sizeof rbuf;
}

static void open_end(end *e, int fd) {
  if (opt.transport == SB_TCP) {
    UV_CHECK(uv_tcp_init(loop, &e->h.tcp));
    UV_CHECK(uv_tcp_open(&e->h.tcp, fd));
  } else {
    UV_CHECK(uv_pipe_init(loop, &e->h.pipe, 0));
    UV_CHECK(uv_pipe_open(&e->h.pipe, fd));
  }
}

/* ---- ping-pong ------------------------------------------------------------- */

static void pp_write_cb(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  end *e = (end *)req->handle;
  UV_CHECK(status);
  free(w->copy);
  w->copy = NULL;
  w->next_free = e->free_reqs;
  e->free_reqs = w;
}

/* uv_try_write, then uv_write for the rest (copied unless `stable`). */
static void send_bytes(end *e, const char *p, size_t n, int stable) {
  uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
  int w = uv_try_write(&e->h.s, &b, 1);
  wreq *r;
  if (w == UV_EAGAIN || w == UV_ENOSYS) w = 0;
  UV_CHECK(w);
  if ((size_t)w == n) return;
  p += w;
  n -= (size_t)w;
  r = e->free_reqs;
  if (r != NULL) {
    e->free_reqs = r->next_free;
  } else {
    r = calloc(1, sizeof *r);
    if (r == NULL) sb_die("calloc", ENOMEM);
  }
  if (!stable) {
    r->copy = malloc(n);
    if (r->copy == NULL) sb_die("malloc", ENOMEM);
    memcpy(r->copy, p, n);
    p = r->copy;
  }
  b = uv_buf_init((char *)p, (unsigned)n);
  UV_CHECK(uv_write(&r->req, &e->h.s, &b, 1, pp_write_cb));
}

static void client_send(end *e) {
  issued++;
  if (opt.verify) sb_fill_message(e->msg, opt.size, e->round, e->conn);
  send_bytes(e, e->msg, opt.size, 1);
}

static void pp_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  end *e = (end *)s;
  if (n == 0) return;
  if (n < 0) {
    fprintf(stderr, "uv: read: %s\n", uv_strerror((int)n));
    exit(1);
  }
  if (!e->is_client) {
    send_bytes(e, buf->base, (size_t)n, 0); /* the echo */
    return;
  }
  if (e->recvd + (size_t)n > opt.size) {
    fprintf(stderr, "uv: more bytes than sent\n");
    exit(1);
  }
  if (opt.verify && memcmp(buf->base, e->msg + e->recvd, (size_t)n) != 0) {
    fprintf(stderr, "uv: wrong echo\n");
    exit(1);
  }
  e->recvd += (size_t)n;
  if (e->recvd < opt.size) return;
  e->recvd = 0;
  e->round++;
  if (++done == opt.n) {
    uv_stop(loop);
    return;
  }
  if (issued < opt.n) client_send(e);
}

static void run_pingpong(void) {
  int a[SB_MAX_CONNS], b[SB_MAX_CONNS];
  int c = opt.conns, i;
  end *ends = calloc((size_t)(2 * c), sizeof *ends);
  if (ends == NULL) sb_die("calloc", ENOMEM);
  sb_make_pairs(opt.transport, c, a, b);
  for (i = 0; i < 2 * c; i++) {
    end *e = &ends[i];
    e->is_client = i < c;
    e->conn = i % c;
    open_end(e, e->is_client ? a[e->conn] : b[e->conn]);
    if (e->is_client) {
      e->msg = malloc(opt.size);
      if (e->msg == NULL) sb_die("malloc", ENOMEM);
      sb_fill_message(e->msg, opt.size, 0, e->conn);
    }
    UV_CHECK(uv_read_start(&e->h.s, alloc_cb, pp_read_cb));
  }
  sb_clock t0 = sb_clock_now();
  for (i = 0; i < c && issued < opt.n; i++) client_send(&ends[i]);
  uv_run(loop, UV_RUN_DEFAULT);
  sb_clock t1 = sb_clock_now();
  if (done != opt.n) {
    fprintf(stderr, "uv: %llu round trips of %llu\n", (unsigned long long)done,
            (unsigned long long)opt.n);
    exit(1);
  }
  sb_report("uv", &opt, t0, t1, done);
}

/* ---- pump ------------------------------------------------------------------- */

static end pw, pr;
static uv_write_t **pump_free; /* unused requests */
static long n_free, n_out;     /* unused, outstanding */
static uint64_t written, got;
static sb_clock pump_t0;

static void pump_write_cb(uv_write_t *req, int status);

static int may_write(void) {
  if (written == opt.n) return 0;
  if (opt.q > 0) return n_free > 0;
  return pw.h.s.write_queue_size == 0;
}

static void pump_fill(void) {
  while (may_write()) {
    uint64_t left = opt.n - written;
    size_t len = left < SB_CHUNK ? (size_t)left : SB_CHUNK;
    uv_buf_t b = uv_buf_init((char *)sb_pattern + written % SB_CHUNK,
                             (unsigned)len);
    uv_write_t *req = n_free > 0 ? pump_free[--n_free] : malloc(sizeof *req);
    if (req == NULL) sb_die("malloc", ENOMEM);
    UV_CHECK(uv_write(req, &pw.h.s, &b, 1, pump_write_cb));
    n_out++;
    written += len;
  }
  if (written == opt.n && n_out == 0)
    uv_close((uv_handle_t *)&pw.h, NULL); /* all sent: the reader sees EOF */
}

static void pump_write_cb(uv_write_t *req, int status) {
  UV_CHECK(status);
  n_out--;
  if (opt.q > 0)
    pump_free[n_free++] = req;
  else
    free(req);
  pump_fill();
}

static void pump_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  if (n == 0) return;
  if (n == UV_EOF) {
    sb_clock t1 = sb_clock_now();
    if (got != opt.n) {
      fprintf(stderr, "uv: pump got %llu of %llu bytes\n",
              (unsigned long long)got, (unsigned long long)opt.n);
      exit(1);
    }
    sb_report("uv", &opt, pump_t0, t1, got);
    uv_close((uv_handle_t *)s, NULL);
    return;
  }
  if (n < 0) {
    fprintf(stderr, "uv: read: %s\n", uv_strerror((int)n));
    exit(1);
  }
  if (opt.verify) sb_pump_check(got, buf->base, (size_t)n);
  got += (uint64_t)n;
}

static void run_pump(void) {
  int wfd, rfd;
  long i;
  sb_make_pairs(opt.transport, 1, &wfd, &rfd);
  open_end(&pw, wfd);
  open_end(&pr, rfd);
  if (opt.q > 0) {
    uv_write_t *reqs = calloc((size_t)opt.q, sizeof *reqs);
    pump_free = calloc((size_t)opt.q, sizeof *pump_free);
    if (reqs == NULL || pump_free == NULL) sb_die("calloc", ENOMEM);
    for (i = 0; i < opt.q; i++) pump_free[n_free++] = &reqs[i];
  }
  UV_CHECK(uv_read_start(&pr.h.s, alloc_cb, pump_read_cb));
  pump_t0 = sb_clock_now();
  pump_fill();
  uv_run(loop, UV_RUN_DEFAULT);
  if (got != opt.n) exit(1);
}

int main(int argc, char **argv) {
  opt = sb_args(argc, argv, 0, NULL, 0, 4);
  sb_pattern_init();
  UV_CHECK(uv_loop_init(loop));
  if (opt.workload == SB_PINGPONG)
    run_pingpong();
  else
    run_pump();
  return 0;
}
