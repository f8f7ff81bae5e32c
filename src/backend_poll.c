/*
 * backend_poll.c -- the portable poll(2) backend.
 *
 * A dense pollfd array plus an fd -> slot map, so that adding and removing a
 * watcher is O(1) (removal moves the last slot into the hole).  poll() gets
 * a copy of the array, so that nothing it holds moves while it waits: a
 * program that adds a watcher from another thread while the loop waits
 * (asyncio tolerates it, and asyncio-mqtt does it) must not have poll()
 * write its results into freed memory.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct poll_state {
  struct pollfd *fds;     /* the watched set */
  int nfds;
  int cap;
  int *slot;              /* fd -> index in fds, or -1 */
  int slot_cap;
  struct pollfd *polled;  /* the copy handed to poll(): made by
                             poll_prepare, read by poll_dispatch */
  int npolled;
  int polled_cap;
  int nready;             /* how many of polled have revents */
} poll_state;

static int poll_init(ul_loop *loop) {
  poll_state *st = calloc(1, sizeof *st);
  if (st == NULL)
    return -ENOMEM;
  loop->backend_data = st;
  return 0;
}

static void poll_destroy(ul_loop *loop) {
  poll_state *st = loop->backend_data;
  if (st == NULL)
    return;
  free(st->fds);
  free(st->slot);
  free(st->polled);
  free(st);
  loop->backend_data = NULL;
}

/* poll() watches anything (regular files simply always report ready) but
 * says nothing about a closed fd until it is polled: ask now. */
static int poll_check_fd(ul_loop *loop, int fd) {
  (void)loop;
  return fcntl(fd, F_GETFD) == -1 ? -EBADF : 0;
}

static int reserve(poll_state *st, int fd) {
  if (fd >= st->slot_cap) {
    int cap = st->slot_cap ? st->slot_cap : 64;
    while (cap <= fd)
      cap *= 2;
    int *slot = realloc(st->slot, (size_t)cap * sizeof *slot);
    if (slot == NULL)
      return -ENOMEM;
    for (int i = st->slot_cap; i < cap; i++)
      slot[i] = -1;
    st->slot = slot;
    st->slot_cap = cap;
  }
  if (st->nfds == st->cap) {
    int cap = st->cap ? st->cap * 2 : 64;
    struct pollfd *fds = realloc(st->fds, (size_t)cap * sizeof *fds);
    if (fds == NULL)
      return -ENOMEM;
    st->fds = fds;
    st->cap = cap;
  }
  return 0;
}

static void slot_remove(poll_state *st, int fd) {
  int i = st->slot[fd];
  int last = st->nfds - 1;
  if (i != last) {
    st->fds[i] = st->fds[last];
    st->slot[st->fds[i].fd] = i;
  }
  st->slot[fd] = -1;
  st->nfds--;
}

static int poll_update(ul_loop *loop, int fd, unsigned old,
                       unsigned events) {
  poll_state *st = loop->backend_data;
  (void)old;
  int has_slot = fd < st->slot_cap && st->slot[fd] >= 0;
  if (events == 0) {
    if (has_slot)
      slot_remove(st, fd);
    return 0;
  }
  if (!has_slot) {
    int err = reserve(st, fd);
    if (err)
      return err;
    st->slot[fd] = st->nfds;
    st->fds[st->nfds].fd = fd;
    st->nfds++;
  }
  struct pollfd *p = &st->fds[st->slot[fd]];
  p->events = (short)(((events & UL_READABLE) ? POLLIN : 0) |
                      ((events & UL_WRITABLE) ? POLLOUT : 0));
  p->revents = 0;
  return 0;
}

/* The copy of the watched set that the next poll() gets. */
static int poll_prepare(ul_loop *loop) {
  poll_state *st = loop->backend_data;
  st->nready = 0;
  if (st->polled_cap < st->cap) {
    struct pollfd *polled = realloc(st->polled,
                                    (size_t)st->cap * sizeof *polled);
    if (polled == NULL)
      return -ENOMEM;
    st->polled = polled;
    st->polled_cap = st->cap;
  }
  st->npolled = st->nfds;
  if (st->npolled > 0)
    memcpy(st->polled, st->fds, (size_t)st->npolled * sizeof *st->polled);
  return 0;
}

static int poll_wait(ul_loop *loop, int timeout_ms) {
  poll_state *st = loop->backend_data;
  int n = poll(st->polled, (nfds_t)st->npolled, timeout_ms);
  if (n == -1)
    return -errno;
  st->nready = n;
  return 0;
}

static void poll_dispatch(ul_loop *loop) {
  poll_state *st = loop->backend_data;
  int n = st->nready;
  st->nready = 0;
  /* Callbacks may change st->fds, never st->polled. */
  for (int i = 0; i < st->npolled && n > 0; i++) {
    int fd = st->polled[i].fd;
    short ev = st->polled[i].revents;
    if (ev == 0)
      continue;
    n--;
    if (ev & POLLNVAL) {
      /* Closed while watched: epoll forgets such an fd by itself; do the
       * same instead of reporting it on every iteration (unless a callback
       * of this iteration watched the number again). */
      if (fd < st->slot_cap && st->slot[fd] >= 0 &&
          fcntl(fd, F_GETFD) == -1) {
        loop->io[fd].pevents = 0;
        slot_remove(st, fd);
      }
      continue;
    }
    unsigned revents = 0;
    if (ev & POLLIN)
      revents |= UL_READABLE;
    if (ev & POLLOUT)
      revents |= UL_WRITABLE;
    if (ev & (POLLERR | POLLHUP))
      revents |= UL_IO_ERROR;
    ul__io_dispatch(loop, fd, revents);
  }
  st->npolled = 0;
}

const ul__backend ul__backend_poll = {
  .name = "poll",
  .init = poll_init,
  .destroy = poll_destroy,
  .check_fd = poll_check_fd,
  .update = poll_update,
  .prepare = poll_prepare,
  .wait = poll_wait,
  .dispatch = poll_dispatch,
};
