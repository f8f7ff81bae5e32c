/*
 * bench_common.h -- helpers shared by uv_bench.c and ul_bench.c, so that both
 * measure in exactly the same way.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sleeps until bench_now() >= t (used outside the timed phases only). */
static inline void bench_sleep_until(double t) {
  for (;;) {
    double d = t - bench_now();
    struct timespec ts;
    if (d <= 0) return;
    ts.tv_sec = (time_t)d;
    ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
  }
}

/* The spread of timer timeouts, in whole milliseconds (libuv's unit), from a
 * fixed pseudo-random sequence: both programs get the same timeouts in the
 * same order. */
static inline uint64_t bench_spread_ms(uint64_t i, uint64_t spread_ms) {
  uint64_t x = i * 6364136223846793005ULL + 1442695040888963407ULL;
  x ^= x >> 29;
  return x % spread_ms;
}

static inline void bench_usage(const char *prog) {
  fprintf(stderr,
          "usage: %s WORKLOAD [-n COUNT]\n"
          "workloads: callbacks callbacks_chain timers_1M timers_cancel "
          "async_pingpong\n",
          prog);
  exit(2);
}

/* Parses "WORKLOAD [-n COUNT] [-m MODE]"; returns COUNT or `def`. */
static inline long bench_args(int argc, char **argv, long def,
                              const char **mode) {
  long n = def;
  int i;
  if (argc < 2) bench_usage(argv[0]);
  for (i = 2; i < argc; i++) {
    if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
      n = atol(argv[++i]);
    else if (strcmp(argv[i], "-m") == 0 && i + 1 < argc && mode != NULL)
      *mode = argv[++i];
    else
      bench_usage(argv[0]);
  }
  if (n < 1) bench_usage(argv[0]);
  return n;
}

#define BENCH_CHECK(expr)                                                   \
  do {                                                                      \
    long bench_r_ = (long)(expr);                                           \
    if (bench_r_ < 0) {                                                     \
      fprintf(stderr, "%s:%d: %s failed: %ld\n", __FILE__, __LINE__, #expr, \
              bench_r_);                                                    \
      exit(1);                                                              \
    }                                                                       \
  } while (0)

#endif /* BENCH_COMMON_H */
