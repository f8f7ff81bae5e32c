/*
 * io.c -- fd readiness watchers: one reader and one writer callback per fd.
 *
 * The loop keeps an fd-indexed table of what each fd wants; the backend is
 * told at once about every change (a removal must reach the kernel before
 * the caller closes the fd, or epoll keeps reporting a file that may still
 * be open elsewhere through a dup).
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int io_reserve(ul_loop *loop, int fd) {
  if (fd < loop->io_cap)
    return 0;
  int cap = loop->io_cap ? loop->io_cap : 64;
  while (cap <= fd)
    cap *= 2;
  ul__io *io = realloc(loop->io, (size_t)cap * sizeof *io);
  if (io == NULL)
    return -ENOMEM;
  memset(io + loop->io_cap, 0, (size_t)(cap - loop->io_cap) * sizeof *io);
  loop->io = io;
  loop->io_cap = cap;
  return 0;
}

/* Tells the backend what `fd` wants now.  `force` re-registers even when
 * nothing seems to change: an fd closed while watched vanishes from epoll
 * silently, and its number may since have been reused. */
static int io_sync(ul_loop *loop, int fd, int force) {
  ul__io *w = &loop->io[fd];
  if (w->events == w->pevents && !force)
    return 0;
  int err = loop->backend->update(loop, fd, w->pevents, w->events);
  if (err == 0 || w->events == 0)
    w->pevents = w->events;  /* a failed removal means the fd is gone */
  return err;
}

static int io_add(ul_loop *loop, int fd, unsigned dir, ul_io_cb cb,
                  void *arg) {
  if (loop == NULL || cb == NULL)
    return -EINVAL;
  /* A closed fd is -EBADF, one the backend cannot watch its own error:
   * epoll_ctl says both itself, poll() needs asking.  The table grows only
   * for an fd that is open. */
  if (fd < 0 || (fd >= loop->io_cap && fcntl(fd, F_GETFD) == -1))
    return -EBADF;
  int err = loop->backend->check_fd(loop, fd);
  if (err)
    return err;
  err = io_reserve(loop, fd);
  if (err)
    return err;
  ul__io *w = &loop->io[fd];
  ul__io saved = *w;
  unsigned was = w->events;
  if (dir == UL_READABLE) {
    w->read_cb = cb;
    w->read_arg = arg;
  } else {
    w->write_cb = cb;
    w->write_arg = arg;
  }
  w->events |= dir;
  err = io_sync(loop, fd, 1);
  if (err) {
    *w = saved;
    return err;
  }
  if (was == 0)
    loop->io_active++;
  return 0;
}

static int io_remove(ul_loop *loop, int fd, unsigned dir) {
  if (loop == NULL)
    return -EINVAL;
  if (fd < 0 || fd >= loop->io_cap || !(loop->io[fd].events & dir))
    return 0;
  ul__io *w = &loop->io[fd];
  if (dir == UL_READABLE) {
    w->read_cb = NULL;
    w->read_arg = NULL;
  } else {
    w->write_cb = NULL;
    w->write_arg = NULL;
  }
  w->events &= ~dir;
  if (w->events == 0)
    loop->io_active--;
  /* The fd may already be closed: whatever the backend says, it is gone. */
  (void)io_sync(loop, fd, 0);
  return 1;
}

int ul_loop_add_reader(ul_loop *loop, int fd, ul_io_cb cb, void *arg) {
  return io_add(loop, fd, UL_READABLE, cb, arg);
}

int ul_loop_add_writer(ul_loop *loop, int fd, ul_io_cb cb, void *arg) {
  return io_add(loop, fd, UL_WRITABLE, cb, arg);
}

int ul_loop_remove_reader(ul_loop *loop, int fd) {
  return io_remove(loop, fd, UL_READABLE);
}

int ul_loop_remove_writer(ul_loop *loop, int fd) {
  return io_remove(loop, fd, UL_WRITABLE);
}

void *ul_loop_get_reader(const ul_loop *loop, int fd) {
  if (loop == NULL || fd < 0 || fd >= loop->io_cap)
    return NULL;
  return loop->io[fd].read_cb ? loop->io[fd].read_arg : NULL;
}

void *ul_loop_get_writer(const ul_loop *loop, int fd) {
  if (loop == NULL || fd < 0 || fd >= loop->io_cap)
    return NULL;
  return loop->io[fd].write_cb ? loop->io[fd].write_arg : NULL;
}

/* Called by the backend for each ready fd.  `revents` uses ul_io_events;
 * UL_IO_ERROR wakes both directions, as asyncio's selectors do.  The table
 * is read again before each call: an earlier callback may have removed or
 * replaced this watcher. */
void ul__io_dispatch(ul_loop *loop, int fd, unsigned revents) {
  if (fd < 0 || fd >= loop->io_cap)
    return;
  if (revents & UL_IO_ERROR)
    revents |= UL_READABLE | UL_WRITABLE;
  ul__io *w = &loop->io[fd];
  if ((revents & UL_READABLE) && w->read_cb != NULL)
    w->read_cb(loop, fd, (int)(revents & (UL_READABLE | UL_IO_ERROR)),
               w->read_arg);
  /* The reader may have grown the table: look the watcher up again. */
  if (fd >= loop->io_cap)
    return;
  w = &loop->io[fd];
  if ((revents & UL_WRITABLE) && w->write_cb != NULL)
    w->write_cb(loop, fd, (int)(revents & (UL_WRITABLE | UL_IO_ERROR)),
                w->write_arg);
}

void ul__io_destroy(ul_loop *loop) {
  free(loop->io);
  loop->io = NULL;
  loop->io_cap = 0;
}
