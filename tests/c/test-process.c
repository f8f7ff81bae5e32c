/* Spawning (ul_spawn) and watching children (ul_process_*), with every
 * child watcher.
 *
 * Each test runs in its own process, so no child of another test is around
 * (the fast watcher reaps any child of the process).  No sleeps: the tests
 * wait for exits through the loop, through waitid(WNOWAIT), or by reading
 * a child's output to EOF. */
#include "test.h"

#include "../../src/internal.h" /* ul__spawn_test_hook, ul__process_sigchld */

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

/* ---- helpers ------------------------------------------------------------- */

struct exit_rec {
  int calls;
  int returncode;
  int stop_after;   /* stop the loop when `calls` reaches it (0: never) */
  int close_in_cb;  /* ul_process_close from the callback */
};

static void exit_cb(ul_process *p, int returncode, void *arg) {
  struct exit_rec *r = arg;
  r->calls++;
  r->returncode = returncode;
  ASSERT_EQ(1, ul_process_exited(p));
  ASSERT_EQ(returncode, ul_process_returncode(p));
  if (r->close_in_cb)
    ASSERT_OK(ul_process_close(p));
  if (r->stop_after != 0 && r->calls == r->stop_after)
    ASSERT_OK(ul_loop_stop(ul_process_get_loop(p)));
}

static ul_loop *loop_with(ul_child_watcher w) {
  ul_loop *loop = test_loop_new();
  ASSERT_OK(ul_loop_set_child_watcher(loop, w));
  ASSERT_EQ(w, ul_loop_get_child_watcher(loop));
  return loop;
}

static ul_process *start(ul_loop *loop, char *const *argv,
                         struct exit_rec *rec) {
  ul_spawn_options o;
  ul_process *p = NULL;
  memset(&o, 0, sizeof o);
  o.argv = argv;
  ASSERT_OK(ul_process_spawn(loop, &o, exit_cb, rec, &p, NULL, NULL));
  ASSERT_NOT_NULL(p);
  ASSERT_GT(ul_process_pid(p), 0);
  return p;
}

static int count_threads(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/task");
  ASSERT_NOT_NULL(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* Reads fd (blocking) to EOF into buf; returns the length. */
static size_t read_all(int fd, char *buf, size_t cap) {
  size_t len = 0;
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  for (;;) {
    ssize_t n = read(fd, buf + len, cap - 1 - len);
    if (n < 0 && errno == EINTR)
      continue;
    ASSERT_GE(n, 0);
    if (n == 0)
      break;
    len += (size_t)n;
  }
  buf[len] = '\0';
  return len;
}

/* Runs `argv` with stdout on a pipe and the given options; returns the
 * exit status, the output in out. */
static int run_capture(ul_spawn_options *o, char *out, size_t cap) {
  ul_spawn_result r;
  o->stdio[1].mode = UL_STDIO_PIPE;
  ASSERT_OK(ul_spawn(o, &r));
  ASSERT_GE(r.stdio_fds[1], 0);
  ASSERT_EQ(-1, r.stdio_fds[0]);
  ASSERT_EQ(-1, r.pidfd);
  read_all(r.stdio_fds[1], out, cap);
  test_close(r.stdio_fds[1]);
  int status;
  ASSERT_EQ(r.pid, waitpid(r.pid, &status, 0));
  ASSERT(WIFEXITED(status));
  return WEXITSTATUS(status);
}

static char *sh_argv(const char *script) {
  static char *argv[4];
  argv[0] = "/bin/sh";
  argv[1] = "-c";
  argv[2] = (char *)script;
  argv[3] = NULL;
  return (char *)argv;
}
#define SH(script) ((char *const *)(void *)sh_argv(script))

/* ---- per-watcher tests ---------------------------------------------------- */

static int exit_status(ul_child_watcher w) {
  ul_loop *loop = loop_with(w);
  int fds = test_count_fds();
  struct exit_rec a = {0, 0, 0, 0}, b = {0, 0, 0, 0};
  ul_process *pa = start(loop, SH("exit 3"), &a);
  ul_process *pb = start(loop, SH("exit 0"), &b);
  while (a.calls == 0 || b.calls == 0)
    ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, a.calls);
  ASSERT_EQ(3, a.returncode);
  ASSERT_EQ(1, b.calls);
  ASSERT_EQ(0, b.returncode);
  /* Fired once: more iterations call nothing. */
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, a.calls);
  ASSERT_EQ(-ESRCH, ul_process_kill(pa));
  ASSERT_EQ(-ESRCH, ul_process_send_signal(pb, 0));
  ASSERT_OK(ul_process_close(pa));
  ASSERT_OK(ul_process_close(pb));
  ASSERT_EQ(fds, test_count_fds());
  CLOSE_LOOP(loop);
  return 0;
}

static int killed(ul_child_watcher w) {
  ul_loop *loop = loop_with(w);
  struct exit_rec a = {0, 0, 1, 0}, b = {0, 0, 0, 0};
  char *argv[] = {"sleep", "30", NULL};  /* found in $PATH */
  ul_process *pa = start(loop, argv, &a);
  ul_process *pb = start(loop, argv, &b);
  ASSERT_OK(ul_process_kill(pa));
  ASSERT_OK(ul_process_send_signal(pb, SIGTERM));
  while (a.calls == 0 || b.calls == 0)
    ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(-SIGKILL, a.returncode);
  ASSERT_EQ(-SIGTERM, b.returncode);
  ASSERT_OK(ul_process_close(pa));
  ASSERT_OK(ul_process_close(pb));
  CLOSE_LOOP(loop);
  return 0;
}

#define MANY 1000

static struct exit_rec many_rec[MANY];
static int many_done;

static void many_cb(ul_process *p, int returncode, void *arg) {
  struct exit_rec *r = arg;
  r->calls++;
  r->returncode = returncode;
  ASSERT_OK(ul_process_close(p));
  if (++many_done == MANY)
    ASSERT_OK(ul_loop_stop(ul_process_get_loop(p)));
}

static int many(ul_child_watcher w) {
  ul_loop *loop = loop_with(w);
  int fds = test_count_fds();
  int threads = count_threads();
  char *t[] = {"/bin/true", NULL}, *f[] = {"/bin/false", NULL};
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  memset(many_rec, 0, sizeof many_rec);
  many_done = 0;
  for (int i = 0; i < MANY; i++) {
    ul_process *p;
    o.argv = i % 2 ? f : t;
    ASSERT_OK(ul_process_spawn(loop, &o, many_cb, &many_rec[i], &p, NULL,
                               NULL));
  }
  ASSERT_OK(ul_loop_run(loop));
  for (int i = 0; i < MANY; i++) {
    ASSERT_EQ(1, many_rec[i].calls);
    ASSERT_EQ(i % 2, many_rec[i].returncode);
  }
  /* All reaped: no child left, no fd, no thread. */
  ASSERT_EQ(-1, waitpid(-1, NULL, WNOHANG));
  ASSERT_EQ(ECHILD, errno);
  ASSERT_EQ(fds, test_count_fds());
  ASSERT_EQ(threads, count_threads());
  CLOSE_LOOP(loop);
  return 0;
}

static struct { int calls; int err; char msg[200]; } errlog;

static void log_error(ul_loop *loop, int err, const char *message,
                      void *arg) {
  (void)loop;
  (void)arg;
  errlog.calls++;
  errlog.err = err;
  snprintf(errlog.msg, sizeof errlog.msg, "%s", message);
}

/* Other code reaps the child first: 255 and a warning. */
/* The thread watcher's thread waits from the start and would win any race
 * with the test: the test reaps the child before the thread exists, from
 * the library's test hook (between the spawn and the watching). */
static void reap_here(ul_loop *loop, pid_t pid) {
  int status;
  (void)loop;
  ASSERT_EQ(pid, waitpid(pid, &status, 0));
  ASSERT_EQ(5, WEXITSTATUS(status));
}

/* A child reaped before its watcher: reported once, returncode 255, with
 * the warning. */
static int check_reported_255(ul_loop *loop, struct exit_rec *a,
                              ul_process *p) {
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, a->calls);
  ASSERT_EQ(255, a->returncode);
  ASSERT_EQ(1, errlog.calls);
  ASSERT(strstr(errlog.msg, "will report returncode 255") != NULL);
  ASSERT_OK(ul_process_close(p));
  CLOSE_LOOP(loop);
  return 0;
}

static int reaped_elsewhere_thread(void) {
  ul_loop *loop = loop_with(UL_WATCHER_THREAD);
  struct exit_rec a = {0, 0, 1, 0};
  memset(&errlog, 0, sizeof errlog);
  ASSERT_OK(ul_loop_set_error_handler(loop, log_error, NULL));
  ul__spawn_test_hook = reap_here;
  ul_process *p = start(loop, SH("exit 5"), &a);
  ul__spawn_test_hook = NULL;
  return check_reported_255(loop, &a, p);
}

static int reaped_elsewhere(ul_child_watcher w) {
  /* Spawn, then reap the child here before the watcher gets to it. */
  if (w == UL_WATCHER_THREAD)
    return reaped_elsewhere_thread();
  if (w == UL_WATCHER_FAST)
    RETURN_SKIP("this watcher may reap the child before the test can; "
                "reaped before it, the child is never reported by "
                "waitpid(-1), here as in the seed's FastChildWatcher");
  ul_loop *loop = loop_with(w);
  struct exit_rec a = {0, 0, 1, 0};
  memset(&errlog, 0, sizeof errlog);
  ASSERT_OK(ul_loop_set_error_handler(loop, log_error, NULL));
  /* cat exits when we close its stdin: only after it is registered. */
  char *cat[] = {"/bin/cat", NULL};
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = cat;
  o.stdio[0].mode = UL_STDIO_PIPE;
  ul_process *p;
  int fds[3];
  ASSERT_OK(ul_process_spawn(loop, &o, exit_cb, &a, &p, fds, NULL));
  test_close(fds[0]);
  int status;
  ASSERT_EQ(ul_process_pid(p), waitpid(ul_process_pid(p), &status, 0));
  return check_reported_255(loop, &a, p);
}

/* Closing the loop with a child still running: the callback gets
 * -ECANCELED, and the child is still reaped once it exits (no zombie). */
static int cancelled_pidfd = -1;

static void cancelled_cb(ul_process *p, int returncode, void *arg) {
  exit_cb(p, returncode, arg);
  /* The pidfd is still valid here: keep a copy to signal the child. */
  ASSERT_GE(ul_process_pidfd(p), 0);
  cancelled_pidfd = fcntl(ul_process_pidfd(p), F_DUPFD_CLOEXEC, 3);
  ASSERT_GE(cancelled_pidfd, 0);
}

static int close_running(ul_child_watcher w) {
  ul_loop *loop = loop_with(w);
  struct exit_rec a = {0, 0, 0, 1};  /* closed from the callback */
  char *argv[] = {"/bin/sleep", "30", NULL};
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = argv;
  ul_process *p;
  ASSERT_OK(ul_process_spawn(loop, &o, cancelled_cb, &a, &p, NULL, NULL));
  pid_t pid = ul_process_pid(p);
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, a.calls);
  ASSERT_EQ(-ECANCELED, a.returncode);
  ASSERT_OK(syscall(SYS_pidfd_send_signal, cancelled_pidfd, SIGKILL, NULL, 0));
  test_close(cancelled_pidfd);
  /* The reaper (a thread) takes it: wait for it with a deadline. */
  double deadline = test_now() + 10;
  while (kill(pid, 0) == 0) {
    ASSERT_DOUBLE_LT(test_now(), deadline);
    sched_yield();
  }
  ASSERT_EQ(ESRCH, errno);
  return 0;
}

/* ul_process_close before the exit: no callback, and the child is still
 * reaped by the loop. */
static int close_before_exit(ul_child_watcher w) {
  ul_loop *loop = loop_with(w);
  struct exit_rec a = {0, 0, 0, 0}, b = {0, 0, 1, 0};
  int rfd[2];
  test_pipe(rfd);
  /* a: exits when its stdin hits EOF (we close our end). */
  char *cat[] = {"/bin/cat", NULL};
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = cat;
  o.stdio[0].mode = UL_STDIO_PIPE;
  o.stdio[1].mode = UL_STDIO_DEVNULL;
  ul_process *pa;
  int fds[3];
  ASSERT_OK(ul_process_spawn(loop, &o, exit_cb, &a, &pa, fds, NULL));
  pid_t pid = ul_process_pid(pa);
  ASSERT_OK(ul_process_close(pa));
  test_close(fds[0]);
  /* Wait until it is a zombie, then run the loop until b is reported. */
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) != 0)
    ASSERT_EQ(ECHILD, errno);  /* the thread watcher was quicker */
  ul_process *pb = start(loop, SH("exit 0"), &b);
  ASSERT_OK(ul_loop_run(loop));
  while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT | WNOHANG) == 0)
    ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(ECHILD, errno);
  ASSERT_EQ(0, a.calls);
  ASSERT_OK(ul_process_close(pb));
  test_close(rfd[0]);
  test_close(rfd[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Closing the process from its own exit callback. */
static int close_in_callback(ul_child_watcher w) {
  ul_loop *loop = loop_with(w);
  struct exit_rec a = {0, 0, 1, 1};
  start(loop, SH("exit 5"), &a);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, a.calls);
  ASSERT_EQ(5, a.returncode);
  CLOSE_LOOP(loop);
  return 0;
}

/* Watching a child started by other code. */
static int watch_forked(ul_child_watcher w) {
  ul_loop *loop = loop_with(w);
  struct exit_rec a = {0, 0, 1, 0};
  int gate[2];
  ASSERT_OK(pipe(gate));
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    char c;
    close(gate[1]);
    while (read(gate[0], &c, 1) < 0 && errno == EINTR)
      ;
    _exit(42);
  }
  test_close(gate[0]);
  ul_process *p = NULL;
  ASSERT_OK(ul_process_watch(loop, pid, exit_cb, &a, &p));
  test_close(gate[1]);  /* now it may exit */
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(42, a.returncode);
  ASSERT_EQ(pid, ul_process_pid(p));
  ASSERT_OK(ul_process_close(p));
  CLOSE_LOOP(loop);
  return 0;
}

#define WATCHER_TESTS(suffix, w)                                             \
  TEST_IMPL(process_exit_status_##suffix) { return exit_status(w); }         \
  TEST_IMPL(process_killed_##suffix) { return killed(w); }                   \
  TEST_IMPL(process_1000_concurrent_##suffix) { return many(w); }            \
  TEST_IMPL(process_reaped_elsewhere_##suffix) { return reaped_elsewhere(w); } \
  TEST_IMPL(process_loop_close_running_##suffix) { return close_running(w); } \
  TEST_IMPL(process_close_before_exit_##suffix) {                            \
    return close_before_exit(w);                                             \
  }                                                                          \
  TEST_IMPL(process_close_in_callback_##suffix) {                            \
    return close_in_callback(w);                                             \
  }                                                                          \
  TEST_IMPL(process_watch_forked_##suffix) { return watch_forked(w); }

WATCHER_TESTS(pidfd, UL_WATCHER_PIDFD)
WATCHER_TESTS(safe, UL_WATCHER_SAFE)
WATCHER_TESTS(fast, UL_WATCHER_FAST)
WATCHER_TESTS(thread, UL_WATCHER_THREAD)
WATCHER_TESTS(multi, UL_WATCHER_MULTI)

/* ---- watcher selection ------------------------------------------------------ */

TEST_IMPL(process_watcher_default_and_busy) {
  ul_loop *loop = test_loop_new();
  ASSERT_EQ(UL_WATCHER_PIDFD, ul_loop_get_child_watcher(loop));
  ASSERT_EQ(-EINVAL, ul_loop_set_child_watcher(NULL, UL_WATCHER_SAFE));
  ASSERT_EQ(-EINVAL, ul_loop_set_child_watcher(loop, (ul_child_watcher)99));
  struct exit_rec a = {0, 0, 1, 0};
  ul_process *p = start(loop, SH("exit 0"), &a);
  ASSERT_EQ(-EBUSY, ul_loop_set_child_watcher(loop, UL_WATCHER_SAFE));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_OK(ul_process_close(p));
  ASSERT_OK(ul_loop_set_child_watcher(loop, UL_WATCHER_SAFE));
  ASSERT_OK(ul_loop_set_child_watcher(loop, UL_WATCHER_PIDFD));
  CLOSE_LOOP(loop);
  return 0;
}

/* fast: a child nobody registered is reported as unknown. */
TEST_IMPL(process_fast_unknown_child) {
  ul_loop *loop = loop_with(UL_WATCHER_FAST);
  memset(&errlog, 0, sizeof errlog);
  ASSERT_OK(ul_loop_set_error_handler(loop, log_error, NULL));
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0)
    _exit(9);
  siginfo_t si;
  memset(&si, 0, sizeof si);
  ASSERT_OK(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT));
  struct exit_rec a = {0, 0, 1, 0};
  ul_process *p = start(loop, SH("exit 1"), &a);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, a.returncode);
  ASSERT_GE(errlog.calls, 1);
  ASSERT(strstr(errlog.msg, "unknown pid") != NULL);
  ASSERT_OK(ul_process_close(p));
  CLOSE_LOOP(loop);
  return 0;
}

/* fast: a child that exits and is reaped by another fast loop (waitpid(-1)
 * there) after the spawn but before this loop registered it.  The seed's
 * FastChildWatcher keeps such exits in `_zombies` while a spawn is in
 * progress; add_child_handler then finds them there.  The library's test
 * hook runs between the spawn and the registration; it waits until the
 * child is a zombie and runs the other loop's SIGCHLD handling, so the
 * order is the same every time. */
static ul_loop *fast_other_loop;
static pid_t fast_stray = -1;  /* also exited and reaped there, unclaimed */

static void wait_zombie(pid_t pid) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  ASSERT_OK(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT));
  ASSERT_EQ(pid, si.si_pid);
}

static void reap_in_other_loop(ul_loop *loop, pid_t pid) {
  (void)loop;
  wait_zombie(pid);
  if (fast_stray == 0) {
    fast_stray = fork();
    ASSERT_GE(fast_stray, 0);
    if (fast_stray == 0)
      _exit(9);
    wait_zombie(fast_stray);
  }
  ul__process_sigchld(fast_other_loop);
  /* Reaped there: nothing is left to wait for. */
  siginfo_t si;
  ASSERT_EQ(-1, waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG));
  ASSERT_EQ(ECHILD, errno);
}

static int fast_reaped_before_registered(int with_stray) {
  ul_loop *loop = loop_with(UL_WATCHER_FAST);
  fast_other_loop = loop_with(UL_WATCHER_FAST);
  /* The other loop needs its SIGCHLD handler: one spawn sets it up. */
  struct exit_rec b = {0, 0, 1, 0};
  ul_process *pb = start(fast_other_loop, SH("exit 0"), &b);
  ASSERT_OK(ul_loop_run(fast_other_loop));
  ASSERT_EQ(0, b.returncode);
  ASSERT_OK(ul_process_close(pb));
  memset(&errlog, 0, sizeof errlog);
  ASSERT_OK(ul_loop_set_error_handler(loop, log_error, NULL));
  ASSERT_OK(ul_loop_set_error_handler(fast_other_loop, log_error, NULL));
  fast_stray = with_stray ? 0 : -1;

  struct exit_rec a = {0, 0, 1, 0};
  ul__spawn_test_hook = reap_in_other_loop;
  ul_process *pa = start(loop, SH("exit 7"), &a);
  ul__spawn_test_hook = NULL;
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, a.calls);
  ASSERT_EQ(7, a.returncode);
  if (with_stray) {
    /* Nobody claimed it when the spawn ended: reported as the seed's
     * __exit__ does, once. */
    char want[96];
    snprintf(want, sizeof want,
             "Caught subprocess termination from unknown pid: %d -> 9",
             (int)fast_stray);
    ASSERT_EQ(1, errlog.calls);
    ASSERT_STR_EQ(want, errlog.msg);
  } else {
    ASSERT_EQ(0, errlog.calls);
  }
  ASSERT_OK(ul_process_close(pa));
  CLOSE_LOOP(fast_other_loop);
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(process_fast_reaped_before_registered) {
  return fast_reaped_before_registered(0);
}

TEST_IMPL(process_fast_unclaimed_zombie_reported) {
  return fast_reaped_before_registered(1);
}

/* multi: a SIGCHLD on one loop reaps the children of another loop that is
 * not running; the exit reaches the other loop when it runs. */
TEST_IMPL(process_multi_other_loop) {
  ul_loop *a_loop = loop_with(UL_WATCHER_MULTI);
  ul_loop *b_loop = loop_with(UL_WATCHER_MULTI);
  struct exit_rec a = {0, 0, 1, 0}, b = {0, 0, 1, 0};
  char *t[] = {"/bin/true", NULL}, *cat[] = {"/bin/cat", NULL};
  /* a's child exits when we close its stdin, once it is registered. */
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = cat;
  o.stdio[0].mode = UL_STDIO_PIPE;
  ul_process *pa;
  int fds[3];
  ASSERT_OK(ul_process_spawn(a_loop, &o, exit_cb, &a, &pa, fds, NULL));
  test_close(fds[0]);
  siginfo_t si;
  memset(&si, 0, sizeof si);
  ASSERT_OK(waitid(P_PID, (id_t)ul_process_pid(pa), &si, WEXITED | WNOWAIT));
  ul_process *pb = start(b_loop, t, &b);
  ASSERT_OK(ul_loop_run(b_loop));
  ASSERT_EQ(1, b.calls);
  /* a's child was reaped by b's loop. */
  ASSERT_EQ(-1, waitid(P_PID, (id_t)ul_process_pid(pa), &si,
                       WEXITED | WNOWAIT | WNOHANG));
  ASSERT_EQ(ECHILD, errno);
  ASSERT_EQ(0, a.calls);
  ASSERT_OK(ul_loop_run(a_loop));
  ASSERT_EQ(1, a.calls);
  ASSERT_EQ(0, a.returncode);
  ASSERT_OK(ul_process_close(pa));
  ASSERT_OK(ul_process_close(pb));
  CLOSE_LOOP(a_loop);
  CLOSE_LOOP(b_loop);
  return 0;
}

/* multi: loops in two threads each get their own children's exits. */
struct thread_arg {
  ul_loop *loop;
  struct exit_rec rec[20];
};

static void *multi_thread_main(void *arg) {
  struct thread_arg *t = arg;
  char *argv[] = {"/bin/sh", "-c", "exit 4", NULL};
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = argv;
  for (int i = 0; i < 20; i++) {
    ul_process *p;
    t->rec[i].close_in_cb = 1;
    ASSERT_OK(ul_process_spawn(t->loop, &o, exit_cb, &t->rec[i], &p, NULL,
                               NULL));
    while (t->rec[i].calls == 0)
      ASSERT_OK(ul_loop_run_once(t->loop, 1));
    ASSERT_EQ(4, t->rec[i].returncode);
  }
  return NULL;
}

TEST_IMPL(process_multi_threads) {
  struct thread_arg ta, tb;
  memset(&ta, 0, sizeof ta);
  memset(&tb, 0, sizeof tb);
  ta.loop = loop_with(UL_WATCHER_MULTI);
  tb.loop = loop_with(UL_WATCHER_MULTI);
  pthread_t a, b;
  ASSERT_OK(pthread_create(&a, NULL, multi_thread_main, &ta));
  ASSERT_OK(pthread_create(&b, NULL, multi_thread_main, &tb));
  ASSERT_OK(pthread_join(a, NULL));
  ASSERT_OK(pthread_join(b, NULL));
  CLOSE_LOOP(ta.loop);
  CLOSE_LOOP(tb.loop);
  return 0;
}

/* ---- ul_spawn: errors -------------------------------------------------------- */

TEST_IMPL(spawn_enoent) {
  int fds = test_count_fds();
  char *argv[] = {"/nonexistent/program", NULL};
  ul_spawn_options o;
  ul_spawn_result r;
  memset(&o, 0, sizeof o);
  o.argv = argv;
  o.stdio[1].mode = UL_STDIO_PIPE;
  ASSERT_EQ(-ENOENT, ul_spawn(&o, &r));
  ASSERT_EQ(UL_SPAWN_STEP_EXEC, r.failed_step);
  ASSERT_EQ(-1, r.stdio_fds[1]);
  /* A name looked up in PATH. */
  char *argv2[] = {"no-such-program-unixloop", NULL};
  o.argv = argv2;
  ASSERT_EQ(-ENOENT, ul_spawn(&o, &r));
  ASSERT_EQ(UL_SPAWN_STEP_EXEC, r.failed_step);
  /* Nothing left: no child, no fd. */
  ASSERT_EQ(-1, waitpid(-1, NULL, WNOHANG));
  ASSERT_EQ(ECHILD, errno);
  ASSERT_EQ(fds, test_count_fds());
  /* Through a loop: the callback is never called. */
  ul_loop *loop = test_loop_new();
  struct exit_rec a = {0, 0, 0, 0};
  ul_process *p = NULL;
  int step = -1;
  o.argv = argv;
  ASSERT_EQ(-ENOENT, ul_process_spawn(loop, &o, exit_cb, &a, &p, NULL, &step));
  ASSERT_EQ(UL_SPAWN_STEP_EXEC, step);
  ASSERT_NULL(p);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, a.calls);
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(spawn_eacces) {
  char path[] = "/tmp/unixloop-noexec-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(9, write(fd, "#!/bin/sh", 9));
  test_close(fd);
  ASSERT_OK(chmod(path, 0644));
  char *argv[] = {path, NULL};
  ul_spawn_options o;
  ul_spawn_result r;
  memset(&o, 0, sizeof o);
  o.argv = argv;
  int err = ul_spawn(&o, &r);
  unlink(path);
  ASSERT_EQ(-EACCES, err);
  ASSERT_EQ(UL_SPAWN_STEP_EXEC, r.failed_step);
  /* A directory is EACCES too. */
  char *argv2[] = {"/tmp", NULL};
  o.argv = argv2;
  ASSERT_EQ(-EACCES, ul_spawn(&o, &r));
  return 0;
}

TEST_IMPL(spawn_bad_cwd) {
  ul_spawn_options o;
  ul_spawn_result r;
  memset(&o, 0, sizeof o);
  o.argv = SH("exit 0");
  o.cwd = "/nonexistent/dir";
  ASSERT_EQ(-ENOENT, ul_spawn(&o, &r));
  ASSERT_EQ(UL_SPAWN_STEP_SETUP, r.failed_step);
  ASSERT_EQ(-1, waitpid(-1, NULL, WNOHANG));
  return 0;
}

TEST_IMPL(spawn_invalid) {
  ul_spawn_options o;
  ul_spawn_result r;
  memset(&o, 0, sizeof o);
  ASSERT_EQ(-EINVAL, ul_spawn(NULL, &r));
  ASSERT_EQ(-EINVAL, ul_spawn(&o, NULL));
  ASSERT_EQ(-EINVAL, ul_spawn(&o, &r));  /* no argv */
  o.argv = SH("exit 0");
  o.stdio[0].mode = UL_STDIO_STDOUT;      /* only for stderr */
  ASSERT_EQ(-EINVAL, ul_spawn(&o, &r));
  o.stdio[0].mode = UL_STDIO_FD;
  o.stdio[0].fd = -1;
  ASSERT_EQ(-EINVAL, ul_spawn(&o, &r));
  return 0;
}

/* ---- ul_spawn: options -------------------------------------------------------- */

TEST_IMPL(spawn_stdio_pipes) {
  char *argv[] = {"/bin/sh", "-c", "read x; printf \"o$x\"; printf e$x >&2",
                  NULL};
  ul_spawn_options o;
  ul_spawn_result r;
  memset(&o, 0, sizeof o);
  o.argv = argv;
  for (int i = 0; i < 3; i++)
    o.stdio[i].mode = UL_STDIO_PIPE;
  ASSERT_OK(ul_spawn(&o, &r));
  for (int i = 0; i < 3; i++) {
    ASSERT_GE(r.stdio_fds[i], 3);
    ASSERT(fcntl(r.stdio_fds[i], F_GETFD) & FD_CLOEXEC);
    ASSERT(fcntl(r.stdio_fds[i], F_GETFL) & O_NONBLOCK);
  }
  ASSERT_EQ(3, write(r.stdio_fds[0], "hi\n", 3));
  test_close(r.stdio_fds[0]);
  char out[64], err[64];
  read_all(r.stdio_fds[1], out, sizeof out);
  read_all(r.stdio_fds[2], err, sizeof err);
  ASSERT_STR_EQ("ohi", out);
  ASSERT_STR_EQ("ehi", err);
  test_close(r.stdio_fds[1]);
  test_close(r.stdio_fds[2]);
  ASSERT_EQ(r.pid, waitpid(r.pid, NULL, 0));
  return 0;
}

TEST_IMPL(spawn_stderr_to_stdout_and_devnull) {
  ul_spawn_options o;
  char out[64];
  memset(&o, 0, sizeof o);
  o.argv = SH("printf a; printf b >&2; cat");
  o.stdio[0].mode = UL_STDIO_DEVNULL;
  o.stdio[2].mode = UL_STDIO_STDOUT;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("ab", out);
  return 0;
}

TEST_IMPL(spawn_stdio_given_fd) {
  int p[2];
  ASSERT_OK(pipe2(p, O_CLOEXEC));
  char *argv[] = {"/bin/sh", "-c", "printf given", NULL};
  ul_spawn_options o;
  ul_spawn_result r;
  memset(&o, 0, sizeof o);
  o.argv = argv;
  o.stdio[1].mode = UL_STDIO_FD;
  o.stdio[1].fd = p[1];
  ASSERT_OK(ul_spawn(&o, &r));
  test_close(p[1]);
  char out[64];
  read_all(p[0], out, sizeof out);
  ASSERT_STR_EQ("given", out);
  test_close(p[0]);
  ASSERT_EQ(r.pid, waitpid(r.pid, NULL, 0));
  /* Swapped: the child's stdout is our fd 2's target and the other way
   * round is handled (sources on 0..2 are moved out of the way first). */
  o.argv = SH("exit 0");
  o.stdio[1].fd = 2;
  o.stdio[2].mode = UL_STDIO_FD;
  o.stdio[2].fd = 1;
  ASSERT_OK(ul_spawn(&o, &r));
  ASSERT_EQ(r.pid, waitpid(r.pid, NULL, 0));
  return 0;
}

TEST_IMPL(spawn_env_cwd_umask) {
  char out[128];
  char *env[] = {"FOO=bar", NULL};
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = SH("printf \"$FOO:\"; pwd; umask");
  o.envp = env;
  o.cwd = "/";
  o.flags = UL_SPAWN_UMASK;
  o.umask = 027;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("bar:/\n0027\n", out);
  /* A name found in the PATH of envp. */
  char *env2[] = {"PATH=/nonexistent:/bin", NULL};
  char *argv[] = {"sh", "-c", "printf found", NULL};
  memset(&o, 0, sizeof o);
  o.argv = argv;
  o.envp = env2;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("found", out);
  /* file differs from argv[0]. */
  char *argv3[] = {"whatever", "-c", "printf \"$0\"", NULL};
  memset(&o, 0, sizeof o);
  o.file = "/bin/sh";
  o.argv = argv3;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("whatever", out);
  return 0;
}

TEST_IMPL(spawn_close_fds_and_pass_fds) {
  int keep[2], drop[2];
  ASSERT_OK(pipe(drop));            /* inheritable */
  ASSERT_OK(pipe2(keep, O_CLOEXEC)); /* close-on-exec, but passed */
  char script[128], out[64];
  snprintf(script, sizeof script,
           "[ -e /dev/fd/%d ] && printf k; [ -e /dev/fd/%d ] && printf d; "
           "true",
           keep[0], drop[0]);
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = SH(script);
  o.flags = UL_SPAWN_CLOSE_FDS;
  o.pass_fds = &keep[0];
  o.npass_fds = 1;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("k", out);
  /* Without close_fds the inheritable one stays open. */
  o.flags = 0;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("kd", out);
  /* Without pass_fds the close-on-exec one is gone. */
  o.npass_fds = 0;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("d", out);
  for (int i = 0; i < 2; i++) {
    test_close(keep[i]);
    test_close(drop[i]);
  }
  return 0;
}

/* Fields 5 and 6 of /proc/PID/stat: process group and session. */
static const char *const stat_script =
    "read pid comm state ppid pgrp sid rest < /proc/$$/stat; "
    "[ $pgrp = $$ ] && printf g; [ $sid = $$ ] && printf s; true";

TEST_IMPL(spawn_session_and_process_group) {
  char out[64];
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = SH(stat_script);
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("", out);
  o.flags = UL_SPAWN_NEW_SESSION;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("gs", out);
  o.flags = UL_SPAWN_PROCESS_GROUP;
  o.process_group = 0;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("g", out);
  return 0;
}

TEST_IMPL(spawn_restore_signals) {
  struct sigaction ign, old;
  memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  ASSERT_OK(sigaction(SIGPIPE, &ign, &old));
  /* SigIgn is a hex mask; SIGPIPE (13) is bit 12: 0x1000. */
  const char *script =
      "m=$(grep SigIgn /proc/$$/status); m=${m#*:}; "
      "[ $(( 0x$(echo $m) & 0x1000 )) -ne 0 ] && printf ignored; true";
  char out[64];
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = SH(script);
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("ignored", out);
  o.flags = UL_SPAWN_RESTORE_SIGNALS;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("", out);
  ASSERT_OK(sigaction(SIGPIPE, &old, NULL));
  return 0;
}

static void usr1_handler(int sig) { (void)sig; }

/* A handler the parent installed is not inherited (exec resets caught
 * signals anyway; the child must not run it before exec). */
TEST_IMPL(spawn_handlers_and_mask) {
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = usr1_handler;
  ASSERT_OK(sigaction(SIGUSR1, &sa, &old));
  sigset_t block, oldmask;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR2);
  ASSERT_OK(pthread_sigmask(SIG_BLOCK, &block, &oldmask));
  /* The child keeps the parent's mask: SigBlk has SIGUSR2 (12: 0x800). */
  const char *script =
      "m=$(grep SigBlk /proc/$$/status); m=${m#*:}; "
      "[ $(( 0x$(echo $m) & 0x800 )) -ne 0 ] && printf blocked; true";
  char out[64];
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = SH(script);
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("blocked", out);
  ASSERT_OK(pthread_sigmask(SIG_SETMASK, &oldmask, NULL));
  ASSERT_OK(sigaction(SIGUSR1, &old, NULL));
  return 0;
}

TEST_IMPL(spawn_user_group) {
  if (geteuid() != 0) {
    ul_spawn_options o;
    ul_spawn_result r;
    memset(&o, 0, sizeof o);
    o.argv = SH("exit 0");
    o.flags = UL_SPAWN_SETUID;
    o.uid = 0;
    ASSERT_EQ(-EPERM, ul_spawn(&o, &r));
    ASSERT_EQ(UL_SPAWN_STEP_SETUP, r.failed_step);
    return 0;
  }
  char out[128];
  gid_t groups[] = {65533, 65532};
  ul_spawn_options o;
  memset(&o, 0, sizeof o);
  o.argv = SH("id -u; id -g; id -G");
  o.flags = UL_SPAWN_SETUID | UL_SPAWN_SETGID | UL_SPAWN_SETGROUPS;
  o.uid = 65534;
  o.gid = 65534;
  o.groups = groups;
  o.ngroups = 2;
  ASSERT_EQ(0, run_capture(&o, out, sizeof out));
  ASSERT_STR_EQ("65534\n65534\n65534 65532 65533\n", out);
  /* The parent is untouched (raw syscalls in the child, no setxid). */
  ASSERT_EQ(0, geteuid());
  ASSERT_EQ(0, getegid());
  return 0;
}

TEST_IMPL(spawn_pidfd) {
  ul_spawn_options o;
  ul_spawn_result r;
  memset(&o, 0, sizeof o);
  o.argv = SH("exit 6");
  ASSERT_OK(ul_spawn_pidfd(&o, &r));
  ASSERT_GE(r.pidfd, 0);
  ASSERT(fcntl(r.pidfd, F_GETFD) & FD_CLOEXEC);
  siginfo_t si;
  memset(&si, 0, sizeof si);
  ASSERT_OK(waitid((idtype_t)3 /* P_PIDFD */, (id_t)r.pidfd, &si, WEXITED));
  ASSERT_EQ(r.pid, si.si_pid);
  ASSERT_EQ(6, si.si_status);
  test_close(r.pidfd);
  return 0;
}

/* The child does not copy the parent's memory.  After a fork() every page
 * of the parent is write-protected (copy-on-write) and the next write to
 * each one faults; after clone(CLONE_VM) nothing changed: writing the heap
 * again costs no page fault. */
TEST_IMPL(spawn_no_copy_of_parent_memory) {
  size_t size = 64u << 20;
  char *heap = malloc(size);
  ASSERT_NOT_NULL(heap);
  memset(heap, 1, size);
  ul_spawn_options o;
  ul_spawn_result r;
  memset(&o, 0, sizeof o);
  o.argv = SH("exit 0");
  ASSERT_OK(ul_spawn(&o, &r));
  ASSERT_EQ(r.pid, waitpid(r.pid, NULL, 0));
  struct rusage before, after;
  ASSERT_OK(getrusage(RUSAGE_SELF, &before));
  memset(heap, 2, size);
  ASSERT_OK(getrusage(RUSAGE_SELF, &after));
  ASSERT_LT(after.ru_minflt - before.ru_minflt, 64);
  free(heap);
  return 0;
}
