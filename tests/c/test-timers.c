/* call_later / call_at: the timer heap. */
#include "test.h"

#include <math.h>

static int order[256];
static int norder;

static void record(int id) {
  ASSERT_LT(norder, 256);
  order[norder++] = id;
}

static void rec_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  ASSERT_OK(status);
  record((int)(intptr_t)arg);
}

static void rec_stop_cb(ul_loop *loop, void *arg, int status) {
  ASSERT_OK(status);
  record((int)(intptr_t)arg);
  ASSERT_OK(ul_loop_stop(loop));
}

static int never_called;

static void never_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  (void)status;
  never_called++;
}

/* ------------------------------------------------------------------------ */

static void rec_stop_at_4_cb(ul_loop *loop, void *arg, int status) {
  rec_cb(loop, arg, status);
  if (norder == 4)
    ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(timer_order_by_deadline) {
  ul_loop *loop = test_loop_new();
  static const double delays[4] = {0.030, 0.010, 0.040, 0.020};
  ul_timer *timers[4];
  double when[4];

  /* Each deadline is the clock at the call plus the delay: on a busy machine
   * the calls may be far apart, so the expected order is that of the
   * deadlines the timers got, not of the delays. */
  norder = 0;
  for (int i = 0; i < 4; i++) {
    double before = ul_loop_time(loop);
    ASSERT_OK(ul_loop_call_later(loop, delays[i], rec_stop_at_4_cb,
                                 (void *)(intptr_t)i, &timers[i]));
    when[i] = ul_timer_when(timers[i]);
    ASSERT_DOUBLE_GE(when[i], before + delays[i]);
  }
  ASSERT_EQ(4, ul_loop_timer_count(loop));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(4, norder);
  for (int i = 1; i < 4; i++)
    ASSERT_DOUBLE_GE(when[order[i]], when[order[i - 1]]);
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(4, norder);
  return 0;
}

/* call_at with absolute deadlines, several already in the past. */
TEST_IMPL(timer_call_at_order) {
  ul_loop *loop = test_loop_new();
  double now = ul_loop_time(loop);

  norder = 0;
  ASSERT_OK(ul_loop_call_at(loop, now + 0.02, rec_stop_cb, (void *)(intptr_t)4,
                            NULL));
  ASSERT_OK(ul_loop_call_at(loop, now - 1.0, rec_cb, (void *)(intptr_t)1, NULL));
  ASSERT_OK(ul_loop_call_at(loop, now + 0.01, rec_cb, (void *)(intptr_t)3, NULL));
  ASSERT_OK(ul_loop_call_at(loop, now - 0.5, rec_cb, (void *)(intptr_t)2, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(4, norder);
  for (int i = 0; i < 4; i++)
    ASSERT_EQ(i + 1, order[i]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Equal deadlines run in the order they were scheduled. */
TEST_IMPL(timer_equal_deadlines_fifo) {
  ul_loop *loop = test_loop_new();
  double when = ul_loop_time(loop) + 0.01;
  int i;

  norder = 0;
  /* Interleave with other deadlines so the heap really reorders things. */
  for (i = 0; i < 100; i++) {
    ASSERT_OK(ul_loop_call_at(loop, when, rec_cb, (void *)(intptr_t)i, NULL));
    ASSERT_OK(ul_loop_call_at(loop, when + 0.001 * (1 + i % 3), rec_cb,
                              (void *)(intptr_t)(1000 + i), NULL));
  }
  ASSERT_OK(ul_loop_call_at(loop, when + 0.01, rec_stop_cb,
                            (void *)(intptr_t)-1, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(201, norder);
  for (i = 0; i < 100; i++)
    ASSERT_EQ(i, order[i]);
  /* Then the +1 ms group, +2 ms group, +3 ms group, each in FIFO order. */
  {
    int k = 100;
    for (int g = 1; g <= 3; g++)
      for (i = 0; i < 100; i++)
        if (1 + i % 3 == g)
          ASSERT_EQ(1000 + i, order[k++]);
    ASSERT_EQ(200, k);
  }
  ASSERT_EQ(-1, order[200]);
  CLOSE_LOOP(loop);
  return 0;
}

/* A zero or negative delay runs in the next iteration that looks at the
 * timers, i.e. the first one. */
TEST_IMPL(timer_zero_and_negative_delay) {
  ul_loop *loop = test_loop_new();

  norder = 0;
  ASSERT_OK(ul_loop_call_later(loop, 0.0, rec_cb, (void *)(intptr_t)1, NULL));
  ASSERT_OK(ul_loop_call_later(loop, -5.0, rec_cb, (void *)(intptr_t)2, NULL));
  ASSERT_OK(ul_loop_call_later(loop, -INFINITY, rec_cb, (void *)(intptr_t)3,
                               NULL));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(3, norder);
  /* Deadlines: now, now - 5, -inf: earliest first. */
  ASSERT_EQ(3, order[0]);
  ASSERT_EQ(2, order[1]);
  ASSERT_EQ(1, order[2]);
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(timer_invalid_args) {
  ul_loop *loop = test_loop_new();
  ul_timer *t = (ul_timer *)&t;
  ul_timer *const sentinel = t;

  never_called = 0;
  ASSERT_EQ(-EINVAL, ul_loop_call_later(loop, NAN, never_cb, NULL, &t));
  ASSERT_PTR_EQ(sentinel, t);
  ASSERT_EQ(-EINVAL, ul_loop_call_later(loop, -NAN, never_cb, NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_call_at(loop, NAN, never_cb, NULL, &t));
  ASSERT_PTR_EQ(sentinel, t);
  ASSERT_EQ(-EINVAL, ul_loop_call_later(loop, 1.0, NULL, NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_call_at(loop, 1.0, NULL, NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_call_later(NULL, 1.0, never_cb, NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_call_at(NULL, 1.0, never_cb, NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_timer_cancel(NULL));
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_called);
  return 0;
}

/* A cancelled timer is never called, not even with -ECANCELED at close. */
TEST_IMPL(timer_cancel_pending) {
  ul_loop *loop = test_loop_new();
  ul_timer *t1 = NULL, *t2 = NULL, *t3 = NULL;

  never_called = 0;
  norder = 0;
  ASSERT_OK(ul_loop_call_later(loop, 0.0, never_cb, NULL, &t1));
  ASSERT_OK(ul_loop_call_later(loop, 0.005, never_cb, NULL, &t2));
  ASSERT_OK(ul_loop_call_later(loop, 3600.0, never_cb, NULL, &t3));
  ASSERT_NOT_NULL(t1);
  ASSERT_NOT_NULL(t2);
  ASSERT_NOT_NULL(t3);
  ASSERT_OK(ul_loop_call_later(loop, 0.02, rec_stop_cb, (void *)(intptr_t)1,
                               NULL));
  ASSERT_EQ(4, ul_loop_timer_count(loop));
  ASSERT_OK(ul_timer_cancel(t1));
  ASSERT_OK(ul_timer_cancel(t2));
  ASSERT_EQ(2, ul_loop_timer_count(loop));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, norder);
  ASSERT_EQ(0, never_called);
  ASSERT_EQ(1, ul_loop_timer_count(loop));
  ASSERT_OK(ul_timer_cancel(t3));
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_LT(ul_loop_next_deadline(loop), 0.0);
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_called);
  return 0;
}

/* Cancelling a timer that is due in the same iteration, from an earlier
 * callback of that iteration: it is not called. */
static ul_timer *victim;

static void cancel_victim_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  ASSERT_OK(status);
  record((int)(intptr_t)arg);
  ASSERT_NOT_NULL(victim);
  ASSERT_OK(ul_timer_cancel(victim));
  victim = NULL;
}

TEST_IMPL(timer_cancel_due_in_same_iteration) {
  ul_loop *loop = test_loop_new();
  double when = ul_loop_time(loop) - 0.001; /* already due */

  never_called = 0;
  norder = 0;
  /* Two timers due together: the first cancels the second. */
  ASSERT_OK(ul_loop_call_at(loop, when, cancel_victim_cb, (void *)(intptr_t)1,
                            NULL));
  ASSERT_OK(ul_loop_call_at(loop, when, never_cb, NULL, &victim));
  ASSERT_OK(ul_loop_call_at(loop, when, rec_cb, (void *)(intptr_t)2, NULL));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(2, norder);
  ASSERT_EQ(1, order[0]);
  ASSERT_EQ(2, order[1]);
  ASSERT_EQ(0, never_called);

  /* A ready callback cancels a zero-delay timer moved to the ready queue
   * behind it in the same iteration. */
  ASSERT_OK(ul_loop_call_later(loop, 0.0, never_cb, NULL, &victim));
  ASSERT_OK(ul_loop_call_soon(loop, cancel_victim_cb, (void *)(intptr_t)3));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(3, norder);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, never_called);
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_called);
  return 0;
}

/* A timer may cancel itself inside its own callback (the pointer is valid
 * until the callback returns); that is harmless. */
static ul_timer *self_timer;
static int self_called;

static void cancel_self_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  self_called++;
  ASSERT_OK(ul_timer_cancel(self_timer));
  ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(timer_cancel_self_in_callback) {
  ul_loop *loop = test_loop_new();
  self_called = 0;
  ASSERT_OK(ul_loop_call_later(loop, 0.001, cancel_self_cb, NULL, &self_timer));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, self_called);
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, self_called);
  return 0;
}

TEST_IMPL(timer_when) {
  ul_loop *loop = test_loop_new();
  ul_timer *t = NULL;
  double before, after, when;

  never_called = 0;
  when = ul_loop_time(loop) + 12.5;
  ASSERT_OK(ul_loop_call_at(loop, when, never_cb, NULL, &t));
  ASSERT_NOT_NULL(t);
  ASSERT_DOUBLE_EQ(when, ul_timer_when(t));
  ASSERT_OK(ul_timer_cancel(t));

  before = ul_loop_time(loop);
  ASSERT_OK(ul_loop_call_later(loop, 3.25, never_cb, NULL, &t));
  after = ul_loop_time(loop);
  ASSERT_DOUBLE_GE(ul_timer_when(t), before + 3.25);
  ASSERT_DOUBLE_LE(ul_timer_when(t), after + 3.25);
  ASSERT_DOUBLE_EQ(ul_timer_when(t), ul_loop_next_deadline(loop));
  ASSERT_OK(ul_timer_cancel(t));

  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_called);
  return 0;
}

TEST_IMPL(timer_count_and_next_deadline) {
  ul_loop *loop = test_loop_new();
  ul_timer *a = NULL, *b = NULL, *c = NULL;
  double now = ul_loop_time(loop);

  never_called = 0;
  norder = 0;
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_LT(ul_loop_next_deadline(loop), 0.0);

  ASSERT_OK(ul_loop_call_at(loop, now + 30, never_cb, NULL, &c));
  ASSERT_EQ(1, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_EQ(now + 30, ul_loop_next_deadline(loop));
  ASSERT_OK(ul_loop_call_at(loop, now + 10, never_cb, NULL, &a));
  ASSERT_OK(ul_loop_call_at(loop, now + 20, never_cb, NULL, &b));
  ASSERT_EQ(3, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_EQ(now + 10, ul_loop_next_deadline(loop));

  /* Cancelling the earliest: the next deadline is the next pending one. */
  ASSERT_OK(ul_timer_cancel(a));
  ASSERT_EQ(2, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_EQ(now + 20, ul_loop_next_deadline(loop));
  ASSERT_OK(ul_timer_cancel(c));
  ASSERT_EQ(1, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_EQ(now + 20, ul_loop_next_deadline(loop));

  /* A due timer leaves the count once it has run. */
  ASSERT_OK(ul_loop_call_later(loop, 0.0, rec_cb, (void *)(intptr_t)1, NULL));
  ASSERT_EQ(2, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_LE(ul_loop_next_deadline(loop), ul_loop_time(loop));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, norder);
  ASSERT_EQ(1, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_EQ(now + 20, ul_loop_next_deadline(loop));

  ASSERT_OK(ul_timer_cancel(b));
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_LT(ul_loop_next_deadline(loop), 0.0);
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_called);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Many timers, half of them cancelled.                                     */

#define N_MANY 100000

static ul_timer *many[N_MANY];
static double many_when[N_MANY];
static unsigned char many_called[N_MANY];
static int many_fired;
static double many_last_when;
static int many_last_idx;

static void many_cb(ul_loop *loop, void *arg, int status) {
  int i = (int)(intptr_t)arg;
  ASSERT_OK(status);
  ASSERT_EQ(0, i % 2); /* odd ones were cancelled */
  ASSERT_EQ(0, many_called[i]);
  many_called[i] = 1;
  /* Deadline order; equal deadlines in scheduling order. */
  ASSERT_DOUBLE_GE(many_when[i], many_last_when);
  if (many_when[i] == many_last_when)
    ASSERT_GT(i, many_last_idx);
  many_last_when = many_when[i];
  many_last_idx = i;
  if (++many_fired == N_MANY / 2)
    ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(timer_many_half_cancelled) {
  ul_loop *loop = test_loop_new();
  double base = ul_loop_time(loop) + 0.001;
  int i;

  many_fired = 0;
  many_last_when = -INFINITY;
  many_last_idx = -1;
  memset(many_called, 0, sizeof(many_called));
  for (i = 0; i < N_MANY; i++) {
    /* 1000 distinct deadlines in 20 ms, 100 timers on each. */
    many_when[i] = base + (double)((i * 7919) % 1000) * 2e-5;
    ASSERT_OK(ul_loop_call_at(loop, many_when[i], many_cb, (void *)(intptr_t)i,
                              &many[i]));
    ASSERT_DOUBLE_EQ(many_when[i], ul_timer_when(many[i]));
  }
  ASSERT_EQ(N_MANY, ul_loop_timer_count(loop));
  for (i = 1; i < N_MANY; i += 2)
    ASSERT_OK(ul_timer_cancel(many[i]));
  ASSERT_EQ(N_MANY / 2, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_EQ(base, ul_loop_next_deadline(loop));

  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(N_MANY / 2, many_fired);
  for (i = 0; i < N_MANY; i++)
    ASSERT_EQ(i % 2 == 0, many_called[i]);
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_LT(ul_loop_next_deadline(loop), 0.0);
  CLOSE_LOOP(loop);
  ASSERT_EQ(N_MANY / 2, many_fired);
  return 0;
}

/* Cancelling most of a large heap from the top down and from the bottom up
 * (exercises compaction) leaves the rest intact. */
TEST_IMPL(timer_many_cancel_then_close) {
  ul_loop *loop = test_loop_new();
  double base = ul_loop_time(loop) + 3600;
  int i;

  never_called = 0;
  for (i = 0; i < N_MANY; i++)
    ASSERT_OK(ul_loop_call_at(loop, base + i, never_cb, NULL, &many[i]));
  for (i = 0; i < N_MANY / 4; i++)
    ASSERT_OK(ul_timer_cancel(many[i]));
  for (i = N_MANY - 1; i >= 3 * N_MANY / 4; i--)
    ASSERT_OK(ul_timer_cancel(many[i]));
  ASSERT_EQ(N_MANY / 2, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_EQ(base + N_MANY / 4, ul_loop_next_deadline(loop));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, never_called);
  /* Cancel more than half of what is left (indices 25% .. 62.5%). */
  for (i = N_MANY / 4; i < N_MANY / 2 + N_MANY / 8; i++)
    ASSERT_OK(ul_timer_cancel(many[i]));
  ASSERT_EQ(N_MANY / 8, ul_loop_timer_count(loop));
  ASSERT_DOUBLE_EQ(base + (N_MANY / 2 + N_MANY / 8),
                   ul_loop_next_deadline(loop));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, never_called);
  CLOSE_LOOP(loop);
  /* The ones left are called with -ECANCELED at close, the others not. */
  ASSERT_EQ(N_MANY / 8, never_called);
  return 0;
}

/* ------------------------------------------------------------------------ */

static int iterations;

static void count_iter_hook(ul_loop *loop, int timeout_ms, void *arg) {
  int *last_timeout = arg;
  (void)loop;
  iterations++;
  *last_timeout = timeout_ms;
}

static double fired_at;

static void fired_at_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  fired_at = ul_loop_time(loop);
  ASSERT_OK(ul_loop_stop(loop));
}

/* With nothing else to do, the loop sleeps in poll until the next timer:
 * run takes at least the delay, in a handful of iterations (no spinning). */
TEST_IMPL(timer_loop_sleeps_until_deadline) {
  ul_loop *loop = test_loop_new();
  double res = ul_loop_clock_resolution(loop);
  double t0, elapsed;
  int last_timeout = -2;

  iterations = 0;
  fired_at = -1;
  ASSERT_OK(ul_loop_set_poll_hooks(loop, count_iter_hook, NULL, &last_timeout));
  t0 = test_now();
  ASSERT_OK(ul_loop_call_later(loop, 0.05, fired_at_cb, NULL, NULL));
  ASSERT_OK(ul_loop_run(loop));
  elapsed = test_now() - t0;
  ASSERT_DOUBLE_GE(elapsed, 0.05 - res);
  ASSERT_DOUBLE_GE(fired_at - t0, 0.05 - res);
  ASSERT_GE(iterations, 1);
  ASSERT_LE(iterations, 10);
  CLOSE_LOOP(loop);
  return 0;
}

/* The first poll waits about as long as the delay, never longer, and at
 * most one day for a very distant timer. */
static int first_timeout;
static int hook_calls;

static void first_timeout_hook(ul_loop *loop, int timeout_ms, void *arg) {
  (void)loop;
  (void)arg;
  if (hook_calls++ == 0)
    first_timeout = timeout_ms;
}

static void read_stop_cb(ul_loop *loop, int fd, int events, void *arg) {
  char buf[16];
  (void)arg;
  ASSERT_NE(0, events & UL_READABLE);
  ASSERT_GT(read(fd, buf, sizeof(buf)), 0);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
  ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(timer_poll_timeout) {
  ul_loop *loop = test_loop_new();
  ul_timer *t = NULL;
  int fds[2];

  test_pipe(fds);
  ASSERT_OK(ul_loop_set_poll_hooks(loop, first_timeout_hook, NULL, NULL));

  /* 200 ms away: the timeout is (0, 200] ms (the data in the pipe ends the
   * poll at once). */
  hook_calls = 0;
  first_timeout = -2;
  ASSERT_OK(ul_loop_call_later(loop, 0.2, never_cb, NULL, &t));
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], read_stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_GT(first_timeout, 0);
  ASSERT_LE(first_timeout, 200);
  ASSERT_OK(ul_timer_cancel(t));

  /* A year away: at most one day. */
  hook_calls = 0;
  first_timeout = -2;
  ASSERT_OK(ul_loop_call_later(loop, 365.0 * 86400.0, never_cb, NULL, &t));
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], read_stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_GT(first_timeout, 0);
  ASSERT_LE(first_timeout, 86400 * 1000);
  ASSERT_OK(ul_timer_cancel(t));

  /* Infinity is a valid delay (only NaN is rejected): capped too. */
  hook_calls = 0;
  first_timeout = -2;
  ASSERT_OK(ul_loop_call_later(loop, INFINITY, never_cb, NULL, &t));
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], read_stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_GT(first_timeout, 0);
  ASSERT_LE(first_timeout, 86400 * 1000);
  ASSERT_OK(ul_timer_cancel(t));

  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_called);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Interleaving with call_soon, as asyncio's _run_once.                     */

static int iter_of[16];
static int cur_iter;

static void il_c_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  ASSERT_OK(status);
  record((int)(intptr_t)arg);
  iter_of[(int)(intptr_t)arg] = cur_iter;
}

/* A: schedules B (soon) and T2 (timer, 0 delay). */
static void il_a_cb(ul_loop *loop, void *arg, int status) {
  il_c_cb(loop, arg, status);
  ASSERT_OK(ul_loop_call_soon(loop, il_c_cb, (void *)(intptr_t)3));      /* B */
  ASSERT_OK(ul_loop_call_later(loop, 0.0, il_c_cb, (void *)(intptr_t)5, /* T2 */
                               NULL));
}

/* T1: schedules C (soon). */
static void il_t1_cb(ul_loop *loop, void *arg, int status) {
  il_c_cb(loop, arg, status);
  ASSERT_OK(ul_loop_call_soon(loop, il_c_cb, (void *)(intptr_t)4)); /* C */
}

TEST_IMPL(timer_interleave_with_call_soon) {
  ul_loop *loop = test_loop_new();

  norder = 0;
  memset(iter_of, 0, sizeof(iter_of));
  /* T1 is scheduled before A, but a due timer joins the ready queue behind
   * the callbacks already there. */
  ASSERT_OK(ul_loop_call_later(loop, 0.0, il_t1_cb, (void *)(intptr_t)2, NULL));
  ASSERT_OK(ul_loop_call_soon(loop, il_a_cb, (void *)(intptr_t)1));

  cur_iter = 1;
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(2, norder);
  ASSERT_EQ(1, order[0]); /* A  */
  ASSERT_EQ(2, order[1]); /* T1 */

  cur_iter = 2;
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(5, norder);
  ASSERT_EQ(3, order[2]); /* B  (scheduled by A) */
  ASSERT_EQ(4, order[3]); /* C  (scheduled by T1) */
  ASSERT_EQ(5, order[4]); /* T2 (timer scheduled by A, due: after both) */

  ASSERT_EQ(1, iter_of[1]);
  ASSERT_EQ(1, iter_of[2]);
  ASSERT_EQ(2, iter_of[3]);
  ASSERT_EQ(2, iter_of[4]);
  ASSERT_EQ(2, iter_of[5]);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  ASSERT_EQ(0, ul_loop_timer_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(5, norder);
  return 0;
}

/* A timer callback that schedules a zero-delay timer: it runs in the next
 * iteration, not in the one in progress (no starvation of I/O). */
static int rearm_left;

static void rearm_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  record(cur_iter);
  if (--rearm_left > 0)
    ASSERT_OK(ul_loop_call_later(loop, 0.0, rearm_cb, NULL, NULL));
}

TEST_IMPL(timer_rearm_runs_next_iteration) {
  ul_loop *loop = test_loop_new();

  norder = 0;
  rearm_left = 3;
  ASSERT_OK(ul_loop_call_later(loop, 0.0, rearm_cb, NULL, NULL));
  for (cur_iter = 1; cur_iter <= 4; cur_iter++)
    ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(3, norder);
  ASSERT_EQ(1, order[0]);
  ASSERT_EQ(2, order[1]);
  ASSERT_EQ(3, order[2]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Closing cancels ready callbacks first, then pending timers in deadline
 * order: the order they would have run. */
static void cancelled_rec_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  ASSERT_EQ(-ECANCELED, status);
  record((int)(intptr_t)arg);
}

TEST_IMPL(timer_close_cancels_in_order) {
  ul_loop *loop = test_loop_new();
  ul_timer *t = NULL;

  norder = 0;
  ASSERT_OK(ul_loop_call_later(loop, 300, cancelled_rec_cb, (void *)(intptr_t)5,
                               NULL));
  ASSERT_OK(ul_loop_call_later(loop, 100, cancelled_rec_cb, (void *)(intptr_t)3,
                               NULL));
  ASSERT_OK(ul_loop_call_later(loop, 150, never_cb, NULL, &t));
  ASSERT_OK(ul_loop_call_soon(loop, cancelled_rec_cb, (void *)(intptr_t)1));
  ASSERT_OK(ul_loop_call_later(loop, 200, cancelled_rec_cb, (void *)(intptr_t)4,
                               NULL));
  ASSERT_OK(ul_loop_call_soon(loop, cancelled_rec_cb, (void *)(intptr_t)2));
  ASSERT_OK(ul_timer_cancel(t));
  never_called = 0;
  CLOSE_LOOP(loop);
  ASSERT_EQ(5, norder);
  for (int i = 0; i < 5; i++)
    ASSERT_EQ(i + 1, order[i]);
  ASSERT_EQ(0, never_called);
  return 0;
}
