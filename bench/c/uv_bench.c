/*
 * uv_bench -- libuv side of the C micro-benchmarks (ul_bench.c is the
 * libunixloop side; the two do the same work in the same order and print the
 * same JSON line).
 *
 *   uv_bench callbacks       [-n 1000000] [-m idle|timer]
 *   uv_bench callbacks_chain [-n 1000000] [-m idle|timer]
 *   uv_bench timers_1M       [-n 1000000]
 *   uv_bench timers_cancel   [-n 1000000]
 *   uv_bench async_pingpong  [-n 100000]
 *
 * What "call_soon" means on libuv.  libuv has no ready queue of one-shot
 * callbacks; the candidates are:
 *
 *   - idle (default, -m idle): a user-level FIFO of (cb, arg) nodes, drained
 *     by one uv_idle_t.  An active idle handle makes the poll timeout 0, and
 *     the drain takes the whole queue first, so callbacks scheduled by a
 *     callback run in the next iteration, after a poll: exactly asyncio's
 *     call_soon semantics.  It is also how uvloop implements call_soon on
 *     libuv (a ready deque drained by a UVIdle handle) and how Node.js does
 *     setImmediate (a JS queue drained by a uv_check_t, kept alive by an
 *     idle handle).  That makes it the fairest equivalent, so the ratios in
 *     cbench.py use it.  Node allocation is one malloc per call, as a
 *     ul_loop_call_soon() may do.
 *   - timer (-m timer): the documented libuv primitive ("if timeout is zero,
 *     the callback fires on the next event loop iteration", docs/timer.rst):
 *     one uv_timer_t per pending callback, started with timeout 0.  Handles
 *     are pre-allocated and uv_timer_init()ed before the clock starts
 *     (libuv users embed handles in their own structs and reuse them), so
 *     only uv_timer_start + the heap + the call are timed.  Caveat: libuv
 *     1.44 runs a zero-timeout timer started from a timer callback in the
 *     same uv__run_timers pass, without a poll in between, which asyncio's
 *     semantics forbid; so this mode is reported separately, for reference.
 *   - uv_async_send to oneself costs an eventfd write + read per wake-up and
 *     coalesces calls; it is a thread-wake-up primitive, measured by
 *     async_pingpong instead.
 *
 * Timers: all handles are pre-allocated, zeroed and uv_timer_init()ed
 * outside the timed phases, for the same reason as above.
 */
#include <pthread.h>
#include <semaphore.h>
#include <uv.h>

#include "bench_common.h"

#define SPREAD_MS 200

static uv_loop_t loop_storage;
static uv_loop_t *loop = &loop_storage;
static long n_total;
static long n_done;
static double t_first, t_last;

/* ---- call_soon over an idle handle (uvloop's design) ------------------- */

typedef void (*soon_cb)(void *arg);
typedef struct soon_node {
  struct soon_node *next;
  soon_cb cb;
  void *arg;
} soon_node;

static uv_idle_t idle;
static soon_node *q_head, *q_tail;

static void idle_cb(uv_idle_t *h) {
  /* Take the whole queue: what the callbacks schedule runs next time. */
  soon_node *n = q_head;
  q_head = q_tail = NULL;
  while (n != NULL) {
    soon_node *next = n->next;
    n->cb(n->arg);
    free(n);
    n = next;
  }
  if (q_head == NULL) uv_idle_stop(h);
}

static void call_soon(soon_cb cb, void *arg) {
  soon_node *n = malloc(sizeof *n);
  if (n == NULL) abort();
  n->next = NULL;
  n->cb = cb;
  n->arg = arg;
  if (q_tail != NULL)
    q_tail->next = n;
  else
    q_head = n;
  q_tail = n;
  if (!uv_is_active((uv_handle_t *)&idle)) uv_idle_start(&idle, idle_cb);
}

/* ---- callbacks / callbacks_chain --------------------------------------- */

static uv_timer_t *timers;
static int chain;
static int timer_mode;

static void count_one(void) {
  if (++n_done == n_total) t_last = bench_now();
}

static void noop_idle(void *arg) {
  (void)arg;
  count_one();
}

static void chain_idle(void *arg) {
  (void)arg;
  count_one();
  if (n_done < n_total) call_soon(chain_idle, NULL);
}

static void noop_timer(uv_timer_t *h) {
  (void)h;
  count_one();
}

static void chain_timer(uv_timer_t *h) {
  (void)h;
  count_one();
  if (n_done < n_total)
    BENCH_CHECK(uv_timer_start(&timers[n_done], chain_timer, 0, 0));
}

static void seed(void *arg) {
  long i;
  (void)arg;
  t_first = bench_now();
  if (timer_mode) {
    if (chain)
      BENCH_CHECK(uv_timer_start(&timers[0], chain_timer, 0, 0));
    else
      for (i = 0; i < n_total; i++)
        BENCH_CHECK(uv_timer_start(&timers[i], noop_timer, 0, 0));
  } else {
    if (chain)
      call_soon(chain_idle, NULL);
    else
      for (i = 0; i < n_total; i++) call_soon(noop_idle, NULL);
  }
}

static void close_all_timers(void) {
  long i;
  for (i = 0; i < n_total; i++) uv_close((uv_handle_t *)&timers[i], NULL);
  uv_run(loop, UV_RUN_DEFAULT);
}

static void alloc_timers(void) {
  long i;
  timers = calloc((size_t)n_total, sizeof *timers);
  if (timers == NULL) abort();
  memset(timers, 0, (size_t)n_total * sizeof *timers); /* fault pages in */
  for (i = 0; i < n_total; i++) BENCH_CHECK(uv_timer_init(loop, &timers[i]));
}

static void bench_callbacks(const char *name, const char *mode) {
  timer_mode = strcmp(mode, "timer") == 0;
  if (!timer_mode && strcmp(mode, "idle") != 0) bench_usage("uv_bench");
  if (timer_mode) alloc_timers();
  call_soon(seed, NULL);
  BENCH_CHECK(uv_run(loop, UV_RUN_DEFAULT));
  if (n_done != n_total) abort();
  printf("{\"impl\": \"uv\", \"workload\": \"%s\", \"mode\": \"%s\", "
         "\"n\": %ld, \"seconds\": %.6f, \"rate\": %.1f}\n",
         name, mode, n_total, t_last - t_first,
         (double)n_total / (t_last - t_first));
  if (timer_mode) close_all_timers();
}

/* ---- timers_1M ---------------------------------------------------------- */

static void fire_cb(uv_timer_t *h) {
  (void)h;
  count_one();
}

static void bench_timers(void) {
  double t0, t1, t2;
  long i;
  alloc_timers();
  uv_update_time(loop);
  t0 = bench_now();
  for (i = 0; i < n_total; i++)
    BENCH_CHECK(uv_timer_start(&timers[i], fire_cb,
                               bench_spread_ms((uint64_t)i, SPREAD_MS), 0));
  t1 = bench_now();
  /* Untimed: wait until every timer is due, so that the fire phase measures
   * the loop's work, not the spread of the timeouts. */
  bench_sleep_until(t0 + SPREAD_MS / 1000.0 + 0.002);
  t2 = bench_now();
  BENCH_CHECK(uv_run(loop, UV_RUN_DEFAULT));
  if (n_done != n_total) abort();
  printf("{\"impl\": \"uv\", \"workload\": \"timers_1M\", \"n\": %ld, "
         "\"seconds\": %.6f, \"rate\": %.1f, \"start_rate\": %.1f, "
         "\"fire_rate\": %.1f}\n",
         n_total, (t1 - t0) + (t_last - t2),
         (double)n_total / ((t1 - t0) + (t_last - t2)),
         (double)n_total / (t1 - t0), (double)n_total / (t_last - t2));
  close_all_timers();
}

/* ---- timers_cancel ------------------------------------------------------ */

static void never_cb(uv_timer_t *h) {
  (void)h;
  abort();
}

static void bench_timers_cancel(void) {
  double t0, t1, t2, t3;
  long i;
  alloc_timers();
  uv_update_time(loop);
  t0 = bench_now();
  for (i = 0; i < n_total; i++)
    BENCH_CHECK(uv_timer_start(
        &timers[i], never_cb,
        1000000 + bench_spread_ms((uint64_t)i, SPREAD_MS), 0));
  t1 = bench_now();
  for (i = 0; i < n_total; i++) BENCH_CHECK(uv_timer_stop(&timers[i]));
  t2 = bench_now();
  /* One iteration, timed: a loop may release cancelled timers lazily. */
  uv_run(loop, UV_RUN_NOWAIT);
  t3 = bench_now();
  printf("{\"impl\": \"uv\", \"workload\": \"timers_cancel\", \"n\": %ld, "
         "\"seconds\": %.6f, \"rate\": %.1f, \"start_rate\": %.1f, "
         "\"cancel_rate\": %.1f}\n",
         n_total, t3 - t0, (double)n_total / (t3 - t0),
         (double)n_total / (t1 - t0), (double)n_total / (t2 - t1));
  close_all_timers();
}

/* ---- async_pingpong ----------------------------------------------------- */

static uv_async_t async_h;
static sem_t back;

static void async_cb(uv_async_t *h) {
  count_one();
  sem_post(&back);
  if (n_done == n_total) uv_close((uv_handle_t *)h, NULL);
}

static void *pinger(void *arg) {
  long i;
  (void)arg;
  t_first = bench_now();
  for (i = 0; i < n_total; i++) {
    BENCH_CHECK(uv_async_send(&async_h));
    while (sem_wait(&back) != 0) {
    }
  }
  t_last = bench_now();
  return NULL;
}

static void bench_async(void) {
  pthread_t th;
  sem_init(&back, 0, 0);
  BENCH_CHECK(uv_async_init(loop, &async_h, async_cb));
  if (pthread_create(&th, NULL, pinger, NULL) != 0) abort();
  BENCH_CHECK(uv_run(loop, UV_RUN_DEFAULT));
  pthread_join(th, NULL);
  printf("{\"impl\": \"uv\", \"workload\": \"async_pingpong\", \"n\": %ld, "
         "\"seconds\": %.6f, \"rate\": %.1f}\n",
         n_total, t_last - t_first, (double)n_total / (t_last - t_first));
}

int main(int argc, char **argv) {
  const char *mode = "idle";
  const char *w;
  long def;
  if (argc < 2) bench_usage(argv[0]);
  w = argv[1];
  def = strcmp(w, "async_pingpong") == 0 ? 100000 : 1000000;
  n_total = bench_args(argc, argv, def, &mode);
  BENCH_CHECK(uv_loop_init(loop));
  BENCH_CHECK(uv_idle_init(loop, &idle));
  if (strcmp(w, "callbacks") == 0) {
    bench_callbacks(w, mode);
  } else if (strcmp(w, "callbacks_chain") == 0) {
    chain = 1;
    bench_callbacks(w, mode);
  } else if (strcmp(w, "timers_1M") == 0) {
    bench_timers();
  } else if (strcmp(w, "timers_cancel") == 0) {
    bench_timers_cancel();
  } else if (strcmp(w, "async_pingpong") == 0) {
    bench_async();
  } else {
    bench_usage(argv[0]);
  }
  fflush(stdout);
  uv_close((uv_handle_t *)&idle, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  BENCH_CHECK(uv_loop_close(loop));
  free(timers);
  return 0;
}
