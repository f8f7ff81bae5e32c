/* ul_stream_sendfile (src/sendfile.c): a file range to a stream transport,
 * with asyncio's loop.sendfile() semantics.
 *
 * The stream is one end of a socketpair(AF_UNIX, SOCK_STREAM); the test
 * reads the other end with a reader on the same loop.  The files are
 * unlinked temporary files filled with a position-dependent pattern, so a
 * lost, repeated or misplaced byte shows. */
#include "test.h"

#include <sys/socket.h>
#include <sys/stat.h>

#define MB (1024 * 1024)

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */

static unsigned char pattern_at(size_t i) {
  return (unsigned char)(((uint32_t)i * 2654435761u) >> 24);
}

/* Asserts that buf[0, len) is the pattern from file offset `from`. */
static void check_pattern(const char *buf, size_t len, size_t from) {
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)buf[i] != pattern_at(from + i))
      UL_TEST_FAIL_("pattern mismatch at byte %zu of %zu (file offset %zu)\n",
                    i, len, from + i);
}

/* An unlinked temporary file of `size` pattern bytes, opened read-only
 * (O_CLOEXEC), positioned at 0. */
static int pattern_file(size_t size) {
  char path[] = "/tmp/ul-test-sendfile-XXXXXX";
  int fd = mkostemp(path, O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_OK(unlink(path));
  char *buf = malloc(size ? size : 1);
  ASSERT_NOT_NULL(buf);
  for (size_t i = 0; i < size; i++)
    buf[i] = (char)pattern_at(i);
  size_t off = 0;
  while (off < size) {
    ssize_t n = write(fd, buf + off, size - off);
    ASSERT_GT(n, 0);
    off += (size_t)n;
  }
  free(buf);
  ASSERT_EQ(0, lseek(fd, 0, SEEK_SET));
  return fd;
}

static off_t file_pos(int fd) {
  return lseek(fd, 0, SEEK_CUR);
}

/* The peer: reads everything the stream sends, until EOF or an error. */
struct peer {
  int fd;
  char *buf;
  size_t len, cap;
  size_t limit;  /* close after reading this much (0: never) */
  int eof;
};

static void peer_read_cb(ul_loop *loop, int fd, int events, void *arg) {
  struct peer *p = arg;
  (void)events;
  for (;;) {
    if (p->len + 65536 > p->cap) {
      p->cap = p->cap ? p->cap * 2 : 1 << 20;
      p->buf = realloc(p->buf, p->cap);
      ASSERT_NOT_NULL(p->buf);
    }
    ssize_t n = read(fd, p->buf + p->len, 65536);
    if (n > 0) {
      p->len += (size_t)n;
      if (p->limit != 0 && p->len >= p->limit) {
        ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
        test_close(fd); /* the peer goes away mid-transfer */
        p->fd = -1;
        p->eof = 1;
        return;
      }
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return;
    p->eof = 1;
    ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
    return;
  }
}

static void peer_start(struct peer *p, ul_loop *loop, int fd) {
  memset(p, 0, sizeof *p);
  p->fd = fd;
  ASSERT_OK(ul_loop_add_reader(loop, fd, peer_read_cb, p));
}

/* The stream's protocol: records the order of events. */
struct conn {
  ul_stream *s;
  char trace[16];   /* M made, F sendfile callback, L lost */
  int n;
  int lost, lost_err;
  int done, status;
  uint64_t sent;
  int in_call;      /* set around ul_stream_* calls made by the test */
  int close_in_cb;
};

static void rec(struct conn *c, char ev) {
  ASSERT_EQ(0, c->in_call);  /* never from inside a ul_stream_* call */
  ASSERT_EQ(0, c->lost);     /* nothing after connection_lost */
  ASSERT_LT(c->n, (int)sizeof c->trace - 1);
  c->trace[c->n++] = ev;
  c->trace[c->n] = '\0';
}

static void on_made(ul_stream *s, void *ctx) {
  (void)s;
  rec(ctx, 'M');
}

static void on_data(ul_stream *s, const char *d, size_t n, void *ctx) {
  (void)s;
  (void)d;
  (void)n;
  (void)ctx;
}

static void on_lost(ul_stream *s, int err, void *ctx) {
  struct conn *c = ctx;
  (void)s;
  rec(c, 'L');
  c->lost = 1;
  c->lost_err = err;
}

static const ul_stream_protocol proto = {
    .connection_made = on_made,
    .data_received = on_data,
    .connection_lost = on_lost,
};

static void on_sent(ul_stream *s, int status, uint64_t sent, void *arg) {
  struct conn *c = arg;
  ASSERT_PTR_EQ(c->s, s);
  rec(c, 'F');
  c->done++;
  c->status = status;
  c->sent = sent;
  if (c->close_in_cb)
    ASSERT_OK(ul_stream_close(s));
}

/* Opens the stream on sv[0] and a peer reader on sv[1]. */
static void setup(ul_loop *loop, struct conn *c, struct peer *p, int sv[2]) {
  memset(c, 0, sizeof *c);
  ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                       0, sv));
  ASSERT_OK(ul_stream_open(loop, sv[0], &proto, c, &c->s));
  peer_start(p, loop, sv[1]);
}

#define RUN_UNTIL(loop, cond)                                              \
  do {                                                                     \
    while (!(cond))                                                        \
      ASSERT_OK(ul_loop_run_once((loop), 1));                              \
  } while (0)

static int sendfile_call(struct conn *c, int fd, off_t offset,
                         uint64_t count) {
  c->in_call = 1;
  int r = ul_stream_sendfile(c->s, fd, offset, count, on_sent, c);
  c->in_call = 0;
  return r;
}

/* Sends [offset, offset + count) of a file of `size` bytes and checks
 * what the peer got, what the callback says and where the file is left. */
static void send_range(size_t size, off_t offset, uint64_t count,
                       size_t expect) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer p;
  int sv[2];
  int fd = pattern_file(size);

  setup(loop, &c, &p, sv);
  ASSERT_OK(sendfile_call(&c, fd, offset, count));
  RUN_UNTIL(loop, c.done);
  ASSERT_EQ(0, c.status);
  ASSERT_EQ(expect, c.sent);
  /* asyncio: offset + sent when something was sent, else untouched. */
  ASSERT_EQ(expect > 0 ? (off_t)(offset + (off_t)expect) : 0, file_pos(fd));
  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost && p.eof);
  ASSERT_STR_EQ("MFL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(expect, p.len);
  check_pattern(p.buf, p.len, (size_t)offset);
  test_close(fd);
  test_close(sv[1]);
  free(p.buf);
  CLOSE_LOOP(loop);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */

/* A file far larger than the socket buffers, whole (count 0); what was
 * written before goes first; writes wait while it runs. */
TEST_IMPL(sendfile_large_file) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer p;
  int sv[2];
  size_t size = 24 * MB + 123;
  size_t head = 2 * MB;
  int fd = pattern_file(size);
  char *first = malloc(head);
  ASSERT_NOT_NULL(first);
  for (size_t i = 0; i < head; i++)
    first[i] = (char)~pattern_at(i);

  setup(loop, &c, &p, sv);
  ASSERT_OK(ul_stream_write(c.s, first, head));
  ASSERT_GT(ul_stream_get_write_buffer_size(c.s), 0); /* queued */
  ASSERT_OK(sendfile_call(&c, fd, 0, 0));
  ASSERT_EQ(-EBUSY, ul_stream_write(c.s, "x", 1));
  ASSERT_EQ(-EBUSY, sendfile_call(&c, fd, 0, 0));
  RUN_UNTIL(loop, c.done);
  ASSERT_EQ(0, c.status);
  ASSERT_EQ(size, c.sent);
  ASSERT_EQ((off_t)size, file_pos(fd));
  /* Writing works again, after the file. */
  ASSERT_OK(ul_stream_write(c.s, "end", 3));
  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost && p.eof);
  ASSERT_STR_EQ("MFL", c.trace);
  ASSERT_EQ(head + size + 3, p.len);
  for (size_t i = 0; i < head; i++)
    ASSERT_EQ((unsigned char)first[i], (unsigned char)p.buf[i]);
  check_pattern(p.buf + head, size, 0);
  ASSERT_EQ(0, memcmp(p.buf + head + size, "end", 3));
  test_close(fd);
  test_close(sv[1]);
  free(first);
  free(p.buf);
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(sendfile_offset_count) {
  send_range(100000, 1000, 5000, 5000);       /* a range inside */
  send_range(100000, 99999, 1, 1);            /* the last byte */
  send_range(3 * MB, 12345, 0, 3 * MB - 12345); /* from offset to EOF */
  send_range(0, 0, 0, 0);                     /* an empty file */
  return 0;
}

TEST_IMPL(sendfile_count_past_eof) {
  send_range(10000, 9000, 5000, 1000);  /* stops at EOF: 1000 bytes */
  send_range(10000, 20000, 10, 0);      /* offset past EOF: nothing */
  send_range(10000, 10000, 0, 0);       /* offset at EOF */
  return 0;
}

/* The peer closes in the middle: the callback gets the error and the
 * bytes sent, then the connection is lost with the same error. */
TEST_IMPL(sendfile_peer_closes) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer p;
  int sv[2];
  size_t size = 32 * MB;
  int fd = pattern_file(size);

  setup(loop, &c, &p, sv);
  p.limit = 256 * 1024;
  ASSERT_OK(sendfile_call(&c, fd, 0, 0));
  RUN_UNTIL(loop, c.lost);
  ASSERT_STR_EQ("MFL", c.trace);
  ASSERT(c.status == -EPIPE || c.status == -ECONNRESET);
  ASSERT_EQ(c.status, c.lost_err);
  ASSERT_GE(c.sent, p.len);
  ASSERT_LT(c.sent, size);
  ASSERT_EQ((off_t)c.sent, file_pos(fd));
  check_pattern(p.buf, p.len, 0);
  test_close(fd);
  free(p.buf);
  CLOSE_LOOP(loop);
  return 0;
}

/* Not a regular file: a non-blocking pipe, read as data comes (the
 * sendfile waits for it), until its writer closes it. */
static void pipe_feed(ul_loop *loop, void *arg, int status) {
  int *w = arg;
  (void)loop;
  if (status != 0)
    return;
  char buf[70000];
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = (char)pattern_at(1000 + i);
  ASSERT_EQ((ssize_t)sizeof buf, write(*w, buf, sizeof buf));
  test_close(*w);
  *w = -1;
}

TEST_IMPL(sendfile_pipe_fallback) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer p;
  int sv[2], pfd[2];
  char first[1000];

  ASSERT_OK(pipe2(pfd, O_CLOEXEC | O_NONBLOCK));
  ASSERT_OK(fcntl(pfd[1], F_SETFL, 0)); /* the feeder writes blocking */
  ASSERT_GE(fcntl(pfd[1], F_SETPIPE_SZ, 1 << 20), 71000);
  for (size_t i = 0; i < sizeof first; i++)
    first[i] = (char)pattern_at(i);
  ASSERT_EQ((ssize_t)sizeof first, write(pfd[1], first, sizeof first));

  setup(loop, &c, &p, sv);
  /* A pipe cannot seek: only offset 0 (its current position). */
  ASSERT_EQ(-ESPIPE, sendfile_call(&c, pfd[0], 10, 0));
  ASSERT_EQ(-EBADF, sendfile_call(&c, pfd[1], 0, 0)); /* write end */
  ASSERT_OK(sendfile_call(&c, pfd[0], 0, 0));
  /* The first 1000 bytes go, then it waits for the pipe. */
  RUN_UNTIL(loop, p.len == sizeof first);
  ASSERT_EQ(0, c.done);
  ASSERT_OK(ul_loop_call_soon(loop, pipe_feed, &pfd[1]));
  RUN_UNTIL(loop, c.done);
  ASSERT_EQ(0, c.status);
  ASSERT_EQ(71000, c.sent);
  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost && p.eof);
  ASSERT_STR_EQ("MFL", c.trace);
  ASSERT_EQ(71000, p.len);
  check_pattern(p.buf, p.len, 0);

  /* With a count: stops there, the rest stays in the pipe. */
  struct conn c2;
  struct peer p2;
  int sv2[2], q[2];
  char rest[16];
  ASSERT_OK(pipe2(q, O_CLOEXEC | O_NONBLOCK));
  ASSERT_EQ(5000, write(q[1], p.buf, 5000));
  setup(loop, &c2, &p2, sv2);
  c2.close_in_cb = 1;
  ASSERT_OK(ul_stream_sendfile(c2.s, q[0], 0, 4990, on_sent, &c2));
  RUN_UNTIL(loop, c2.lost && p2.eof);
  ASSERT_STR_EQ("MFL", c2.trace);
  ASSERT_EQ(0, c2.status);
  ASSERT_EQ(4990, c2.sent);
  ASSERT_EQ(4990, p2.len);
  check_pattern(p2.buf, p2.len, 0);
  ASSERT_EQ(10, read(q[0], rest, sizeof rest));
  check_pattern(rest, 10, 4990);

  test_close(pfd[0]);
  test_close(q[0]);
  test_close(q[1]);
  test_close(sv[1]);
  test_close(sv2[1]);
  free(p.buf);
  free(p2.buf);
  CLOSE_LOOP(loop);
  return 0;
}

/* close() lets the sendfile finish, then closes; abort() cancels it. */
TEST_IMPL(sendfile_close_and_abort) {
  ul_loop *loop = test_loop_new();
  struct conn c, c2;
  struct peer p, p2;
  int sv[2], sv2[2];
  size_t size = 16 * MB;
  int fd = pattern_file(size);

  setup(loop, &c, &p, sv);
  ASSERT_OK(sendfile_call(&c, fd, 0, 0));
  c.in_call = 1;
  ASSERT_OK(ul_stream_close(c.s));
  ASSERT_OK(ul_stream_write_eof(c.s));
  c.in_call = 0;
  RUN_UNTIL(loop, c.lost && p.eof);
  ASSERT_STR_EQ("MFL", c.trace);
  ASSERT_EQ(0, c.status);
  ASSERT_EQ(size, c.sent);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(size, p.len);
  check_pattern(p.buf, p.len, 0);

  ASSERT_EQ(0, lseek(fd, 0, SEEK_SET));
  setup(loop, &c2, &p2, sv2);
  ASSERT_OK(sendfile_call(&c2, fd, 0, 0));
  RUN_UNTIL(loop, p2.len > 0);
  c2.in_call = 1;
  ASSERT_OK(ul_stream_abort(c2.s));
  c2.in_call = 0;
  RUN_UNTIL(loop, c2.lost && p2.eof);
  ASSERT_STR_EQ("MFL", c2.trace);
  ASSERT_EQ(-ECANCELED, c2.status);
  ASSERT_EQ(0, c2.lost_err);
  ASSERT_LT(c2.sent, size);
  ASSERT_EQ(c2.sent, p2.len);
  ASSERT_EQ((off_t)c2.sent, file_pos(fd));
  check_pattern(p2.buf, p2.len, 0);

  test_close(fd);
  test_close(sv[1]);
  test_close(sv2[1]);
  free(p.buf);
  free(p2.buf);
  CLOSE_LOOP(loop);
  return 0;
}

/* The loop closes while a sendfile waits: the callback gets -ECANCELED,
 * before connection_lost. */
TEST_IMPL(sendfile_loop_close_cancels) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer p;
  int sv[2];
  int fd = pattern_file(8 * MB);

  setup(loop, &c, &p, sv);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[1])); /* the peer stalls */
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_OK(sendfile_call(&c, fd, 0, 0));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, c.done);
  CLOSE_LOOP(loop);
  ASSERT_STR_EQ("MFL", c.trace);
  ASSERT_EQ(-ECANCELED, c.status);
  ASSERT_EQ(-ECANCELED, c.lost_err);
  ASSERT_GT(c.sent, 0);
  test_close(fd);
  test_close(sv[1]);
  free(p.buf);
  return 0;
}

TEST_IMPL(sendfile_bad_args) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer p;
  int sv[2], pfd[2];
  int fd = pattern_file(100);

  setup(loop, &c, &p, sv);
  ASSERT_EQ(-EINVAL, ul_stream_sendfile(NULL, fd, 0, 0, on_sent, &c));
  ASSERT_EQ(-EINVAL, ul_stream_sendfile(c.s, fd, 0, 0, NULL, &c));
  ASSERT_EQ(-EINVAL, sendfile_call(&c, -1, 0, 0));
  ASSERT_EQ(-EINVAL, sendfile_call(&c, fd, -1, 0));
  test_pipe(pfd);
  test_close(pfd[1]);
  ASSERT_EQ(-EBADF, sendfile_call(&c, pfd[1], 0, 0)); /* closed fd */
  test_close(pfd[0]);
  ASSERT_OK(ul_stream_write_eof(c.s));
  ASSERT_EQ(-EPIPE, sendfile_call(&c, fd, 0, 0));
  ASSERT_OK(ul_stream_close(c.s));
  ASSERT_EQ(-EPIPE, sendfile_call(&c, fd, 0, 0));
  RUN_UNTIL(loop, c.lost && p.eof);
  ASSERT_STR_EQ("ML", c.trace);
  ASSERT_EQ(0, c.done);
  ASSERT_EQ(0, file_pos(fd));
  test_close(fd);
  test_close(sv[1]);
  free(p.buf);
  CLOSE_LOOP(loop);
  return 0;
}

/* ul_stream_sendfile_cancel (asyncio: the awaiting task is cancelled):
 * the callback gets -ECANCELED and what was sent, the stream stays open
 * and writable at once. */
TEST_IMPL(sendfile_cancel) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer p;
  int sv[2];
  size_t size = 8 * MB;
  int fd = pattern_file(size);

  setup(loop, &c, &p, sv);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[1])); /* the peer stalls */
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, ul_stream_sendfile_cancel(c.s));     /* none running */
  ASSERT_OK(sendfile_call(&c, fd, 0, 0));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  c.in_call = 1;
  ASSERT_EQ(1, ul_stream_sendfile_cancel(c.s));
  ASSERT_EQ(0, ul_stream_sendfile_cancel(c.s));
  ASSERT_OK(ul_stream_write(c.s, "tail", 4));
  c.in_call = 0;
  ASSERT_EQ(0, c.done);  /* the callback runs from the loop */
  RUN_UNTIL(loop, c.done);
  ASSERT_EQ(-ECANCELED, c.status);
  ASSERT_GT(c.sent, 0);
  ASSERT_LT(c.sent, size);
  ASSERT_EQ((off_t)c.sent, file_pos(fd));
  ASSERT_EQ(0, ul_stream_is_closing(c.s));
  ASSERT_OK(ul_stream_close(c.s));
  peer_start(&p, loop, sv[1]);
  RUN_UNTIL(loop, c.lost && p.eof);
  ASSERT_STR_EQ("MFL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(c.sent + 4, p.len);
  check_pattern(p.buf, (size_t)c.sent, 0);
  ASSERT_EQ(0, memcmp(p.buf + c.sent, "tail", 4));
  test_close(fd);
  test_close(sv[1]);
  free(p.buf);
  CLOSE_LOOP(loop);
  return 0;
}

/* An error reading the file (a directory: EISDIR) goes to the callback
 * only; the connection stays open. */
TEST_IMPL(sendfile_file_error) {
  ul_loop *loop = test_loop_new();
  struct conn c;
  struct peer p;
  int sv[2];
  int dir = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dir, 0);

  setup(loop, &c, &p, sv);
  ASSERT_OK(sendfile_call(&c, dir, 0, 0));
  RUN_UNTIL(loop, c.done);
  ASSERT_EQ(-EISDIR, c.status);
  ASSERT_EQ(0, c.sent);
  ASSERT_EQ(0, ul_stream_is_closing(c.s));
  ASSERT_OK(ul_stream_write(c.s, "ok", 2));
  ASSERT_OK(ul_stream_close(c.s));
  RUN_UNTIL(loop, c.lost && p.eof);
  ASSERT_STR_EQ("MFL", c.trace);
  ASSERT_EQ(0, c.lost_err);
  ASSERT_EQ(2, p.len);
  test_close(dir);
  test_close(sv[1]);
  free(p.buf);
  CLOSE_LOOP(loop);
  return 0;
}
