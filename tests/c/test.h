/*
 * test.h -- assertions and helpers for the unixloop C tests.
 *
 * Every test is a function `int run_test_NAME(void)` declared with
 * TEST_IMPL(NAME) and listed in test-list.h.  It returns 0 on success or
 * TEST_SKIP; any failed assertion prints the file, line, expression and both
 * operands, then calls abort().  The runner (runner.c) runs each test in its
 * own process with a deadline.
 */
#ifndef UL_TEST_H
#define UL_TEST_H

/* pipe2, dup3, ... : test.h is included first by every test file. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "unixloop.h"

#define TEST_IMPL(name) int run_test_##name(void)

/* Exit code of a skipped test (also ctest's SKIP_RETURN_CODE). */
#define TEST_SKIP 77

#define RETURN_SKIP(why)                                            \
  do {                                                              \
    fprintf(stderr, "skip: %s\n", (why));                           \
    fflush(stderr);                                                 \
    return TEST_SKIP;                                               \
  } while (0)

#define UL_TEST_FAIL_(...)                                          \
  do {                                                              \
    fflush(stdout);                                                 \
    fprintf(stderr, __VA_ARGS__);                                   \
    fflush(stderr);                                                 \
    abort();                                                        \
  } while (0)

/* Integer comparisons: both operands are converted to intmax_t (sizes and
 * counts used by the tests fit). */
#define ASSERT_INT_BASE_(a, op, b)                                         \
  do {                                                                     \
    intmax_t a_ = (intmax_t)(a);                                           \
    intmax_t b_ = (intmax_t)(b);                                           \
    if (!(a_ op b_))                                                       \
      UL_TEST_FAIL_("Assertion failed in %s on line %d: `%s %s %s` "      \
                    "(%jd %s %jd)\n",                                      \
                    __FILE__, __LINE__, #a, #op, #b, a_, #op, b_);         \
  } while (0)

#define ASSERT_EQ(a, b) ASSERT_INT_BASE_(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_INT_BASE_(a, !=, b)
#define ASSERT_LT(a, b) ASSERT_INT_BASE_(a, <, b)
#define ASSERT_GT(a, b) ASSERT_INT_BASE_(a, >, b)
#define ASSERT_LE(a, b) ASSERT_INT_BASE_(a, <=, b)
#define ASSERT_GE(a, b) ASSERT_INT_BASE_(a, >=, b)

#define ASSERT(expr)                                                       \
  do {                                                                     \
    if (!(expr))                                                           \
      UL_TEST_FAIL_("Assertion failed in %s on line %d: `%s`\n",          \
                    __FILE__, __LINE__, #expr);                            \
  } while (0)

/* `expr` must be 0; a negative errno is printed with its name. */
#define ASSERT_OK(expr)                                                    \
  do {                                                                     \
    intmax_t r_ = (intmax_t)(expr);                                        \
    if (r_ != 0)                                                           \
      UL_TEST_FAIL_("Assertion failed in %s on line %d: `%s == 0` "       \
                    "(got %jd: %s)\n",                                     \
                    __FILE__, __LINE__, #expr, r_,                         \
                    r_ < 0 && r_ > -4096 ? strerror((int)-r_) : "-");     \
  } while (0)

#define ASSERT_PTR_BASE_(a, op, b)                                         \
  do {                                                                     \
    const void *a_ = (const void *)(a);                                    \
    const void *b_ = (const void *)(b);                                    \
    if (!(a_ op b_))                                                       \
      UL_TEST_FAIL_("Assertion failed in %s on line %d: `%s %s %s` "      \
                    "(%p %s %p)\n",                                        \
                    __FILE__, __LINE__, #a, #op, #b, a_, #op, b_);         \
  } while (0)

#define ASSERT_PTR_EQ(a, b) ASSERT_PTR_BASE_(a, ==, b)
#define ASSERT_PTR_NE(a, b) ASSERT_PTR_BASE_(a, !=, b)
#define ASSERT_NULL(a) ASSERT_PTR_BASE_(a, ==, NULL)
#define ASSERT_NOT_NULL(a) ASSERT_PTR_BASE_(a, !=, NULL)

#define ASSERT_DOUBLE_BASE_(a, op, b)                                      \
  do {                                                                     \
    double a_ = (double)(a);                                               \
    double b_ = (double)(b);                                               \
    if (!(a_ op b_))                                                       \
      UL_TEST_FAIL_("Assertion failed in %s on line %d: `%s %s %s` "      \
                    "(%.17g %s %.17g)\n",                                    \
                    __FILE__, __LINE__, #a, #op, #b, a_, #op, b_);         \
  } while (0)

#define ASSERT_DOUBLE_EQ(a, b) ASSERT_DOUBLE_BASE_(a, ==, b)
#define ASSERT_DOUBLE_LT(a, b) ASSERT_DOUBLE_BASE_(a, <, b)
#define ASSERT_DOUBLE_GT(a, b) ASSERT_DOUBLE_BASE_(a, >, b)
#define ASSERT_DOUBLE_LE(a, b) ASSERT_DOUBLE_BASE_(a, <=, b)
#define ASSERT_DOUBLE_GE(a, b) ASSERT_DOUBLE_BASE_(a, >=, b)

#define ASSERT_STR_EQ(a, b)                                                \
  do {                                                                     \
    const char *a_ = (a);                                                  \
    const char *b_ = (b);                                                  \
    if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)                   \
      UL_TEST_FAIL_("Assertion failed in %s on line %d: `%s == %s` "      \
                    "(\"%s\" == \"%s\")\n",                                \
                    __FILE__, __LINE__, #a, #b, a_ ? a_ : "(null)",        \
                    b_ ? b_ : "(null)");                                   \
  } while (0)

/* End every test with this: the loop must close cleanly. */
#define CLOSE_LOOP(loop) ASSERT_OK(ul_loop_close(loop))

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* CLOCK_MONOTONIC in seconds, the time base of ul_loop_time(). */
static inline double test_now(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
    UL_TEST_FAIL_("clock_gettime: %s\n", strerror(errno));
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A loop with the default options (so $UNIXLOOP_BACKEND picks the
 * backend: the suite is run once per backend). */
static inline ul_loop *test_loop_new(void) {
  ul_loop *loop = NULL;
  int r = ul_loop_new(&loop, NULL);
  if (r != 0 || loop == NULL)
    UL_TEST_FAIL_("ul_loop_new failed: %d (%s)\n", r, strerror(-r));
  return loop;
}

/* A non-blocking, close-on-exec pipe: fds[0] reads, fds[1] writes. */
static inline void test_pipe(int fds[2]) {
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
    UL_TEST_FAIL_("pipe2: %s\n", strerror(errno));
}

/* Writes one byte, which must succeed. */
static inline void test_write_byte(int fd) {
  char c = 'x';
  ssize_t n;
  do
    n = write(fd, &c, 1);
  while (n < 0 && errno == EINTR);
  if (n != 1)
    UL_TEST_FAIL_("write(%d): %s\n", fd, n < 0 ? strerror(errno) : "short");
}

static inline void test_close(int fd) {
  if (close(fd) != 0)
    UL_TEST_FAIL_("close(%d): %s\n", fd, strerror(errno));
}

/* 1 if fd is an open descriptor. */
static inline int test_fd_is_open(int fd) {
  return fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

/* The number of open descriptors of this process. */
static inline int test_count_fds(void) {
  int n = 0;
  long max = sysconf(_SC_OPEN_MAX);
  if (max < 0 || max > 65536)
    max = 65536;
  for (int fd = 0; fd < max; fd++)
    if (fcntl(fd, F_GETFD) != -1)
      n++;
  return n;
}

#endif /* UL_TEST_H */
