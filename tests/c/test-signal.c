/* Signals as loop callbacks: ul_loop_add_signal_handler and friends.
 *
 * Every test runs in its own process (the runner forks, ctest runs one test
 * per process), so the dispositions a test changes die with it; the tests
 * still put back what they change.  A signal that reaches no handler kills
 * the test (SIGUSR1's default action), which is a failure, as it should be.
 *
 * No sleeps: threads and child processes wait for the loop's before-poll
 * hook ("about to block") through a condition variable or a pipe. */
#include "test.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* What one signal callback saw. */
struct sigrec {
  int calls;
  int last_signum;
  void *last_arg;
  int was_running;       /* ul_loop_is_running() inside every call */
  int after_poll_first;  /* an after-poll hook had run before every call */
  pthread_t thread;      /* the thread of the last call */
  int stop;              /* stop the loop from the callback */
};

static struct sigrec rec1, rec2, rec3;
static int after_poll_seen; /* set by the after-poll hook */
static int in_raise;        /* 1 while this thread is inside raise() */

static void rec_reset(void) {
  memset(&rec1, 0, sizeof rec1);
  memset(&rec2, 0, sizeof rec2);
  memset(&rec3, 0, sizeof rec3);
  after_poll_seen = 0;
  in_raise = 0;
}

static void rec_cb(ul_loop *loop, int signum, void *arg) {
  struct sigrec *r = arg;
  ASSERT_EQ(0, in_raise); /* never from inside the real signal handler */
  r->calls++;
  r->last_signum = signum;
  r->last_arg = arg;
  r->was_running = (r->calls == 1 || r->was_running) && ul_loop_is_running(loop);
  r->after_poll_first = (r->calls == 1 || r->after_poll_first) && after_poll_seen;
  r->thread = pthread_self();
  if (r->stop)
    ASSERT_OK(ul_loop_stop(loop));
}

/* A second callback, for "the second one replaced the first". */
static void rec_cb_other(ul_loop *loop, int signum, void *arg) {
  rec_cb(loop, signum, arg);
}

static int after_hook(ul_loop *loop, int poll_err, void *arg) {
  (void)loop;
  (void)arg;
  ASSERT(poll_err == 0 || poll_err == -EINTR);
  after_poll_seen = 1;
  return 0;
}

/* raise() runs the real handler synchronously in this thread; the flag lets
 * the callback prove it is not called from there. */
static void test_raise(int signum) {
  in_raise = 1;
  ASSERT_OK(raise(signum));
  in_raise = 0;
}

/* One iteration that does not block (a stop before run: see ul_loop_run). */
static void run_one_iteration(ul_loop *loop) {
  ASSERT_OK(ul_loop_stop(loop));
  ASSERT_OK(ul_loop_run(loop));
}

static int timed_out;

static void timeout_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  if (status == -ECANCELED)
    return;
  ASSERT_OK(status);
  timed_out = 1;
  ASSERT_OK(ul_loop_stop(loop));
}

/* The current handler of signum. */
static struct sigaction current_action(int signum) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  ASSERT_OK(sigaction(signum, NULL, &sa));
  return sa;
}

static int is_default(int signum) {
  struct sigaction sa = current_action(signum);
  return !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL;
}

/* libunixloop's handler is installed: not SIG_DFL / SIG_IGN, SA_RESTART,
 * every signal blocked while it runs. */
static void assert_owned(int signum) {
  struct sigaction sa = current_action(signum);
  ASSERT(!(sa.sa_flags & SA_SIGINFO));
  ASSERT(sa.sa_handler != SIG_DFL);
  ASSERT(sa.sa_handler != SIG_IGN);
  ASSERT(sa.sa_flags & SA_RESTART);
  ASSERT_EQ(1, sigismember(&sa.sa_mask, SIGUSR2));
  ASSERT_EQ(1, sigismember(&sa.sa_mask, SIGINT));
}

static void restore_default(int signum) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  ASSERT_OK(sigaction(signum, &sa, NULL));
}

/* The loop thread says "about to block in poll" from its before-poll hook;
 * another thread (or, through a pipe, another process) waits for it. */
struct blocker {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  int about_to_block;   /* guarded by mu */
  int want_infinite;    /* only a timeout of -1 counts */
  int infinite_polls;
  int notify_fd;        /* if >= 0, a byte is written there too */
};

static void blocker_init(struct blocker *b, int want_infinite) {
  memset(b, 0, sizeof *b);
  ASSERT_OK(pthread_mutex_init(&b->mu, NULL));
  ASSERT_OK(pthread_cond_init(&b->cond, NULL));
  b->want_infinite = want_infinite;
  b->notify_fd = -1;
}

static void blocker_destroy(struct blocker *b) {
  ASSERT_OK(pthread_mutex_destroy(&b->mu));
  ASSERT_OK(pthread_cond_destroy(&b->cond));
}

static void blocker_hook(ul_loop *loop, int timeout_ms, void *arg) {
  struct blocker *b = arg;
  (void)loop;
  if (timeout_ms == -1)
    b->infinite_polls++;
  if (timeout_ms == 0 || (b->want_infinite && timeout_ms != -1))
    return;
  ASSERT_OK(pthread_mutex_lock(&b->mu));
  if (!b->about_to_block && b->notify_fd >= 0)
    test_write_byte(b->notify_fd);
  b->about_to_block = 1;
  ASSERT_OK(pthread_cond_broadcast(&b->cond));
  ASSERT_OK(pthread_mutex_unlock(&b->mu));
}

static void wait_until_blocking(struct blocker *b) {
  ASSERT_OK(pthread_mutex_lock(&b->mu));
  while (!b->about_to_block)
    ASSERT_OK(pthread_cond_wait(&b->cond, &b->mu));
  ASSERT_OK(pthread_mutex_unlock(&b->mu));
}

/* pthread_join with a deadline: a loop thread that never stops fails the
 * test here rather than at the runner's deadline. */
static void join_within(pthread_t th, double seconds) {
  struct timespec ts;
  ASSERT_OK(clock_gettime(CLOCK_REALTIME, &ts));
  double end = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + seconds;
  ts.tv_sec = (time_t)end;
  ts.tv_nsec = (long)((end - (double)ts.tv_sec) * 1e9);
  ASSERT_OK(pthread_timedjoin_np(th, NULL, &ts));
}

/* ------------------------------------------------------------------------ */
/* Adding and removing                                                      */
/* ------------------------------------------------------------------------ */

/* raise(SIGUSR1): the callback runs later, from ul_loop_run, in the loop's
 * thread, after a poll, with the signal number and its arg; not from inside
 * the real handler. */
TEST_IMPL(signal_add_remove_basic) {
  ul_loop *loop = test_loop_new();
  ul_timer *safety;
  rec_reset();
  rec1.stop = 1;
  ASSERT_OK(ul_loop_set_poll_hooks(loop, NULL, after_hook, NULL));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  assert_owned(SIGUSR1);

  test_raise(SIGUSR1);
  ASSERT_EQ(0, rec1.calls); /* not called by the handler */

  timed_out = 0;
  ASSERT_OK(ul_loop_call_later(loop, 5.0, timeout_cb, NULL, &safety));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(0, timed_out);
  ASSERT_EQ(1, rec1.calls);
  ASSERT_EQ(SIGUSR1, rec1.last_signum);
  ASSERT_PTR_EQ(&rec1, rec1.last_arg);
  ASSERT_EQ(1, rec1.was_running);
  ASSERT_EQ(1, rec1.after_poll_first);
  ASSERT(pthread_equal(rec1.thread, pthread_self()));
  ASSERT_OK(ul_timer_cancel(safety));

  /* Again: the counter was reset, the handler is still there. */
  test_raise(SIGUSR1);
  ASSERT_OK(ul_loop_call_later(loop, 5.0, timeout_cb, NULL, &safety));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(0, timed_out);
  ASSERT_EQ(2, rec1.calls);
  ASSERT_OK(ul_timer_cancel(safety));

  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR1));
  ASSERT(is_default(SIGUSR1));
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, SIGUSR1));
  CLOSE_LOOP(loop);
  ASSERT_EQ(2, rec1.calls);
  return 0;
}

TEST_IMPL(signal_invalid_args) {
  ul_loop *loop = test_loop_new();
  int x;

  ASSERT_EQ(-EINVAL, ul_loop_add_signal_handler(loop, 0, rec_cb, &x));
  ASSERT_EQ(-EINVAL, ul_loop_add_signal_handler(loop, -1, rec_cb, &x));
  ASSERT_EQ(-EINVAL, ul_loop_add_signal_handler(loop, 65, rec_cb, &x));
  ASSERT_EQ(-EINVAL, ul_loop_add_signal_handler(loop, 1000, rec_cb, &x));
  ASSERT_EQ(-EINVAL, ul_loop_add_signal_handler(loop, INT32_MIN, rec_cb, &x));
  ASSERT_EQ(-EPERM, ul_loop_add_signal_handler(loop, SIGKILL, rec_cb, &x));
  ASSERT_EQ(-EPERM, ul_loop_add_signal_handler(loop, SIGSTOP, rec_cb, &x));
  ASSERT_EQ(-EINVAL, ul_loop_add_signal_handler(NULL, SIGUSR1, rec_cb, &x));
  ASSERT_EQ(-EINVAL, ul_loop_add_signal_handler(loop, SIGUSR1, NULL, &x));
  /* None of those installed anything. */
  ASSERT(is_default(SIGUSR1));
  ASSERT(is_default(SIGKILL));

  ASSERT_EQ(-EINVAL, ul_loop_remove_signal_handler(NULL, SIGUSR1));
  ASSERT_EQ(-EINVAL, ul_loop_remove_signal_handler(loop, 0));
  ASSERT_EQ(-EINVAL, ul_loop_remove_signal_handler(loop, -1));
  ASSERT_EQ(-EINVAL, ul_loop_remove_signal_handler(loop, 65));
  /* Never added: 0, before and after the loop has signal state. */
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, SIGUSR1));
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, SIGKILL));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR2, rec_cb, &x));
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, SIGUSR1));
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, SIGKILL));
  /* Twice: 1 then 0. */
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR2));
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, SIGUSR2));
  ASSERT(is_default(SIGUSR2));
  CLOSE_LOOP(loop);
  return 0;
}

/* glibc's sigaction() refuses the signals NPTL reserves (32 and 33): the
 * error is returned and nothing is left half-installed. */
TEST_IMPL(signal_sigaction_error_installs_nothing) {
  ul_loop *loop = test_loop_new();
  int reserved = SIGRTMIN - 1; /* 33 or 34 on glibc: reserved by NPTL */
  struct sigaction probe;
  memset(&probe, 0, sizeof probe);
  probe.sa_handler = SIG_DFL;
  if (reserved < 32 || sigaction(reserved, &probe, NULL) == 0)
    RETURN_SKIP("no signal that sigaction() refuses");

  int r = ul_loop_add_signal_handler(loop, reserved, rec_cb, &rec1);
  ASSERT_LT(r, 0);
  ASSERT_NE(-EPERM, r);
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, reserved));
  /* Again (the failed first attempt left nothing behind to trip on). */
  ASSERT_EQ(r, ul_loop_add_signal_handler(loop, reserved, rec_cb, &rec1));
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, reserved));

  /* Other signals still work. */
  rec_reset();
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  test_raise(SIGUSR1);
  run_one_iteration(loop);
  ASSERT_EQ(1, rec1.calls);
  CLOSE_LOOP(loop);
  ASSERT(is_default(SIGUSR1));
  return 0;
}

/* Adding again replaces callback and arg; it is still one handler (one
 * remove gives the signal back). */
TEST_IMPL(signal_readd_replaces) {
  ul_loop *loop = test_loop_new();
  rec_reset();
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb_other, &rec2));
  test_raise(SIGUSR1);
  run_one_iteration(loop);
  ASSERT_EQ(0, rec1.calls);
  ASSERT_EQ(1, rec2.calls);
  ASSERT_PTR_EQ(&rec2, rec2.last_arg);
  ASSERT_EQ(SIGUSR1, rec2.last_signum);

  /* Same callback, new arg. */
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb_other, &rec3));
  test_raise(SIGUSR1);
  run_one_iteration(loop);
  ASSERT_EQ(1, rec2.calls);
  ASSERT_EQ(1, rec3.calls);

  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR1));
  ASSERT(is_default(SIGUSR1)); /* not still held by a second registration */
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, SIGUSR1));
  CLOSE_LOOP(loop);
  return 0;
}

static volatile sig_atomic_t custom_calls;
static volatile sig_atomic_t custom_info_calls;

static void custom_handler(int signum) {
  (void)signum;
  custom_calls++;
}

static void custom_info_handler(int signum, siginfo_t *si, void *uc) {
  (void)signum;
  (void)si;
  (void)uc;
  custom_info_calls++;
}

/* Removing gives back the handler that was there before: a plain one, an
 * SA_SIGINFO one (flags and mask too), SIG_IGN, SIG_DFL. */
TEST_IMPL(signal_remove_restores_previous) {
  ul_loop *loop = test_loop_new();
  struct sigaction sa, got;

  /* A custom handler, with flags and a mask of its own. */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = custom_handler;
  sa.sa_flags = SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGTERM);
  ASSERT_OK(sigaction(SIGUSR1, &sa, NULL));
  custom_calls = 0;
  rec_reset();
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  assert_owned(SIGUSR1);
  test_raise(SIGUSR1);
  ASSERT_EQ(0, custom_calls); /* libunixloop owns it now */
  run_one_iteration(loop);
  ASSERT_EQ(1, rec1.calls);
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR1));
  got = current_action(SIGUSR1);
  ASSERT(got.sa_handler == custom_handler);
  ASSERT(got.sa_flags & SA_NODEFER);
  ASSERT(!(got.sa_flags & SA_RESTART));
  ASSERT_EQ(1, sigismember(&got.sa_mask, SIGTERM));
  ASSERT_EQ(0, sigismember(&got.sa_mask, SIGUSR2));
  ASSERT_OK(raise(SIGUSR1));
  ASSERT_EQ(1, custom_calls);
  ASSERT_EQ(1, rec1.calls);

  /* An SA_SIGINFO handler. */
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = custom_info_handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  ASSERT_OK(sigaction(SIGUSR2, &sa, NULL));
  custom_info_calls = 0;
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR2, rec_cb, &rec2));
  assert_owned(SIGUSR2);
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR2));
  got = current_action(SIGUSR2);
  ASSERT(got.sa_flags & SA_SIGINFO);
  ASSERT(got.sa_sigaction == custom_info_handler);
  ASSERT_OK(raise(SIGUSR2));
  ASSERT_EQ(1, custom_info_calls);

  /* SIG_IGN stays ignored after; while libunixloop owns it, it is caught. */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  ASSERT_OK(sigaction(SIGHUP, &sa, NULL));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGHUP, rec_cb, &rec3));
  assert_owned(SIGHUP);
  test_raise(SIGHUP);
  run_one_iteration(loop);
  ASSERT_EQ(1, rec3.calls);
  ASSERT_EQ(SIGHUP, rec3.last_signum);
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGHUP));
  got = current_action(SIGHUP);
  ASSERT(got.sa_handler == SIG_IGN);
  ASSERT_OK(raise(SIGHUP)); /* ignored: the test survives */

  /* SIG_DFL when there was nothing. */
  ASSERT(is_default(SIGTERM));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGTERM, rec_cb, &rec3));
  assert_owned(SIGTERM);
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGTERM));
  ASSERT(is_default(SIGTERM));

  /* Add, remove, add again: the second save is of the restored handler. */
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR1));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR1));
  ASSERT(current_action(SIGUSR1).sa_handler == custom_handler);

  CLOSE_LOOP(loop);
  restore_default(SIGUSR1);
  restore_default(SIGUSR2);
  restore_default(SIGHUP);
  return 0;
}

/* ul_loop_close removes every handler of the loop and restores what was
 * there before each. */
TEST_IMPL(signal_close_removes_handlers) {
  ul_loop *loop = test_loop_new();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = custom_handler;
  ASSERT_OK(sigaction(SIGUSR2, &sa, NULL));

  rec_reset();
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR2, rec_cb, &rec2));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGRTMIN, rec_cb, &rec3));
  assert_owned(SIGUSR1);
  assert_owned(SIGUSR2);
  assert_owned(SIGRTMIN);
  /* Delivered but never dispatched: close does not call the callbacks. */
  test_raise(SIGUSR1);
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, rec1.calls);
  ASSERT(is_default(SIGUSR1));
  ASSERT(is_default(SIGRTMIN));
  ASSERT(current_action(SIGUSR2).sa_handler == custom_handler);
  custom_calls = 0;
  ASSERT_OK(raise(SIGUSR2));
  ASSERT_EQ(1, custom_calls);
  restore_default(SIGUSR2);

  /* A new loop can take the signal again. */
  loop = test_loop_new();
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  test_raise(SIGUSR1);
  run_one_iteration(loop);
  ASSERT_EQ(1, rec1.calls);
  CLOSE_LOOP(loop);
  ASSERT(is_default(SIGUSR1));
  return 0;
}

static int closing_add_result;
static int closing_cb_calls;

static void add_while_closing_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  closing_cb_calls++;
  ASSERT_EQ(-ECANCELED, status);
  closing_add_result = ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1);
}

/* A callback that ul_loop_close cancels cannot add a handler: -ESHUTDOWN,
 * and nothing stays installed after the loop is gone. */
TEST_IMPL(signal_add_while_closing) {
  ul_loop *loop = test_loop_new();
  rec_reset();
  closing_add_result = 1;
  closing_cb_calls = 0;
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR2, rec_cb, &rec2));
  ASSERT_OK(ul_loop_call_soon(loop, add_while_closing_cb, NULL));
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, closing_cb_calls);
  ASSERT_EQ(-ESHUTDOWN, closing_add_result);
  ASSERT(is_default(SIGUSR1));
  ASSERT(is_default(SIGUSR2));
  return 0;
}

/* A signal delivered before the remove does not reach the callback after
 * it, nor a callback added after it. */
TEST_IMPL(signal_no_callback_after_remove) {
  ul_loop *loop = test_loop_new();
  rec_reset();
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR2, rec_cb, &rec2));
  test_raise(SIGUSR1);
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR1));
  run_one_iteration(loop);
  ASSERT_EQ(0, rec1.calls);

  /* Delivered, removed, added again: the old delivery is gone. */
  test_raise(SIGUSR2);
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR2));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR2, rec_cb, &rec3));
  run_one_iteration(loop);
  run_one_iteration(loop);
  ASSERT_EQ(0, rec2.calls);
  ASSERT_EQ(0, rec3.calls);

  /* A new delivery reaches the new callback. */
  test_raise(SIGUSR2);
  run_one_iteration(loop);
  ASSERT_EQ(1, rec3.calls);
  ASSERT_EQ(0, rec2.calls);
  CLOSE_LOOP(loop);
  return 0;
}

static int remover_result;

static void remove_other_cb(ul_loop *loop, int signum, void *arg) {
  rec_cb(loop, signum, arg);
  remover_result = ul_loop_remove_signal_handler(loop, SIGUSR2);
}

static void remove_self_cb(ul_loop *loop, int signum, void *arg) {
  rec_cb(loop, signum, arg);
  remover_result = ul_loop_remove_signal_handler(loop, signum);
}

/* Both signals delivered, dispatched in one iteration: a callback that
 * removes the other signal's handler stops that one from running; one that
 * removes its own handler is not called again. */
TEST_IMPL(signal_remove_in_callback) {
  ul_loop *loop = test_loop_new();
  rec_reset();
  remover_result = -1;
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, remove_other_cb, &rec1));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR2, rec_cb, &rec2));
  ASSERT_LT(SIGUSR1, SIGUSR2); /* dispatch goes by signal number */
  test_raise(SIGUSR2);
  test_raise(SIGUSR1);
  run_one_iteration(loop);
  ASSERT_EQ(1, rec1.calls);
  ASSERT_EQ(1, remover_result);
  ASSERT_EQ(0, rec2.calls);
  ASSERT(is_default(SIGUSR2));

  remover_result = -1;
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, remove_self_cb, &rec3));
  test_raise(SIGUSR1);
  run_one_iteration(loop);
  ASSERT_EQ(1, rec3.calls);
  ASSERT_EQ(1, remover_result);
  ASSERT(is_default(SIGUSR1));
  ASSERT_EQ(0, ul_loop_remove_signal_handler(loop, SIGUSR1));
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, rec3.calls);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Bursts                                                                   */
/* ------------------------------------------------------------------------ */

/* 1000 deliveries before the loop runs: coalesced into one call; every
 * distinct signal delivered has its callback run. */
TEST_IMPL(signal_burst_coalesced) {
  ul_loop *loop = test_loop_new();
  rec_reset();
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  for (int i = 0; i < 1000; i++)
    test_raise(SIGUSR1);
  run_one_iteration(loop);
  ASSERT_EQ(1, rec1.calls);
  run_one_iteration(loop);
  ASSERT_EQ(1, rec1.calls); /* nothing left over */

  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR2, rec_cb, &rec2));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGRTMIN + 1, rec_cb, &rec3));
  test_raise(SIGUSR1);
  test_raise(SIGUSR2);
  test_raise(SIGRTMIN + 1);
  run_one_iteration(loop);
  ASSERT_EQ(2, rec1.calls);
  ASSERT_EQ(1, rec2.calls);
  ASSERT_EQ(1, rec3.calls);
  ASSERT_EQ(SIGUSR2, rec2.last_signum);
  ASSERT_EQ(SIGRTMIN + 1, rec3.last_signum);
  CLOSE_LOOP(loop);
  return 0;
}

static atomic_int burst_sent;

static void both_then_stop_cb(ul_loop *loop, int signum, void *arg) {
  rec_cb(loop, signum, arg);
  if (rec1.calls > 0 && rec2.calls > 0)
    ASSERT_OK(ul_loop_stop(loop));
}

static void *burst_thread(void *arg) {
  struct blocker *b = arg;
  wait_until_blocking(b);
  for (int i = 0; i < 5000; i++) {
    if (kill(getpid(), SIGUSR1) != 0)
      abort();
    if (i % 2 == 0 && kill(getpid(), SIGUSR2) != 0)
      abort();
  }
  atomic_store(&burst_sent, 1);
  return NULL;
}

/* A burst from another thread while the loop runs: both signals' callbacks
 * run; the loop is never in a callback from a handler. */
TEST_IMPL(signal_burst_from_thread) {
  ul_loop *loop = test_loop_new();
  struct blocker b;
  pthread_t th;
  ul_timer *safety;
  rec_reset();
  blocker_init(&b, 0);
  atomic_store(&burst_sent, 0);
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, both_then_stop_cb, &rec1));
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR2, both_then_stop_cb, &rec2));
  ASSERT_OK(ul_loop_set_poll_hooks(loop, blocker_hook, NULL, &b));
  timed_out = 0;
  ASSERT_OK(ul_loop_call_later(loop, 5.0, timeout_cb, NULL, &safety));
  ASSERT_OK(pthread_create(&th, NULL, burst_thread, &b));
  ASSERT_OK(ul_loop_run(loop));
  join_within(th, 5.0);
  ASSERT_EQ(0, timed_out);
  ASSERT_GE(rec1.calls, 1);
  ASSERT_GE(rec2.calls, 1);
  ASSERT(pthread_equal(rec1.thread, pthread_self()));
  ASSERT(pthread_equal(rec2.thread, pthread_self()));
  ASSERT_EQ(1, atomic_load(&burst_sent));
  /* Whatever is still pending is dispatched, not lost or doubled. */
  int before = rec1.calls;
  run_one_iteration(loop);
  ASSERT_LE(rec1.calls, before + 1);
  ASSERT_OK(ul_timer_cancel(safety));
  blocker_destroy(&b);
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Several loops                                                            */
/* ------------------------------------------------------------------------ */

/* One delivery reaches every loop that asked for the signal; removing it
 * from one loop (first, middle or last in the list) leaves the others. */
TEST_IMPL(signal_several_loops_one_thread) {
  ul_loop *a = test_loop_new();
  ul_loop *b = test_loop_new();
  ul_loop *c = test_loop_new();
  rec_reset();
  ASSERT_OK(ul_loop_add_signal_handler(a, SIGUSR1, rec_cb, &rec1));
  ASSERT_OK(ul_loop_add_signal_handler(b, SIGUSR1, rec_cb, &rec2));
  ASSERT_OK(ul_loop_add_signal_handler(c, SIGUSR1, rec_cb, &rec3));
  test_raise(SIGUSR1);
  run_one_iteration(a);
  run_one_iteration(b);
  run_one_iteration(c);
  ASSERT_EQ(1, rec1.calls);
  ASSERT_EQ(1, rec2.calls);
  ASSERT_EQ(1, rec3.calls);

  /* Remove from the middle one. */
  ASSERT_EQ(1, ul_loop_remove_signal_handler(b, SIGUSR1));
  assert_owned(SIGUSR1);
  test_raise(SIGUSR1);
  run_one_iteration(a);
  run_one_iteration(b);
  run_one_iteration(c);
  ASSERT_EQ(2, rec1.calls);
  ASSERT_EQ(1, rec2.calls);
  ASSERT_EQ(2, rec3.calls);

  /* Close one of the two left. */
  CLOSE_LOOP(c);
  assert_owned(SIGUSR1);
  test_raise(SIGUSR1);
  run_one_iteration(a);
  run_one_iteration(b);
  ASSERT_EQ(3, rec1.calls);
  ASSERT_EQ(1, rec2.calls);

  /* b takes it again; a leaves; b still gets it. */
  ASSERT_OK(ul_loop_add_signal_handler(b, SIGUSR1, rec_cb, &rec2));
  ASSERT_EQ(1, ul_loop_remove_signal_handler(a, SIGUSR1));
  assert_owned(SIGUSR1);
  test_raise(SIGUSR1);
  run_one_iteration(a);
  run_one_iteration(b);
  ASSERT_EQ(3, rec1.calls);
  ASSERT_EQ(2, rec2.calls);

  /* The last one gives the signal back. */
  ASSERT_EQ(1, ul_loop_remove_signal_handler(b, SIGUSR1));
  ASSERT(is_default(SIGUSR1));
  CLOSE_LOOP(a);
  CLOSE_LOOP(b);
  return 0;
}

struct loop_thread_ctx {
  struct blocker b;
  struct sigrec rec;
  ul_loop *loop;
  int run_result;
  int timed_out;
};

static void ctx_stop_cb(ul_loop *loop, int signum, void *arg) {
  struct loop_thread_ctx *ctx = arg;
  ASSERT_EQ(SIGUSR1, signum);
  ASSERT(ul_loop_is_running(loop));
  ctx->rec.calls++;
  ctx->rec.thread = pthread_self();
  ASSERT_OK(ul_loop_stop(loop));
}

static void ctx_timeout_cb(ul_loop *loop, void *arg, int status) {
  struct loop_thread_ctx *ctx = arg;
  if (status == -ECANCELED)
    return;
  ctx->timed_out = 1;
  ASSERT_OK(ul_loop_stop(loop));
}

static void *loop_thread_main(void *arg) {
  struct loop_thread_ctx *ctx = arg;
  ul_timer *safety;
  ASSERT_OK(ul_loop_call_later(ctx->loop, 5.0, ctx_timeout_cb, ctx, &safety));
  ASSERT_OK(ul_loop_set_poll_hooks(ctx->loop, blocker_hook, NULL, &ctx->b));
  ctx->run_result = ul_loop_run(ctx->loop);
  ASSERT(pthread_equal(ctx->rec.thread, pthread_self()) || ctx->rec.calls == 0);
  ASSERT_OK(ul_timer_cancel(safety));
  return NULL;
}

/* Two loops in two threads both handle SIGUSR1: one kill() reaches both. */
TEST_IMPL(signal_two_loops_two_threads) {
  struct loop_thread_ctx ctx[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    memset(&ctx[i], 0, sizeof ctx[i]);
    blocker_init(&ctx[i].b, 0);
    ctx[i].loop = test_loop_new();
    ctx[i].run_result = 1;
    ASSERT_OK(ul_loop_add_signal_handler(ctx[i].loop, SIGUSR1, ctx_stop_cb,
                                         &ctx[i]));
  }
  for (int i = 0; i < 2; i++)
    ASSERT_OK(pthread_create(&th[i], NULL, loop_thread_main, &ctx[i]));
  for (int i = 0; i < 2; i++)
    wait_until_blocking(&ctx[i].b);
  ASSERT_OK(kill(getpid(), SIGUSR1));
  for (int i = 0; i < 2; i++)
    join_within(th[i], 10.0);
  for (int i = 0; i < 2; i++) {
    ASSERT_EQ(0, ctx[i].timed_out);
    ASSERT_EQ(0, ctx[i].run_result);
    ASSERT_EQ(1, ctx[i].rec.calls);
    ASSERT(pthread_equal(ctx[i].rec.thread, th[i]));
    CLOSE_LOOP(ctx[i].loop);
    blocker_destroy(&ctx[i].b);
  }
  ASSERT(is_default(SIGUSR1));
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Delivery from elsewhere; waking a blocked loop                           */
/* ------------------------------------------------------------------------ */

struct sender {
  struct blocker *b;
  pthread_t target;
  int use_kill;     /* kill(getpid()) rather than pthread_kill(target) */
  int unblock;      /* unblock SIGUSR1 here (the mask is inherited) */
  int result;
};

static void *sender_thread(void *arg) {
  struct sender *s = arg;
  if (s->unblock) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    if (pthread_sigmask(SIG_UNBLOCK, &set, NULL) != 0)
      abort();
  }
  wait_until_blocking(s->b);
  if (s->use_kill)
    s->result = kill(getpid(), SIGUSR1) == 0 ? 0 : -errno;
  else
    s->result = -pthread_kill(s->target, SIGUSR1);
  return NULL;
}

/* The loop blocks in poll with no timer and nothing to do (timeout -1);
 * another thread sends SIGUSR1; the loop wakes and runs the callback. */
static int run_woken_by_thread(int use_kill, int block_in_loop_thread) {
  ul_loop *loop = test_loop_new();
  struct blocker b;
  struct sender s;
  pthread_t th;
  sigset_t set, old;

  rec_reset();
  rec1.stop = 1;
  blocker_init(&b, 1);
  s.b = &b;
  s.target = pthread_self();
  s.use_kill = use_kill;
  s.unblock = block_in_loop_thread;
  s.result = 1;
  if (block_in_loop_thread) {
    /* The handler must then run in the sender's thread: the loop is woken
     * from another thread's signal handler. */
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    ASSERT_OK(pthread_sigmask(SIG_BLOCK, &set, &old));
  }
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  ASSERT_OK(ul_loop_set_poll_hooks(loop, blocker_hook, NULL, &b));
  ASSERT_OK(pthread_create(&th, NULL, sender_thread, &s));
  ASSERT_OK(ul_loop_run(loop));
  join_within(th, 5.0);
  ASSERT_OK(s.result);
  ASSERT_EQ(1, rec1.calls);
  ASSERT_EQ(SIGUSR1, rec1.last_signum);
  ASSERT(pthread_equal(rec1.thread, pthread_self()));
  ASSERT_GE(b.infinite_polls, 1);
  if (block_in_loop_thread) {
    sigset_t pending;
    ASSERT_OK(sigpending(&pending));
    ASSERT_EQ(0, sigismember(&pending, SIGUSR1));
    ASSERT_OK(pthread_sigmask(SIG_SETMASK, &old, NULL));
  }
  blocker_destroy(&b);
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(signal_pthread_kill_wakes_blocked_loop) {
  return run_woken_by_thread(0, 0);
}

TEST_IMPL(signal_kill_from_thread_wakes_blocked_loop) {
  return run_woken_by_thread(1, 0);
}

TEST_IMPL(signal_handler_in_other_thread_wakes_loop) {
  return run_woken_by_thread(1, 1);
}

/* A child process kill()s the parent, whose loop is blocked in poll with no
 * timers; the parent's callback runs; the child is reaped. */
TEST_IMPL(signal_from_other_process) {
  ul_loop *loop = test_loop_new();
  struct blocker b;
  int fds[2];
  pid_t child;
  int status;

  if (pipe(fds) != 0)
    UL_TEST_FAIL_("pipe: %s\n", strerror(errno));
  rec_reset();
  rec1.stop = 1;
  blocker_init(&b, 1);
  b.notify_fd = fds[1];
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  ASSERT_OK(ul_loop_set_poll_hooks(loop, blocker_hook, NULL, &b));

  child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    char c;
    ssize_t n;
    close(fds[1]);
    do
      n = read(fds[0], &c, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1)
      _exit(2);
    _exit(kill(getppid(), SIGUSR1) == 0 ? 0 : 3);
  }
  test_close(fds[0]);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, rec1.calls);
  ASSERT_GE(b.infinite_polls, 1);
  test_close(fds[1]);

  pid_t r;
  do
    r = waitpid(child, &status, 0);
  while (r < 0 && errno == EINTR);
  ASSERT_EQ(child, r);
  ASSERT(WIFEXITED(status));
  ASSERT_EQ(0, WEXITSTATUS(status));
  blocker_destroy(&b);
  CLOSE_LOOP(loop);
  ASSERT(is_default(SIGUSR1));
  return 0;
}

/* A signal delivered while the loop runs a callback (not while it polls)
 * is not lost: the next poll returns at once. */
static void raise_in_callback(ul_loop *loop, void *arg, int status) {
  (void)loop;
  (void)arg;
  ASSERT_OK(status);
  test_raise(SIGUSR1);
}

TEST_IMPL(signal_delivered_during_callback) {
  ul_loop *loop = test_loop_new();
  struct blocker b;
  rec_reset();
  rec1.stop = 1;
  blocker_init(&b, 1);
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  ASSERT_OK(ul_loop_set_poll_hooks(loop, blocker_hook, NULL, &b));
  ASSERT_OK(ul_loop_call_soon(loop, raise_in_callback, NULL));
  /* No timer and no other thread: if the delivery were lost, the loop
   * would block forever (the runner's deadline fails the test). */
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, rec1.calls);
  blocker_destroy(&b);
  CLOSE_LOOP(loop);
  return 0;
}

/* SA_RESTART: a blocking read() interrupted by a signal libunixloop handles
 * is restarted, not failed with EINTR. */
struct restart_ctx {
  pthread_t reader;
  int wfd;
  long reader_tid;
  int result;
};

static void *restart_sender(void *arg) {
  struct restart_ctx *c = arg;
  /* Wait (bounded) until the reader sleeps in read(): the first field of
   * /proc/self/task/TID/syscall is then SYS_read.  Should it not get there,
   * the signal comes before the read and the test proves less. */
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/self/task/%ld/syscall", c->reader_tid);
  double deadline = test_now() + 5.0;
  for (;;) {
    FILE *f = fopen(path, "r");
    int in_read = 0;
    if (f != NULL) {
      if (fgets(buf, sizeof buf, f) != NULL)
        in_read = buf[0] >= '0' && buf[0] <= '9' && /* not "running" */
                  strtol(buf, NULL, 10) == SYS_read;
      fclose(f);
    }
    if (in_read || test_now() > deadline)
      break;
    sched_yield();
  }
  c->result = pthread_kill(c->reader, SIGUSR1);
  /* Write only once the signal was taken (not pending on the reader any
   * more): a byte already there would let read() return it instead of
   * being interrupted. */
  snprintf(path, sizeof path, "/proc/self/task/%ld/status", c->reader_tid);
  while (test_now() < deadline) {
    FILE *f = fopen(path, "r");
    int pending = 0;
    if (f != NULL) {
      while (fgets(buf, sizeof buf, f) != NULL)
        if (strncmp(buf, "SigPnd:", 7) == 0)
          pending = (strtoull(buf + 7, NULL, 16) >> (SIGUSR1 - 1)) & 1;
      fclose(f);
    }
    if (!pending)
      break;
    sched_yield();
  }
  test_write_byte(c->wfd);
  return NULL;
}

TEST_IMPL(signal_sa_restart) {
  ul_loop *loop = test_loop_new();
  int fds[2];
  struct restart_ctx c;
  pthread_t th;
  char ch;
  ssize_t n;

  if (pipe(fds) != 0) /* blocking */
    UL_TEST_FAIL_("pipe: %s\n", strerror(errno));
  rec_reset();
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  memset(&c, 0, sizeof c);
  c.reader = pthread_self();
  c.wfd = fds[1];
  c.result = -1;
  c.reader_tid = (long)syscall(SYS_gettid);
  ASSERT_OK(pthread_create(&th, NULL, restart_sender, &c));
  n = read(fds[0], &ch, 1); /* SA_RESTART: EINTR would fail here */
  ASSERT_EQ(1, n);
  join_within(th, 5.0);
  ASSERT_OK(c.result);
  /* The signal was recorded, and is dispatched. */
  run_one_iteration(loop);
  ASSERT_EQ(1, rec1.calls);
  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* include/unixloop.h, "Signals": code that changes a signal's disposition
 * while libunixloop owns it takes it away; removing the loop's handler must
 * leave the other code's handler in place. */
TEST_IMPL(signal_taken_over_not_clobbered) {
  ul_loop *loop = test_loop_new();
  struct sigaction sa;
  rec_reset();
  ASSERT_OK(ul_loop_add_signal_handler(loop, SIGUSR1, rec_cb, &rec1));
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = custom_handler;
  ASSERT_OK(sigaction(SIGUSR1, &sa, NULL)); /* other code takes it */
  ASSERT_EQ(1, ul_loop_remove_signal_handler(loop, SIGUSR1));
  ASSERT(current_action(SIGUSR1).sa_handler == custom_handler);
  CLOSE_LOOP(loop);
  ASSERT(current_action(SIGUSR1).sa_handler == custom_handler);
  restore_default(SIGUSR1);
  return 0;
}
