/*
 * backend_epoll.c -- the Linux epoll(7) backend (the default).
 *
 * Level-triggered, as asyncio's EpollSelector: a callback that does not
 * drain its fd is called again in the next iteration.
 */
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "internal.h"

#define MAX_EVENTS 1024

typedef struct epoll_state {
  int epfd;
  int nready;
  struct epoll_event events[MAX_EVENTS];
} epoll_state;

static int epoll_init(ul_loop *loop) {
  epoll_state *st = malloc(sizeof *st);
  if (st == NULL)
    return -ENOMEM;
  st->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (st->epfd == -1) {
    int err = -errno;
    free(st);
    return err;
  }
  st->nready = 0;
  loop->backend_data = st;
  return 0;
}

static void epoll_destroy(ul_loop *loop) {
  epoll_state *st = loop->backend_data;
  if (st == NULL)
    return;
  close(st->epfd);
  free(st);
  loop->backend_data = NULL;
}

/* epoll_ctl itself refuses what it cannot watch: -EBADF for a closed fd,
 * -EPERM for regular files and directories (io.c restores the table when
 * the registration fails), so nothing needs asking first. */
static int epoll_check_fd(ul_loop *loop, int fd) {
  (void)loop;
  (void)fd;
  return 0;
}

static uint32_t to_epoll(unsigned events) {
  uint32_t ev = 0;
  if (events & UL_READABLE)
    ev |= EPOLLIN;
  if (events & UL_WRITABLE)
    ev |= EPOLLOUT;
  return ev;
}

static int epoll_update(ul_loop *loop, int fd, unsigned old,
                        unsigned events) {
  epoll_state *st = loop->backend_data;
  struct epoll_event ev = {.events = to_epoll(events), .data.fd = fd};
  int r;
  if (events == 0) {
    r = epoll_ctl(st->epfd, EPOLL_CTL_DEL, fd, &ev);
    return r == -1 ? -errno : 0;
  }
  /* `old` may be stale: the fd may have been closed (which drops it from
   * epoll) and its number reused.  Fall back between MOD and ADD. */
  r = epoll_ctl(st->epfd, old ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
  if (r == -1 && errno == ENOENT)
    r = epoll_ctl(st->epfd, EPOLL_CTL_ADD, fd, &ev);
  else if (r == -1 && errno == EEXIST)
    r = epoll_ctl(st->epfd, EPOLL_CTL_MOD, fd, &ev);
  return r == -1 ? -errno : 0;
}

static int epoll_wait_events(ul_loop *loop, int timeout_ms) {
  epoll_state *st = loop->backend_data;
  int n = epoll_wait(st->epfd, st->events, MAX_EVENTS, timeout_ms);
  if (n == -1) {
    st->nready = 0;
    return -errno;  /* -EINTR included: the caller decides */
  }
  st->nready = n;
  return 0;
}

static void epoll_dispatch(ul_loop *loop) {
  epoll_state *st = loop->backend_data;
  int n = st->nready;
  st->nready = 0;
  for (int i = 0; i < n; i++) {
    uint32_t ev = st->events[i].events;
    unsigned revents = 0;
    if (ev & EPOLLIN)
      revents |= UL_READABLE;
    if (ev & EPOLLOUT)
      revents |= UL_WRITABLE;
    if (ev & (EPOLLERR | EPOLLHUP))
      revents |= UL_IO_ERROR;
    ul__io_dispatch(loop, st->events[i].data.fd, revents);
  }
}

const ul__backend ul__backend_epoll = {
  .name = "epoll",
  .init = epoll_init,
  .destroy = epoll_destroy,
  .check_fd = epoll_check_fd,
  .update = epoll_update,
  .wait = epoll_wait_events,
  .dispatch = epoll_dispatch,
};
