/*
 * ready.c -- the ready queue: a growable ring buffer of callbacks.
 *
 * A ring rather than a linked list of nodes: call_soon is the hottest call
 * of an asyncio program and this way it allocates nothing in the steady
 * state, and running the queue walks memory in order.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int ring_grow(ul__ring *ring) {
  size_t cap = ring->cap ? ring->cap * 2 : 64;
  ul__entry *buf = malloc(cap * sizeof *buf);
  if (buf == NULL)
    return -ENOMEM;
  /* Unwrap the old contents to the start of the new buffer. */
  size_t first = ring->cap - ring->head;
  if (first > ring->len)
    first = ring->len;
  if (ring->len) {
    memcpy(buf, ring->buf + ring->head, first * sizeof *buf);
    memcpy(buf + first, ring->buf, (ring->len - first) * sizeof *buf);
  }
  free(ring->buf);
  ring->buf = buf;
  ring->cap = cap;
  ring->head = 0;
  return 0;
}

int ul__ring_push(ul__ring *ring, ul_cb cb, void *arg, ul_timer *timer) {
  if (ring->len == ring->cap) {
    int err = ring_grow(ring);
    if (err)
      return err;
  }
  ul__entry *e = &ring->buf[(ring->head + ring->len) & (ring->cap - 1)];
  e->cb = cb;
  e->arg = arg;
  e->timer = timer;
  ring->len++;
  return 0;
}

void ul__ring_free(ul__ring *ring) {
  free(ring->buf);
  ring->buf = NULL;
  ring->cap = ring->head = ring->len = 0;
}
