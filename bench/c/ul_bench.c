/*
 * ul_bench -- libunixloop side of the C micro-benchmarks (uv_bench.c is the
 * libuv side: same work, same order, same JSON line).  Uses only the public
 * header include/unixloop.h.
 *
 *   ul_bench callbacks       [-n 1000000]   N ul_loop_call_soon() from one
 *                                           callback, all run
 *   ul_bench callbacks_chain [-n 1000000]   each callback schedules the next
 *   ul_bench timers_1M       [-n 1000000]   N ul_loop_call_later() with
 *                                           timeouts spread over 0-199 ms
 *   ul_bench timers_cancel   [-n 1000000]   N call_later + ul_timer_cancel
 *   ul_bench async_pingpong  [-n 100000]    another thread:
 *                                           ul_loop_call_soon_threadsafe(),
 *                                           the callback posts a semaphore
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>

#include "unixloop.h"
#include "bench_common.h"

#define SPREAD_MS 200

static ul_loop *loop;
static long n_total;
static long n_done;
static double t_first, t_last;

static void count_one(void) {
  if (++n_done == n_total) {
    t_last = bench_now();
    ul_loop_stop(loop);
  }
}

/* ---- callbacks / callbacks_chain --------------------------------------- */

static void noop_cb(ul_loop *l, void *arg, int status) {
  (void)l;
  (void)arg;
  if (status == 0) count_one();
}

static void chain_cb(ul_loop *l, void *arg, int status) {
  (void)arg;
  if (status != 0) return;
  count_one();
  if (n_done < n_total) BENCH_CHECK(ul_loop_call_soon(l, chain_cb, NULL));
}

static void seed_cb(ul_loop *l, void *arg, int status) {
  long i;
  int chain = arg != NULL;
  if (status != 0) return;
  t_first = bench_now();
  if (chain)
    BENCH_CHECK(ul_loop_call_soon(l, chain_cb, NULL));
  else
    for (i = 0; i < n_total; i++)
      BENCH_CHECK(ul_loop_call_soon(l, noop_cb, NULL));
}

static void bench_callbacks(const char *name, int chain) {
  BENCH_CHECK(ul_loop_call_soon(loop, seed_cb, chain ? (void *)loop : NULL));
  BENCH_CHECK(ul_loop_run(loop));
  if (n_done != n_total) abort();
  printf("{\"impl\": \"ul\", \"workload\": \"%s\", \"mode\": \"call_soon\", "
         "\"n\": %ld, \"seconds\": %.6f, \"rate\": %.1f}\n",
         name, n_total, t_last - t_first,
         (double)n_total / (t_last - t_first));
}

/* ---- timers_1M ---------------------------------------------------------- */

static void bench_timers(void) {
  double t0, t1, t2;
  long i;
  t0 = bench_now();
  for (i = 0; i < n_total; i++)
    BENCH_CHECK(ul_loop_call_later(
        loop, (double)bench_spread_ms((uint64_t)i, SPREAD_MS) / 1000.0,
        noop_cb, NULL, NULL));
  t1 = bench_now();
  /* Untimed: wait until every timer is due (as uv_bench does). */
  bench_sleep_until(t0 + SPREAD_MS / 1000.0 + 0.002);
  t2 = bench_now();
  BENCH_CHECK(ul_loop_run(loop));
  if (n_done != n_total) abort();
  printf("{\"impl\": \"ul\", \"workload\": \"timers_1M\", \"n\": %ld, "
         "\"seconds\": %.6f, \"rate\": %.1f, \"start_rate\": %.1f, "
         "\"fire_rate\": %.1f}\n",
         n_total, (t1 - t0) + (t_last - t2),
         (double)n_total / ((t1 - t0) + (t_last - t2)),
         (double)n_total / (t1 - t0), (double)n_total / (t_last - t2));
}

/* ---- timers_cancel ------------------------------------------------------ */

static void never_cb(ul_loop *l, void *arg, int status) {
  (void)l;
  (void)arg;
  if (status == 0) abort();
}

static void bench_timers_cancel(void) {
  double t0, t1, t2, t3;
  long i;
  ul_timer **handles = calloc((size_t)n_total, sizeof *handles);
  if (handles == NULL) abort();
  memset(handles, 0, (size_t)n_total * sizeof *handles); /* fault pages in */
  t0 = bench_now();
  for (i = 0; i < n_total; i++)
    BENCH_CHECK(ul_loop_call_later(
        loop, 1000.0 + (double)bench_spread_ms((uint64_t)i, SPREAD_MS) / 1000.0,
        never_cb, NULL, &handles[i]));
  t1 = bench_now();
  for (i = 0; i < n_total; i++) BENCH_CHECK(ul_timer_cancel(handles[i]));
  t2 = bench_now();
  /* One iteration, timed: cancelled timers are released lazily. */
  BENCH_CHECK(ul_loop_run_once(loop, 0));
  t3 = bench_now();
  printf("{\"impl\": \"ul\", \"workload\": \"timers_cancel\", \"n\": %ld, "
         "\"seconds\": %.6f, \"rate\": %.1f, \"start_rate\": %.1f, "
         "\"cancel_rate\": %.1f}\n",
         n_total, t3 - t0, (double)n_total / (t3 - t0),
         (double)n_total / (t1 - t0), (double)n_total / (t2 - t1));
  free(handles);
}

/* ---- async_pingpong ----------------------------------------------------- */

static sem_t back;

static void pong_cb(ul_loop *l, void *arg, int status) {
  (void)l;
  (void)arg;
  if (status != 0) return;
  n_done++;
  sem_post(&back);
}

static void stop_cb(ul_loop *l, void *arg, int status) {
  (void)arg;
  if (status == 0) ul_loop_stop(l);
}

static void *pinger(void *arg) {
  long i;
  (void)arg;
  t_first = bench_now();
  for (i = 0; i < n_total; i++) {
    BENCH_CHECK(ul_loop_call_soon_threadsafe(loop, pong_cb, NULL));
    while (sem_wait(&back) != 0) {
    }
  }
  t_last = bench_now();
  BENCH_CHECK(ul_loop_call_soon_threadsafe(loop, stop_cb, NULL));
  return NULL;
}

static void bench_async(void) {
  pthread_t th;
  sem_init(&back, 0, 0);
  if (pthread_create(&th, NULL, pinger, NULL) != 0) abort();
  BENCH_CHECK(ul_loop_run(loop));
  pthread_join(th, NULL);
  if (n_done != n_total) abort();
  printf("{\"impl\": \"ul\", \"workload\": \"async_pingpong\", \"n\": %ld, "
         "\"seconds\": %.6f, \"rate\": %.1f}\n",
         n_total, t_last - t_first, (double)n_total / (t_last - t_first));
}

int main(int argc, char **argv) {
  const char *w;
  long def;
  if (argc < 2) bench_usage(argv[0]);
  w = argv[1];
  def = strcmp(w, "async_pingpong") == 0 ? 100000 : 1000000;
  n_total = bench_args(argc, argv, def, NULL);
  BENCH_CHECK(ul_loop_new(&loop, NULL));
  if (strcmp(w, "callbacks") == 0)
    bench_callbacks(w, 0);
  else if (strcmp(w, "callbacks_chain") == 0)
    bench_callbacks(w, 1);
  else if (strcmp(w, "timers_1M") == 0)
    bench_timers();
  else if (strcmp(w, "timers_cancel") == 0)
    bench_timers_cancel();
  else if (strcmp(w, "async_pingpong") == 0)
    bench_async();
  else
    bench_usage(argv[0]);
  fflush(stdout);
  BENCH_CHECK(ul_loop_close(loop));
  return 0;
}
