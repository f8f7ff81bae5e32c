/* The stream transport (ul_stream_*): asyncio's socket transport in C.
 *
 * The fds are socketpair(AF_UNIX, SOCK_STREAM) ends and pipes; the peer end
 * stays a raw fd driven by the test (directly, or through fd watchers on the
 * same loop).  Every protocol callback is recorded in a trace string, one
 * letter per event (consecutive data events merged):
 *
 *   M connection_made   D data_received / buffer_updated   E eof_received
 *   L connection_lost   P pause_writing                    R resume_writing
 *
 * and the recorder itself checks the life-cycle rules: connection_made
 * first and once, nothing after connection_lost. */
#include "test.h"

#include <limits.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define MB (1024 * 1024)

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  ASSERT_NE(-1, fl);
  ASSERT_OK(fcntl(fd, F_SETFL, fl | O_NONBLOCK));
}

/* A blocking socketpair (the stream must make its end non-blocking); the
 * peer end sv[1] is made non-blocking for the tests' watchers. */
static void test_socketpair(int sv[2]) {
  ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  set_nonblock(sv[1]);
}

/* A pattern that shows lost, duplicated and reordered bytes. */
static unsigned char pattern_at(size_t i) {
  return (unsigned char)(((uint32_t)i * 2654435761u) >> 24);
}

static char *pattern_new(size_t len) {
  char *p = malloc(len);
  ASSERT_NOT_NULL(p);
  for (size_t i = 0; i < len; i++)
    p[i] = (char)pattern_at(i);
  return p;
}

/* Asserts that buf[0, len) is the pattern from offset 0. */
static void check_pattern(const char *buf, size_t len) {
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)buf[i] != pattern_at(i))
      UL_TEST_FAIL_("pattern mismatch at byte %zu of %zu\n", i, len);
}

static void append(char **buf, size_t *len, size_t *cap, const char *data,
                   size_t n) {
  if (*len + n > *cap) {
    size_t c = *cap ? *cap : 4096;
    while (c < *len + n)
      c *= 2;
    *buf = realloc(*buf, c);
    ASSERT_NOT_NULL(*buf);
    *cap = c;
  }
  memcpy(*buf + *len, data, n);
  *len += n;
}

/* Runs iterations (blocking) until `cond` holds; the runner's deadline
 * fails a test that waits forever. */
#define RUN_UNTIL(loop, cond)                                              \
  do {                                                                     \
    while (!(cond))                                                        \
      ASSERT_OK(ul_loop_run_once((loop), 1));                              \
  } while (0)

/* Runs n non-blocking iterations. */
static void spin(ul_loop *loop, int n) {
  for (int i = 0; i < n; i++)
    ASSERT_OK(ul_loop_run_once(loop, 0));
}

/* ------------------------------------------------------------------------ */
/* The recording protocol                                                   */

/* 1 while the test is inside a ul_stream_* call made with IN_CALL. */
static int in_call;
#define IN_CALL(expr) \
  __extension__({ in_call++; __typeof__(expr) r__ = (expr); in_call--; r__; })

struct conn {
  ul_loop *loop;
  ul_stream *s;
  char trace[128];
  int ntrace;
  int made, data_calls, eofs, lost, pauses, resumes;
  int lost_err;
  int inside_calls;         /* callbacks run from inside a ul_stream_* call */
  char *rbuf;               /* every byte received */
  size_t rlen, rcap;
  size_t wbuf_at_pause, wbuf_at_resume, wbuf_at_lost;

  /* behaviour */
  int eof_ret;
  int close_in_made, abort_in_made, write_in_made;
  int close_in_data, abort_in_data, big_write_in_data;
  int close_in_pause, abort_in_pause;
  const char *write_in_resume; /* written (with its NUL) in resume_writing */
  int abort_in_lost;        /* call ul_stream_abort inside connection_lost */
  int peer_write_in_data;   /* fd: write "def" to it during data_received */
  const char *big;          /* for big_write_in_data */
  size_t big_len;

  /* buffered protocol */
  char bbuf[2][1000];
  size_t bsize;
  char *last_buf;
  int gets;
  int empties;         /* buffer_updated(0): a read into last_buf found nothing */
  size_t min_hint;
};

static void conn_init(struct conn *c, ul_loop *loop) {
  memset(c, 0, sizeof *c);
  c->loop = loop;
  c->peer_write_in_data = -1;
  c->min_hint = (size_t)-1;
}

static void conn_free(struct conn *c) {
  free(c->rbuf);
  c->rbuf = NULL;
}

static void rec(struct conn *c, ul_stream *s, char ev) {
  if (c->lost)
    UL_TEST_FAIL_("callback '%c' after connection_lost (trace %s)\n", ev,
                  c->trace);
  if (ev == 'M')
    ASSERT_EQ(0, c->made);
  else if (!c->made && !(ev == 'L' && c->lost_err == -ECANCELED))
    UL_TEST_FAIL_("callback '%c' before connection_made\n", ev);
  if (c->s != NULL)
    ASSERT_PTR_EQ(c->s, s);
  if (in_call)
    c->inside_calls++;
  if (ev == 'D' && c->ntrace > 0 && c->trace[c->ntrace - 1] == 'D')
    return;
  ASSERT_LT(c->ntrace, (int)sizeof c->trace - 1);
  c->trace[c->ntrace++] = ev;
  c->trace[c->ntrace] = '\0';
}

static void on_made(ul_stream *s, void *ctx) {
  struct conn *c = ctx;
  rec(c, s, 'M');
  c->made = 1;
  if (c->write_in_made)
    ASSERT_OK(ul_stream_write(s, "made", 4));
  if (c->close_in_made)
    ASSERT_OK(ul_stream_close(s));
  if (c->abort_in_made)
    ASSERT_OK(ul_stream_abort(s));
}

static void after_data(struct conn *c, ul_stream *s) {
  c->data_calls++;
  if (c->peer_write_in_data >= 0)
    ASSERT_EQ(3, write(c->peer_write_in_data, "def", 3));
  if (c->big_write_in_data) {
    ASSERT_OK(ul_stream_write(s, c->big, c->big_len));
    ASSERT_GT(ul_stream_get_write_buffer_size(s), 0);
  }
  if (c->close_in_data) {
    ASSERT_OK(ul_stream_close(s));
    ASSERT_EQ(1, ul_stream_is_closing(s));
    ASSERT_EQ(0, ul_stream_is_reading(s));
    ASSERT_EQ(-EPIPE, ul_stream_write(s, "x", 1));
    ASSERT_EQ(-ESHUTDOWN, ul_stream_pause_reading(s));
  }
  if (c->abort_in_data) {
    ASSERT_OK(ul_stream_abort(s));
    ASSERT_EQ(0, ul_stream_get_write_buffer_size(s));
    ASSERT_EQ(-EPIPE, ul_stream_write(s, "x", 1));
  }
}

static void on_data(ul_stream *s, const char *data, size_t len, void *ctx) {
  struct conn *c = ctx;
  rec(c, s, 'D');
  ASSERT_GT(len, 0);
  append(&c->rbuf, &c->rlen, &c->rcap, data, len);
  after_data(c, s);
}

static char *on_get_buffer(ul_stream *s, size_t hint, size_t *len,
                           void *ctx) {
  struct conn *c = ctx;
  ASSERT_PTR_EQ(c->s, s);
  ASSERT_EQ(0, c->lost);
  ASSERT_NOT_NULL(len);
  ASSERT_GT(hint, 0);
  if (hint < c->min_hint)
    c->min_hint = hint;
  /* Alternate between two buffers: buffer_updated must find the bytes in
   * the one handed out last. */
  c->last_buf = c->bbuf[c->gets % 2];
  c->gets++;
  memset(c->last_buf, 0, sizeof c->bbuf[0]);
  *len = c->bsize;
  return c->last_buf;
}

static void on_buffer_updated(ul_stream *s, size_t n, void *ctx) {
  struct conn *c = ctx;
  rec(c, s, 'D');
  ASSERT_GT(n, 0);
  ASSERT_LE(n, c->bsize);
  ASSERT_NOT_NULL(c->last_buf);
  append(&c->rbuf, &c->rlen, &c->rcap, c->last_buf, n);
  c->last_buf = NULL;
  after_data(c, s);
}

static int on_eof(ul_stream *s, void *ctx) {
  struct conn *c = ctx;
  rec(c, s, 'E');
  c->eofs++;
  return c->eof_ret;
}

static void on_lost(ul_stream *s, int err, void *ctx) {
  struct conn *c = ctx;
  c->lost_err = err; /* before rec(): -ECANCELED may come without 'M' */
  rec(c, s, 'L');
  c->lost++;
  c->wbuf_at_lost = ul_stream_get_write_buffer_size(s);
  /* The stream is still usable here, and closed. */
  ASSERT_EQ(1, ul_stream_is_closing(s));
  ASSERT_EQ(-EPIPE, ul_stream_write(s, "x", 1));
  ASSERT_OK(ul_stream_close(s));
  if (c->abort_in_lost)
    ASSERT_OK(ul_stream_abort(s));
}

static void on_pause(ul_stream *s, void *ctx) {
  struct conn *c = ctx;
  rec(c, s, 'P');
  c->pauses++;
  c->wbuf_at_pause = ul_stream_get_write_buffer_size(s);
  if (c->close_in_pause)
    ASSERT_OK(ul_stream_close(s));
  if (c->abort_in_pause)
    ASSERT_OK(ul_stream_abort(s));
}

static void on_resume(ul_stream *s, void *ctx) {
  struct conn *c = ctx;
  rec(c, s, 'R');
  c->resumes++;
  c->wbuf_at_resume = ul_stream_get_write_buffer_size(s);
  if (c->write_in_resume != NULL)
    ASSERT_OK(ul_stream_write(s, c->write_in_resume,
                              strlen(c->write_in_resume) + 1));
}

static const ul_stream_protocol proto = {
    .connection_made = on_made,
    .data_received = on_data,
    .eof_received = on_eof,
    .connection_lost = on_lost,
    .pause_writing = on_pause,
    .resume_writing = on_resume,
};

static const ul_stream_protocol buffered_proto = {
    .connection_made = on_made,
    .get_buffer = on_get_buffer,
    .buffer_updated = on_buffer_updated,
    .eof_received = on_eof,
    .connection_lost = on_lost,
    .pause_writing = on_pause,
    .resume_writing = on_resume,
};

/* A protocol of both kinds is told when a read into its buffer brought
 * nothing; a buffered one never is (on_buffer_updated checks). */
static void on_mixed_buffer_updated(ul_stream *s, size_t n, void *ctx) {
  struct conn *c = ctx;
  if (n > 0) {
    on_buffer_updated(s, n, ctx);
    return;
  }
  ASSERT_NOT_NULL(c->last_buf);
  c->last_buf = NULL;
  c->empties++;
}

/* Both kinds: small reads go to data_received, big ones to the buffer. */
static const ul_stream_protocol mixed_proto = {
    .connection_made = on_made,
    .data_received = on_data,
    .get_buffer = on_get_buffer,
    .buffer_updated = on_mixed_buffer_updated,
    .eof_received = on_eof,
    .connection_lost = on_lost,
};

static void conn_open(struct conn *c, int fd, const ul_stream_protocol *p) {
  ASSERT_OK(ul_stream_open(c->loop, fd, p, c, &c->s));
  ASSERT_NOT_NULL(c->s);
  ASSERT_STR_EQ("", c->trace); /* nothing from inside ul_stream_open */
}

/* ------------------------------------------------------------------------ */
/* The peer: a raw fd read or written through watchers on the same loop.   */

struct peer {
  ul_loop *loop;
  int fd;
  char *buf; /* what it read */
  size_t len, cap;
  int eof;
  int err;   /* errno of a failed read */
  /* writing */
  const char *out;
  size_t out_len, out_off;
  int close_after_write;
  int written;
};

static void peer_init(struct peer *p, ul_loop *loop, int fd) {
  memset(p, 0, sizeof *p);
  p->loop = loop;
  p->fd = fd;
}

static void peer_read_cb(ul_loop *loop, int fd, int events, void *arg) {
  struct peer *p = arg;
  char tmp[65536];
  (void)events;
  for (;;) {
    ssize_t n = read(fd, tmp, sizeof tmp);
    if (n > 0) {
      append(&p->buf, &p->len, &p->cap, tmp, (size_t)n);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return;
    if (n < 0)
      p->err = errno;
    p->eof = 1;
    ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
    return;
  }
}

static void peer_start_reading(struct peer *p) {
  ASSERT_OK(ul_loop_add_reader(p->loop, p->fd, peer_read_cb, p));
}

static void peer_write_cb(ul_loop *loop, int fd, int events, void *arg) {
  struct peer *p = arg;
  (void)events;
  while (p->out_off < p->out_len) {
    ssize_t n = write(fd, p->out + p->out_off, p->out_len - p->out_off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      ASSERT_EQ(EAGAIN, errno);
      return;
    }
    p->out_off += (size_t)n;
  }
  ASSERT_EQ(1, ul_loop_remove_writer(loop, fd));
  p->written = 1;
  if (p->close_after_write) {
    test_close(fd);
    p->fd = -1;
  }
}

static void peer_start_writing(struct peer *p, const char *data, size_t len,
                               int close_after) {
  p->out = data;
  p->out_len = len;
  p->out_off = 0;
  p->close_after_write = close_after;
  ASSERT_OK(ul_loop_add_writer(p->loop, p->fd, peer_write_cb, p));
}

/* Reads exactly what is there now (the peer fd is non-blocking). */
static size_t read_now(int fd, char *buf, size_t cap) {
  ssize_t n;
  do
    n = read(fd, buf, cap);
  while (n < 0 && errno == EINTR);
  ASSERT_GE(n, 0);
  return (size_t)n;
}

/* Fills fd's send path until write() would block; returns the byte count. */
static size_t fill_until_full(int fd) {
  char buf[65536];
  size_t total = 0;
  memset(buf, 'f', sizeof buf);
  for (size_t chunk = sizeof buf; chunk > 0; chunk /= 2) {
    for (;;) {
      ssize_t n = write(fd, buf, chunk);
      if (n < 0) {
        ASSERT_EQ(EAGAIN, errno);
        break;
      }
      total += (size_t)n;
    }
  }
  return total;
}

/* ------------------------------------------------------------------------ */
/* connection_made and reading                                              */

TEST_IMPL(stream_made_before_data) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];

  conn_init(&c, loop);
  test_socketpair(sv);
  ASSERT_EQ(5, write(sv[1], "hello", 5)); /* already there at open */
  ASSERT_EQ(0, fcntl(sv[0], F_GETFL) & O_NONBLOCK);
  conn_open(&c, sv[0], &proto);
  ASSERT_NE(0, fcntl(sv[0], F_GETFL) & O_NONBLOCK); /* set by open */
  ASSERT_EQ(sv[0], ul_stream_fileno(c.s));
  ASSERT_PTR_EQ(loop, ul_stream_get_loop(c.s));
  ASSERT_PTR_EQ(&c, ul_stream_get_context(c.s));
  ASSERT_EQ(1, ul_stream_is_reading(c.s));
  ASSERT_EQ(0, ul_stream_is_closing(c.s));
  ASSERT_EQ(1, ul_stream_can_write_eof(c.s));

  /* connection_made in the next iteration; reading starts after it. */
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_STR_EQ("M", c.trace);
  RUN_UNTIL(loop, c.rlen >= 5);
  ASSERT_EQ(5, c.rlen);
  ASSERT_OK(memcmp(c.rbuf, "hello", 5));
  ASSERT_STR_EQ("MD", c.trace);

  /* The peer closes: EOF, then connection_lost(0); the fd is closed. */
  test_close(sv[1]);
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("MDEL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(1, c.eofs);
  ASSERT_EQ(0, test_fd_is_open(sv[0]));
  spin(loop, 3);
  ASSERT_EQ(1, c.lost);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

/* 1 MB from the peer arrives whole and in order (socketpair, then pipe). */
static void read_1mb(int stream_fd, int peer_fd, const ul_stream_protocol *p,
                     size_t bsize) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer pw;
  char *data = pattern_new(MB);

  conn_init(&c, loop);
  c.bsize = bsize;
  peer_init(&pw, loop, peer_fd);
  conn_open(&c, stream_fd, p);
  peer_start_writing(&pw, data, MB, 1);
  RUN_UNTIL(loop, c.lost);
  ASSERT_EQ(1, pw.written);
  ASSERT_EQ(MB, c.rlen);
  check_pattern(c.rbuf, c.rlen);
  ASSERT_STR_EQ("MDEL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_GT(c.data_calls, 1);
  CLOSE_LOOP(loop);
  free(data);
  conn_free(&c);
}

TEST_IMPL(stream_read_1mb) {
  int sv[2], fds[2];

  test_socketpair(sv);
  read_1mb(sv[0], sv[1], &proto, 0);
  test_pipe(fds);
  read_1mb(fds[0], fds[1], &proto, 0);
  return 0;
}

TEST_IMPL(stream_buffered_protocol) {
  int sv[2], fds[2];
  ul_loop *loop = test_loop_new();
  struct conn c;

  /* 1 MB through a 1000-byte protocol buffer. */
  test_socketpair(sv);
  read_1mb(sv[0], sv[1], &buffered_proto, 1000);
  test_pipe(fds);
  read_1mb(fds[0], fds[1], &buffered_proto, 1000);

  /* A one-byte buffer: each byte lands in the buffer handed out. */
  conn_init(&c, loop);
  c.bsize = 1;
  test_socketpair(sv);
  conn_open(&c, sv[0], &buffered_proto);
  ASSERT_EQ(3, write(sv[1], "xyz", 3));
  RUN_UNTIL(loop, c.rlen == 3);
  ASSERT_OK(memcmp(c.rbuf, "xyz", 3));
  ASSERT_EQ(3, c.data_calls);
  ASSERT_GE(c.gets, 3);
  ASSERT_GT(c.min_hint, 0);
  test_close(sv[1]);
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("MDEL", c.trace);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Writing and flow control                                                 */

TEST_IMPL(stream_small_write_immediate) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];
  char buf[64];

  conn_init(&c, loop);
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  /* Before connection_made already: written at once. */
  ASSERT_OK(ul_stream_write(c.s, "early", 5));
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(c.s));
  ASSERT_EQ(5, read_now(sv[1], buf, sizeof buf));
  ASSERT_OK(memcmp(buf, "early", 5));

  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_stream_write(c.s, "ping", 4));
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(c.s));
  ASSERT_EQ(4, read_now(sv[1], buf, sizeof buf));
  ASSERT_OK(memcmp(buf, "ping", 4));
  ASSERT_OK(ul_stream_write(c.s, NULL, 0)); /* empty: nothing */
  ASSERT_OK(ul_stream_write(c.s, "", 0));
  ASSERT_EQ(-1, read(sv[1], buf, sizeof buf));
  ASSERT_EQ(EAGAIN, errno);

  /* close with an empty buffer: connection_lost(0) in the next iteration,
   * not from inside close. */
  ASSERT_OK(ul_stream_close(c.s));
  ASSERT_STR_EQ("M", c.trace);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_STR_EQ("ML", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(0, read_now(sv[1], buf, sizeof buf)); /* EOF at the peer */
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

TEST_IMPL(stream_big_write_flow_control) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer pr;
  int sv[2];
  size_t len = 8 * MB;
  char *data = pattern_new(len);
  size_t low, high;

  conn_init(&c, loop);
  test_socketpair(sv);
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ul_stream_get_write_buffer_limits(c.s, &low, &high);
  ASSERT_EQ(UL_STREAM_HIGH_WATER, high);
  ASSERT_EQ(UL_STREAM_HIGH_WATER / 4, low);

  /* The peer does not read: part is sent, the rest queued. */
  ASSERT_OK(ul_stream_write(c.s, data, len));
  size_t queued = ul_stream_get_write_buffer_size(c.s);
  ASSERT_GT(queued, high);
  ASSERT_LT(queued, len);
  spin(loop, 3);
  ASSERT_STR_EQ("MP", c.trace);
  ASSERT_EQ(1, c.pauses);
  ASSERT_GT(c.wbuf_at_pause, high);
  ASSERT_EQ(queued, ul_stream_get_write_buffer_size(c.s));

  /* The peer drains: resume once, at or below the low-water mark. */
  peer_start_reading(&pr);
  RUN_UNTIL(loop, pr.len == len);
  ASSERT_STR_EQ("MPR", c.trace);
  ASSERT_EQ(1, c.pauses);
  ASSERT_EQ(1, c.resumes);
  ASSERT_LE(c.wbuf_at_resume, low);
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(c.s));
  check_pattern(pr.buf, pr.len);

  /* A second burst pauses again. */
  ASSERT_OK(ul_stream_write(c.s, data, len));
  RUN_UNTIL(loop, pr.len == 2 * len);
  ASSERT_STR_EQ("MPRPR", c.trace);
  ASSERT_OK(memcmp(pr.buf + len, data, len));

  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost && pr.eof);
  ASSERT_STR_EQ("MPRPRL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(2 * len, pr.len);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(data);
  free(pr.buf);
  conn_free(&c);
  return 0;
}

TEST_IMPL(stream_write_buffer_limits) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer pr;
  int sv[2];
  size_t low = 1, high = 1;

  conn_init(&c, loop);
  test_socketpair(sv);
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);

  ul_stream_get_write_buffer_limits(c.s, &low, &high);
  ASSERT_EQ(65536, high);
  ASSERT_EQ(16384, low);
  ul_stream_get_write_buffer_limits(c.s, NULL, NULL); /* no crash */

  ASSERT_OK(ul_stream_set_write_buffer_limits(c.s, 1000, -1));
  ul_stream_get_write_buffer_limits(c.s, &low, &high);
  ASSERT_EQ(1000, high);
  ASSERT_EQ(250, low);
  ASSERT_OK(ul_stream_set_write_buffer_limits(c.s, -1, 1000));
  ul_stream_get_write_buffer_limits(c.s, &low, &high);
  ASSERT_EQ(4000, high);
  ASSERT_EQ(1000, low);
  ASSERT_OK(ul_stream_set_write_buffer_limits(c.s, -1, -1));
  ul_stream_get_write_buffer_limits(c.s, &low, &high);
  ASSERT_EQ(65536, high);
  ASSERT_EQ(16384, low);
  ASSERT_OK(ul_stream_set_write_buffer_limits(c.s, 500, 500));
  ul_stream_get_write_buffer_limits(c.s, &low, &high);
  ASSERT_EQ(500, high);
  ASSERT_EQ(500, low);
  ASSERT_OK(ul_stream_set_write_buffer_limits(c.s, 0, 0));
  ul_stream_get_write_buffer_limits(c.s, &low, &high);
  ASSERT_EQ(0, high);
  ASSERT_EQ(0, low);
  /* low > high: refused, the limits stay. */
  ASSERT_EQ(-EINVAL, ul_stream_set_write_buffer_limits(c.s, 100, 200));
  ASSERT_EQ(-EINVAL, ul_stream_set_write_buffer_limits(NULL, -1, -1));
  ul_stream_get_write_buffer_limits(c.s, &low, &high);
  ASSERT_EQ(0, high);
  ASSERT_EQ(0, low);
  ASSERT_OK(ul_stream_set_write_buffer_limits(c.s, -1, -1));

  RUN_UNTIL(loop, c.made);
  /* Fill the socket so that the stream's writes are queued whole. */
  size_t filled = fill_until_full(sv[0]);
  ASSERT_OK(ul_stream_write(c.s, "0123456789", 10));
  ASSERT_EQ(10, ul_stream_get_write_buffer_size(c.s));
  spin(loop, 2);
  ASSERT_STR_EQ("M", c.trace); /* 10 <= 64 KiB: no pause */

  /* Lowering the high-water mark under the queued size pauses. */
  ASSERT_OK(ul_stream_set_write_buffer_limits(c.s, 5, 2));
  spin(loop, 2);
  ASSERT_STR_EQ("MP", c.trace);
  ASSERT_EQ(1, c.pauses);
  ASSERT_OK(ul_stream_set_write_buffer_limits(c.s, 4, 1));
  ASSERT_OK(ul_stream_write(c.s, "abcdefghij", 10));
  spin(loop, 2);
  ASSERT_EQ(1, c.pauses); /* already paused: no second call */

  peer_start_reading(&pr);
  RUN_UNTIL(loop, pr.len == filled + 20);
  ASSERT_STR_EQ("MPR", c.trace);
  ASSERT_EQ(0, c.wbuf_at_resume);
  ASSERT_OK(memcmp(pr.buf + filled, "0123456789abcdefghij", 20));

  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[1]));
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(pr.buf);
  conn_free(&c);
  return 0;
}

TEST_IMPL(stream_writev) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer pr;
  int sv[2];
  char buf[64];
  size_t len = 2 * MB;
  char *data = pattern_new(len);

  conn_init(&c, loop);
  test_socketpair(sv);
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);

  struct iovec small[4] = {
      {.iov_base = "ab", .iov_len = 2},
      {.iov_base = "", .iov_len = 0},
      {.iov_base = "cde", .iov_len = 3},
      {.iov_base = "f", .iov_len = 1},
  };
  ASSERT_OK(ul_stream_writev(c.s, small, 4));
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(c.s));
  ASSERT_EQ(6, read_now(sv[1], buf, sizeof buf));
  ASSERT_OK(memcmp(buf, "abcdef", 6));
  ASSERT_OK(ul_stream_writev(c.s, small, 0));
  ASSERT_OK(ul_stream_writev(c.s, NULL, 0));
  ASSERT_EQ(-EINVAL, ul_stream_writev(c.s, NULL, 1));
  ASSERT_EQ(-EINVAL, ul_stream_writev(c.s, small, -1));
  ASSERT_EQ(-EINVAL, ul_stream_writev(NULL, small, 4));

  /* Big iovecs of uneven sizes, partly queued, then a second writev
   * appended to the queue: the peer gets them in order. */
  struct iovec big[5] = {
      {.iov_base = data, .iov_len = 100},
      {.iov_base = data + 100, .iov_len = 700000},
      {.iov_base = data + 700100, .iov_len = 0},
      {.iov_base = data + 700100, .iov_len = 300001},
      {.iov_base = data + 1000101, .iov_len = MB - 1000101},
  };
  ASSERT_OK(ul_stream_writev(c.s, big, 5));
  ASSERT_GT(ul_stream_get_write_buffer_size(c.s), 0);
  struct iovec rest[2] = {
      {.iov_base = data + MB, .iov_len = 3},
      {.iov_base = data + MB + 3, .iov_len = MB - 3},
  };
  ASSERT_OK(ul_stream_writev(c.s, rest, 2));
  peer_start_reading(&pr);
  RUN_UNTIL(loop, pr.len == len);
  check_pattern(pr.buf, pr.len);
  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost && pr.eof);
  ASSERT_EQ(len, pr.len);
  ASSERT_STR_EQ("MPRL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(data);
  free(pr.buf);
  conn_free(&c);
  return 0;
}

/* More iovecs than writev(2) takes at once (IOV_MAX): the bytes still go
 * out, or the call fails with -EINVAL; the connection must not die. */
TEST_IMPL(stream_writev_more_than_iov_max) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer pr;
  int sv[2];
  enum { N = 2 * IOV_MAX + 5 };
  char *data = pattern_new(N);
  struct iovec *iov = calloc(N, sizeof *iov);

  ASSERT_NOT_NULL(iov);
  for (int i = 0; i < N; i++) {
    iov[i].iov_base = data + i;
    iov[i].iov_len = 1;
  }
  conn_init(&c, loop);
  test_socketpair(sv);
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  int r = ul_stream_writev(c.s, iov, N);
  ASSERT(r == 0 || r == -EINVAL);
  spin(loop, 2);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_STR_EQ("M", c.trace); /* no connection_lost */
  if (r == 0) {
    peer_start_reading(&pr);
    RUN_UNTIL(loop, pr.len == N);
    check_pattern(pr.buf, pr.len);
  }
  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost);
  ASSERT_EQ(0, c.lost_err);
  ul_loop_remove_reader(loop, sv[1]);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(iov);
  free(data);
  free(pr.buf);
  conn_free(&c);
  return 0;
}

/* close() after queued writes: everything is flushed, then
 * connection_lost(0); nothing is read meanwhile. */
TEST_IMPL(stream_close_flushes_queued) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer pr;
  int sv[2];
  size_t len = 4 * MB;
  char *data = pattern_new(len);

  conn_init(&c, loop);
  test_socketpair(sv);
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_stream_write(c.s, data, len));
  ASSERT_GT(ul_stream_get_write_buffer_size(c.s), 0);
  ASSERT_OK(ul_stream_close(c.s));
  ASSERT_EQ(1, ul_stream_is_closing(c.s));
  ASSERT_EQ(0, ul_stream_is_reading(c.s));
  /* Still flushing: more bytes are taken, and sent after the rest. */
  ASSERT_OK(ul_stream_write(c.s, "tail", 4));
  ASSERT_OK(ul_stream_writev(c.s, NULL, 0));
  ASSERT_OK(ul_stream_close(c.s)); /* again: nothing */
  ASSERT_EQ(4, write(sv[1], "late", 4)); /* not delivered: closing */
  spin(loop, 3);
  ASSERT_STR_EQ("MP", c.trace); /* still flushing, peer not reading */

  peer_start_reading(&pr);
  RUN_UNTIL(loop, c.lost && pr.eof);
  ASSERT_EQ(len + 4, pr.len);
  check_pattern(pr.buf, len);
  ASSERT_EQ(0, memcmp("tail", pr.buf + len, 4));
  ASSERT_STR_EQ("MPRL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(0, c.wbuf_at_lost);
  ASSERT_EQ(0, c.rlen);
  /* After the last byte: EOF, or (AF_UNIX) ECONNRESET, since the stream
   * closed its socket with "late" unread. */
  ASSERT(pr.err == 0 || pr.err == ECONNRESET);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(data);
  free(pr.buf);
  conn_free(&c);
  return 0;
}

/* The buffer drains below the low-water mark after close(): resume_writing
 * still runs, and what it writes (asyncio's TLS layer writes its
 * close_notify there) goes out before the close. */
TEST_IMPL(stream_close_sends_what_resume_writing_writes) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer pr;
  int sv[2];
  size_t len = 4 * MB;
  char *data = pattern_new(len);

  conn_init(&c, loop);
  c.write_in_resume = "close_notify";
  test_socketpair(sv);
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_stream_write(c.s, data, len));
  ASSERT_OK(ul_stream_close(c.s));
  peer_start_reading(&pr);
  RUN_UNTIL(loop, c.lost && pr.eof);
  ASSERT_STR_EQ("MPRL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(len + sizeof "close_notify", pr.len);
  check_pattern(pr.buf, len);
  ASSERT_STR_EQ("close_notify", pr.buf + len);
  ASSERT_EQ(0, pr.err);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(data);
  free(pr.buf);
  conn_free(&c);
  return 0;
}

TEST_IMPL(stream_abort_drops_buffer) {
  ul_loop *loop = test_loop_new();
  struct conn c, c2;
  struct peer pr;
  int sv[2];
  size_t len = 4 * MB;
  char *data = pattern_new(len);

  conn_init(&c, loop);
  test_socketpair(sv);
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_stream_write(c.s, data, len));
  ASSERT_GT(ul_stream_get_write_buffer_size(c.s), 0);
  spin(loop, 1);
  ASSERT_STR_EQ("MP", c.trace);
  ASSERT_OK(ul_stream_abort(c.s));
  ASSERT_STR_EQ("MP", c.trace); /* not from inside abort */
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(c.s));
  ASSERT_EQ(1, ul_stream_is_closing(c.s));
  ASSERT_EQ(-EPIPE, ul_stream_write(c.s, "x", 1));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_STR_EQ("MPL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(1, c.lost);
  ASSERT_EQ(0, test_fd_is_open(sv[0]));

  peer_start_reading(&pr);
  RUN_UNTIL(loop, pr.eof);
  ASSERT_LT(pr.len, len); /* the buffer was dropped */
  check_pattern(pr.buf, pr.len);
  test_close(sv[1]);

  /* abort before connection_made: made, then lost(0). */
  conn_init(&c2, loop);
  test_socketpair(sv);
  conn_open(&c2, sv[0], &proto);
  ASSERT_OK(ul_stream_abort(c2.s));
  ASSERT_STR_EQ("", c2.trace);
  RUN_UNTIL(loop, c2.lost);
  ASSERT_STR_EQ("ML", c2.trace);
  ASSERT_EQ(0, c2.lost_err);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(data);
  free(pr.buf);
  conn_free(&c);
  conn_free(&c2);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* EOF                                                                      */

TEST_IMPL(stream_eof_closes) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];
  char buf[16];

  conn_init(&c, loop);
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  ASSERT_EQ(3, write(sv[1], "bye", 3));
  ASSERT_OK(shutdown(sv[1], SHUT_WR));
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("MDEL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(3, c.rlen);
  ASSERT_OK(memcmp(c.rbuf, "bye", 3));
  ASSERT_EQ(0, read_now(sv[1], buf, sizeof buf)); /* closed */
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

TEST_IMPL(stream_eof_keep_open_half_close) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];
  char buf[16];

  conn_init(&c, loop);
  c.eof_ret = 1;
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  ASSERT_EQ(1, write(sv[1], "q", 1));
  ASSERT_OK(shutdown(sv[1], SHUT_WR));
  RUN_UNTIL(loop, c.eofs);
  spin(loop, 3);
  ASSERT_STR_EQ("MDE", c.trace);
  ASSERT_EQ(0, ul_stream_is_closing(c.s));

  /* Writing still works. */
  ASSERT_OK(ul_stream_write(c.s, "answer", 6));
  ASSERT_EQ(6, read_now(sv[1], buf, sizeof buf));
  ASSERT_OK(memcmp(buf, "answer", 6));
  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("MDEL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(1, c.eofs);
  ASSERT_EQ(0, read_now(sv[1], buf, sizeof buf));
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

TEST_IMPL(stream_write_eof) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer pr;
  int sv[2];
  char buf[16];
  size_t len = 2 * MB;
  char *data = pattern_new(len);

  /* Empty buffer: FIN at once. */
  conn_init(&c, loop);
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_EQ(1, ul_stream_can_write_eof(c.s));
  ASSERT_OK(ul_stream_write(c.s, "x", 1));
  ASSERT_OK(ul_stream_write_eof(c.s));
  ASSERT_EQ(1, read_now(sv[1], buf, sizeof buf));
  ASSERT_EQ(0, read_now(sv[1], buf, sizeof buf)); /* EOF */
  ASSERT_EQ(-EPIPE, ul_stream_write(c.s, "y", 1));
  ASSERT_OK(ul_stream_write_eof(c.s)); /* again: nothing */
  /* The other direction still works. */
  ASSERT_EQ(2, write(sv[1], "up", 2));
  RUN_UNTIL(loop, c.rlen == 2);
  ASSERT_EQ(0, ul_stream_is_closing(c.s));
  test_close(sv[1]);
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("MDEL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  conn_free(&c);

  /* Queued data: FIN only after the last byte. */
  conn_init(&c, loop);
  test_socketpair(sv);
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_stream_write(c.s, data, len));
  ASSERT_GT(ul_stream_get_write_buffer_size(c.s), 0);
  ASSERT_OK(ul_stream_write_eof(c.s));
  ASSERT_EQ(-EPIPE, ul_stream_write(c.s, "y", 1));
  struct iovec iov = {.iov_base = "y", .iov_len = 1};
  ASSERT_EQ(-EPIPE, ul_stream_writev(c.s, &iov, 1));
  peer_start_reading(&pr);
  RUN_UNTIL(loop, pr.eof);
  ASSERT_EQ(0, pr.err);
  ASSERT_EQ(len, pr.len);
  check_pattern(pr.buf, pr.len);
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(c.s));
  ASSERT_EQ(0, ul_stream_is_closing(c.s));
  ASSERT_EQ(2, write(sv[1], "up", 2));
  ASSERT_OK(shutdown(sv[1], SHUT_WR));
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("MPRDEL", c.trace);
  ASSERT_EQ(2, c.rlen);
  ASSERT_EQ(0, c.lost_err);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(data);
  free(pr.buf);
  conn_free(&c);
  return 0;
}

TEST_IMPL(stream_pipe_write_eof_unsupported) {
  ul_loop *loop = test_loop_new();
  struct conn c, cr;
  int fds[2];
  char buf[16];

  conn_init(&c, loop);
  conn_init(&cr, loop);
  test_pipe(fds);
  conn_open(&c, fds[1], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_EQ(0, ul_stream_can_write_eof(c.s));
  ASSERT_EQ(-ENOTSUP, ul_stream_write_eof(c.s));
  ASSERT_OK(ul_stream_write(c.s, "abc", 3)); /* still writable */
  ASSERT_EQ(3, read_now(fds[0], buf, sizeof buf));
  ASSERT_OK(memcmp(buf, "abc", 3));
  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("ML", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(0, read_now(fds[0], buf, sizeof buf)); /* writer gone */
  test_close(fds[0]);

  /* The read end of a pipe neither. */
  test_pipe(fds);
  conn_open(&cr, fds[0], &proto);
  ASSERT_EQ(0, ul_stream_can_write_eof(cr.s));
  ASSERT_EQ(-ENOTSUP, ul_stream_write_eof(cr.s));
  test_close(fds[1]);
  RUN_UNTIL(loop, cr.lost);
  ASSERT_STR_EQ("MEL", cr.trace);
  ASSERT_EQ(0, cr.lost_err);
  CLOSE_LOOP(loop);
  conn_free(&c);
  conn_free(&cr);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */

/* Writing to a pipe whose read end is closed: connection_lost(-EPIPE), not
 * a return value, and not from inside the write. */
TEST_IMPL(stream_pipe_broken_write) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int fds[2];

  conn_init(&c, loop);
  test_pipe(fds);
  conn_open(&c, fds[1], &proto);
  RUN_UNTIL(loop, c.made);
  test_close(fds[0]);
  ASSERT_OK(ul_stream_write(c.s, "x", 1));
  ASSERT_STR_EQ("M", c.trace);
  ASSERT_EQ(1, ul_stream_is_closing(c.s));
  ASSERT_EQ(-EPIPE, ul_stream_write(c.s, "x", 1));
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("ML", c.trace);
  ASSERT_EQ(-EPIPE, c.lost_err);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

/* The pipe's reader goes away while the stream is idle (nothing to write):
 * the connection ends with the error of a broken pipe. */
TEST_IMPL(stream_pipe_reader_gone_idle) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int fds[2];

  conn_init(&c, loop);
  test_pipe(fds);
  conn_open(&c, fds[1], &proto);
  RUN_UNTIL(loop, c.made);
  test_close(fds[0]);
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("ML", c.trace);
  ASSERT_EQ(-EPIPE, c.lost_err);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

/* AF_UNIX: a peer that closes with unread data resets the connection. */
TEST_IMPL(stream_peer_reset) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];

  conn_init(&c, loop);
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_stream_write(c.s, "unread", 6));
  test_close(sv[1]);
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("ML", c.trace);
  ASSERT_EQ(-ECONNRESET, c.lost_err);
  spin(loop, 2);
  ASSERT_EQ(1, c.lost);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

/* The peer reads a little, then closes in the middle of a big write; with
 * and without a close() pending. */
static void peer_closes_mid_write(int close_first) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];
  size_t len = 8 * MB;
  char *data = pattern_new(len);
  char buf[65536];

  conn_init(&c, loop);
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_stream_write(c.s, data, len));
  if (close_first)
    ASSERT_OK(ul_stream_close(c.s));
  spin(loop, 2);
  size_t got = read_now(sv[1], buf, sizeof buf);
  ASSERT_GT(got, 0);
  check_pattern(buf, got);
  spin(loop, 2);
  test_close(sv[1]);
  RUN_UNTIL(loop, c.lost);
  ASSERT(c.lost_err == -ECONNRESET || c.lost_err == -EPIPE);
  ASSERT_EQ(0, c.rlen);
  ASSERT_EQ('L', c.trace[c.ntrace - 1]);
  ASSERT_EQ(NULL, strchr(c.trace, 'E'));
  spin(loop, 3);
  ASSERT_EQ(1, c.lost);
  CLOSE_LOOP(loop);
  free(data);
  conn_free(&c);
}

TEST_IMPL(stream_peer_closes_mid_write) {
  peer_closes_mid_write(0);
  peer_closes_mid_write(1);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* close / abort from inside callbacks                                      */

TEST_IMPL(stream_close_in_data_received) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];

  conn_init(&c, loop);
  c.close_in_data = 1;
  test_socketpair(sv);
  c.peer_write_in_data = sv[1]; /* more data once closing: not delivered */
  conn_open(&c, sv[0], &proto);
  ASSERT_EQ(3, write(sv[1], "abc", 3));
  RUN_UNTIL(loop, c.lost);
  spin(loop, 3);
  ASSERT_STR_EQ("MDL", c.trace);
  ASSERT_EQ(1, c.data_calls);
  ASSERT_EQ(3, c.rlen);
  ASSERT_EQ(0, c.lost_err);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

TEST_IMPL(stream_abort_in_data_received) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];
  size_t len = 8 * MB;
  char *data = pattern_new(len);
  struct peer pr;

  conn_init(&c, loop);
  c.abort_in_data = 1;
  c.big_write_in_data = 1; /* queue a buffer first, which abort drops */
  c.big = data;
  c.big_len = len;
  test_socketpair(sv);
  c.peer_write_in_data = sv[1];
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);
  ASSERT_EQ(3, write(sv[1], "abc", 3));
  RUN_UNTIL(loop, c.lost);
  spin(loop, 3);
  ASSERT_EQ(1, c.data_calls);
  ASSERT_EQ(1, c.lost);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ('L', c.trace[c.ntrace - 1]);
  ASSERT_EQ(NULL, strchr(c.trace, 'R'));
  peer_start_reading(&pr);
  RUN_UNTIL(loop, pr.eof);
  ASSERT_LT(pr.len, len);
  check_pattern(pr.buf, pr.len);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(data);
  free(pr.buf);
  conn_free(&c);
  return 0;
}

TEST_IMPL(stream_close_in_connection_made) {
  ul_loop *loop = test_loop_new();
  struct conn c, c2;
  int sv[2], sv2[2];
  char buf[16];

  /* close: what connection_made wrote is flushed, nothing is read. */
  conn_init(&c, loop);
  c.write_in_made = 1;
  c.close_in_made = 1;
  test_socketpair(sv);
  ASSERT_EQ(4, write(sv[1], "data", 4));
  conn_open(&c, sv[0], &proto);
  /* abort: nothing is read either. */
  conn_init(&c2, loop);
  c2.abort_in_made = 1;
  test_socketpair(sv2);
  ASSERT_EQ(4, write(sv2[1], "data", 4));
  conn_open(&c2, sv2[0], &proto);

  RUN_UNTIL(loop, c.lost && c2.lost);
  spin(loop, 2);
  ASSERT_STR_EQ("ML", c.trace);
  ASSERT_STR_EQ("ML", c2.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(0, c2.lost_err);
  ASSERT_EQ(0, c.rlen);
  ASSERT_EQ(0, c2.rlen);
  ASSERT_EQ(4, read_now(sv[1], buf, sizeof buf));
  ASSERT_OK(memcmp(buf, "made", 4));
  /* Then EOF, or ECONNRESET: AF_UNIX resets when a socket is closed with
   * unread data ("data" was never read). */
  ASSERT_EQ(-1, read(sv[1], buf, sizeof buf));
  ASSERT_EQ(ECONNRESET, errno);
  test_close(sv[1]);
  test_close(sv2[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  conn_free(&c2);
  return 0;
}

static void pause_action(int abort_it) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer pr;
  int sv[2];
  size_t len = 8 * MB;
  char *data = pattern_new(len);

  conn_init(&c, loop);
  c.close_in_pause = !abort_it;
  c.abort_in_pause = abort_it;
  test_socketpair(sv);
  peer_init(&pr, loop, sv[1]);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_stream_write(c.s, data, len));
  spin(loop, 1);
  ASSERT_EQ(1, c.pauses);
  ASSERT_EQ(1, c.lost || ul_stream_is_closing(c.s));
  peer_start_reading(&pr);
  RUN_UNTIL(loop, c.lost && pr.eof);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(0, pr.err);
  check_pattern(pr.buf, pr.len);
  if (abort_it) {
    ASSERT_STR_EQ("MPL", c.trace);
    ASSERT_LT(pr.len, len);
  } else {
    ASSERT_STR_EQ("MPRL", c.trace);
    ASSERT_EQ(len, pr.len);
  }
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(data);
  free(pr.buf);
  conn_free(&c);
}

TEST_IMPL(stream_close_in_pause_writing) {
  pause_action(0);
  return 0;
}

TEST_IMPL(stream_abort_in_pause_writing) {
  pause_action(1);
  return 0;
}

TEST_IMPL(stream_close_twice) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];

  conn_init(&c, loop);
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_stream_close(c.s));
  ASSERT_OK(ul_stream_close(c.s));
  ASSERT_OK(ul_stream_abort(c.s));
  ASSERT_OK(ul_stream_close(c.s));
  spin(loop, 3);
  ASSERT_STR_EQ("ML", c.trace);
  ASSERT_EQ(1, c.lost);
  ASSERT_EQ(0, c.lost_err);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* pause_reading / resume_reading                                           */

TEST_IMPL(stream_pause_resume_reading) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];

  conn_init(&c, loop);
  test_socketpair(sv);
  ASSERT_EQ(1, write(sv[1], "a", 1));
  conn_open(&c, sv[0], &proto);
  /* Paused before connection_made: reading does not start. */
  ASSERT_OK(ul_stream_pause_reading(c.s));
  ASSERT_OK(ul_stream_pause_reading(c.s)); /* again: nothing */
  ASSERT_EQ(0, ul_stream_is_reading(c.s));
  spin(loop, 3);
  ASSERT_STR_EQ("M", c.trace);
  ASSERT_OK(ul_stream_resume_reading(c.s));
  ASSERT_OK(ul_stream_resume_reading(c.s)); /* again: nothing */
  ASSERT_EQ(1, ul_stream_is_reading(c.s));
  ASSERT_STR_EQ("M", c.trace); /* not from inside resume */
  RUN_UNTIL(loop, c.rlen == 1);
  ASSERT_STR_EQ("MD", c.trace);

  /* Paused while open: data waits in the kernel. */
  ASSERT_OK(ul_stream_pause_reading(c.s));
  ASSERT_EQ(2, write(sv[1], "bc", 2));
  spin(loop, 3);
  ASSERT_EQ(1, c.rlen);
  ASSERT_EQ(1, c.data_calls);
  /* Writing still works while paused. */
  ASSERT_OK(ul_stream_write(c.s, "w", 1));
  ASSERT_OK(ul_stream_resume_reading(c.s));
  RUN_UNTIL(loop, c.rlen == 3);
  ASSERT_OK(memcmp(c.rbuf, "abc", 3));

  /* EOF while paused is seen after resume only. */
  ASSERT_OK(ul_stream_pause_reading(c.s));
  ASSERT_OK(shutdown(sv[1], SHUT_WR));
  spin(loop, 3);
  ASSERT_STR_EQ("MD", c.trace);
  ASSERT_OK(ul_stream_resume_reading(c.s));
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("MDEL", c.trace);
  CLOSE_LOOP(loop);
  test_close(sv[1]);

  /* While closing: -ESHUTDOWN. */
  loop = test_loop_new();
  conn_free(&c);
  conn_init(&c, loop);
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  ASSERT_OK(ul_stream_close(c.s));
  ASSERT_EQ(-ESHUTDOWN, ul_stream_pause_reading(c.s));
  ASSERT_EQ(-ESHUTDOWN, ul_stream_resume_reading(c.s));
  ASSERT_EQ(0, ul_stream_is_reading(c.s));
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("ML", c.trace);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* ul_loop_close with streams open                                          */

TEST_IMPL(stream_loop_close_cancels) {
  int before = test_count_fds();
  ul_loop *loop = test_loop_new();
  struct conn a, b, n;
  int sa[2], sb[2], sn[2];
  size_t len = 4 * MB;
  char *data = pattern_new(len);

  conn_init(&a, loop);
  conn_init(&b, loop);
  conn_init(&n, loop);
  test_socketpair(sa);
  test_socketpair(sb);
  conn_open(&a, sa[0], &proto);
  conn_open(&b, sb[0], &proto);
  RUN_UNTIL(loop, a.made && b.made);
  ASSERT_OK(ul_stream_write(a.s, data, len)); /* a buffer to free */
  ASSERT_OK(ul_stream_close(b.s));            /* lost(0) queued */
  test_socketpair(sn);
  conn_open(&n, sn[0], &proto);               /* never made */

  CLOSE_LOOP(loop);
  ASSERT_EQ(1, a.lost);
  ASSERT_EQ(-ECANCELED, a.lost_err);
  ASSERT_EQ('M', a.trace[0]);
  ASSERT_EQ('L', a.trace[a.ntrace - 1]);
  ASSERT_EQ(1, b.lost);
  ASSERT_STR_EQ("ML", b.trace);
  /* connection_made never ran: connection_lost(-ECANCELED) alone, so that
   * its owner can release what it holds. */
  ASSERT_STR_EQ("L", n.trace);
  ASSERT_EQ(-ECANCELED, n.lost_err);
  /* b's queued connection_lost(0) did not run before the close: it runs
   * from ul_loop_close() with -ECANCELED. */
  ASSERT_EQ(-ECANCELED, b.lost_err);
  ASSERT_EQ(0, test_fd_is_open(sa[0]));
  ASSERT_EQ(0, test_fd_is_open(sb[0]));
  ASSERT_EQ(0, test_fd_is_open(sn[0]));
  test_close(sa[1]);
  test_close(sb[1]);
  test_close(sn[1]);
  ASSERT_EQ(before, test_count_fds());
  free(data);
  conn_free(&a);
  conn_free(&b);
  conn_free(&n);
  return 0;
}

/* ul_stream_abort() inside the connection_lost(-ECANCELED) of
 * ul_loop_close: does nothing (the stream is already closing). */
TEST_IMPL(stream_abort_in_lost_at_loop_close) {
  int before = test_count_fds();
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];

  conn_init(&c, loop);
  c.abort_in_lost = 1;
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, c.lost);
  ASSERT_EQ(-ECANCELED, c.lost_err);
  test_close(sv[1]);
  ASSERT_EQ(before, test_count_fds());
  conn_free(&c);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The header: callbacks run on the loop, never from inside a ul_stream_*
 * call, except pause_writing, which (as in asyncio) runs inside the write
 * or set_write_buffer_limits call that crosses the high-water mark.        */

TEST_IMPL(stream_callbacks_never_inside_calls) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];
  size_t len = 8 * MB;
  char *data = pattern_new(len);

  conn_init(&c, loop);
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(IN_CALL(ul_stream_write(c.s, data, len)));
  ASSERT_OK(IN_CALL(ul_stream_set_write_buffer_limits(c.s, 0, 0)));
  ASSERT_OK(IN_CALL(ul_stream_close(c.s)));
  spin(loop, 1);
  ASSERT_EQ(1, c.pauses);
  ASSERT_EQ(1, c.inside_calls); /* that pause_writing, inside the write */
  ASSERT_OK(IN_CALL(ul_stream_abort(c.s)));
  RUN_UNTIL(loop, c.lost);
  ASSERT_EQ(1, c.inside_calls); /* connection_lost ran from the loop */
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  free(data);
  conn_free(&c);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Bad arguments                                                            */

TEST_IMPL(stream_invalid_args) {
  ul_loop *loop = test_loop_new();
  ul_stream *s = NULL;
  struct conn c;
  int sv[2];
  ul_stream_protocol none = {.connection_made = on_made,
                             .connection_lost = on_lost};
  ul_stream_protocol half = {.get_buffer = on_get_buffer,
                             .connection_lost = on_lost};
  ul_stream_protocol buffered_only = {.get_buffer = on_get_buffer,
                                      .buffer_updated = on_buffer_updated,
                                      .connection_made = on_made,
                                      .connection_lost = on_lost};

  conn_init(&c, loop);
  /* -EINVAL: the fd is closed (the stream took it). */
  test_socketpair(sv);
  ASSERT_EQ(-EINVAL, ul_stream_open(NULL, sv[0], &proto, &c, &s));
  ASSERT_EQ(0, test_fd_is_open(sv[0]));
  test_close(sv[1]);
  test_socketpair(sv);
  ASSERT_EQ(-EINVAL, ul_stream_open(loop, sv[0], NULL, &c, &s));
  ASSERT_EQ(0, test_fd_is_open(sv[0]));
  test_close(sv[1]);
  test_socketpair(sv);
  ASSERT_EQ(-EINVAL, ul_stream_open(loop, sv[0], &proto, &c, NULL));
  ASSERT_EQ(0, test_fd_is_open(sv[0]));
  test_close(sv[1]);
  test_socketpair(sv);
  ASSERT_EQ(-EINVAL, ul_stream_open(loop, sv[0], &none, &c, &s));
  ASSERT_EQ(0, test_fd_is_open(sv[0]));
  test_close(sv[1]);
  test_socketpair(sv);
  ASSERT_EQ(-EINVAL, ul_stream_open(loop, sv[0], &half, &c, &s));
  ASSERT_EQ(0, test_fd_is_open(sv[0]));
  ASSERT_NULL(s);
  test_close(sv[1]);

  /* -EBADF: a closed fd, a negative fd. */
  test_socketpair(sv);
  test_close(sv[0]);
  ASSERT_EQ(-EBADF, ul_stream_open(loop, sv[0], &proto, &c, &s));
  ASSERT_EQ(-EBADF, ul_stream_open(loop, -1, &proto, &c, &s));
  ASSERT_NULL(s);
  test_close(sv[1]);
  spin(loop, 2);
  ASSERT_STR_EQ("", c.trace); /* no callback after a failed open */

  /* NULL stream. */
  struct iovec iov = {.iov_base = "x", .iov_len = 1};
  size_t low = 7, high = 7;
  ASSERT_EQ(-EINVAL, ul_stream_write(NULL, "x", 1));
  ASSERT_EQ(-EINVAL, ul_stream_writev(NULL, &iov, 1));
  ASSERT_EQ(-EINVAL, ul_stream_write_eof(NULL));
  ASSERT_EQ(0, ul_stream_can_write_eof(NULL));
  ASSERT_EQ(-EINVAL, ul_stream_close(NULL));
  ASSERT_EQ(-EINVAL, ul_stream_abort(NULL));
  ASSERT_EQ(-EINVAL, ul_stream_pause_reading(NULL));
  ASSERT_EQ(-EINVAL, ul_stream_resume_reading(NULL));
  ASSERT_EQ(0, ul_stream_is_reading(NULL));
  ASSERT_EQ(0, ul_stream_is_closing(NULL));
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(NULL));
  ASSERT_EQ(-EINVAL, ul_stream_set_write_buffer_limits(NULL, 10, 1));
  ul_stream_get_write_buffer_limits(NULL, &low, &high);
  ASSERT_EQ(7, low);
  ASSERT_EQ(7, high);
  ASSERT_EQ(-1, ul_stream_fileno(NULL));
  ASSERT_NULL(ul_stream_get_loop(NULL));
  ASSERT_NULL(ul_stream_get_context(NULL));

  /* A valid stream: NULL data with a length; a buffered protocol without
   * data_received is accepted. */
  test_socketpair(sv);
  c.bsize = 1000;
  conn_open(&c, sv[0], &buffered_only);
  ASSERT_EQ(-EINVAL, ul_stream_write(c.s, NULL, 1));
  ASSERT_EQ(-EINVAL, ul_stream_writev(c.s, NULL, 1));
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(c.s));
  ASSERT_EQ(2, write(sv[1], "ok", 2));
  RUN_UNTIL(loop, c.rlen == 2);
  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("MDL", c.trace);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

/* The first write that is queued (the kernel takes nothing) must not pass
 * a NULL pointer to memcpy: only the sanitized build (build-asan) can tell. */
TEST_IMPL(stream_first_queued_write_no_ub) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];

  conn_init(&c, loop);
  test_socketpair(sv);
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  fill_until_full(sv[0]);
  ASSERT_OK(ul_stream_write(c.s, "queued", 6)); /* UBSan aborts here */
  ASSERT_EQ(6, ul_stream_get_write_buffer_size(c.s));
  ASSERT_OK(ul_stream_abort(c.s));
  RUN_UNTIL(loop, c.lost);
  ASSERT_EQ(0, c.lost_err);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Writes made by callbacks: sent together at the end of the iteration     */
/* (batch.c), with io_uring and without; the results must be the same.     */

#define NCONN 3

struct batch {
  ul_loop *loop;
  struct conn c[NCONN];
  int peer[NCONN];
  int close_one, abort_one; /* close c[1] / abort c[2] after writing */
  int unchecked[NCONN];      /* its peer is shut down or has bytes queued */
  int ran;
};

static ul_loop *batch_loop_new(int no_io_uring) {
  ul_loop_options opts;
  memset(&opts, 0, sizeof opts);
  opts.no_io_uring = no_io_uring;
  ul_loop *loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, &opts));
  return loop;
}

static void batch_open_with(struct batch *b, int no_io_uring,
                            const ul_stream_protocol *p) {
  memset(b, 0, sizeof *b);
  b->loop = batch_loop_new(no_io_uring);
  for (int i = 0; i < NCONN; i++) {
    int sv[2];
    conn_init(&b->c[i], b->loop);
    test_socketpair(sv);
    b->peer[i] = sv[1];
    conn_open(&b->c[i], sv[0], p);
  }
  RUN_UNTIL(b->loop, b->c[0].made && b->c[1].made && b->c[2].made);
}

static void batch_open(struct batch *b, int no_io_uring) {
  batch_open_with(b, no_io_uring, &proto);
}

static void batch_close(struct batch *b) {
  for (int i = 0; i < NCONN; i++)
    if (!b->c[i].lost)
      ASSERT_OK(ul_stream_abort(b->c[i].s));
  RUN_UNTIL(b->loop, b->c[0].lost && b->c[1].lost && b->c[2].lost);
  for (int i = 0; i < NCONN; i++) {
    test_close(b->peer[i]);
    conn_free(&b->c[i]);
  }
  CLOSE_LOOP(b->loop);
}

/* Each stream gets "m<i>" and "+" in one callback: nothing reaches its
 * peer until the callback returns, except what abort() sends first. */
static void batch_write_cb(ul_loop *loop, void *arg, int status) {
  struct batch *b = arg;
  char buf[16];
  (void)loop;
  ASSERT_EQ(0, status);
  for (int i = 0; i < NCONN; i++) {
    char msg[3] = {'m', (char)('0' + i), '\0'};
    ASSERT_OK(ul_stream_write(b->c[i].s, msg, 2));
    ASSERT_OK(ul_stream_write(b->c[i].s, "+", 1));
    ASSERT_EQ(3, ul_stream_get_write_buffer_size(b->c[i].s));
    if (b->unchecked[i])
      continue;
    ASSERT_EQ(-1, read(b->peer[i], buf, sizeof buf));
    ASSERT_EQ(EAGAIN, errno);
  }
  if (b->close_one)
    ASSERT_OK(ul_stream_close(b->c[1].s));
  if (b->abort_one) {
    /* asyncio would have sent it at write(): abort drops nothing sent. */
    ASSERT_OK(ul_stream_abort(b->c[2].s));
    ASSERT_EQ(0, ul_stream_get_write_buffer_size(b->c[2].s));
    ASSERT_EQ(3, read_now(b->peer[2], buf, sizeof buf));
    ASSERT_OK(memcmp(buf, "m2+", 3));
  }
  b->ran = 1;
}

static void check_batched_writes(int no_io_uring) {
  struct batch b;
  char buf[16];
  batch_open(&b, no_io_uring);
  ASSERT_OK(ul_loop_call_soon(b.loop, batch_write_cb, &b));
  ASSERT_OK(ul_loop_run_once(b.loop, 0));
  ASSERT_EQ(1, b.ran);
  for (int i = 0; i < NCONN; i++) {
    char want[4] = {'m', (char)('0' + i), '+', '\0'};
    ASSERT_EQ(0, ul_stream_get_write_buffer_size(b.c[i].s));
    ASSERT_EQ(3, read_now(b.peer[i], buf, sizeof buf));
    ASSERT_OK(memcmp(buf, want, 3));
    ASSERT_STR_EQ("M", b.c[i].trace);
  }
  batch_close(&b);
}

TEST_IMPL(stream_writes_batched_at_iteration_end) {
  check_batched_writes(0);
  check_batched_writes(1);
  return 0;
}

static void check_batched_close_abort(int no_io_uring) {
  struct batch b;
  char buf[16];
  batch_open(&b, no_io_uring);
  b.close_one = 1;
  b.abort_one = 1;
  ASSERT_OK(ul_loop_call_soon(b.loop, batch_write_cb, &b));
  RUN_UNTIL(b.loop, b.c[1].lost && b.c[2].lost);
  /* close() flushed first, then connection_lost(0); the peer sees EOF. */
  ASSERT_STR_EQ("ML", b.c[1].trace);
  ASSERT_EQ(0, b.c[1].lost_err);
  ASSERT_EQ(3, read_now(b.peer[1], buf, sizeof buf));
  ASSERT_OK(memcmp(buf, "m1+", 3));
  ASSERT_EQ(0, read_now(b.peer[1], buf, sizeof buf));
  ASSERT_STR_EQ("ML", b.c[2].trace);
  ASSERT_EQ(0, b.c[2].lost_err);
  ASSERT_EQ(0, read_now(b.peer[2], buf, sizeof buf));
  /* The stream left alone is unaffected. */
  ASSERT_EQ(3, read_now(b.peer[0], buf, sizeof buf));
  ASSERT_OK(memcmp(buf, "m0+", 3));
  batch_close(&b);
}

TEST_IMPL(stream_batched_write_then_close_or_abort) {
  check_batched_close_abort(0);
  check_batched_close_abort(1);
  return 0;
}

/* A peer that is gone: the batched send fails with EPIPE, reported through
 * connection_lost; a full socket buffer: the bytes wait for writability. */
static void check_batched_errors(int no_io_uring) {
  struct batch b;
  struct peer pr;
  batch_open(&b, no_io_uring);
  ASSERT_OK(shutdown(b.peer[0], SHUT_RD)); /* sends to it fail: EPIPE */
  b.unchecked[0] = 1;
  size_t filled = fill_until_full(ul_stream_fileno(b.c[1].s));
  b.unchecked[1] = 1;
  ASSERT_OK(ul_loop_call_soon(b.loop, batch_write_cb, &b));
  ASSERT_OK(ul_loop_run_once(b.loop, 0));
  RUN_UNTIL(b.loop, b.c[0].lost);
  ASSERT_EQ(-EPIPE, b.c[0].lost_err);
  ASSERT_STR_EQ("ML", b.c[0].trace);
  ASSERT_EQ(3, ul_stream_get_write_buffer_size(b.c[1].s));
  /* The peer drains the socket: everything arrives, in order. */
  peer_init(&pr, b.loop, b.peer[1]);
  peer_start_reading(&pr);
  RUN_UNTIL(b.loop, pr.len == filled + 3);
  ASSERT_OK(memcmp(pr.buf + filled, "m1+", 3));
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(b.c[1].s));
  ASSERT_EQ(1, ul_loop_remove_reader(b.loop, b.peer[1]));
  free(pr.buf);
  batch_close(&b);
}

TEST_IMPL(stream_batched_write_errors) {
  check_batched_errors(0);
  check_batched_errors(1);
  return 0;
}

/* A write that could fill the buffer is not deferred (asyncio would not
 * pause the protocol for bytes the kernel takes at once); one that would
 * join a deferred one past the high-water mark sends that one first. */
static void big_write_cb(ul_loop *loop, void *arg, int status) {
  struct conn *c = arg;
  size_t len = UL_STREAM_HIGH_WATER + 1;
  char *data = pattern_new(len + 10);
  (void)loop;
  ASSERT_EQ(0, status);
  ASSERT_OK(ul_stream_write(c->s, data, 10));
  ASSERT_EQ(10, ul_stream_get_write_buffer_size(c->s));
  ASSERT_OK(ul_stream_write(c->s, data + 10, len));
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(c->s));
  ASSERT_EQ(0, c->pauses);
  free(data);
}

TEST_IMPL(stream_big_write_in_callback_not_deferred) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  int sv[2];
  size_t len = UL_STREAM_HIGH_WATER + 1;
  char *got = malloc(len + 10);

  ASSERT_NOT_NULL(got);
  conn_init(&c, loop);
  test_socketpair(sv);
  /* Room for both writes at once. */
  int size = 1 << 20;
  ASSERT_OK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof size));
  ASSERT_OK(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &size, sizeof size));
  conn_open(&c, sv[0], &proto);
  RUN_UNTIL(loop, c.made);
  ASSERT_OK(ul_loop_call_soon(loop, big_write_cb, &c));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  size_t n = 0;
  while (n < len + 10)
    n += read_now(sv[1], got + n, len + 10 - n);
  check_pattern(got, len + 10);
  ASSERT_STR_EQ("M", c.trace);
  ASSERT_OK(ul_stream_abort(c.s));
  RUN_UNTIL(loop, c.lost);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  conn_free(&c);
  free(got);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Reads: the sockets one poll reports are read together (batch.c).  A     */
/* callback may pause or close a stream whose bytes the batch has read     */
/* already: they are delivered after resume_reading, in order, as asyncio  */
/* would have read them then.                                              */

struct xs;
struct xs_slot {
  struct xs *x;
  int i;
};

struct xs {
  ul_loop *loop;
  ul_stream *s[NCONN];
  struct xs_slot slot[NCONN];
  int peer[NCONN];
  char got[NCONN][16];
  size_t got_len[NCONN];
  int eof[NCONN], lost[NCONN];
  int pause_others;  /* the first callback pauses every other stream */
  int paused_by;     /* index of that first stream, or -1 */
};

static void xs_first(struct xs *x, int me) {
  if (!x->pause_others || x->paused_by >= 0)
    return;
  x->paused_by = me;
  for (int j = 0; j < NCONN; j++)
    if (j != me)
      ASSERT_OK(ul_stream_pause_reading(x->s[j]));
}

static void xs_data(ul_stream *s, const char *data, size_t len, void *ctx) {
  struct xs_slot *sl = ctx;
  struct xs *x = sl->x;
  ASSERT_PTR_EQ(x->s[sl->i], s);
  ASSERT_EQ(0, x->eof[sl->i]);
  ASSERT_LE(x->got_len[sl->i] + len, sizeof x->got[0]);
  memcpy(x->got[sl->i] + x->got_len[sl->i], data, len);
  x->got_len[sl->i] += len;
  xs_first(x, sl->i);
}

static int xs_eof(ul_stream *s, void *ctx) {
  struct xs_slot *sl = ctx;
  (void)s;
  sl->x->eof[sl->i]++;
  xs_first(sl->x, sl->i);
  return 0;
}

static void xs_lost(ul_stream *s, int err, void *ctx) {
  struct xs_slot *sl = ctx;
  (void)s;
  ASSERT_EQ(0, err);
  sl->x->lost[sl->i] = 1;
}

static const ul_stream_protocol xs_proto = {
    .data_received = xs_data,
    .eof_received = xs_eof,
    .connection_lost = xs_lost,
};

static void xs_open(struct xs *x, int no_io_uring, int pause_others) {
  memset(x, 0, sizeof *x);
  x->loop = batch_loop_new(no_io_uring);
  x->pause_others = pause_others;
  x->paused_by = -1;
  for (int i = 0; i < NCONN; i++) {
    int sv[2];
    test_socketpair(sv);
    x->peer[i] = sv[1];
    x->slot[i] = (struct xs_slot){x, i};
    ASSERT_OK(ul_stream_open(x->loop, sv[0], &xs_proto, &x->slot[i], &x->s[i]));
  }
  ASSERT_OK(ul_loop_run_once(x->loop, 0)); /* connection_made, readers on */
}

static void xs_close(struct xs *x) {
  RUN_UNTIL(x->loop, x->lost[0] && x->lost[1] && x->lost[2]);
  for (int i = 0; i < NCONN; i++)
    test_close(x->peer[i]);
  CLOSE_LOOP(x->loop);
}

/* Every peer sends "d<i>" and shuts its side down. */
static void xs_peers_send(struct xs *x, int with_data) {
  for (int i = 0; i < NCONN; i++) {
    char msg[2] = {'d', (char)('0' + i)};
    if (with_data)
      ASSERT_EQ(2, write(x->peer[i], msg, 2));
    ASSERT_OK(shutdown(x->peer[i], SHUT_WR));
  }
}

static void check_batched_reads(int no_io_uring) {
  struct xs x;
  xs_open(&x, no_io_uring, 0);
  xs_peers_send(&x, 1);
  ASSERT_OK(ul_loop_run_once(x.loop, 1));
  for (int i = 0; i < NCONN; i++) {
    char want[2] = {'d', (char)('0' + i)};
    ASSERT_EQ(2, x.got_len[i]);
    ASSERT_OK(memcmp(x.got[i], want, 2));
  }
  RUN_UNTIL(x.loop, x.eof[0] && x.eof[1] && x.eof[2]);
  xs_close(&x);
}

TEST_IMPL(stream_reads_batched) {
  check_batched_reads(0);
  check_batched_reads(1);
  return 0;
}

static void check_held_reads(int no_io_uring, int with_data) {
  struct xs x;
  xs_open(&x, no_io_uring, 1);
  xs_peers_send(&x, with_data);
  ASSERT_OK(ul_loop_run_once(x.loop, 1));
  int first = x.paused_by;
  ASSERT_GE(first, 0);
  for (int j = 0; j < NCONN; j++) {
    if (j == first)
      continue;
    /* Read already, but not delivered: the stream is paused. */
    ASSERT_EQ(0, x.got_len[j]);
    ASSERT_EQ(0, x.eof[j]);
    ASSERT_OK(ul_stream_resume_reading(x.s[j]));
    ASSERT_EQ(0, x.got_len[j]); /* never from inside resume_reading */
  }
  RUN_UNTIL(x.loop, x.eof[0] && x.eof[1] && x.eof[2]);
  for (int i = 0; i < NCONN; i++) {
    char want[2] = {'d', (char)('0' + i)};
    ASSERT_EQ(with_data ? 2 : 0, x.got_len[i]);
    ASSERT_OK(memcmp(x.got[i], want, x.got_len[i]));
    ASSERT_EQ(1, x.eof[i]);
  }
  xs_close(&x);
}

TEST_IMPL(stream_batched_read_paused_by_earlier_callback) {
  check_held_reads(0, 1);
  check_held_reads(1, 1);
  check_held_reads(0, 0); /* only EOF was read */
  check_held_reads(1, 0);
  return 0;
}

/* A socket with more than a batch slot's worth of bytes gets them in one
 * data_received, as a lone read of asyncio's 256 KiB would give them. */
static void check_batched_big_read(int no_io_uring) {
  struct batch b;
  size_t len = 100 * 1024;
  char *data = pattern_new(len);
  batch_open(&b, no_io_uring);
  ASSERT_EQ((ssize_t)len, write(b.peer[0], data, len));
  ASSERT_EQ(1, write(b.peer[1], "x", 1));
  ASSERT_EQ(1, write(b.peer[2], "y", 1));
  ASSERT_OK(ul_loop_run_once(b.loop, 1));
  ASSERT_EQ(1, b.c[0].data_calls);
  ASSERT_EQ(len, b.c[0].rlen);
  check_pattern(b.c[0].rbuf, len);
  ASSERT_EQ(1, b.c[1].rlen);
  ASSERT_EQ(1, b.c[2].rlen);
  free(data);
  batch_close(&b);
}

TEST_IMPL(stream_batched_read_more_than_a_slot) {
  check_batched_big_read(0);
  check_batched_big_read(1);
  return 0;
}

/* A protocol with data_received and get_buffer / buffer_updated: reads go
 * to data_received (batched with the other sockets') until one returns a
 * slot's worth; from then on into get_buffer's memory, as long as reads
 * stay big (>= 16 KiB, or filling that memory); then back. */
static void check_mixed_reads(int no_io_uring) {
  struct batch b;
  size_t big = 40 * 1024;
  size_t total = 100 + 3 * big + 100 + 4000;
  char *data = pattern_new(total);
  size_t at = 0;
  batch_open_with(&b, no_io_uring, &mixed_proto);
  struct conn *c = &b.c[0];
  for (int i = 0; i < NCONN; i++)
    b.c[i].bsize = 1000;

  /* Small reads: data_received, for all three in one batch. */
  for (int i = 0; i < NCONN; i++)
    ASSERT_EQ(100, write(b.peer[i], data, 100));
  at = 100;
  ASSERT_OK(ul_loop_run_once(b.loop, 1));
  for (int i = 0; i < NCONN; i++) {
    ASSERT_EQ(100, b.c[i].rlen);
    ASSERT_EQ(0, b.c[i].gets);
  }

  /* A big one read in the batch fills its slot: still data_received, in
   * one call, from the loop's memory. */
  ASSERT_EQ((ssize_t)big, write(b.peer[0], data + at, big));
  at += big;
  ASSERT_EQ(1, write(b.peer[1], "x", 1));
  ASSERT_EQ(1, write(b.peer[2], "y", 1));
  ASSERT_OK(ul_loop_run_once(b.loop, 1));
  ASSERT_EQ(at, c->rlen);
  ASSERT_EQ(2, c->data_calls);
  ASSERT_EQ(0, c->gets);

  /* The next reads go into the protocol's 1000-byte buffers; the last of
   * them is smaller (40960 = 40 * 1000 + 960). */
  ASSERT_EQ((ssize_t)big, write(b.peer[0], data + at, big));
  at += big;
  RUN_UNTIL(b.loop, c->rlen == at);
  ASSERT_EQ(41, c->gets);
  ASSERT_EQ(2 + 41, c->data_calls);
  ASSERT_EQ(0, c->empties);

  /* That one was small: data_received again. */
  ASSERT_EQ(100, write(b.peer[0], data + at, 100));
  at += 100;
  RUN_UNTIL(b.loop, c->rlen == at);
  ASSERT_EQ(41, c->gets);
  ASSERT_EQ(2 + 41 + 1, c->data_calls);

  /* Big again, in whole buffers: the read after the last full one finds
   * nothing, and the protocol hears of it. */
  ASSERT_EQ((ssize_t)big, write(b.peer[0], data + at, big));
  at += big;
  RUN_UNTIL(b.loop, c->rlen == at);
  int gets = c->gets;
  ASSERT_EQ(4000, write(b.peer[0], data + at, 4000));
  at += 4000;
  RUN_UNTIL(b.loop, c->rlen == at);
  ASSERT_EQ(gets + 4 + 1, c->gets);
  ASSERT_EQ(1, c->empties);
  ASSERT_NULL(c->last_buf);

  /* EOF found by a read into the buffer: told, then eof_received. */
  ASSERT_OK(shutdown(b.peer[0], SHUT_WR));
  RUN_UNTIL(b.loop, c->eofs == 1);
  ASSERT_EQ(gets + 4 + 2, c->gets);
  ASSERT_EQ(2, c->empties);
  ASSERT_EQ(at, c->rlen);
  check_pattern(c->rbuf, c->rlen);
  free(data);
  batch_close(&b);
}

TEST_IMPL(stream_mixed_protocol_big_reads_into_buffer) {
  check_mixed_reads(0);
  check_mixed_reads(1);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* A readable event reads on while each read fills the buffer (up to 32     */
/* reads, as libuv): all the bytes waiting are delivered before the         */
/* callbacks that data_received scheduled run, unless it paused reading.    */

#define DRAIN_LEN (3 * 256 * 1024 + 100)
#define DRAIN_NONE ((size_t)-1)

struct drain {
  ul_loop *loop;
  ul_stream *s;
  int peer;            /* the writing end, closed (or shut down) once filled */
  size_t sent;         /* bytes the peer wrote before the loop ran */
  char *got;
  size_t got_len;
  size_t at_marker;    /* got_len when the marker ran, or DRAIN_NONE */
  int marker_set;
  int pause_first;     /* the first data_received pauses reading */
  char bufmem[64 * 1024];
  int lost;
};

static void drain_marker(ul_loop *loop, void *arg, int status) {
  struct drain *d = arg;
  (void)loop;
  ASSERT_OK(status);
  d->at_marker = d->got_len;
}

static void drain_got(struct drain *d, const char *data, size_t len) {
  ASSERT_LE(d->got_len + len, d->sent);
  memcpy(d->got + d->got_len, data, len);
  d->got_len += len;
  if (d->marker_set)
    return;
  d->marker_set = 1;
  ASSERT_OK(ul_loop_call_soon(d->loop, drain_marker, d));
  if (d->pause_first)
    ASSERT_OK(ul_stream_pause_reading(d->s));
}

static void drain_data(ul_stream *s, const char *data, size_t len,
                       void *ctx) {
  (void)s;
  drain_got(ctx, data, len);
}

static char *drain_get_buffer(ul_stream *s, size_t hint, size_t *len,
                              void *ctx) {
  struct drain *d = ctx;
  (void)s;
  (void)hint;
  *len = sizeof d->bufmem;
  return d->bufmem;
}

static void drain_updated(ul_stream *s, size_t n, void *ctx) {
  struct drain *d = ctx;
  (void)s;
  drain_got(d, d->bufmem, n);
}

static void drain_lost(ul_stream *s, int err, void *ctx) {
  struct drain *d = ctx;
  (void)s;
  ASSERT_EQ(0, err);
  d->lost = 1;
}

static const ul_stream_protocol drain_proto = {
    .data_received = drain_data,
    .connection_lost = drain_lost,
};

static const ul_stream_protocol drain_buffered_proto = {
    .get_buffer = drain_get_buffer,
    .buffer_updated = drain_updated,
    .connection_lost = drain_lost,
};

/* Fills `fd` (non-blocking) with up to DRAIN_LEN bytes of the pattern;
 * returns how many it took. */
static size_t drain_fill(int fd) {
  char *p = pattern_new(DRAIN_LEN);
  size_t n = 0;
  while (n < DRAIN_LEN) {
    ssize_t w = write(fd, p + n, DRAIN_LEN - n);
    if (w < 0) {
      ASSERT_EQ(EAGAIN, errno);
      break;
    }
    n += (size_t)w;
  }
  free(p);
  return n;
}

/* A stream on `fd`, its peer `peer` filled with DRAIN_LEN bytes (all of
 * them: the caller made room) before the loop runs. */
static void drain_open(struct drain *d, ul_loop *loop, int fd, int peer,
                       const ul_stream_protocol *p, int pause_first) {
  memset(d, 0, sizeof *d);
  d->loop = loop;
  d->peer = peer;
  d->at_marker = DRAIN_NONE;
  d->pause_first = pause_first;
  d->got = malloc(DRAIN_LEN);
  ASSERT_NOT_NULL(d->got);
  d->sent = drain_fill(peer);
  ASSERT_EQ(DRAIN_LEN, d->sent);
  ASSERT_OK(ul_stream_open(loop, fd, p, d, &d->s));
}

static void drain_finish(struct drain *d) {
  check_pattern(d->got, d->got_len);
  ASSERT_EQ(d->sent, d->got_len);
  test_close(d->peer); /* EOF: the stream closes */
  RUN_UNTIL(d->loop, d->lost);
  free(d->got);
}

/* A socketpair whose peer end can hold DRAIN_LEN bytes unread. */
static void drain_socketpair(int sv[2]) {
  int size = 2 * DRAIN_LEN;
  test_socketpair(sv);
  ASSERT_OK(setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof size));
}

/* A pipe that can hold DRAIN_LEN bytes: p[0] for the stream. */
static void drain_pipe(int p[2]) {
  ASSERT_OK(pipe2(p, O_CLOEXEC | O_NONBLOCK));
  ASSERT_GE(fcntl(p[1], F_SETPIPE_SZ, 1024 * 1024), DRAIN_LEN);
}

static void check_drain(int use_pipe, const ul_stream_protocol *p) {
  ul_loop *loop = NULL;
  struct drain d;
  int fds[2];
  ASSERT_OK(ul_loop_new(&loop, NULL));
  if (use_pipe)
    drain_pipe(fds);
  else
    drain_socketpair(fds);
  drain_open(&d, loop, fds[0], fds[1], p, 0);
  RUN_UNTIL(loop, d.at_marker != DRAIN_NONE);
  ASSERT_EQ(DRAIN_LEN, d.at_marker); /* all of it, in one event */
  drain_finish(&d);
  CLOSE_LOOP(loop);
}

TEST_IMPL(stream_read_drains_full_buffers) {
  check_drain(0, &drain_proto);
  check_drain(1, &drain_proto);
  check_drain(0, &drain_buffered_proto); /* 64 KiB buffers: 13 reads */
  return 0;
}

TEST_IMPL(stream_read_drain_stops_when_paused) {
  ul_loop *loop = NULL;
  struct drain d;
  int sv[2];
  ASSERT_OK(ul_loop_new(&loop, NULL));
  drain_socketpair(sv);
  drain_open(&d, loop, sv[0], sv[1], &drain_proto, 1);
  RUN_UNTIL(loop, d.at_marker != DRAIN_NONE);
  ASSERT_EQ(256 * 1024, d.at_marker); /* one buffer, then paused */
  ASSERT_EQ(256 * 1024, d.got_len);
  ASSERT_OK(ul_stream_resume_reading(d.s));
  RUN_UNTIL(loop, d.got_len == DRAIN_LEN);
  drain_finish(&d);
  CLOSE_LOOP(loop);
  return 0;
}

/* Two sockets one poll reports: read in a batch, then each reads on. */
static void check_drain_batched(int no_io_uring) {
  ul_loop *loop = batch_loop_new(no_io_uring);
  struct drain d[2];
  int sv[2][2];
  for (int i = 0; i < 2; i++)
    drain_socketpair(sv[i]);
  for (int i = 0; i < 2; i++)
    drain_open(&d[i], loop, sv[i][0], sv[i][1], &drain_proto, 0);
  RUN_UNTIL(loop, d[0].at_marker != DRAIN_NONE &&
                      d[1].at_marker != DRAIN_NONE);
  for (int i = 0; i < 2; i++) {
    ASSERT_EQ(DRAIN_LEN, d[i].at_marker);
    drain_finish(&d[i]);
  }
  CLOSE_LOOP(loop);
}

TEST_IMPL(stream_read_drain_batched) {
  check_drain_batched(0);
  check_drain_batched(1);
  return 0;
}
