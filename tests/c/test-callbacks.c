/* call_soon: the ready queue. */
#include "test.h"

#define N_FIFO 1000

static int fifo_next;
static int fifo_called;

static void fifo_cb(ul_loop *loop, void *arg, int status) {
  ASSERT_OK(status);
  ASSERT_EQ(fifo_next, (intptr_t)arg);
  fifo_next++;
  fifo_called++;
  if (fifo_next == N_FIFO)
    ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(callback_fifo_order) {
  ul_loop *loop = test_loop_new();
  intptr_t i;

  fifo_next = 0;
  fifo_called = 0;
  for (i = 0; i < N_FIFO; i++)
    ASSERT_OK(ul_loop_call_soon(loop, fifo_cb, (void *)i));
  ASSERT_EQ(N_FIFO, ul_loop_ready_count(loop));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(N_FIFO, fifo_called);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(N_FIFO, fifo_called);
  return 0;
}

/* All 1000 callbacks run in the first iteration of a single run_once. */
TEST_IMPL(callback_fifo_one_iteration) {
  ul_loop *loop = test_loop_new();
  intptr_t i;

  fifo_next = 0;
  fifo_called = 0;
  for (i = 0; i < N_FIFO; i++)
    ASSERT_OK(ul_loop_call_soon(loop, fifo_cb, (void *)i));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(N_FIFO, fifo_called);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */

static int iter_called[4];

static void nested_cb(ul_loop *loop, void *arg, int status) {
  int depth = (int)(intptr_t)arg;
  ASSERT_OK(status);
  iter_called[depth]++;
  if (depth < 3) {
    /* Two children per callback: the queue grows while it is run. */
    ASSERT_OK(ul_loop_call_soon(loop, nested_cb, (void *)(intptr_t)(depth + 1)));
    ASSERT_OK(ul_loop_call_soon(loop, nested_cb, (void *)(intptr_t)(depth + 1)));
  }
}

/* Callbacks scheduled while an iteration runs its callbacks run in the next
 * iteration. */
TEST_IMPL(callback_scheduled_in_callback_runs_next_iteration) {
  ul_loop *loop = test_loop_new();

  memset(iter_called, 0, sizeof(iter_called));
  ASSERT_OK(ul_loop_call_soon(loop, nested_cb, (void *)(intptr_t)0));

  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, iter_called[0]);
  ASSERT_EQ(0, iter_called[1]);
  ASSERT_EQ(2, ul_loop_ready_count(loop));

  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(2, iter_called[1]);
  ASSERT_EQ(0, iter_called[2]);
  ASSERT_EQ(4, ul_loop_ready_count(loop));

  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(4, iter_called[2]);
  ASSERT_EQ(0, iter_called[3]);
  ASSERT_EQ(8, ul_loop_ready_count(loop));

  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(8, iter_called[3]);
  ASSERT_EQ(0, ul_loop_ready_count(loop));

  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, iter_called[0]);
  ASSERT_EQ(2, iter_called[1]);
  ASSERT_EQ(4, iter_called[2]);
  ASSERT_EQ(8, iter_called[3]);
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */

static int never_called;

static void never_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  (void)status;
  never_called++;
}

TEST_IMPL(callback_invalid_args) {
  ul_loop *loop = test_loop_new();

  never_called = 0;
  ASSERT_EQ(-EINVAL, ul_loop_call_soon(loop, NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_call_soon(NULL, never_cb, NULL));
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_called);
  return 0;
}

/* ------------------------------------------------------------------------ */

static int cancel_seen[16];
static int ncancel;

static void cancel_order_cb(ul_loop *loop, void *arg, int status) {
  ASSERT_NOT_NULL(loop);
  ASSERT_EQ(-ECANCELED, status);
  ASSERT_LT(ncancel, 16);
  cancel_seen[ncancel++] = (int)(intptr_t)arg;
}

/* Closing a loop with queued callbacks calls each with -ECANCELED, in the
 * order they would have run, exactly once. */
TEST_IMPL(callback_close_cancels_pending) {
  ul_loop *loop = test_loop_new();
  intptr_t i;

  ncancel = 0;
  for (i = 0; i < 10; i++)
    ASSERT_OK(ul_loop_call_soon(loop, cancel_order_cb, (void *)i));
  ASSERT_EQ(10, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(10, ncancel);
  for (i = 0; i < 10; i++)
    ASSERT_EQ(i, cancel_seen[i]);
  return 0;
}

/* The argument is passed through untouched and a successful callback gets
 * status 0; each callback exactly once. */
static int arg_calls;

static void arg_cb(ul_loop *loop, void *arg, int status) {
  ASSERT_OK(status);
  ASSERT_PTR_EQ(&arg_calls, arg);
  arg_calls++;
  if (arg_calls == 3)
    ASSERT_OK(ul_loop_stop(loop));
}

TEST_IMPL(callback_arg_and_status) {
  ul_loop *loop = test_loop_new();

  arg_calls = 0;
  ASSERT_OK(ul_loop_call_soon(loop, arg_cb, &arg_calls));
  ASSERT_OK(ul_loop_call_soon(loop, arg_cb, &arg_calls));
  ASSERT_OK(ul_loop_call_soon(loop, arg_cb, &arg_calls));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(3, arg_calls);
  CLOSE_LOOP(loop);
  ASSERT_EQ(3, arg_calls);
  return 0;
}

/* ------------------------------------------------------------------------ */

static size_t seen_ready_count;

static void ready_count_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  ASSERT_OK(ul_loop_call_soon(loop, never_cb, NULL));
  ASSERT_OK(ul_loop_call_soon(loop, never_cb, NULL));
  seen_ready_count = ul_loop_ready_count(loop);
}

TEST_IMPL(callback_ready_count) {
  ul_loop *loop = test_loop_new();

  never_called = 0;
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  ASSERT_OK(ul_loop_call_soon(loop, ready_count_cb, NULL));
  ASSERT_EQ(1, ul_loop_ready_count(loop));
  ASSERT_OK(ul_loop_call_soon(loop, never_cb, NULL));
  ASSERT_EQ(2, ul_loop_ready_count(loop));
  ASSERT_EQ(0, ul_loop_timer_count(loop));

  /* ready_count_cb runs first and schedules two: the one queued behind it
   * is still in the queue, so at least 3 are waiting then. */
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_GE(seen_ready_count, 2);
  ASSERT_LE(seen_ready_count, 3);
  ASSERT_EQ(1, never_called);
  ASSERT_EQ(2, ul_loop_ready_count(loop));

  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(3, never_called);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(3, never_called);
  return 0;
}

/* ------------------------------------------------------------------------ */

#define N_CHAIN 100000

static int chain_left;

static void long_chain_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  if (--chain_left == 0)
    ASSERT_OK(ul_loop_stop(loop));
  else
    ASSERT_OK(ul_loop_call_soon(loop, long_chain_cb, NULL));
}

/* A long chain of call_soon (one per iteration) runs to the end. */
TEST_IMPL(callback_long_chain) {
  ul_loop *loop = test_loop_new();

  chain_left = N_CHAIN;
  ASSERT_OK(ul_loop_call_soon(loop, long_chain_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(0, chain_left);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */

static int burst_called;

static void burst_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  if (status == -ECANCELED)
    return;
  ASSERT_OK(status);
  burst_called++;
  (void)loop;
}

/* The ready queue grows to hold many callbacks and shrinks again. */
TEST_IMPL(callback_many_queued) {
  ul_loop *loop = test_loop_new();
  int round, i;

  burst_called = 0;
  for (round = 0; round < 3; round++) {
    for (i = 0; i < 100000; i++)
      ASSERT_OK(ul_loop_call_soon(loop, burst_cb, NULL));
    ASSERT_EQ(100000, ul_loop_ready_count(loop));
    ASSERT_OK(ul_loop_run_once(loop, 0));
    ASSERT_EQ(100000 * (round + 1), burst_called);
    ASSERT_EQ(0, ul_loop_ready_count(loop));
  }
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */

static void walk_target_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  (void)status;
}

static void walk_thread_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  (void)status;
}

static int walk_seen[8];

static int walk_visit(ul_cb cb, void *arg, void *ctx) {
  int *count = ctx;
  intptr_t i = (intptr_t)arg;
  ASSERT_NE(0, cb == walk_target_cb || cb == walk_thread_cb);
  ASSERT_GE(i, 0);
  ASSERT_LT(i, 8);
  walk_seen[i]++;
  (*count)++;
  return 0;
}

static int walk_stop_early(ul_cb cb, void *arg, void *ctx) {
  (void)cb;
  (void)arg;
  (*(int *)ctx)++;
  return 42;
}

/* ul_loop_walk_pending sees queued callbacks, pending timers and
 * threadsafe calls, skips cancelled timers, and stops on non-zero. */
TEST_IMPL(callback_walk_pending) {
  ul_loop *loop = test_loop_new();
  ul_timer *cancelled;
  int count = 0;

  memset(walk_seen, 0, sizeof walk_seen);
  ASSERT_OK(ul_loop_call_soon(loop, walk_target_cb, (void *)0));
  ASSERT_OK(ul_loop_call_soon(loop, walk_target_cb, (void *)1));
  ASSERT_OK(ul_loop_call_later(loop, 10.0, walk_target_cb, (void *)2, NULL));
  ASSERT_OK(ul_loop_call_later(loop, 10.0, walk_target_cb, (void *)3,
                               &cancelled));
  ASSERT_OK(ul_timer_cancel(cancelled));
  ASSERT_OK(ul_loop_call_soon_threadsafe(loop, walk_thread_cb, (void *)4));

  ASSERT_OK(ul_loop_walk_pending(loop, walk_visit, &count));
  ASSERT_EQ(4, count);
  ASSERT_EQ(1, walk_seen[0]);
  ASSERT_EQ(1, walk_seen[1]);
  ASSERT_EQ(1, walk_seen[2]);
  ASSERT_EQ(0, walk_seen[3]);
  ASSERT_EQ(1, walk_seen[4]);

  count = 0;
  ASSERT_EQ(42, ul_loop_walk_pending(loop, walk_stop_early, &count));
  ASSERT_EQ(1, count);
  ASSERT_EQ(-EINVAL, ul_loop_walk_pending(NULL, walk_visit, &count));
  ASSERT_EQ(-EINVAL, ul_loop_walk_pending(loop, NULL, &count));
  CLOSE_LOOP(loop);
  return 0;
}
