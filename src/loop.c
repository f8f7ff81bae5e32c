/*
 * loop.c -- the loop: create, run, stop, close, and one iteration.
 *
 * An iteration is asyncio's BaseEventLoop._run_once (see unixloop.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* ---- clock ---------------------------------------------------------------- */

double ul_loop_time(const ul_loop *loop) {
  struct timespec ts;
  (void)loop;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double ul_loop_clock_resolution(const ul_loop *loop) {
  return loop ? loop->clock_resolution : 1e-9;
}

/* ---- thread-safe wake-up -------------------------------------------------- */

/* Moves what other threads queued to the ready queue, in their order. */
void ul__collect_threadsafe(ul_loop *loop) {
  pthread_mutex_lock(&loop->ts_lock);
  ul__ring queued = loop->ts_queue;
  loop->ts_queue = loop->ts_spare;
  memset(&loop->ts_spare, 0, sizeof loop->ts_spare);
  atomic_store_explicit(&loop->ts_nonempty, 0, memory_order_relaxed);
  pthread_mutex_unlock(&loop->ts_lock);

  ul__entry e;
  while (queued.len > 0) {
    ul__ring_pop(&queued, &e);
    if (ul__ring_push(&loop->ready, e.cb, e.arg, NULL) != 0) {
      /* Out of memory: run it now rather than lose it. */
      e.cb(loop, e.arg, 0);
    }
  }
  /* Keep the drained buffer for the next swap (unless a nested collection,
   * from a callback run above, already left one). */
  queued.head = 0;
  if (loop->ts_spare.buf == NULL)
    loop->ts_spare = queued;
  else
    ul__ring_free(&queued);
}

/* The eventfd's reader: collects what other threads queued. */
static void wake_fd_read(ul_loop *loop, int fd, int events, void *arg) {
  uint64_t count;
  ssize_t r;
  (void)events;
  (void)arg;
  /* Drain first, then reset the flag, then collect.  A thread that finds
   * the flag still set skipped its write, but pushed its entry before our
   * reset, so the collection below sees it; one that finds it clear writes
   * the eventfd again.  (Resetting before draining would let the drain
   * swallow such a write while the flag stays set: a lost wake-up.) */
  do
    r = read(fd, &count, sizeof count);
  while (r == -1 && errno == EINTR);
  atomic_store(&loop->ts_wake_pending, 0);
  ul__collect_threadsafe(loop);
}

int ul_loop_wakeup(ul_loop *loop) {
  uint64_t one = 1;
  ssize_t r;
  if (loop == NULL)
    return -EINVAL;
  do
    r = write(loop->wake_fd, &one, sizeof one);
  while (r == -1 && errno == EINTR);
  /* EAGAIN: the counter is saturated, so the loop is awake anyway. */
  return (r == -1 && errno != EAGAIN) ? -errno : 0;
}

int ul_loop_call_soon_threadsafe(ul_loop *loop, ul_cb cb, void *arg) {
  if (loop == NULL || cb == NULL)
    return -EINVAL;
  pthread_mutex_lock(&loop->ts_lock);
  int err = loop->closing ? -ESHUTDOWN
                          : ul__ring_push(&loop->ts_queue, cb, arg, NULL);
  if (err == 0)
    atomic_store_explicit(&loop->ts_nonempty, 1, memory_order_relaxed);
  pthread_mutex_unlock(&loop->ts_lock);
  if (err)
    return err;
  if (atomic_exchange(&loop->ts_wake_pending, 1) == 0)
    return ul_loop_wakeup(loop);
  return 0;
}

/* ---- create and close ----------------------------------------------------- */

static int pick_backend(const ul_loop_options *options,
                        const ul__backend **out) {
  ul_backend which = options ? options->backend : UL_BACKEND_DEFAULT;
  if (which == UL_BACKEND_DEFAULT) {
    const char *env = getenv("UNIXLOOP_BACKEND");
    if (env == NULL || *env == '\0' || strcmp(env, "epoll") == 0)
      which = UL_BACKEND_EPOLL;
    else if (strcmp(env, "poll") == 0)
      which = UL_BACKEND_POLL;
    else
      return -EINVAL;
  }
  switch (which) {
  case UL_BACKEND_EPOLL:
    *out = &ul__backend_epoll;
    return 0;
  case UL_BACKEND_POLL:
    *out = &ul__backend_poll;
    return 0;
  default:
    return -EINVAL;
  }
}

int ul_loop_new(ul_loop **loop_out, const ul_loop_options *options) {
  const ul__backend *backend;
  int err;

  if (loop_out == NULL)
    return -EINVAL;
  *loop_out = NULL;
  err = pick_backend(options, &backend);
  if (err)
    return err;

  ul_loop *loop = calloc(1, sizeof *loop);
  if (loop == NULL)
    return -ENOMEM;
  loop->backend = backend;
  loop->wake_fd = -1;
  const char *uring_env = getenv("UNIXLOOP_IO_URING");
  loop->uring_off = (options != NULL && options->no_io_uring) ||
                    (uring_env != NULL && strcmp(uring_env, "0") == 0);
  struct timespec res;
  loop->clock_resolution = clock_getres(CLOCK_MONOTONIC, &res) == 0
                               ? (double)res.tv_sec + (double)res.tv_nsec * 1e-9
                               : 1e-9;
  atomic_init(&loop->ts_wake_pending, 0);
  atomic_init(&loop->ts_nonempty, 0);

  err = pthread_mutex_init(&loop->ts_lock, NULL);
  if (err) {
    err = -err;
    goto fail_mutex;
  }
  err = backend->init(loop);
  if (err)
    goto fail_backend;
  loop->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (loop->wake_fd == -1) {
    err = -errno;
    goto fail_eventfd;
  }
  err = ul_loop_add_reader(loop, loop->wake_fd, wake_fd_read, NULL);
  if (err)
    goto fail_watch;

  *loop_out = loop;
  return 0;

fail_watch:
  close(loop->wake_fd);
fail_eventfd:
  backend->destroy(loop);
fail_backend:
  pthread_mutex_destroy(&loop->ts_lock);
fail_mutex:
  ul__io_destroy(loop);
  free(loop);
  return err;
}

/* Calls every queued callback with -ECANCELED, including ones that the
 * callbacks themselves queue from other threads meanwhile. */
static void cancel_ready(ul_loop *loop, ul__ring *ring) {
  ul__entry e;
  while (ring->len > 0) {
    ul__ring_pop(ring, &e);
    if (e.timer != NULL) {
      int cancelled = e.timer->state == UL__TIMER_CANCELLED;
      e.timer->state = UL__TIMER_RUNNING;
      if (!cancelled)
        e.cb(loop, e.arg, -ECANCELED);
      ul__timer_free(loop, e.timer);
    } else {
      e.cb(loop, e.arg, -ECANCELED);
    }
  }
}

int ul_loop_close(ul_loop *loop) {
  if (loop == NULL)
    return -EINVAL;
  if (loop->running)
    return -EBUSY;

  /* First, so that no signal handler touches the loop from here on. */
  ul__signals_close(loop);

  pthread_mutex_lock(&loop->ts_lock);
  loop->closing = 1;
  pthread_mutex_unlock(&loop->ts_lock);

  /* In the order they would have run: ready, then timers, then what other
   * threads queued last. */
  cancel_ready(loop, &loop->ready);
  ul__timers_cancel_all(loop);
  pthread_mutex_lock(&loop->ts_lock);
  ul__ring queued = loop->ts_queue;
  memset(&loop->ts_queue, 0, sizeof loop->ts_queue);
  pthread_mutex_unlock(&loop->ts_lock);
  cancel_ready(loop, &queued);
  ul__ring_free(&queued);
  ul__streams_close_all(loop);
  ul__dgrams_close_all(loop);
  ul__net_close_all(loop);
  ul__processes_close_all(loop);

  ul_loop_remove_reader(loop, loop->wake_fd);
  close(loop->wake_fd);
  loop->backend->destroy(loop);
  ul__ring_free(&loop->ready);
  ul__ring_free(&loop->ts_spare);
  ul__uring_free(loop->uring);
  free(loop->flush);
  free(loop->flush_ops);
  free(loop->reads);
  ul__timers_destroy(loop);
  ul__io_destroy(loop);
  pthread_mutex_destroy(&loop->ts_lock);
  free(loop);
  return 0;
}

/* ---- scheduling ----------------------------------------------------------- */

int ul_loop_call_soon(ul_loop *loop, ul_cb cb, void *arg) {
  if (loop == NULL || cb == NULL)
    return -EINVAL;
  if (loop->closing)
    return -ESHUTDOWN;
  if (atomic_load_explicit(&loop->ts_nonempty, memory_order_relaxed))
    ul__collect_threadsafe(loop);
  return ul__ring_push(&loop->ready, cb, arg, NULL);
}

size_t ul_loop_ready_count(const ul_loop *loop) {
  if (loop == NULL)
    return 0;
  ul_loop *mut = (ul_loop *)loop;
  pthread_mutex_lock(&mut->ts_lock);
  size_t n = loop->ready.len + loop->ts_queue.len;
  pthread_mutex_unlock(&mut->ts_lock);
  return n;
}

static int walk_ring(const ul__ring *ring, ul_walk_cb visit, void *ctx) {
  for (size_t i = 0; i < ring->len; i++) {
    const ul__entry *e = &ring->buf[(ring->head + i) & (ring->cap - 1)];
    if (e->timer != NULL && e->timer->state == UL__TIMER_CANCELLED)
      continue;
    int r = visit(e->cb, e->arg, ctx);
    if (r)
      return r;
  }
  return 0;
}

int ul_loop_walk_pending(ul_loop *loop, ul_walk_cb visit, void *ctx) {
  if (loop == NULL || visit == NULL)
    return -EINVAL;
  int r = walk_ring(&loop->ready, visit, ctx);
  for (size_t i = 0; r == 0 && i < loop->timers.len; i++) {
    ul_timer *t = loop->timers.items[i].timer;
    if (t->state != UL__TIMER_CANCELLED)
      r = visit(t->cb, t->arg, ctx);
  }
  if (r == 0) {
    pthread_mutex_lock(&loop->ts_lock);
    r = walk_ring(&loop->ts_queue, visit, ctx);
    pthread_mutex_unlock(&loop->ts_lock);
  }
  return r;
}

/* ---- running -------------------------------------------------------------- */

static int poll_timeout_ms(ul_loop *loop, int may_block) {
  if (!may_block || loop->ready.len > 0 || loop->stopping)
    return 0;
  if (loop->timers.len == 0)
    return -1;
  double delay = loop->timers.items[0].when - ul_loop_time(loop);
  if (delay <= 0)
    return 0;
  /* Round up: waking before the deadline would only cost a second poll. */
  double ms = ceil(delay * 1e3);
  return ms > UL__MAX_POLL_MS ? UL__MAX_POLL_MS : (int)ms;
}

/* Runs the callbacks that were ready when it started. */
static void run_ready(ul_loop *loop) {
  size_t ntodo = loop->ready.len;
  ul__entry e;
  while (ntodo-- > 0 && loop->break_err == 0) {
    ul__ring_pop(&loop->ready, &e);
    if (e.timer == NULL) {
      e.cb(loop, e.arg, 0);
      continue;
    }
    if (e.timer->state != UL__TIMER_CANCELLED) {
      e.timer->state = UL__TIMER_RUNNING;
      e.cb(loop, e.arg, 0);
    }
    ul__timer_free(loop, e.timer);
  }
}

/* Polls for I/O and runs the I/O callbacks.  When callbacks are ready and
 * no fd but the loop's own eventfd is watched, a zero-timeout poll could
 * only report that eventfd, whose news the ts_nonempty flag already
 * carries: skip the system call.  This is what makes chains of callbacks
 * (tasks, futures, sleep(0)) cheap. */
static int poll_io(ul_loop *loop, int timeout) {
  int only_wake_fd = timeout == 0 && loop->io_active <= 1;
  int err = 0;
  if (!only_wake_fd && loop->backend->prepare != NULL)
    err = loop->backend->prepare(loop);
  if (loop->before_poll != NULL)
    loop->before_poll(loop, timeout, loop->poll_hook_arg);
  if (!only_wake_fd && err == 0)
    err = loop->backend->wait(loop, timeout);
  if (loop->after_poll != NULL) {
    int r = loop->after_poll(loop, err, loop->poll_hook_arg);
    if (r < 0)
      return r;
  } else if (err < 0 && err != -EINTR) {
    ul_loop_report_error(loop, err, "polling for I/O failed");
  }
  if (only_wake_fd) {
    if (atomic_load_explicit(&loop->ts_nonempty, memory_order_relaxed))
      ul__collect_threadsafe(loop);
  } else {
    loop->backend->dispatch(loop);
    if (loop->reads_len > 0)
      ul__streams_read(loop);
  }
  if (loop->signals != NULL &&
      atomic_load_explicit(&loop->signals->any, memory_order_relaxed))
    ul__signals_dispatch(loop);
  return 0;
}

static int run_iteration(ul_loop *loop, int may_block) {
  ul__timers_prune(loop);
  loop->in_iteration = 1;
  int err = poll_io(loop, poll_timeout_ms(loop, may_block));
  if (err >= 0) {
    if (loop->timers.len > 0)
      ul__timers_move_due(loop, ul_loop_time(loop) + loop->clock_resolution);
    run_ready(loop);
  }
  loop->in_iteration = 0;
  /* The writes the callbacks made, in one system call. */
  if (loop->flush_len > 0)
    ul__streams_flush(loop);
  if (err < 0)
    return err;

  err = loop->break_err;
  loop->break_err = 0;
  return err;
}

int ul_loop_run_once(ul_loop *loop, int may_block) {
  if (loop == NULL)
    return -EINVAL;
  if (loop->running)
    return -EBUSY;
  loop->running = 1;
  int err = run_iteration(loop, may_block);
  loop->running = 0;
  return err;
}

int ul_loop_run(ul_loop *loop) {
  if (loop == NULL)
    return -EINVAL;
  if (loop->running)
    return -EBUSY;
  loop->running = 1;
  int err;
  for (;;) {
    err = run_iteration(loop, 1);
    if (err < 0 || loop->stopping)
      break;
  }
  loop->stopping = 0;
  loop->running = 0;
  return err;
}

int ul_loop_stop(ul_loop *loop) {
  if (loop == NULL)
    return -EINVAL;
  loop->stopping = 1;
  return 0;
}

int ul_loop_break(ul_loop *loop, int err) {
  if (loop == NULL || err >= 0 || !loop->running)
    return -EINVAL;
  loop->break_err = err;
  return 0;
}

int ul_loop_is_running(const ul_loop *loop) {
  return loop ? loop->running : 0;
}

const char *ul_loop_backend_name(const ul_loop *loop) {
  return loop ? loop->backend->name : NULL;
}

/* ---- hooks, errors, user data --------------------------------------------- */

int ul_loop_set_poll_hooks(ul_loop *loop, ul_before_poll_cb before,
                           ul_after_poll_cb after, void *arg) {
  if (loop == NULL)
    return -EINVAL;
  if (loop->running)
    return -EBUSY;
  loop->before_poll = before;
  loop->after_poll = after;
  loop->poll_hook_arg = arg;
  return 0;
}

int ul_loop_set_error_handler(ul_loop *loop, ul_error_cb cb, void *arg) {
  if (loop == NULL)
    return -EINVAL;
  loop->error_cb = cb;
  loop->error_arg = cb ? arg : NULL;
  return 0;
}

int ul_loop_report_error(ul_loop *loop, int err, const char *message) {
  if (loop == NULL || message == NULL)
    return -EINVAL;
  if (loop->error_cb != NULL)
    loop->error_cb(loop, err, message, loop->error_arg);
  else if (err)
    fprintf(stderr, "unixloop: %s: %s\n", message, ul_strerror(err));
  else
    fprintf(stderr, "unixloop: %s\n", message);
  return 0;
}

void ul_loop_set_data(ul_loop *loop, void *data) {
  if (loop != NULL)
    loop->data = data;
}

void *ul_loop_get_data(const ul_loop *loop) {
  return loop ? loop->data : NULL;
}
