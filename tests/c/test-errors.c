/* Error names, the error handler, and the poll hooks. */
#include "test.h"

#include <limits.h>

TEST_IMPL(errors_strerror) {
  const int codes[] = {0, -EINVAL, -EBADF, -ENOMEM, -EBUSY, -EPERM,
                       -ECANCELED, -ESHUTDOWN};
  const char *s;
  size_t i;

  for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    s = ul_strerror(codes[i]);
    ASSERT_NOT_NULL(s);
    ASSERT_GT(strlen(s), 0);
  }
  /* Each one names its own error. */
  ASSERT(strcmp(ul_strerror(-EINVAL), ul_strerror(-EBADF)) != 0);
  ASSERT(strcmp(ul_strerror(0), ul_strerror(-EINVAL)) != 0);
  ASSERT(strcmp(ul_strerror(-EBUSY), ul_strerror(-EBADF)) != 0);

  /* Unknown and odd values: still a non-empty string, never a crash. */
  {
    const int odd[] = {-123456, -4095, -100000000, INT_MIN, 1, 42, INT_MAX};
    for (i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
      s = ul_strerror(odd[i]);
      ASSERT_NOT_NULL(s);
      ASSERT_GT(strlen(s), 0);
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------ */

struct handler_log {
  int calls;
  int last_err;
  char last_msg[128];
  ul_loop *last_loop;
};

static void log_handler(ul_loop *loop, int err, const char *message,
                        void *arg) {
  struct handler_log *log = arg;
  ASSERT_NOT_NULL(message);
  log->calls++;
  log->last_err = err;
  log->last_loop = loop;
  snprintf(log->last_msg, sizeof(log->last_msg), "%s", message);
}

static void report_in_cb(ul_loop *loop, void *arg, int status) {
  struct handler_log *log = arg;
  int before = log->calls;
  ASSERT_OK(status);
  ASSERT_OK(ul_loop_report_error(loop, -ECONNRESET, "from a callback"));
  ASSERT_EQ(before + 1, log->calls); /* delivered at once */
  ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(errors_error_handler) {
  ul_loop *loop = test_loop_new();
  struct handler_log log;
  char msg[32];

  memset(&log, 0, sizeof(log));
  ASSERT_EQ(-EINVAL, ul_loop_set_error_handler(NULL, log_handler, &log));
  ASSERT_OK(ul_loop_set_error_handler(loop, log_handler, &log));

  snprintf(msg, sizeof(msg), "boom %d", 42);
  ASSERT_OK(ul_loop_report_error(loop, -EIO, msg));
  ASSERT_EQ(1, log.calls);
  ASSERT_EQ(-EIO, log.last_err);
  ASSERT_STR_EQ("boom 42", log.last_msg);
  ASSERT_PTR_EQ(loop, log.last_loop);

  ASSERT_OK(ul_loop_report_error(loop, 0, "no errno"));
  ASSERT_EQ(2, log.calls);
  ASSERT_EQ(0, log.last_err);
  ASSERT_STR_EQ("no errno", log.last_msg);

  ASSERT_EQ(-EINVAL, ul_loop_report_error(loop, -EIO, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_report_error(NULL, -EIO, "x"));
  ASSERT_EQ(2, log.calls);

  ASSERT_OK(ul_loop_call_soon(loop, report_in_cb, &log));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(3, log.calls);
  ASSERT_EQ(-ECONNRESET, log.last_err);
  ASSERT_STR_EQ("from a callback", log.last_msg);

  /* Replacing the handler: only the new one is called. */
  {
    struct handler_log log2;
    memset(&log2, 0, sizeof(log2));
    ASSERT_OK(ul_loop_set_error_handler(loop, log_handler, &log2));
    ASSERT_OK(ul_loop_report_error(loop, -EAGAIN, "second"));
    ASSERT_EQ(3, log.calls);
    ASSERT_EQ(1, log2.calls);
    ASSERT_EQ(-EAGAIN, log2.last_err);
  }
  CLOSE_LOOP(loop);
  ASSERT_EQ(3, log.calls);
  return 0;
}

/* NULL restores the default handler, which prints to stderr. */
TEST_IMPL(errors_default_handler_prints) {
  ul_loop *loop = test_loop_new();
  struct handler_log log;
  FILE *capture = tmpfile();
  char buf[4096];
  size_t n;
  int saved;

  ASSERT_NOT_NULL(capture);
  memset(&log, 0, sizeof(log));
  ASSERT_OK(ul_loop_set_error_handler(loop, log_handler, &log));
  ASSERT_OK(ul_loop_set_error_handler(loop, NULL, NULL));

  fflush(stderr);
  saved = dup(STDERR_FILENO);
  ASSERT_GE(saved, 0);
  ASSERT_EQ(STDERR_FILENO, dup2(fileno(capture), STDERR_FILENO));
  ASSERT_OK(ul_loop_report_error(loop, -EIO, "ul-test-marker-7731"));
  fflush(stderr);
  ASSERT_EQ(STDERR_FILENO, dup2(saved, STDERR_FILENO));
  test_close(saved);

  ASSERT_EQ(0, log.calls);
  rewind(capture);
  n = fread(buf, 1, sizeof(buf) - 1, capture);
  buf[n] = '\0';
  fclose(capture);
  ASSERT_NOT_NULL(strstr(buf, "ul-test-marker-7731"));
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Poll hooks                                                               */

struct hook_log {
  int before_calls;
  int after_calls;
  int timeouts[16];
  int poll_errs[16];
  int seq[32]; /* 1 = before, 2 = after, 3 = callback */
  int nseq;
  int after_ret; /* returned by the after hook */
};

static struct hook_log hl;

static void seq(int what) {
  if (hl.nseq < 32)
    hl.seq[hl.nseq++] = what;
}

static void before_hook(ul_loop *loop, int timeout_ms, void *arg) {
  ASSERT_NOT_NULL(loop);
  ASSERT_PTR_EQ(&hl, arg);
  ASSERT_EQ(1, ul_loop_is_running(loop));
  if (hl.before_calls < 16)
    hl.timeouts[hl.before_calls] = timeout_ms;
  hl.before_calls++;
  seq(1);
}

static int after_hook(ul_loop *loop, int poll_err, void *arg) {
  ASSERT_NOT_NULL(loop);
  ASSERT_PTR_EQ(&hl, arg);
  if (hl.after_calls < 16)
    hl.poll_errs[hl.after_calls] = poll_err;
  hl.after_calls++;
  seq(2);
  return hl.after_ret;
}

static int cb_calls;

static void stop_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  cb_calls++;
  seq(3);
  ASSERT_OK(ul_loop_stop(loop));
}

static void count_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  ASSERT_OK(status);
  cb_calls++;
  seq(3);
}

static void read_stop_cb(ul_loop *loop, int fd, int events, void *arg) {
  char buf[16];
  (void)arg;
  ASSERT_NE(0, events & UL_READABLE);
  cb_calls++;
  seq(3);
  ASSERT_GT(read(fd, buf, sizeof(buf)), 0);
  ASSERT_OK(ul_loop_stop(loop));
}

static void hooks_reset(void) {
  memset(&hl, 0, sizeof(hl));
  cb_calls = 0;
}

/* The before hook sees the timeout about to be used: 0 when callbacks are
 * ready, when the loop is stopping or for a non-blocking iteration; -1 when
 * nothing at all is pending. */
TEST_IMPL(errors_poll_hook_timeouts) {
  ul_loop *loop = test_loop_new();
  int fds[2];

  ASSERT_OK(ul_loop_set_poll_hooks(loop, before_hook, after_hook, &hl));

  /* Callbacks ready. */
  hooks_reset();
  ASSERT_OK(ul_loop_call_soon(loop, stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, hl.before_calls);
  ASSERT_EQ(1, hl.after_calls);
  ASSERT_EQ(0, hl.timeouts[0]);
  ASSERT_EQ(0, hl.poll_errs[0]);
  ASSERT_EQ(3, hl.nseq);
  ASSERT_EQ(1, hl.seq[0]);
  ASSERT_EQ(2, hl.seq[1]);
  ASSERT_EQ(3, hl.seq[2]);

  /* Nothing pending (a watched fd is not a pending callback): forever; the
   * data already in the pipe ends the poll. */
  hooks_reset();
  test_pipe(fds);
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], read_stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, cb_calls);
  ASSERT_EQ(1, hl.before_calls);
  ASSERT_EQ(-1, hl.timeouts[0]);
  ASSERT_EQ(0, hl.poll_errs[0]);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fds[0]));

  /* Stopping. */
  hooks_reset();
  ASSERT_OK(ul_loop_stop(loop));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, hl.before_calls);
  ASSERT_EQ(0, hl.timeouts[0]);

  /* A non-blocking iteration. */
  hooks_reset();
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, hl.before_calls);
  ASSERT_EQ(1, hl.after_calls);
  ASSERT_EQ(0, hl.timeouts[0]);

  /* A blocking iteration with a callback ready: 0 as well. */
  hooks_reset();
  ASSERT_OK(ul_loop_call_soon(loop, count_cb, NULL));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, hl.before_calls);
  ASSERT_EQ(0, hl.timeouts[0]);
  ASSERT_EQ(1, cb_calls);

  /* A due timer: 0. */
  hooks_reset();
  ASSERT_OK(ul_loop_call_later(loop, -1.0, stop_cb, NULL, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, hl.before_calls);
  ASSERT_EQ(0, hl.timeouts[0]);
  ASSERT_EQ(1, cb_calls);

  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* An after hook returning an error ends the iteration at once: run returns
 * the error and no callback (ready or I/O) runs in that iteration. */
TEST_IMPL(errors_after_poll_error_ends_run) {
  ul_loop *loop = test_loop_new();
  int fds[2];

  test_pipe(fds);
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_set_poll_hooks(loop, before_hook, after_hook, &hl));

  hooks_reset();
  hl.after_ret = -EIO;
  ASSERT_OK(ul_loop_call_soon(loop, count_cb, NULL));
  ASSERT_OK(ul_loop_call_later(loop, -1.0, count_cb, NULL, NULL));
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], read_stop_cb, NULL));
  ASSERT_EQ(-EIO, ul_loop_run(loop));
  ASSERT_EQ(0, ul_loop_is_running(loop));
  ASSERT_EQ(1, hl.before_calls);
  ASSERT_EQ(1, hl.after_calls);
  ASSERT_EQ(0, cb_calls);

  /* run_once returns it too. */
  hl.after_ret = -EINTR;
  ASSERT_EQ(-EINTR, ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, cb_calls);
  ASSERT_EQ(2, hl.after_calls);

  /* A positive value is not an error. */
  hooks_reset();
  hl.after_ret = 1;
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(3, cb_calls); /* reader, ready callback, timer */
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fds[0]));

  /* Hooks removed: the loop runs plainly. */
  hooks_reset();
  ASSERT_OK(ul_loop_set_poll_hooks(loop, NULL, NULL, NULL));
  ASSERT_OK(ul_loop_call_soon(loop, stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, cb_calls);
  ASSERT_EQ(0, hl.before_calls);
  ASSERT_EQ(0, hl.after_calls);

  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Only one hook of the two may be set. */
TEST_IMPL(errors_poll_hooks_one_sided) {
  ul_loop *loop = test_loop_new();

  hooks_reset();
  ASSERT_OK(ul_loop_set_poll_hooks(loop, before_hook, NULL, &hl));
  ASSERT_OK(ul_loop_call_soon(loop, stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, hl.before_calls);
  ASSERT_EQ(0, hl.after_calls);

  hooks_reset();
  ASSERT_OK(ul_loop_set_poll_hooks(loop, NULL, after_hook, &hl));
  ASSERT_OK(ul_loop_call_soon(loop, stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(0, hl.before_calls);
  ASSERT_EQ(1, hl.after_calls);
  ASSERT_EQ(1, cb_calls);
  CLOSE_LOOP(loop);
  return 0;
}

static int busy_result;

static void set_hooks_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  busy_result = ul_loop_set_poll_hooks(loop, before_hook, after_hook, &hl);
  ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(errors_set_poll_hooks_while_running) {
  ul_loop *loop = test_loop_new();

  hooks_reset();
  busy_result = 1;
  ASSERT_EQ(-EINVAL, ul_loop_set_poll_hooks(NULL, before_hook, after_hook, &hl));
  ASSERT_OK(ul_loop_call_soon(loop, set_hooks_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(-EBUSY, busy_result);

  /* Nothing was installed. */
  ASSERT_OK(ul_loop_call_soon(loop, stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(0, hl.before_calls);
  ASSERT_EQ(0, hl.after_calls);
  CLOSE_LOOP(loop);
  return 0;
}
