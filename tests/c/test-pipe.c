/* Pipe transports (ul_pipe_open_read / ul_pipe_open_write): asyncio's
 * read and write pipe transports in C.
 *
 * Each test drives pipe ends, socketpairs or a PTY; a transport's protocol
 * records its callbacks as a trace, one letter per event (consecutive data
 * events merged):
 *
 *   M connection_made  D data_received  E eof_received  L connection_lost
 *   P pause_writing    R resume_writing */
#include "test.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>

#define KB 1024
#define MB (1024 * 1024)

/* Runs iterations until `cond` holds; the runner's deadline fails a test
 * that waits forever. */
#define RUN_UNTIL(loop, cond)                 \
  do {                                        \
    while (!(cond))                           \
      ASSERT_OK(ul_loop_run_once((loop), 1)); \
  } while (0)

struct end {
  ul_stream *s;
  char trace[64];
  int lost;
  int lost_err;
  int eof_ret;          /* what eof_received returns */
  char *data;           /* every byte received */
  size_t len, cap;
};

static void rec(struct end *e, char ev) {
  size_t n = strlen(e->trace);
  if (e->lost)
    UL_TEST_FAIL_("'%c' after connection_lost (%s)\n", ev, e->trace);
  if (ev == 'D' && n > 0 && e->trace[n - 1] == 'D')
    return;
  ASSERT_LT(n, sizeof e->trace - 1);
  e->trace[n] = ev;
  e->trace[n + 1] = '\0';
}

static void on_made(ul_stream *s, void *ctx) {
  struct end *e = ctx;
  ASSERT_PTR_EQ(e->s, s);
  rec(e, 'M');
}

static void on_data(ul_stream *s, const char *data, size_t len, void *ctx) {
  struct end *e = ctx;
  (void)s;
  rec(e, 'D');
  if (e->len + len > e->cap) {
    e->cap = (e->len + len) * 2;
    e->data = realloc(e->data, e->cap);
    ASSERT_NOT_NULL(e->data);
  }
  memcpy(e->data + e->len, data, len);
  e->len += len;
}

static int on_eof(ul_stream *s, void *ctx) {
  (void)s;
  rec(ctx, 'E');
  return ((struct end *)ctx)->eof_ret;
}

static void on_lost(ul_stream *s, int err, void *ctx) {
  struct end *e = ctx;
  rec(e, 'L');
  e->lost = 1;
  e->lost_err = err;
  ASSERT_EQ(1, ul_stream_is_closing(s));
  ASSERT_EQ(-EPIPE, ul_stream_write(s, "x", 1));
}

static void on_pause(ul_stream *s, void *ctx) {
  (void)s;
  rec(ctx, 'P');
}

static void on_resume(ul_stream *s, void *ctx) {
  (void)s;
  rec(ctx, 'R');
}

static const ul_stream_protocol reader_proto = {
    .connection_made = on_made,
    .data_received = on_data,
    .eof_received = on_eof,
    .connection_lost = on_lost,
};

/* No data callback: a write pipe does not need one. */
static const ul_stream_protocol writer_proto = {
    .connection_made = on_made,
    .connection_lost = on_lost,
    .pause_writing = on_pause,
    .resume_writing = on_resume,
};

static void open_reader(ul_loop *loop, struct end *e, int fd) {
  memset(e, 0, sizeof *e);
  ASSERT_OK(ul_pipe_open_read(loop, fd, &reader_proto, e, &e->s));
  ASSERT_STR_EQ("", e->trace); /* nothing from inside the call */
}

static void open_writer(ul_loop *loop, struct end *e, int fd) {
  memset(e, 0, sizeof *e);
  ASSERT_OK(ul_pipe_open_write(loop, fd, &writer_proto, e, &e->s));
  ASSERT_STR_EQ("", e->trace);
}

/* A blocking pipe, as a child process's would be: the transports must make
 * their ends non-blocking. */
static void blocking_pipe(int fds[2]) {
  ASSERT_OK(pipe2(fds, O_CLOEXEC));
}

static size_t drain(int fd) {
  char buf[64 * KB];
  size_t total = 0;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      total += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      ASSERT_EQ(EAGAIN, errno);
    return total;
  }
}

static size_t fill(int fd) {
  char buf[64 * KB];
  size_t total = 0;
  memset(buf, 'f', sizeof buf);
  for (size_t chunk = sizeof buf; chunk > 0; chunk /= 2)
    for (;;) {
      ssize_t n = write(fd, buf, chunk);
      if (n < 0) {
        ASSERT_EQ(EAGAIN, errno);
        break;
      }
      total += (size_t)n;
    }
  return total;
}

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  ASSERT_NE(-1, fl);
  ASSERT_OK(fcntl(fd, F_SETFL, fl | O_NONBLOCK));
}

/* ------------------------------------------------------------------------ */

/* A write pipe and a read pipe on the two ends of one pipe: 4 MiB goes
 * through in order, close flushes, and the reader sees EOF then the end. */
TEST_IMPL(pipe_read_write) {
  ul_loop *loop = test_loop_new();
  struct end r, w;
  int fds[2];
  size_t len = 4 * MB;
  char *out = malloc(len);
  ASSERT_NOT_NULL(out);
  for (size_t i = 0; i < len; i++)
    out[i] = (char)(i * 7 + (i >> 12));

  blocking_pipe(fds);
  open_reader(loop, &r, fds[0]);
  open_writer(loop, &w, fds[1]);
  ASSERT(fcntl(fds[0], F_GETFL) & O_NONBLOCK);
  ASSERT(fcntl(fds[1], F_GETFL) & O_NONBLOCK);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  ASSERT_STR_EQ("M", r.trace);
  ASSERT_EQ(1, ul_stream_is_reading(r.s));
  ASSERT_EQ(0, ul_stream_is_reading(w.s));
  ASSERT_OK(ul_stream_write(w.s, out, len / 2));
  ASSERT_OK(ul_stream_write(w.s, out + len / 2, len - len / 2));
  ASSERT_GT(ul_stream_get_write_buffer_size(w.s), 0);
  ASSERT_OK(ul_stream_close(w.s));
  ASSERT_EQ(-EPIPE, ul_stream_write(w.s, "x", 1));
  RUN_UNTIL(loop, r.lost && w.lost);
  ASSERT_STR_EQ("MPRL", w.trace);
  ASSERT_EQ(0, w.lost_err);
  ASSERT_STR_EQ("MDEL", r.trace);
  ASSERT_EQ(0, r.lost_err);
  ASSERT_EQ(len, r.len);
  ASSERT_OK(memcmp(out, r.data, len));
  ASSERT(!test_fd_is_open(fds[0]));
  ASSERT(!test_fd_is_open(fds[1]));
  CLOSE_LOOP(loop);
  free(out);
  free(r.data);
  return 0;
}

/* EOF ends a read pipe even when eof_received asks to stay open; a read
 * pipe does not write. */
TEST_IMPL(pipe_read_eof_always_closes) {
  ul_loop *loop = test_loop_new();
  struct end r;
  int fds[2];

  test_pipe(fds);
  open_reader(loop, &r, fds[0]);
  r.eof_ret = 1;
  ASSERT_EQ(-EPIPE, ul_stream_write(r.s, "x", 1));
  ASSERT_EQ(0, ul_stream_can_write_eof(r.s));
  ASSERT_EQ(-ENOTSUP, ul_stream_write_eof(r.s));
  ASSERT_EQ(3, write(fds[1], "abc", 3));
  test_close(fds[1]);
  RUN_UNTIL(loop, r.lost);
  ASSERT_STR_EQ("MDEL", r.trace);
  ASSERT_EQ(0, r.lost_err);
  ASSERT_EQ(3, r.len);
  ASSERT_OK(memcmp(r.data, "abc", 3));
  CLOSE_LOOP(loop);
  free(r.data);
  return 0;
}

/* The reader goes away while nothing is queued: the transport notices
 * without writing, and ends cleanly (asyncio: connection_lost(None)). */
TEST_IMPL(pipe_reader_gone_idle) {
  ul_loop *loop = test_loop_new();
  struct end w;
  int fds[2];

  test_pipe(fds);
  open_writer(loop, &w, fds[1]);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  test_close(fds[0]);
  RUN_UNTIL(loop, w.lost);
  ASSERT_STR_EQ("ML", w.trace);
  ASSERT_EQ(0, w.lost_err);
  ASSERT(!test_fd_is_open(fds[1]));
  CLOSE_LOOP(loop);
  return 0;
}

/* The reader goes away with bytes queued: they are dropped and the end is
 * -EPIPE (BrokenPipeError). */
TEST_IMPL(pipe_reader_gone_with_data) {
  ul_loop *loop = test_loop_new();
  struct end w;
  int fds[2];
  static char big[256 * KB];

  test_pipe(fds);
  open_writer(loop, &w, fds[1]);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  ASSERT_OK(ul_stream_write(w.s, big, sizeof big));
  ASSERT_GT(ul_stream_get_write_buffer_size(w.s), 0);
  test_close(fds[0]);
  RUN_UNTIL(loop, w.lost);
  ASSERT_STR_EQ("MPL", w.trace);
  ASSERT_EQ(-EPIPE, w.lost_err);
  CLOSE_LOOP(loop);
  return 0;
}

/* A write to a pipe whose reader is already gone: -EPIPE through
 * connection_lost, not a return value, not a SIGPIPE (ignored here). */
TEST_IMPL(pipe_broken_write) {
  ul_loop *loop = test_loop_new();
  struct end w;
  int fds[2];

  test_pipe(fds);
  open_writer(loop, &w, fds[1]);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  test_close(fds[0]);
  ASSERT_OK(ul_stream_write(w.s, "x", 1));
  ASSERT_EQ(1, ul_stream_is_closing(w.s));
  RUN_UNTIL(loop, w.lost);
  ASSERT_STR_EQ("ML", w.trace);
  ASSERT_EQ(-EPIPE, w.lost_err);
  CLOSE_LOOP(loop);
  return 0;
}

/* A socket as a write pipe: its peer closing ends it, as a pipe's reader
 * going away does.  And a socket as a read pipe. */
TEST_IMPL(pipe_on_sockets) {
  ul_loop *loop = test_loop_new();
  struct end w, r;
  int sv[2], sv2[2];

  ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
  open_writer(loop, &w, sv[0]);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  ASSERT_OK(ul_stream_write(w.s, "hello", 5));
  char buf[16];
  ASSERT_EQ(5, read(sv[1], buf, sizeof buf));
  test_close(sv[1]);
  RUN_UNTIL(loop, w.lost);
  ASSERT_STR_EQ("ML", w.trace);
  ASSERT_EQ(0, w.lost_err);

  ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2));
  open_reader(loop, &r, sv2[0]);
  ASSERT_EQ(-EPIPE, ul_stream_write(r.s, "x", 1));
  ASSERT_EQ(2, write(sv2[1], "hi", 2));
  ASSERT_OK(shutdown(sv2[1], SHUT_WR));
  RUN_UNTIL(loop, r.lost);
  ASSERT_STR_EQ("MDEL", r.trace);
  ASSERT_EQ(2, r.len);
  test_close(sv2[1]);
  CLOSE_LOOP(loop);
  free(r.data);
  return 0;
}

/* A PTY: the master as a read pipe, the slave as a write pipe (a character
 * device: not watched for a reader going away).  Closing the slave makes
 * the master's read fail with EIO, which ends the read pipe. */
TEST_IMPL(pipe_pty) {
  ul_loop *loop = test_loop_new();
  struct end r, w;
  int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0)
    RETURN_SKIP("posix_openpt: no PTY on this machine");
  ASSERT_OK(grantpt(master));
  ASSERT_OK(unlockpt(master));
  int slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
  ASSERT_GE(slave, 0);
  struct termios tio;
  ASSERT_OK(tcgetattr(slave, &tio));
  cfmakeraw(&tio);
  ASSERT_OK(tcsetattr(slave, TCSANOW, &tio));

  open_reader(loop, &r, master);
  open_writer(loop, &w, slave);
  RUN_UNTIL(loop, strlen(r.trace) > 0 && strlen(w.trace) > 0);
  ASSERT_EQ(NULL, ul_loop_get_reader(loop, slave)); /* not watched */
  ASSERT_OK(ul_stream_write(w.s, "hello pty", 9));
  RUN_UNTIL(loop, r.len >= 9);
  ASSERT_OK(memcmp(r.data, "hello pty", 9));
  ASSERT_EQ(1, ul_stream_can_write_eof(w.s));
  ASSERT_OK(ul_stream_write_eof(w.s)); /* = close */
  RUN_UNTIL(loop, w.lost && r.lost);
  ASSERT_STR_EQ("ML", w.trace);
  ASSERT_EQ(0, w.lost_err);
  ASSERT_STR_EQ("MDL", r.trace);
  ASSERT_EQ(-EIO, r.lost_err);
  CLOSE_LOOP(loop);
  free(r.data);
  return 0;
}

/* Water marks: pause_writing above high, resume_writing at low, with the
 * reader draining by hand. */
TEST_IMPL(pipe_water_marks) {
  ul_loop *loop = test_loop_new();
  struct end w;
  int fds[2];
  static char chunk[4 * KB];
  size_t lo, hi;

  test_pipe(fds);
  open_writer(loop, &w, fds[1]);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  ul_stream_get_write_buffer_limits(w.s, &lo, &hi);
  ASSERT_EQ(UL_STREAM_HIGH_WATER, hi);
  ASSERT_EQ(UL_STREAM_HIGH_WATER / 4, lo);
  ASSERT_OK(ul_stream_set_write_buffer_limits(w.s, 10 * KB, 2 * KB));
  ASSERT_GT(fill(fds[1]), 0);
  ASSERT_OK(ul_stream_write(w.s, chunk, sizeof chunk));
  ASSERT_OK(ul_stream_write(w.s, chunk, sizeof chunk));
  ASSERT_STR_EQ("M", w.trace);
  ASSERT_OK(ul_stream_write(w.s, chunk, sizeof chunk));
  ASSERT_STR_EQ("MP", w.trace); /* from inside the write, as asyncio */
  ASSERT_EQ(12 * KB, ul_stream_get_write_buffer_size(w.s));
  while (strcmp(w.trace, "MPR") != 0) {
    drain(fds[0]);
    ASSERT_OK(ul_loop_run_once(loop, 1));
  }
  ASSERT_LE(ul_stream_get_write_buffer_size(w.s), 2 * KB);
  ASSERT_EQ(-EINVAL, ul_stream_set_write_buffer_limits(w.s, 1, 2));
  ASSERT_OK(ul_stream_close(w.s));
  while (!w.lost) {
    drain(fds[0]);
    ASSERT_OK(ul_loop_run_once(loop, 1));
  }
  ASSERT_EQ(0, w.lost_err);
  test_close(fds[0]);
  CLOSE_LOOP(loop);
  return 0;
}

/* close() flushes what is queued first; abort() drops it. */
TEST_IMPL(pipe_close_flushes_abort_drops) {
  ul_loop *loop = test_loop_new();
  struct end w, r;
  int fds[2];
  static char big[512 * KB];

  test_pipe(fds);
  open_writer(loop, &w, fds[1]);
  open_reader(loop, &r, fds[0]);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  ASSERT_OK(ul_stream_write(w.s, big, sizeof big));
  ASSERT_OK(ul_stream_close(w.s));
  ASSERT_OK(ul_stream_close(w.s)); /* again: nothing more */
  RUN_UNTIL(loop, w.lost && r.lost);
  ASSERT_EQ(0, w.lost_err);
  ASSERT_EQ(sizeof big, r.len);
  ASSERT_STR_EQ("MDEL", r.trace);
  free(r.data);

  test_pipe(fds);
  open_writer(loop, &w, fds[1]);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  ASSERT_OK(ul_stream_write(w.s, big, sizeof big));
  size_t queued = ul_stream_get_write_buffer_size(w.s);
  ASSERT_GT(queued, 0);
  ASSERT_OK(ul_stream_abort(w.s));
  ASSERT_EQ(0, ul_stream_get_write_buffer_size(w.s));
  RUN_UNTIL(loop, w.lost);
  ASSERT_STR_EQ("MPL", w.trace);
  ASSERT_EQ(0, w.lost_err);
  ASSERT_EQ(sizeof big - queued, drain(fds[0]));
  char c;
  ASSERT_EQ(0, read(fds[0], &c, 1)); /* EOF: the write end is closed */
  test_close(fds[0]);

  /* A read pipe closed or aborted while reading. */
  test_pipe(fds);
  open_reader(loop, &r, fds[0]);
  RUN_UNTIL(loop, strlen(r.trace) > 0);
  ASSERT_OK(ul_stream_abort(r.s));
  RUN_UNTIL(loop, r.lost);
  ASSERT_STR_EQ("ML", r.trace);
  ASSERT_EQ(0, r.lost_err);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Reading can be paused and resumed; a write pipe has nothing to pause. */
TEST_IMPL(pipe_pause_resume_reading) {
  ul_loop *loop = test_loop_new();
  struct end r, w;
  int fds[2], fds2[2];

  test_pipe(fds);
  test_pipe(fds2);
  open_reader(loop, &r, fds[0]);
  open_writer(loop, &w, fds2[1]);
  RUN_UNTIL(loop, strlen(r.trace) > 0 && strlen(w.trace) > 0);
  ASSERT_EQ(-ENOTSUP, ul_stream_pause_reading(w.s));
  ASSERT_EQ(-ENOTSUP, ul_stream_resume_reading(w.s));
  ASSERT_OK(ul_stream_pause_reading(r.s));
  ASSERT_EQ(0, ul_stream_is_reading(r.s));
  ASSERT_EQ(1, write(fds[1], "a", 1));
  for (int i = 0; i < 5; i++)
    ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_STR_EQ("M", r.trace);
  ASSERT_OK(ul_stream_resume_reading(r.s));
  ASSERT_EQ(1, ul_stream_is_reading(r.s));
  RUN_UNTIL(loop, r.len == 1);
  ASSERT_OK(ul_stream_close(r.s));
  ASSERT_OK(ul_stream_close(w.s));
  RUN_UNTIL(loop, r.lost && w.lost);
  test_close(fds[1]);
  test_close(fds2[0]);
  CLOSE_LOOP(loop);
  free(r.data);
  return 0;
}

/* What is neither a FIFO, a socket nor a character device is refused, and
 * a refused fd stays open and the caller's. */
TEST_IMPL(pipe_rejects_other_fds) {
  ul_loop *loop = test_loop_new();
  struct end e;
  ul_stream *s = NULL;
  FILE *f = tmpfile();
  ASSERT_NOT_NULL(f);
  int file = fileno(f);
  int dir = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dir, 0);
  int fds[2];
  test_pipe(fds);
  memset(&e, 0, sizeof e);

  ASSERT_EQ(-EINVAL, ul_pipe_open_read(loop, file, &reader_proto, &e, &s));
  ASSERT_EQ(-EINVAL, ul_pipe_open_write(loop, file, &writer_proto, &e, &s));
  ASSERT_EQ(-EINVAL, ul_pipe_open_read(loop, dir, &reader_proto, &e, &s));
  ASSERT_EQ(-EINVAL, ul_pipe_open_write(loop, dir, &writer_proto, &e, &s));
  ASSERT(test_fd_is_open(file));
  ASSERT(test_fd_is_open(dir));
  ASSERT_EQ(0, fcntl(file, F_GETFL) & O_NONBLOCK); /* untouched */
  ASSERT_EQ(-EBADF, ul_pipe_open_read(loop, -1, &reader_proto, &e, &s));
  ASSERT_EQ(-EBADF, ul_pipe_open_write(loop, 1000, &writer_proto, &e, &s));
  ASSERT_EQ(-EINVAL, ul_pipe_open_read(NULL, fds[0], &reader_proto, &e, &s));
  ASSERT_EQ(-EINVAL, ul_pipe_open_read(loop, fds[0], NULL, &e, &s));
  ASSERT_EQ(-EINVAL, ul_pipe_open_read(loop, fds[0], &reader_proto, &e, NULL));
  /* A read pipe needs a data callback. */
  ASSERT_EQ(-EINVAL, ul_pipe_open_read(loop, fds[0], &writer_proto, &e, &s));
  ASSERT(test_fd_is_open(fds[0]));
  ASSERT_NULL(s);
  /* A character device is accepted. */
  int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(null, 0);
  open_writer(loop, &e, null);
  ASSERT_OK(ul_stream_write(e.s, "x", 1));
  ASSERT_OK(ul_stream_close(e.s));
  RUN_UNTIL(loop, e.lost);
  ASSERT_STR_EQ("ML", e.trace);
  ASSERT(!test_fd_is_open(null));

  fclose(f);
  test_close(dir);
  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Many transports opened and ended every way leave no fd behind; the loop
 * closed with transports still open closes theirs (connection_lost with
 * -ECANCELED). */
TEST_IMPL(pipe_no_fd_leaks) {
  int before = test_count_fds();
  ul_loop *loop = test_loop_new();
  enum { N = 50 };
  static struct end r[N], w[N];
  int fds[2];

  for (int i = 0; i < N; i++) {
    test_pipe(fds);
    open_reader(loop, &r[i], fds[0]);
    open_writer(loop, &w[i], fds[1]);
  }
  RUN_UNTIL(loop, strlen(w[N - 1].trace) > 0);
  for (int i = 0; i < N; i++) {
    ASSERT_OK(ul_stream_write(w[i].s, "data", 4));
    switch (i % 3) {
    case 0: ASSERT_OK(ul_stream_close(w[i].s)); break;
    case 1: ASSERT_OK(ul_stream_abort(w[i].s)); break;
    default: ASSERT_OK(ul_stream_close(r[i].s)); break;
    }
  }
  for (int i = 0; i < N; i++)
    RUN_UNTIL(loop, r[i].lost && w[i].lost);
  for (int i = 0; i < N; i++) {
    ASSERT_EQ(0, r[i].lost_err);
    ASSERT_EQ(0, w[i].lost_err);
    free(r[i].data);
  }

  /* Still open when the loop closes. */
  test_pipe(fds);
  open_reader(loop, &r[0], fds[0]);
  open_writer(loop, &w[0], fds[1]);
  RUN_UNTIL(loop, strlen(w[0].trace) > 0);
  CLOSE_LOOP(loop);
  ASSERT_STR_EQ("ML", r[0].trace);
  ASSERT_EQ(-ECANCELED, r[0].lost_err);
  ASSERT_EQ(-ECANCELED, w[0].lost_err);
  ASSERT_EQ(before, test_count_fds());
  return 0;
}

/* A write pipe whose fd was given blocking, in the middle of a program that
 * also reads from a non-blocking peer by hand. */
TEST_IMPL(pipe_write_then_peer_reads) {
  ul_loop *loop = test_loop_new();
  struct end w;
  int fds[2];
  blocking_pipe(fds);
  set_nonblock(fds[0]);
  open_writer(loop, &w, fds[1]);
  ASSERT_OK(ul_stream_write(w.s, "early", 5)); /* before connection_made */
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  char buf[8];
  ASSERT_EQ(5, read(fds[0], buf, sizeof buf));
  ASSERT_OK(memcmp(buf, "early", 5));
  ASSERT_OK(ul_stream_write_eof(w.s));
  RUN_UNTIL(loop, w.lost);
  ASSERT_EQ(0, read(fds[0], buf, sizeof buf));
  test_close(fds[0]);
  CLOSE_LOOP(loop);
  return 0;
}

/* ul_stream_write_ref: what the pipe does not take is sent from the
 * caller's memory, in order with copied writes, and given back once. */
static int released[4];

static void release_cb(void *arg) {
  released[(intptr_t)arg]++;
}

TEST_IMPL(pipe_write_ref) {
  ul_loop *loop = test_loop_new();
  struct end w, r;
  int fds[2];
  size_t big = 1 * MB;
  char *a = malloc(big), *c = malloc(big);
  ASSERT_NOT_NULL(a);
  ASSERT_NOT_NULL(c);
  memset(a, 'a', big);
  memset(c, 'c', big);
  memset(released, 0, sizeof released);

  test_pipe(fds);
  open_writer(loop, &w, fds[1]);
  open_reader(loop, &r, fds[0]);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  /* Small enough to go at once: not kept, never released. */
  ASSERT_EQ(0, ul_stream_write_ref(w.s, "xyz", 3, release_cb, (void *)0));
  ASSERT_EQ(-EINVAL, ul_stream_write_ref(w.s, "x", 1, NULL, NULL));
  /* Kept: the pipe takes at most its capacity now. */
  ASSERT_EQ(1, ul_stream_write_ref(w.s, a, big, release_cb, (void *)1));
  ASSERT_GT(ul_stream_get_write_buffer_size(w.s), big / 2);
  ASSERT_OK(ul_stream_write(w.s, "B", 1)); /* copied, after a */
  /* A copy is waiting: c is copied too rather than overtaking it. */
  ASSERT_EQ(0, ul_stream_write_ref(w.s, c, big, release_cb, (void *)2));
  memset(c, '!', big); /* the stream must not see this */
  ASSERT_EQ(0, released[1]);
  ASSERT_OK(ul_stream_close(w.s));
  RUN_UNTIL(loop, w.lost && r.lost);
  ASSERT_EQ(0, released[0]);
  ASSERT_EQ(1, released[1]);
  ASSERT_EQ(0, released[2]);
  ASSERT_EQ(3 + big + 1 + big, r.len);
  ASSERT_OK(memcmp(r.data, "xyz", 3));
  for (size_t i = 0; i < big; i++)
    if (r.data[3 + i] != 'a' || r.data[3 + big + 1 + i] != 'c')
      UL_TEST_FAIL_("byte %zu out of order\n", i);
  ASSERT_EQ('B', r.data[3 + big]);
  free(r.data);

  /* Dropped by abort, by a vanished reader and by the loop's close: each
   * released exactly once. */
  memset(released, 0, sizeof released);
  for (int how = 1; how <= 3; how++) {
    test_pipe(fds);
    open_writer(loop, &w, fds[1]);
    RUN_UNTIL(loop, strlen(w.trace) > 0);
    ASSERT_EQ(1, ul_stream_write_ref(w.s, a, big, release_cb,
                                     (void *)(intptr_t)how));
    if (how == 1)
      ASSERT_OK(ul_stream_abort(w.s));
    if (how == 2)
      test_close(fds[0]);
    if (how < 3) {
      RUN_UNTIL(loop, w.lost);
      ASSERT_EQ(1, released[how]);
    }
    if (how != 2)
      test_close(fds[0]);
  }
  ASSERT_EQ(0, released[3]);
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, released[3]);
  ASSERT_EQ(-ECANCELED, w.lost_err);
  free(a);
  free(c);
  return 0;
}

/* A write pipe whose queue drained keeps its writer only until the next
 * writable event finds nothing to write: an idle pipe is not polled. */
TEST_IMPL(pipe_writer_disarms_when_idle) {
  ul_loop *loop = test_loop_new();
  struct end w;
  int fds[2];
  static char chunk[64 * KB];

  test_pipe(fds);
  open_writer(loop, &w, fds[1]);
  RUN_UNTIL(loop, strlen(w.trace) > 0);
  ASSERT_GT(fill(fds[1]), 0);
  ASSERT_OK(ul_stream_write(w.s, chunk, sizeof chunk));
  ASSERT_PTR_EQ(w.s, ul_loop_get_writer(loop, fds[1]));
  while (ul_stream_get_write_buffer_size(w.s) > 0) {
    drain(fds[0]);
    ASSERT_OK(ul_loop_run_once(loop, 1));
  }
  drain(fds[0]);
  for (int i = 0; i < 3; i++)
    ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_NULL(ul_loop_get_writer(loop, fds[1]));
  /* Writing again works as before. */
  ASSERT_OK(ul_stream_write(w.s, "again", 5));
  char buf[8];
  ASSERT_EQ(5, read(fds[0], buf, sizeof buf));
  ASSERT_OK(ul_stream_close(w.s));
  RUN_UNTIL(loop, w.lost);
  test_close(fds[0]);
  CLOSE_LOOP(loop);
  return 0;
}
