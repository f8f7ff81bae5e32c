/* The loop object: creation, backends, run/stop/break, time, user data. */
#include "test.h"

#include <math.h>

/* ------------------------------------------------------------------------ */

TEST_IMPL(loop_new_close) {
  ul_loop *loop = NULL;
  ul_loop_options opts;

  ASSERT_OK(ul_loop_new(&loop, NULL));
  ASSERT_NOT_NULL(loop);
  ASSERT_EQ(0, ul_loop_is_running(loop));
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_LT(ul_loop_next_deadline(loop), 0.0);
  CLOSE_LOOP(loop);

  memset(&opts, 0, sizeof(opts));
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, &opts));
  ASSERT_NOT_NULL(loop);
  CLOSE_LOOP(loop);

  /* Several loops at once are independent. */
  {
    ul_loop *a = NULL, *b = NULL;
    ASSERT_OK(ul_loop_new(&a, NULL));
    ASSERT_OK(ul_loop_new(&b, NULL));
    ASSERT_PTR_NE(a, b);
    CLOSE_LOOP(a);
    CLOSE_LOOP(b);
  }
  return 0;
}

TEST_IMPL(loop_new_each_backend) {
  ul_loop *loop;
  ul_loop_options opts;

  memset(&opts, 0, sizeof(opts));
  opts.backend = UL_BACKEND_EPOLL;
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, &opts));
  ASSERT_STR_EQ("epoll", ul_loop_backend_name(loop));
  CLOSE_LOOP(loop);

  opts.backend = UL_BACKEND_POLL;
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, &opts));
  ASSERT_STR_EQ("poll", ul_loop_backend_name(loop));
  CLOSE_LOOP(loop);

  opts.backend = UL_BACKEND_DEFAULT;
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, &opts));
  {
    const char *name = ul_loop_backend_name(loop);
    ASSERT_NOT_NULL(name);
    ASSERT(strcmp(name, "epoll") == 0 || strcmp(name, "poll") == 0);
  }
  CLOSE_LOOP(loop);
  return 0;
}

/* The default backend follows $UNIXLOOP_BACKEND; epoll when unset. */
TEST_IMPL(loop_backend_env) {
  ul_loop *loop;
  ul_loop_options opts;

  ASSERT_OK(setenv("UNIXLOOP_BACKEND", "poll", 1));
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, NULL));
  ASSERT_STR_EQ("poll", ul_loop_backend_name(loop));
  CLOSE_LOOP(loop);

  memset(&opts, 0, sizeof(opts));
  opts.backend = UL_BACKEND_DEFAULT;
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, &opts));
  ASSERT_STR_EQ("poll", ul_loop_backend_name(loop));
  CLOSE_LOOP(loop);

  /* An explicit backend wins over the environment. */
  opts.backend = UL_BACKEND_EPOLL;
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, &opts));
  ASSERT_STR_EQ("epoll", ul_loop_backend_name(loop));
  CLOSE_LOOP(loop);

  ASSERT_OK(setenv("UNIXLOOP_BACKEND", "epoll", 1));
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, NULL));
  ASSERT_STR_EQ("epoll", ul_loop_backend_name(loop));
  CLOSE_LOOP(loop);

  opts.backend = UL_BACKEND_POLL;
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, &opts));
  ASSERT_STR_EQ("poll", ul_loop_backend_name(loop));
  CLOSE_LOOP(loop);

  ASSERT_OK(unsetenv("UNIXLOOP_BACKEND"));
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, NULL));
  ASSERT_STR_EQ("epoll", ul_loop_backend_name(loop));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(loop_backend_env_invalid) {
  ul_loop *loop = NULL;
  ul_loop_options opts;

  ASSERT_OK(setenv("UNIXLOOP_BACKEND", "kqueue", 1));
  ASSERT_EQ(-EINVAL, ul_loop_new(&loop, NULL));
  memset(&opts, 0, sizeof(opts));
  opts.backend = UL_BACKEND_DEFAULT;
  ASSERT_EQ(-EINVAL, ul_loop_new(&loop, &opts));

  ASSERT_OK(setenv("UNIXLOOP_BACKEND", "EPOLLX", 1));
  ASSERT_EQ(-EINVAL, ul_loop_new(&loop, NULL));

  ASSERT_OK(unsetenv("UNIXLOOP_BACKEND"));
  loop = NULL;
  ASSERT_OK(ul_loop_new(&loop, NULL));
  ASSERT_NOT_NULL(loop);
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(loop_new_invalid) {
  ul_loop *loop = NULL;
  ul_loop_options opts;

  ASSERT_EQ(-EINVAL, ul_loop_new(NULL, NULL));
  memset(&opts, 0, sizeof(opts));
  ASSERT_EQ(-EINVAL, ul_loop_new(NULL, &opts));

  opts.backend = (ul_backend)99;
  ASSERT_EQ(-EINVAL, ul_loop_new(&loop, &opts));
  ASSERT_NULL(loop);
  opts.backend = (ul_backend)-1;
  ASSERT_EQ(-EINVAL, ul_loop_new(&loop, &opts));
  ASSERT_NULL(loop);

  /* Functions taking a loop reject NULL. */
  ASSERT_EQ(-EINVAL, ul_loop_close(NULL));
  ASSERT_EQ(-EINVAL, ul_loop_run(NULL));
  ASSERT_EQ(-EINVAL, ul_loop_run_once(NULL, 0));
  ASSERT_EQ(-EINVAL, ul_loop_stop(NULL));
  ASSERT_EQ(-EINVAL, ul_loop_break(NULL, -EINTR));
  return 0;
}

/* The loop's own fds (backend, wake-up) are close-on-exec and released by
 * ul_loop_close(). */
TEST_IMPL(loop_fds_cloexec_and_released) {
  enum { MAXFD = 1024 };
  static char was_open[MAXFD];
  int before = test_count_fds();
  int fd, created = 0;
  ul_loop *loop;

  for (fd = 0; fd < MAXFD; fd++)
    was_open[fd] = fcntl(fd, F_GETFD) != -1;
  loop = test_loop_new();
  for (fd = 0; fd < MAXFD; fd++) {
    int flags = fcntl(fd, F_GETFD);
    if (flags == -1 || was_open[fd])
      continue;
    created++;
    ASSERT_NE(0, flags & FD_CLOEXEC);
  }
  ASSERT_GE(created, 1); /* at least the wake-up fd */
  CLOSE_LOOP(loop);
  ASSERT_EQ(before, test_count_fds());
  return 0;
}

/* ------------------------------------------------------------------------ */
/* run / stop                                                               */

static int chain_called;
static int chain_cancelled;

static void chain_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  if (status == -ECANCELED) {
    chain_cancelled++;
    return;
  }
  ASSERT_OK(status);
  chain_called++;
  ASSERT_OK(ul_loop_call_soon(loop, chain_cb, NULL));
}

/* A stop requested before ul_loop_run makes it run exactly one iteration. */
TEST_IMPL(loop_stop_before_run) {
  ul_loop *loop = test_loop_new();

  chain_called = 0;
  chain_cancelled = 0;
  ASSERT_OK(ul_loop_call_soon(loop, chain_cb, NULL));
  ASSERT_OK(ul_loop_stop(loop));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, chain_called);
  ASSERT_EQ(0, ul_loop_is_running(loop));
  ASSERT_EQ(1, ul_loop_ready_count(loop));

  /* Again: the stop was consumed, so stop again for exactly one more. */
  ASSERT_OK(ul_loop_stop(loop));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(2, chain_called);

  CLOSE_LOOP(loop);
  ASSERT_EQ(2, chain_called);
  ASSERT_EQ(1, chain_cancelled);
  return 0;
}

/* Nothing scheduled at all: a stop before run must not block in poll. */
TEST_IMPL(loop_stop_before_run_empty) {
  ul_loop *loop = test_loop_new();
  ASSERT_OK(ul_loop_stop(loop));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_OK(ul_loop_stop(loop));
  ASSERT_OK(ul_loop_run(loop));
  CLOSE_LOOP(loop);
  return 0;
}

static int order[64];
static int norder;

static void record(int id) {
  ASSERT_LT(norder, 64);
  order[norder++] = id;
}

static void rec_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  ASSERT_OK(status);
  record((int)(intptr_t)arg);
}

static void cancelled_rec_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  ASSERT_EQ(-ECANCELED, status);
  record(100 + (int)(intptr_t)arg);
}

static void stop_a_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  record(1);
  ASSERT_OK(ul_loop_stop(loop));
  ASSERT_OK(ul_loop_call_soon(loop, cancelled_rec_cb, (void *)(intptr_t)4));
}

static void stop_b_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  record(2);
  ASSERT_OK(ul_loop_call_soon(loop, cancelled_rec_cb, (void *)(intptr_t)5));
}

/* Stopping inside a callback: the rest of this iteration still runs, what
 * those callbacks scheduled does not. */
TEST_IMPL(loop_stop_in_callback) {
  ul_loop *loop = test_loop_new();

  norder = 0;
  ASSERT_OK(ul_loop_call_soon(loop, stop_a_cb, NULL));
  ASSERT_OK(ul_loop_call_soon(loop, stop_b_cb, NULL));
  ASSERT_OK(ul_loop_call_soon(loop, rec_cb, (void *)(intptr_t)3));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(3, norder);
  ASSERT_EQ(1, order[0]);
  ASSERT_EQ(2, order[1]);
  ASSERT_EQ(3, order[2]);
  ASSERT_EQ(2, ul_loop_ready_count(loop));

  CLOSE_LOOP(loop);
  ASSERT_EQ(5, norder);
  ASSERT_EQ(104, order[3]);
  ASSERT_EQ(105, order[4]);
  return 0;
}

static int stop_after_n;

static void count_then_stop_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  chain_called++;
  if (chain_called == stop_after_n)
    ASSERT_OK(ul_loop_stop(loop));
  else
    ASSERT_OK(ul_loop_call_soon(loop, count_then_stop_cb, NULL));
}

/* A loop can be run again after it stopped. */
TEST_IMPL(loop_run_again_after_stop) {
  ul_loop *loop = test_loop_new();

  chain_called = 0;
  stop_after_n = 10;
  ASSERT_OK(ul_loop_call_soon(loop, count_then_stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(10, chain_called);

  stop_after_n = 20;
  ASSERT_OK(ul_loop_call_soon(loop, count_then_stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(20, chain_called);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(20, chain_called);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Re-entrancy                                                              */

static int busy_called;

static void busy_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  busy_called++;
  ASSERT_EQ(1, ul_loop_is_running(loop));
  ASSERT_EQ(-EBUSY, ul_loop_close(loop));
  ASSERT_EQ(-EBUSY, ul_loop_run(loop));
  ASSERT_EQ(-EBUSY, ul_loop_run_once(loop, 0));
  ASSERT_EQ(-EBUSY, ul_loop_run_once(loop, 1));
  /* Nothing was done: the loop still runs and can be stopped. */
  ASSERT_EQ(1, ul_loop_is_running(loop));
  ASSERT_OK(ul_loop_stop(loop));
}

static int after_busy_called;

static void after_busy_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  ASSERT_OK(status);
  ASSERT_EQ(1, busy_called);
  after_busy_called++;
}

TEST_IMPL(loop_close_or_run_while_running) {
  ul_loop *loop = test_loop_new();

  busy_called = 0;
  after_busy_called = 0;
  ASSERT_OK(ul_loop_call_soon(loop, busy_cb, NULL));
  ASSERT_OK(ul_loop_call_soon(loop, after_busy_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, busy_called);
  ASSERT_EQ(1, after_busy_called);
  ASSERT_EQ(0, ul_loop_is_running(loop));

  /* The same from inside ul_loop_run_once. */
  ASSERT_OK(ul_loop_call_soon(loop, busy_cb, NULL));
  busy_called = 0;
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, busy_called);
  ASSERT_EQ(0, ul_loop_is_running(loop));
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Time                                                                     */

TEST_IMPL(loop_time) {
  ul_loop *loop = test_loop_new();
  double prev = ul_loop_time(loop);
  int i;

  for (i = 0; i < 1000; i++) {
    double a = test_now();
    double t = ul_loop_time(loop);
    double b = test_now();
    /* Read from CLOCK_MONOTONIC, not cached: between two direct reads. */
    ASSERT_DOUBLE_GE(t, a - 1e-6);
    ASSERT_DOUBLE_LE(t, b + 1e-6);
    ASSERT_DOUBLE_GE(t, prev);
    prev = t;
  }
  ASSERT_DOUBLE_GT(ul_loop_clock_resolution(loop), 0.0);
  ASSERT_DOUBLE_LE(ul_loop_clock_resolution(loop), 0.1);
  ASSERT(!isnan(ul_loop_time(loop)));
  CLOSE_LOOP(loop);
  return 0;
}

/* The clock is not cached across a blocking poll either. */
static void time_timer_cb(ul_loop *loop, void *arg, int status) {
  double *t = arg;
  ASSERT_OK(status);
  *t = ul_loop_time(loop);
  ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(loop_time_advances_while_waiting) {
  ul_loop *loop = test_loop_new();
  double t0 = ul_loop_time(loop);
  double t1 = -1;

  ASSERT_OK(ul_loop_call_later(loop, 0.02, time_timer_cb, &t1, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_DOUBLE_GE(t1 - t0, 0.02 - ul_loop_clock_resolution(loop));
  ASSERT_DOUBLE_GE(ul_loop_time(loop), t1);
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* User data and version                                                    */

TEST_IMPL(loop_data) {
  ul_loop *loop = test_loop_new();
  int x, y;

  ASSERT_NULL(ul_loop_get_data(loop));
  ul_loop_set_data(loop, &x);
  ASSERT_PTR_EQ(&x, ul_loop_get_data(loop));
  ul_loop_set_data(loop, &y);
  ASSERT_PTR_EQ(&y, ul_loop_get_data(loop));
  ul_loop_set_data(loop, NULL);
  ASSERT_NULL(ul_loop_get_data(loop));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(loop_version) {
  char expect[64];
  snprintf(expect, sizeof(expect), "%d.%d.%d", UL_VERSION_MAJOR,
           UL_VERSION_MINOR, UL_VERSION_PATCH);
  ASSERT_STR_EQ(expect, ul_version());
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Break                                                                    */

#define BREAK_ERR (-ENOTRECOVERABLE)

static void break_cb(ul_loop *loop, void *arg, int status) {
  ASSERT_OK(status);
  record((int)(intptr_t)arg);
  ASSERT_EQ(-EINVAL, ul_loop_break(loop, 0));
  ASSERT_EQ(-EINVAL, ul_loop_break(loop, 1));
  ASSERT_OK(ul_loop_break(loop, BREAK_ERR));
}

static void stop_rec_cb(ul_loop *loop, void *arg, int status) {
  ASSERT_OK(status);
  record((int)(intptr_t)arg);
  ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(loop_break) {
  ul_loop *loop = test_loop_new();

  norder = 0;
  ASSERT_EQ(-EINVAL, ul_loop_break(loop, BREAK_ERR)); /* not running */

  ASSERT_OK(ul_loop_call_soon(loop, rec_cb, (void *)(intptr_t)1));
  ASSERT_OK(ul_loop_call_soon(loop, break_cb, (void *)(intptr_t)2));
  ASSERT_OK(ul_loop_call_soon(loop, rec_cb, (void *)(intptr_t)3));
  ASSERT_OK(ul_loop_call_soon(loop, rec_cb, (void *)(intptr_t)4));
  ASSERT_EQ(BREAK_ERR, ul_loop_run(loop));
  ASSERT_EQ(0, ul_loop_is_running(loop));
  ASSERT_EQ(2, norder);
  ASSERT_EQ(1, order[0]);
  ASSERT_EQ(2, order[1]);
  ASSERT_EQ(2, ul_loop_ready_count(loop));
  ASSERT_EQ(-EINVAL, ul_loop_break(loop, BREAK_ERR)); /* not running */

  /* The rest runs on the next run, in order, before what comes later. */
  ASSERT_OK(ul_loop_call_soon(loop, stop_rec_cb, (void *)(intptr_t)5));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(5, norder);
  ASSERT_EQ(3, order[2]);
  ASSERT_EQ(4, order[3]);
  ASSERT_EQ(5, order[4]);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(loop_break_run_once) {
  ul_loop *loop = test_loop_new();

  norder = 0;
  ASSERT_OK(ul_loop_call_soon(loop, break_cb, (void *)(intptr_t)1));
  ASSERT_OK(ul_loop_call_soon(loop, rec_cb, (void *)(intptr_t)2));
  ASSERT_EQ(BREAK_ERR, ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, norder);
  ASSERT_EQ(1, ul_loop_ready_count(loop));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(2, norder);
  ASSERT_EQ(2, order[1]);

  /* Callbacks left by a break are cancelled in order at close. */
  ASSERT_OK(ul_loop_call_soon(loop, break_cb, (void *)(intptr_t)3));
  ASSERT_OK(ul_loop_call_soon(loop, cancelled_rec_cb, (void *)(intptr_t)4));
  ASSERT_OK(ul_loop_call_soon(loop, cancelled_rec_cb, (void *)(intptr_t)5));
  ASSERT_EQ(BREAK_ERR, ul_loop_run(loop));
  ASSERT_EQ(3, norder);
  CLOSE_LOOP(loop);
  ASSERT_EQ(5, norder);
  ASSERT_EQ(104, order[3]);
  ASSERT_EQ(105, order[4]);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* run_once                                                                 */

TEST_IMPL(loop_run_once_nonblocking) {
  ul_loop *loop = test_loop_new();
  double t0;

  /* Nothing pending, may_block 0: returns at once, many times. */
  t0 = test_now();
  for (int i = 0; i < 100; i++)
    ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_DOUBLE_LT(test_now() - t0, 2.0);

  /* A timer far away does not make a non-blocking iteration wait. */
  norder = 0;
  ASSERT_OK(ul_loop_call_later(loop, 3600.0, cancelled_rec_cb, NULL, NULL));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, ul_loop_timer_count(loop));
  ASSERT_EQ(0, norder);
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, norder);
  ASSERT_EQ(100, order[0]);
  return 0;
}
