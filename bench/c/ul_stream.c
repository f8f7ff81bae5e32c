/*
 * ul_stream -- the stream benchmarks on libunixloop (raw_stream.c is the
 * bare-epoll limit, uv_stream.c the libuv side).  Same options, fds, bytes
 * and JSON line: see stream_common.h.  Uses only include/unixloop.h, and of
 * it only the loop and ul_stream_*: the fds are made before the loop starts.
 *
 *   ul_stream pingpong [-t unix|tcp] [-c CONNS] [-s SIZE] [-n ROUNDTRIPS] [-V]
 *   ul_stream pump     [-t unix|tcp|pipe] [-n BYTES] [-q CHUNKS] [-V] [-H HIGH]
 *
 * Both ends are ul_stream_open()ed with a plain (asyncio Protocol-like)
 * protocol: data_received gets the loop's 256 KiB read buffer.  The echo
 * is ul_stream_write(data) from data_received, as an asyncio echo server.
 * The clock starts in the last connection_made (ul_stream_open defers it to
 * the next iteration).
 *
 * Pump: the writer writes 64 KiB chunks of a static buffer with
 * ul_stream_write_ref() (what the kernel does not take is queued by
 * reference, as libuv's uv_write() does) while not paused; pause_writing /
 * resume_writing (the water marks) stop and restart it.  -q N (default 0:
 * no limit) writes at most N chunks per turn, then goes on from a
 * ul_loop_call_soon() callback.  The last chunk is followed by
 * ul_stream_close(), which flushes, so the reader sees EOF.  -H HIGH sets the high-water mark (ul_stream_set_write_buffer_
 * limits(HIGH, -1), low = HIGH / 4); default -1: asyncio's 64 KiB / 16 KiB.
 * -H 0 pauses as soon as anything is buffered and resumes once the buffer
 * is empty.
 */
#define _GNU_SOURCE /* pipe2, accept4 */
#include "unixloop.h"
#include "stream_common.h"

typedef struct end {
  ul_stream *s;
  int is_client;
  int conn;
  /* client side */
  char *msg;
  size_t recvd;
  uint64_t round;
} end;

static sb_opts opt;
static ul_loop *loop;
static uint64_t issued, done;
static int made, to_make;
static end *ends;
static sb_clock t0;

/* ---- ping-pong ------------------------------------------------------------- */

static void client_send(end *e) {
  issued++;
  if (opt.verify) sb_fill_message(e->msg, opt.size, e->round, e->conn);
  SB_CHECK(ul_stream_write(e->s, e->msg, opt.size));
}

static void pp_made(ul_stream *s, void *ctx) {
  int i;
  (void)s;
  (void)ctx;
  if (++made < to_make) return;
  t0 = sb_clock_now();
  for (i = 0; i < opt.conns && issued < opt.n; i++) client_send(&ends[i]);
}

static void pp_data(ul_stream *s, const char *data, size_t n, void *ctx) {
  end *e = ctx;
  if (!e->is_client) {
    SB_CHECK(ul_stream_write(s, data, n)); /* the echo */
    return;
  }
  if (e->recvd + n > opt.size) {
    fprintf(stderr, "ul: more bytes than sent\n");
    exit(1);
  }
  if (opt.verify && memcmp(data, e->msg + e->recvd, n) != 0) {
    fprintf(stderr, "ul: wrong echo\n");
    exit(1);
  }
  e->recvd += n;
  if (e->recvd < opt.size) return;
  e->recvd = 0;
  e->round++;
  if (++done == opt.n) {
    ul_loop_stop(loop);
    return;
  }
  if (issued < opt.n) client_send(e);
}

static void pp_lost(ul_stream *s, int err, void *ctx) {
  (void)s;
  (void)ctx;
  if (err != 0 && err != -ECANCELED) sb_die("ul: connection_lost", err);
}

static const ul_stream_protocol pp_proto = {
    .connection_made = pp_made,
    .data_received = pp_data,
    .connection_lost = pp_lost,
};

static void run_pingpong(void) {
  int a[SB_MAX_CONNS], b[SB_MAX_CONNS];
  int c = opt.conns, i;
  ends = calloc((size_t)(2 * c), sizeof *ends);
  if (ends == NULL) sb_die("calloc", ENOMEM);
  sb_make_pairs(opt.transport, c, a, b);
  to_make = 2 * c;
  for (i = 0; i < 2 * c; i++) {
    end *e = &ends[i];
    e->is_client = i < c;
    e->conn = i % c;
    if (e->is_client) {
      e->msg = malloc(opt.size);
      if (e->msg == NULL) sb_die("malloc", ENOMEM);
      sb_fill_message(e->msg, opt.size, 0, e->conn);
    }
    SB_CHECK(ul_stream_open(loop, e->is_client ? a[e->conn] : b[e->conn],
                            &pp_proto, e, &e->s));
  }
  SB_CHECK(ul_loop_run(loop));
  sb_clock t1 = sb_clock_now();
  if (done != opt.n) {
    fprintf(stderr, "ul: %llu round trips of %llu\n", (unsigned long long)done,
            (unsigned long long)opt.n);
    exit(1);
  }
  sb_report("ul", &opt, t0, t1, done);
}

/* ---- pump ------------------------------------------------------------------- */

static ul_stream *pw;
static int paused, closed, turn_due;
static uint64_t written, got;

static void pump_fill(void);

static void pump_turn(ul_loop *l, void *arg, int status) {
  (void)l;
  (void)arg;
  turn_due = 0;
  if (status == 0) pump_fill();
}

static void release_none(void *arg) {
  (void)arg; /* sb_pattern is static */
}

static void pump_fill(void) {
  long chunks = 0;
  while (!paused && written < opt.n) {
    if (opt.q > 0 && chunks++ == opt.q) {
      if (!turn_due) {
        turn_due = 1;
        SB_CHECK(ul_loop_call_soon(loop, pump_turn, NULL));
      }
      return;
    }
    uint64_t left = opt.n - written;
    size_t len = left < SB_CHUNK ? (size_t)left : SB_CHUNK;
    SB_CHECK(ul_stream_write_ref(pw, sb_pattern + written % SB_CHUNK, len,
                                 release_none, NULL));
    written += len;
  }
  if (written == opt.n && !closed) {
    closed = 1;
    SB_CHECK(ul_stream_close(pw)); /* flushes, then the reader sees EOF */
  }
}

static void w_made(ul_stream *s, void *ctx) {
  (void)ctx;
  if (opt.extra >= 0)
    SB_CHECK(ul_stream_set_write_buffer_limits(s, (ssize_t)opt.extra, -1));
  t0 = sb_clock_now();
  pump_fill();
}

static void w_pause(ul_stream *s, void *ctx) {
  (void)s;
  (void)ctx;
  paused = 1;
}

static void w_resume(ul_stream *s, void *ctx) {
  (void)s;
  (void)ctx;
  paused = 0;
  pump_fill();
}

static void w_data(ul_stream *s, const char *data, size_t n, void *ctx) {
  (void)s;
  (void)data;
  (void)n;
  (void)ctx;
  fprintf(stderr, "ul: the writer received data\n");
  exit(1);
}

static void r_data(ul_stream *s, const char *data, size_t n, void *ctx) {
  (void)s;
  (void)ctx;
  if (opt.verify) sb_pump_check(got, data, n);
  got += n;
}

static int r_eof(ul_stream *s, void *ctx) {
  (void)s;
  (void)ctx;
  sb_clock t1 = sb_clock_now();
  if (got != opt.n) {
    fprintf(stderr, "ul: pump got %llu of %llu bytes\n",
            (unsigned long long)got, (unsigned long long)opt.n);
    exit(1);
  }
  sb_report("ul", &opt, t0, t1, got);
  return 0; /* close */
}

static int lost;
static void pump_lost(ul_stream *s, int err, void *ctx) {
  (void)s;
  (void)ctx;
  if (err != 0) sb_die("ul: connection_lost", err);
  if (++lost == 2) ul_loop_stop(loop);
}

static const ul_stream_protocol writer_proto = {
    .connection_made = w_made,
    .data_received = w_data,
    .connection_lost = pump_lost,
    .pause_writing = w_pause,
    .resume_writing = w_resume,
};

static const ul_stream_protocol reader_proto = {
    .data_received = r_data,
    .eof_received = r_eof,
    .connection_lost = pump_lost,
};

static void run_pump(void) {
  int wfd, rfd;
  ul_stream *rs;
  sb_make_pairs(opt.transport, 1, &wfd, &rfd);
  SB_CHECK(ul_stream_open(loop, rfd, &reader_proto, NULL, &rs));
  SB_CHECK(ul_stream_open(loop, wfd, &writer_proto, NULL, &pw));
  SB_CHECK(ul_loop_run(loop));
  if (got != opt.n || lost != 2) {
    fprintf(stderr, "ul: pump did not finish\n");
    exit(1);
  }
}

int main(int argc, char **argv) {
  opt = sb_args(argc, argv, 'H', " [-H HIGH]", -1, 0);
  sb_pattern_init();
  SB_CHECK(ul_loop_new(&loop, NULL));
  if (opt.workload == SB_PINGPONG)
    run_pingpong();
  else
    run_pump();
  SB_CHECK(ul_loop_close(loop));
  return 0;
}
