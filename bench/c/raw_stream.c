/*
 * raw_stream -- the stream benchmarks on bare epoll: the physical limit that
 * uv_stream.c (libuv) and ul_stream.c (libunixloop) are measured against.
 * Same options, fds, bytes and JSON line: see stream_common.h.
 *
 *   raw_stream pingpong [-t unix|tcp] [-c CONNS] [-s SIZE] [-n ROUNDTRIPS] [-V]
 *   raw_stream pump     [-t unix|tcp|pipe] [-n BYTES] [-q CHUNKS] [-V]
 *
 * One level-triggered epoll set, one epoll_wait per iteration, one read() of
 * up to 256 KiB per readable fd, writes straight to the kernel; EPOLLOUT is
 * watched only while a write is incomplete (ping-pong) or, for the pump's
 * writer, for the whole run (it always has something to write: write until
 * EAGAIN, then wait for EPOLLOUT; with -q N at most N chunks per
 * epoll_wait).  No per-event allocation, no callbacks
 * through tables: the least a loop can do.
 */
#define _GNU_SOURCE /* pipe2, accept4 */
#include <sys/epoll.h>

#include "stream_common.h"

typedef struct end {
  int fd;
  int is_client;
  int conn;
  unsigned events;      /* what is registered */
  char *out;            /* unsent bytes out[out_off, out_len) */
  size_t out_off, out_len, out_cap;
  /* client side */
  char *msg;
  size_t recvd;
  uint64_t round;
} end;

static sb_opts opt;
static int ep;
static char rbuf[SB_READ_SIZE];
static uint64_t issued, done;
static int finished;

static void set_events(end *e, unsigned ev) {
  struct epoll_event ee;
  if (e->events == ev) return;
  ee.events = ev;
  ee.data.ptr = e;
  SB_CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ee));
  e->events = ev;
}

static void add_fd(end *e, unsigned ev) {
  struct epoll_event ee;
  ee.events = ev;
  ee.data.ptr = e;
  SB_CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, e->fd, &ee));
  e->events = ev;
}

/* ---- ping-pong ------------------------------------------------------------- */

static void send_bytes(end *e, const char *p, size_t n) {
  if (e->out_off == e->out_len) {
    ssize_t w = write(e->fd, p, n);
    if (w < 0) {
      if (errno != EAGAIN) sb_die("write", errno);
      w = 0;
    }
    if ((size_t)w == n) return;
    p += w;
    n -= (size_t)w;
    e->out_off = e->out_len = 0;
  }
  if (e->out_len + n > e->out_cap) {
    fprintf(stderr, "raw: output overflow\n");
    exit(1);
  }
  memcpy(e->out + e->out_len, p, n);
  e->out_len += n;
  set_events(e, EPOLLIN | EPOLLOUT);
}

static void flush_out(end *e) {
  ssize_t w = write(e->fd, e->out + e->out_off, e->out_len - e->out_off);
  if (w < 0) {
    if (errno != EAGAIN) sb_die("write", errno);
    return;
  }
  e->out_off += (size_t)w;
  if (e->out_off == e->out_len) {
    e->out_off = e->out_len = 0;
    set_events(e, EPOLLIN);
  }
}

static void client_send(end *e) {
  issued++;
  if (opt.verify) sb_fill_message(e->msg, opt.size, e->round, e->conn);
  send_bytes(e, e->msg, opt.size);
}

static void on_readable(end *e) {
  ssize_t n = read(e->fd, rbuf, sizeof rbuf);
  if (n < 0) {
    if (errno == EAGAIN) return;
    sb_die("read", errno);
  }
  if (n == 0) {
    fprintf(stderr, "raw: unexpected EOF\n");
    exit(1);
  }
  if (!e->is_client) {
    send_bytes(e, rbuf, (size_t)n); /* the echo */
    return;
  }
  if (e->recvd + (size_t)n > opt.size) {
    fprintf(stderr, "raw: more bytes than sent\n");
    exit(1);
  }
  if (opt.verify && memcmp(rbuf, e->msg + e->recvd, (size_t)n) != 0) {
    fprintf(stderr, "raw: wrong echo\n");
    exit(1);
  }
  e->recvd += (size_t)n;
  if (e->recvd < opt.size) return;
  e->recvd = 0;
  e->round++;
  if (++done == opt.n) {
    finished = 1;
    return;
  }
  if (issued < opt.n) client_send(e);
}

static void run_pingpong(void) {
  int a[SB_MAX_CONNS], b[SB_MAX_CONNS];
  int c = opt.conns, i;
  end *ends = calloc((size_t)(2 * c), sizeof *ends);
  struct epoll_event evs[64];
  if (ends == NULL) sb_die("calloc", ENOMEM);
  sb_make_pairs(opt.transport, c, a, b);
  for (i = 0; i < 2 * c; i++) {
    end *e = &ends[i];
    e->is_client = i < c;
    e->conn = i % c;
    e->fd = e->is_client ? a[e->conn] : b[e->conn];
    e->out_cap = opt.size;
    e->out = malloc(opt.size);
    if (e->is_client) {
      e->msg = malloc(opt.size);
      if (e->msg == NULL) sb_die("malloc", ENOMEM);
      sb_fill_message(e->msg, opt.size, 0, e->conn);
    }
    if (e->out == NULL) sb_die("malloc", ENOMEM);
    add_fd(e, EPOLLIN);
  }
  sb_clock t0 = sb_clock_now();
  for (i = 0; i < c && issued < opt.n; i++) client_send(&ends[i]);
  while (!finished) {
    int k, nev = epoll_wait(ep, evs, 64, -1);
    if (nev < 0) {
      if (errno == EINTR) continue;
      sb_die("epoll_wait", errno);
    }
    for (k = 0; k < nev && !finished; k++) {
      end *e = evs[k].data.ptr;
      if ((evs[k].events & EPOLLOUT) && e->out_off < e->out_len) flush_out(e);
      if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(e);
    }
  }
  sb_clock t1 = sb_clock_now();
  sb_report("raw", &opt, t0, t1, done);
}

/* ---- pump ------------------------------------------------------------------- */

static void run_pump(void) {
  int wfd, rfd;
  end w, r;
  uint64_t written = 0, got = 0;
  struct epoll_event evs[8];
  sb_make_pairs(opt.transport, 1, &wfd, &rfd);
  memset(&w, 0, sizeof w);
  memset(&r, 0, sizeof r);
  w.fd = wfd;
  w.is_client = 1;
  r.fd = rfd;
  add_fd(&w, EPOLLOUT);
  add_fd(&r, EPOLLIN);
  sb_clock t0 = sb_clock_now();
  for (;;) {
    int k, nev = epoll_wait(ep, evs, 8, -1);
    if (nev < 0) {
      if (errno == EINTR) continue;
      sb_die("epoll_wait", errno);
    }
    for (k = 0; k < nev; k++) {
      end *e = evs[k].data.ptr;
      if (e == &w) {
        /* Write until EAGAIN (or -q chunks); EPOLLOUT (level-triggered)
         * says when to go on. */
        long chunks = 0;
        while (written < opt.n && (opt.q == 0 || chunks++ < opt.q)) {
          uint64_t left = opt.n - written;
          size_t len = left < SB_CHUNK ? (size_t)left : SB_CHUNK;
          ssize_t n = write(wfd, sb_pattern + written % SB_CHUNK, len);
          if (n < 0) {
            if (errno == EAGAIN) break;
            sb_die("write", errno);
          }
          written += (uint64_t)n;
        }
        if (written == opt.n) {
          SB_CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, wfd, NULL));
          close(wfd);
        }
      } else {
        /* Read until a read comes back short (at most 32 reads, as libuv). */
        int reads = 0;
      again:;
        ssize_t n = read(rfd, rbuf, sizeof rbuf);
        if (n < 0) {
          if (errno == EAGAIN) continue;
          sb_die("read", errno);
        }
        if (n == 0) {
          sb_clock t1 = sb_clock_now();
          if (got != opt.n) {
            fprintf(stderr, "raw: pump got %llu of %llu bytes\n",
                    (unsigned long long)got, (unsigned long long)opt.n);
            exit(1);
          }
          sb_report("raw", &opt, t0, t1, got);
          close(rfd);
          return;
        }
        if (opt.verify) sb_pump_check(got, rbuf, (size_t)n);
        got += (uint64_t)n;
        if ((size_t)n == sizeof rbuf && ++reads < 32) goto again;
      }
    }
  }
}

int main(int argc, char **argv) {
  opt = sb_args(argc, argv, 0, NULL, 0, 0);
  sb_pattern_init();
  ep = epoll_create1(EPOLL_CLOEXEC);
  SB_CHECK(ep);
  if (opt.workload == SB_PINGPONG)
    run_pingpong();
  else
    run_pump();
  close(ep);
  return 0;
}
