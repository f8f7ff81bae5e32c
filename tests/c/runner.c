/*
 * runner.c -- the unixloop C test runner (libuv style).
 *
 *   ul_tests              run every test, each in its own process (the runner
 *                         re-executes itself with the test's name), with a
 *                         deadline; output is captured and shown only when
 *                         the test fails.  TAP-like lines, then a summary
 *                         line "N passed, N failed[, N skipped]".  Exits 1 if
 *                         any test failed.
 *   ul_tests NAME         run one test in this process (for gdb); exit code 0
 *                         on success, 77 when skipped, abort() on failure.
 *   ul_tests --list       print the test names, one per line.
 *
 * Environment: UL_TEST_TIMEOUT_MULTIPLIER (a positive number) scales every
 * deadline, for slow machines, sanitizers or valgrind.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TEST_SKIP_CODE 77
#define DEFAULT_TIMEOUT_MS 5000

struct test_entry {
  const char *name;
  int (*main)(void);
  int timeout_ms;
};

#define TEST_DECLARE(name) int run_test_##name(void);
#define TASK_LIST_START static const struct test_entry TASKS[] = {
#define TEST_ENTRY(name) {#name, run_test_##name, DEFAULT_TIMEOUT_MS},
#define TEST_ENTRY_CUSTOM(name, ms) {#name, run_test_##name, (ms)},
#define TASK_LIST_END {NULL, NULL, 0}};

#include "test-list.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static const struct test_entry *find_test(const char *name) {
  for (const struct test_entry *t = TASKS; t->name != NULL; t++)
    if (strcmp(t->name, name) == 0)
      return t;
  return NULL;
}

static double timeout_multiplier(void) {
  const char *s = getenv("UL_TEST_TIMEOUT_MULTIPLIER");
  char *end;
  double m;
  if (s == NULL || *s == '\0')
    return 1.0;
  m = strtod(s, &end);
  if (end == s || *end != '\0' || !(m > 0)) {
    fprintf(stderr, "ul_tests: ignoring bad UL_TEST_TIMEOUT_MULTIPLIER=%s\n",
            s);
    return 1.0;
  }
  return m;
}

/* Waits for `pid` at most `timeout_ms`; kills its process group at the
 * deadline.  Returns 1 on timeout, 0 otherwise; *status from waitpid. */
static int wait_child(pid_t pid, long timeout_ms, int *status) {
  double deadline = now_ms() + (double)timeout_ms;
  int timed_out = 0;
  int pidfd = -1;

#ifdef SYS_pidfd_open
  pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#endif
  if (pidfd >= 0) {
    for (;;) {
      struct pollfd p;
      double left = deadline - now_ms();
      int r;
      if (left <= 0) {
        timed_out = 1;
        break;
      }
      p.fd = pidfd;
      p.events = POLLIN;
      p.revents = 0;
      r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left + 1);
      if (r < 0 && errno == EINTR)
        continue;
      if (r < 0) {
        perror("ul_tests: poll");
        timed_out = 1;
        break;
      }
      if (r > 0)
        break;
    }
    close(pidfd);
  } else {
    /* No pidfd (old kernel): poll waitpid every few ms. */
    for (;;) {
      struct timespec ts = {0, 2 * 1000 * 1000};
      pid_t r = waitpid(pid, status, WNOHANG);
      if (r == pid)
        return 0;
      if (r < 0 && errno != EINTR) {
        perror("ul_tests: waitpid");
        return 0;
      }
      if (now_ms() >= deadline) {
        timed_out = 1;
        break;
      }
      nanosleep(&ts, NULL);
    }
  }
  if (timed_out) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
  }
  while (waitpid(pid, status, 0) < 0) {
    if (errno != EINTR) {
      perror("ul_tests: waitpid");
      *status = 0;
      break;
    }
  }
  return timed_out;
}

/* Prints the captured output of a test, each line prefixed with "# ". */
static void print_captured(FILE *out) {
  char line[4096];
  int at_line_start = 1;
  size_t shown = 0;

  fflush(out);
  rewind(out);
  while (fgets(line, sizeof(line), out) != NULL) {
    size_t n = strlen(line);
    if (shown > 256 * 1024) {
      printf("# ... (output truncated)\n");
      break;
    }
    if (at_line_start)
      fputs("#   ", stdout);
    fputs(line, stdout);
    at_line_start = n > 0 && line[n - 1] == '\n';
    shown += n;
  }
  if (!at_line_start)
    putchar('\n');
}

/* First line of the captured output, for a skip reason. */
static void first_line(FILE *out, char *buf, size_t size) {
  char *nl;
  fflush(out);
  rewind(out);
  if (fgets(buf, (int)size, out) == NULL) {
    buf[0] = '\0';
    return;
  }
  nl = strchr(buf, '\n');
  if (nl != NULL)
    *nl = '\0';
  if (strncmp(buf, "skip: ", 6) == 0)
    memmove(buf, buf + 6, strlen(buf + 6) + 1);
}

static int run_all(const char *argv0) {
  char self[PATH_MAX];
  ssize_t n;
  double mult = timeout_multiplier();
  int total = 0, passed = 0, failed = 0, skipped = 0;
  const struct test_entry *t;
  const char *backend = getenv("UNIXLOOP_BACKEND");

  n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
  } else {
    snprintf(self, sizeof(self), "%s", argv0);
  }

  for (t = TASKS; t->name != NULL; t++)
    total++;
  printf("1..%d\n", total);
  printf("# UNIXLOOP_BACKEND=%s\n", backend ? backend : "(unset)");
  fflush(stdout);

  int i = 0;
  for (t = TASKS; t->name != NULL; t++) {
    FILE *out = tmpfile();
    long timeout_ms = (long)((double)t->timeout_ms * mult);
    double start;
    pid_t pid;
    int status = 0, timed_out;

    i++;
    if (out == NULL) {
      perror("ul_tests: tmpfile");
      return 2;
    }
    fflush(stdout);
    fflush(stderr);
    start = now_ms();
    pid = fork();
    if (pid < 0) {
      perror("ul_tests: fork");
      return 2;
    }
    if (pid == 0) {
      setpgid(0, 0);
      dup2(fileno(out), STDOUT_FILENO);
      dup2(fileno(out), STDERR_FILENO);
      execl(self, self, t->name, (char *)NULL);
      fprintf(stderr, "exec %s: %s\n", self, strerror(errno));
      _exit(127);
    }
    setpgid(pid, pid); /* also done by the child: no race either way */
    timed_out = wait_child(pid, timeout_ms, &status);

    if (!timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      passed++;
      printf("ok %d - %s\n", i, t->name);
    } else if (!timed_out && WIFEXITED(status) &&
               WEXITSTATUS(status) == TEST_SKIP_CODE) {
      char reason[256];
      skipped++;
      first_line(out, reason, sizeof(reason));
      printf("ok %d - %s # SKIP %s\n", i, t->name, reason);
    } else {
      failed++;
      printf("not ok %d - %s\n", i, t->name);
      if (timed_out)
        printf("# timeout after %ld ms\n", timeout_ms);
      else if (WIFSIGNALED(status))
        printf("# killed by signal %d (%s) after %.0f ms\n", WTERMSIG(status),
               strsignal(WTERMSIG(status)), now_ms() - start);
      else if (WIFEXITED(status))
        printf("# exit code %d\n", WEXITSTATUS(status));
      print_captured(out);
    }
    fclose(out);
    fflush(stdout);
  }
  if (skipped > 0)
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  else
    printf("%d passed, %d failed\n", passed, failed);
  fflush(stdout);
  return failed > 0 ? 1 : 0;
}

static int run_one(const struct test_entry *t) {
  int r;
  /* Nothing is lost in a buffer when a test aborts. */
  setvbuf(stdout, NULL, _IONBF, 0);
  setvbuf(stderr, NULL, _IONBF, 0);
  r = t->main();
  if (r == TEST_SKIP_CODE)
    return TEST_SKIP_CODE;
  if (r != 0) {
    fprintf(stderr, "%s returned %d\n", t->name, r);
    return 1;
  }
  return 0;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: ul_tests             run every test in its own process\n"
          "       ul_tests NAME        run one test in this process\n"
          "       ul_tests --list      list the tests\n"
          "env:   UL_TEST_TIMEOUT_MULTIPLIER, UNIXLOOP_BACKEND\n");
}

int main(int argc, char **argv) {
  const struct test_entry *t;

  /* A test closing a pipe's read end must not die of SIGPIPE by accident;
   * tests that want the signal install a handler themselves. */
  signal(SIGPIPE, SIG_IGN);

  if (argc == 1)
    return run_all(argv[0]);
  if (argc != 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--list") == 0) {
    for (t = TASKS; t->name != NULL; t++)
      printf("%s\n", t->name);
    return 0;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(stdout);
    return 0;
  }
  t = find_test(argv[1]);
  if (t == NULL) {
    fprintf(stderr, "ul_tests: no test named '%s' (see --list)\n", argv[1]);
    return 2;
  }
  return run_one(t);
}
