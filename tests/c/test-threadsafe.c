/* call_soon_threadsafe and ul_loop_wakeup. */
#include "test.h"

#include <pthread.h>
#include <stdatomic.h>

/* The loop thread tells another thread "I am about to block in poll with
 * no timeout" from its before-poll hook: no sleeps needed. */
struct blocker {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  int about_to_block; /* guarded by mu */
  ul_loop *loop;
  atomic_int woken;
  int result;         /* what the other thread's call returned */
};

static void blocker_init(struct blocker *b, ul_loop *loop) {
  memset(b, 0, sizeof(*b));
  ASSERT_OK(pthread_mutex_init(&b->mu, NULL));
  ASSERT_OK(pthread_cond_init(&b->cond, NULL));
  b->loop = loop;
  atomic_init(&b->woken, 0);
  b->result = 1;
}

static void blocker_destroy(struct blocker *b) {
  ASSERT_OK(pthread_mutex_destroy(&b->mu));
  ASSERT_OK(pthread_cond_destroy(&b->cond));
}

static int infinite_polls;

static void before_poll_signal(ul_loop *loop, int timeout_ms, void *arg) {
  struct blocker *b = arg;
  (void)loop;
  if (timeout_ms != -1)
    return;
  infinite_polls++;
  ASSERT_OK(pthread_mutex_lock(&b->mu));
  b->about_to_block = 1;
  ASSERT_OK(pthread_cond_signal(&b->cond));
  ASSERT_OK(pthread_mutex_unlock(&b->mu));
}

static void wait_until_blocking(struct blocker *b) {
  ASSERT_OK(pthread_mutex_lock(&b->mu));
  while (!b->about_to_block)
    ASSERT_OK(pthread_cond_wait(&b->cond, &b->mu));
  ASSERT_OK(pthread_mutex_unlock(&b->mu));
}

static pthread_t loop_thread;
static int ts_called;

static void ts_stop_cb(ul_loop *loop, void *arg, int status) {
  ASSERT_OK(status);
  ASSERT(pthread_equal(loop_thread, pthread_self()));
  ASSERT_PTR_EQ(&ts_called, arg);
  ts_called++;
  ASSERT_OK(ul_loop_stop(loop));
}

static void *call_threadsafe_thread(void *arg) {
  struct blocker *b = arg;
  wait_until_blocking(b);
  b->result = ul_loop_call_soon_threadsafe(b->loop, ts_stop_cb, &ts_called);
  return NULL;
}

/* A loop blocked in poll with nothing to do is woken by a call from another
 * thread, and runs the callback in its own thread. */
TEST_IMPL(threadsafe_wakes_blocked_loop) {
  ul_loop *loop = test_loop_new();
  struct blocker b;
  pthread_t th;

  blocker_init(&b, loop);
  loop_thread = pthread_self();
  ts_called = 0;
  infinite_polls = 0;
  ASSERT_OK(ul_loop_set_poll_hooks(loop, before_poll_signal, NULL, &b));
  ASSERT_OK(pthread_create(&th, NULL, call_threadsafe_thread, &b));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_OK(pthread_join(th, NULL));
  ASSERT_OK(b.result);
  ASSERT_EQ(1, ts_called);
  ASSERT_GE(infinite_polls, 1);
  blocker_destroy(&b);
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, ts_called);
  return 0;
}

/* ------------------------------------------------------------------------ */

#define N_THREADS 10
#define N_CALLS 10000

static ul_loop *mt_loop;
static int mt_next[N_THREADS];
static int mt_total;
static int mt_errors[N_THREADS];

static void mt_cb(ul_loop *loop, void *arg, int status) {
  uintptr_t v = (uintptr_t)arg;
  int t = (int)(v >> 16);
  int i = (int)(v & 0xffff);
  ASSERT_OK(status);
  ASSERT(pthread_equal(loop_thread, pthread_self()));
  ASSERT_GE(t, 0);
  ASSERT_LT(t, N_THREADS);
  /* Exactly once, and in the order each thread made its calls. */
  ASSERT_EQ(mt_next[t], i);
  mt_next[t]++;
  if (++mt_total == N_THREADS * N_CALLS)
    ASSERT_OK(ul_loop_stop(loop));
}

static void *mt_thread(void *arg) {
  int t = (int)(intptr_t)arg;
  for (int i = 0; i < N_CALLS; i++) {
    int r = ul_loop_call_soon_threadsafe(
        mt_loop, mt_cb, (void *)(((uintptr_t)t << 16) | (uintptr_t)i));
    if (r != 0)
      mt_errors[t]++;
  }
  return NULL;
}

TEST_IMPL(threadsafe_many_threads) {
  pthread_t th[N_THREADS];
  int t;

  mt_loop = test_loop_new();
  loop_thread = pthread_self();
  mt_total = 0;
  memset(mt_next, 0, sizeof(mt_next));
  memset(mt_errors, 0, sizeof(mt_errors));
  for (t = 0; t < N_THREADS; t++)
    ASSERT_OK(pthread_create(&th[t], NULL, mt_thread, (void *)(intptr_t)t));
  ASSERT_OK(ul_loop_run(mt_loop));
  for (t = 0; t < N_THREADS; t++)
    ASSERT_OK(pthread_join(th[t], NULL));
  ASSERT_EQ(N_THREADS * N_CALLS, mt_total);
  for (t = 0; t < N_THREADS; t++) {
    ASSERT_EQ(0, mt_errors[t]);
    ASSERT_EQ(N_CALLS, mt_next[t]);
  }
  ASSERT_EQ(0, ul_loop_ready_count(mt_loop));
  CLOSE_LOOP(mt_loop);
  ASSERT_EQ(N_THREADS * N_CALLS, mt_total);
  return 0;
}

/* ------------------------------------------------------------------------ */

static int wake_after_calls;

static int after_poll_woken(ul_loop *loop, int poll_err, void *arg) {
  struct blocker *b = arg;
  (void)loop;
  wake_after_calls++;
  ASSERT(poll_err == 0 || poll_err == -EINTR);
  return atomic_load(&b->woken) ? -ETIME : 0;
}

static void *wakeup_thread(void *arg) {
  struct blocker *b = arg;
  wait_until_blocking(b);
  atomic_store(&b->woken, 1);
  b->result = ul_loop_wakeup(b->loop);
  return NULL;
}

static int spin_iterations;

static void count_hook(ul_loop *loop, int timeout_ms, void *arg) {
  (void)loop;
  (void)timeout_ms;
  (void)arg;
  spin_iterations++;
}

static void stop_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  ASSERT_OK(ul_loop_stop(loop));
}

/* ul_loop_wakeup from another thread ends a poll that would wait forever;
 * the wake-up is consumed (the loop does not spin afterwards). */
TEST_IMPL(threadsafe_wakeup) {
  ul_loop *loop = test_loop_new();
  struct blocker b;
  pthread_t th;

  ASSERT_EQ(-EINVAL, ul_loop_wakeup(NULL));
  blocker_init(&b, loop);
  wake_after_calls = 0;
  infinite_polls = 0;
  ASSERT_OK(ul_loop_set_poll_hooks(loop, before_poll_signal, after_poll_woken,
                                   &b));
  ASSERT_OK(pthread_create(&th, NULL, wakeup_thread, &b));
  ASSERT_EQ(-ETIME, ul_loop_run(loop));
  ASSERT_OK(pthread_join(th, NULL));
  ASSERT_OK(b.result);
  ASSERT_GE(infinite_polls, 1);
  ASSERT_GE(wake_after_calls, 1);
  blocker_destroy(&b);

  /* 30 ms waiting for a timer: a few iterations, not a spin on a wake-up
   * fd left readable. */
  ASSERT_OK(ul_loop_set_poll_hooks(loop, count_hook, NULL, NULL));
  spin_iterations = 0;
  ASSERT_OK(ul_loop_call_later(loop, 0.03, stop_cb, NULL, NULL));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_LE(spin_iterations, 10);

  /* Waking a loop from its own thread is harmless. */
  ASSERT_OK(ul_loop_wakeup(loop));
  ASSERT_OK(ul_loop_call_soon(loop, stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  CLOSE_LOOP(loop);
  return 0;
}

/* Many wake-ups in a row from another thread while the loop runs: none is
 * lost, none makes the loop misbehave. */
static atomic_int pings_done;

static void *many_wakeups_thread(void *arg) {
  ul_loop *loop = arg;
  for (int i = 0; i < 10000; i++)
    ASSERT_OK(ul_loop_wakeup(loop));
  atomic_store(&pings_done, 1);
  ASSERT_OK(ul_loop_call_soon_threadsafe(loop, stop_cb, NULL));
  return NULL;
}

TEST_IMPL(threadsafe_many_wakeups) {
  ul_loop *loop = test_loop_new();
  pthread_t th;

  atomic_init(&pings_done, 0);
  ASSERT_OK(pthread_create(&th, NULL, many_wakeups_thread, loop));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_OK(pthread_join(th, NULL));
  ASSERT_EQ(1, atomic_load(&pings_done));
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */

static int inner_called;
static int inner_iteration;
static int cur_iteration;

static void inner_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  ASSERT_OK(status);
  inner_called++;
  inner_iteration = cur_iteration;
}

static void outer_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  ASSERT_OK(ul_loop_call_soon_threadsafe(loop, inner_cb, NULL));
}

/* From inside a callback on the loop's thread: runs in a later iteration,
 * without the loop blocking for it. */
TEST_IMPL(threadsafe_from_callback) {
  ul_loop *loop = test_loop_new();

  inner_called = 0;
  ASSERT_OK(ul_loop_call_soon(loop, outer_cb, NULL));
  cur_iteration = 1;
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, inner_called);
  ASSERT_EQ(1, ul_loop_ready_count(loop));
  cur_iteration = 2;
  ASSERT_OK(ul_loop_run_once(loop, 1)); /* must not block */
  ASSERT_EQ(1, inner_called);
  ASSERT_EQ(2, inner_iteration);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, inner_called);
  return 0;
}

/* A call from another thread while the loop is not running is counted by
 * ul_loop_ready_count and run by the next iteration without blocking. */
static void *one_call_thread(void *arg) {
  ul_loop *loop = arg;
  ASSERT_OK(ul_loop_call_soon_threadsafe(loop, inner_cb, NULL));
  return NULL;
}

TEST_IMPL(threadsafe_before_run) {
  ul_loop *loop = test_loop_new();
  pthread_t th;

  inner_called = 0;
  ASSERT_OK(pthread_create(&th, NULL, one_call_thread, loop));
  ASSERT_OK(pthread_join(th, NULL));
  ASSERT_EQ(1, ul_loop_ready_count(loop));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, inner_called);
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */

static int ts_cancelled;
static int shutdown_result;
static int never_called;

static void never_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  (void)status;
  never_called++;
}

static void ts_cancelled_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_EQ(-ECANCELED, status);
  ts_cancelled++;
  /* The loop is being closed: no new calls accepted. */
  shutdown_result = ul_loop_call_soon_threadsafe(loop, never_cb, NULL);
}

static void ts_count_cancel_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  ASSERT_EQ(-ECANCELED, status);
  ts_cancelled++;
}

static void *one_cancelled_call_thread(void *arg) {
  ul_loop *loop = arg;
  ASSERT_OK(ul_loop_call_soon_threadsafe(loop, ts_count_cancel_cb, NULL));
  return NULL;
}

/* Closing the loop cancels threadsafe calls not yet run, and refuses new
 * ones with -ESHUTDOWN while it closes. */
TEST_IMPL(threadsafe_cancelled_at_close) {
  ul_loop *loop = test_loop_new();
  pthread_t th;

  ts_cancelled = 0;
  never_called = 0;
  shutdown_result = 1;
  ASSERT_OK(ul_loop_call_soon_threadsafe(loop, ts_cancelled_cb, NULL));
  ASSERT_OK(pthread_create(&th, NULL, one_cancelled_call_thread, loop));
  ASSERT_OK(pthread_join(th, NULL));
  ASSERT_EQ(2, ul_loop_ready_count(loop));
  CLOSE_LOOP(loop);
  ASSERT_EQ(2, ts_cancelled);
  ASSERT_EQ(-ESHUTDOWN, shutdown_result);
  ASSERT_EQ(0, never_called);
  return 0;
}

TEST_IMPL(threadsafe_invalid_args) {
  ul_loop *loop = test_loop_new();

  never_called = 0;
  ASSERT_EQ(-EINVAL, ul_loop_call_soon_threadsafe(NULL, never_cb, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_call_soon_threadsafe(loop, NULL, NULL));
  ASSERT_EQ(0, ul_loop_ready_count(loop));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_called);
  return 0;
}
