/*
 * timer.c -- call_later / call_at: a binary min-heap of deadlines.
 *
 * The heap is an array of (when, seq, timer) entries, ordered by deadline
 * and then by scheduling order, so that equal deadlines run FIFO.  Keeping
 * the key in the entry means sifting never dereferences a timer: with a
 * million timers that is the difference between one cache miss per level
 * and none.
 *
 * Cancellation is lazy, as in asyncio: a cancelled timer only changes state;
 * it is freed when it reaches the top of the heap, or when more than half of
 * the heap is cancelled and the heap is rebuilt without them.
 */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

/* Keep at most this many freed timers for reuse. */
#define TIMER_FREE_LIST_MAX 4096
/* asyncio's _MIN_SCHEDULED_TIMER_HANDLES and _MIN_CANCELLED_TIMER_HANDLES_FRACTION */
#define COMPACT_MIN_TIMERS 100

static int entry_less(const ul__heap_entry *a, const ul__heap_entry *b) {
  if (a->when != b->when)
    return a->when < b->when;
  return a->seq < b->seq;
}

static void sift_up(ul__heap_entry *items, size_t i) {
  ul__heap_entry e = items[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!entry_less(&e, &items[parent]))
      break;
    items[i] = items[parent];
    i = parent;
  }
  items[i] = e;
}

static void sift_down(ul__heap_entry *items, size_t len, size_t i) {
  ul__heap_entry e = items[i];
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= len)
      break;
    if (child + 1 < len && entry_less(&items[child + 1], &items[child]))
      child++;
    if (!entry_less(&items[child], &e))
      break;
    items[i] = items[child];
    i = child;
  }
  items[i] = e;
}

static void heap_pop(ul__heap *heap) {
  heap->len--;
  if (heap->len > 0) {
    heap->items[0] = heap->items[heap->len];
    sift_down(heap->items, heap->len, 0);
  }
}

static int heap_push(ul__heap *heap, double when, ul_timer *timer) {
  if (heap->len == heap->cap) {
    size_t cap = heap->cap ? heap->cap * 2 : 64;
    ul__heap_entry *items = realloc(heap->items, cap * sizeof *items);
    if (items == NULL)
      return -ENOMEM;
    heap->items = items;
    heap->cap = cap;
  }
  ul__heap_entry *e = &heap->items[heap->len];
  e->when = when;
  e->seq = heap->next_seq++;
  e->timer = timer;
  sift_up(heap->items, heap->len);
  heap->len++;
  return 0;
}

static ul_timer *timer_alloc(ul_loop *loop) {
  ul_timer *t = loop->timer_free_list;
  if (t != NULL) {
    loop->timer_free_list = t->next_free;
    loop->timer_free_count--;
    return t;
  }
  return malloc(sizeof *t);
}

void ul__timer_free(ul_loop *loop, ul_timer *timer) {
  if (loop->timer_free_count >= TIMER_FREE_LIST_MAX) {
    free(timer);
    return;
  }
  timer->next_free = loop->timer_free_list;
  loop->timer_free_list = timer;
  loop->timer_free_count++;
}

int ul_loop_call_at(ul_loop *loop, double when, ul_cb cb, void *arg,
                    ul_timer **timer_out) {
  if (loop == NULL || cb == NULL || isnan(when))
    return -EINVAL;
  if (loop->closing)
    return -ESHUTDOWN;
  ul_timer *t = timer_alloc(loop);
  if (t == NULL)
    return -ENOMEM;
  t->loop = loop;
  t->cb = cb;
  t->arg = arg;
  t->when = when;
  t->state = UL__TIMER_PENDING;
  int err = heap_push(&loop->timers, when, t);
  if (err) {
    ul__timer_free(loop, t);
    return err;
  }
  if (timer_out != NULL)
    *timer_out = t;
  return 0;
}

int ul_loop_call_later(ul_loop *loop, double delay, ul_cb cb, void *arg,
                       ul_timer **timer_out) {
  if (loop == NULL || isnan(delay))
    return -EINVAL;
  return ul_loop_call_at(loop, ul_loop_time(loop) + delay, cb, arg,
                         timer_out);
}

int ul_timer_cancel(ul_timer *timer) {
  if (timer == NULL)
    return -EINVAL;
  switch (timer->state) {
  case UL__TIMER_PENDING:
    timer->state = UL__TIMER_CANCELLED;
    timer->loop->timers.cancelled++;
    break;
  case UL__TIMER_READY:
    /* The ready queue frees it when it gets there. */
    timer->state = UL__TIMER_CANCELLED;
    break;
  default:
    /* Running (cancelling itself) or already cancelled: nothing to do; the
     * loop frees a running timer when its callback returns. */
    break;
  }
  return 0;
}

double ul_timer_when(const ul_timer *timer) {
  return timer ? timer->when : NAN;
}

/* Rebuilds the heap without its cancelled timers. */
static void heap_compact(ul_loop *loop) {
  ul__heap *heap = &loop->timers;
  size_t kept = 0;
  for (size_t i = 0; i < heap->len; i++) {
    ul_timer *t = heap->items[i].timer;
    if (t->state == UL__TIMER_CANCELLED)
      ul__timer_free(loop, t);
    else
      heap->items[kept++] = heap->items[i];
  }
  heap->len = kept;
  heap->cancelled = 0;
  for (size_t i = kept / 2; i-- > 0;)
    sift_down(heap->items, heap->len, i);
}

/* Drops cancelled timers: all of them when they are most of the heap,
 * else only those at the top (what asyncio's _run_once does). */
void ul__timers_prune(ul_loop *loop) {
  ul__heap *heap = &loop->timers;
  if (heap->len > COMPACT_MIN_TIMERS && heap->cancelled * 2 > heap->len) {
    heap_compact(loop);
    return;
  }
  while (heap->len > 0 &&
         heap->items[0].timer->state == UL__TIMER_CANCELLED) {
    ul__timer_free(loop, heap->items[0].timer);
    heap->cancelled--;
    heap_pop(heap);
  }
}

/* Moves every timer due before end_time to the ready queue. */
void ul__timers_move_due(ul_loop *loop, double end_time) {
  ul__heap *heap = &loop->timers;
  while (heap->len > 0 && heap->items[0].when < end_time) {
    ul_timer *t = heap->items[0].timer;
    if (t->state == UL__TIMER_CANCELLED) {
      heap->cancelled--;
      heap_pop(heap);
      ul__timer_free(loop, t);
      continue;
    }
    /* On ENOMEM leave the timer in the heap: it is retried next time. */
    if (ul__ring_push(&loop->ready, t->cb, t->arg, t) != 0) {
      ul_loop_report_error(loop, -ENOMEM, "cannot queue a due timer");
      return;
    }
    t->state = UL__TIMER_READY;
    heap_pop(heap);
  }
}

/* At close: every pending timer is called with -ECANCELED, in deadline
 * order, so that its owner can release its argument. */
void ul__timers_cancel_all(ul_loop *loop) {
  ul__heap *heap = &loop->timers;
  while (heap->len > 0) {
    ul_timer *t = heap->items[0].timer;
    heap_pop(heap);
    if (t->state != UL__TIMER_CANCELLED) {
      t->state = UL__TIMER_RUNNING;
      t->cb(loop, t->arg, -ECANCELED);
    }
    ul__timer_free(loop, t);
  }
  heap->cancelled = 0;
}

void ul__timers_destroy(ul_loop *loop) {
  free(loop->timers.items);
  loop->timers.items = NULL;
  loop->timers.len = loop->timers.cap = 0;
  while (loop->timer_free_list != NULL) {
    ul_timer *t = loop->timer_free_list;
    loop->timer_free_list = t->next_free;
    free(t);
  }
  loop->timer_free_count = 0;
}

size_t ul_loop_timer_count(const ul_loop *loop) {
  return loop ? loop->timers.len - loop->timers.cancelled : 0;
}

double ul_loop_next_deadline(ul_loop *loop) {
  if (loop == NULL)
    return -1.0;
  ul__timers_prune(loop);
  return loop->timers.len ? loop->timers.items[0].when : -1.0;
}
