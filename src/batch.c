/*
 * batch.c -- several non-blocking socket sends or receives in one system
 * call.
 *
 * A system call is the dearest thing an echo server does per request (on
 * a virtual machine a bare one can cost a microsecond).  The streams read
 * the sockets an epoll_wait reported together, and defer the small writes
 * of an iteration to flush them together at its end; this file runs such a
 * batch with one io_uring_enter(2) where the kernel offers io_uring, or
 * with one recv / send each where it does not.
 *
 * Every operation is submitted with MSG_DONTWAIT, so io_uring completes it
 * inline, exactly as a non-blocking recv(2) / send(2) would (bytes, or
 * -EAGAIN): the caller sees the same results either way, within the same
 * call.
 *
 * The ring is the loop's, made at the first batch of two or more
 * operations.  A child forked from the process must not share it with the
 * parent: a fork (pthread_atfork) bumps a generation number, and a ring
 * made in another generation is dropped and made again.
 */
#include <limits.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define RING_ENTRIES 64

struct ul__uring {
  int fd;
  unsigned generation;      /* fork_generation when it was made */
  void *sq_map;
  size_t sq_map_len;
  void *cq_map;             /* == sq_map with IORING_FEAT_SINGLE_MMAP */
  size_t cq_map_len;
  struct io_uring_sqe *sqes;
  size_t sqes_len;
  unsigned *sq_tail;
  unsigned *sq_mask;
  unsigned *sq_array;
  unsigned *cq_head;
  unsigned *cq_tail;
  unsigned *cq_mask;
  struct io_uring_cqe *cqes;
  unsigned sq_entries;
};

static atomic_uint fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void) {
  atomic_fetch_add_explicit(&fork_generation, 1, memory_order_relaxed);
}

static void install_atfork(void) {
  (void)pthread_atfork(NULL, NULL, on_fork_child);
}

static void uring_unmap(ul__uring *r) {
  if (r->sqes != NULL)
    munmap(r->sqes, r->sqes_len);
  if (r->cq_map != NULL && r->cq_map != r->sq_map)
    munmap(r->cq_map, r->cq_map_len);
  if (r->sq_map != NULL)
    munmap(r->sq_map, r->sq_map_len);
}

void ul__uring_free(ul__uring *r) {
  if (r == NULL)
    return;
  uring_unmap(r);
  if (r->fd >= 0)
    close(r->fd);
  free(r);
}

static void *map_ring(int fd, size_t len, off_t offset) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                 fd, offset);
  return p == MAP_FAILED ? NULL : p;
}

/* A new ring, or NULL where the kernel refuses one (too old, disabled by
 * sysctl or seccomp, out of memory): the caller then sends one by one. */
static ul__uring *uring_new(void) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  ul__uring *r = calloc(1, sizeof *r);
  if (r == NULL)
    return NULL;
  r->fd = (int)syscall(SYS_io_uring_setup, RING_ENTRIES, &p);
  if (r->fd < 0) {
    free(r);
    return NULL;
  }
  r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  r->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single && r->cq_map_len > r->sq_map_len)
    r->sq_map_len = r->cq_map_len;
  r->sq_map = map_ring(r->fd, r->sq_map_len, IORING_OFF_SQ_RING);
  r->cq_map = single ? r->sq_map
                     : map_ring(r->fd, r->cq_map_len, IORING_OFF_CQ_RING);
  r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
  r->sqes = map_ring(r->fd, r->sqes_len, IORING_OFF_SQES);
  if (r->sq_map == NULL || r->cq_map == NULL || r->sqes == NULL) {
    ul__uring_free(r);
    return NULL;
  }
  char *sq = r->sq_map, *cq = r->cq_map;
  r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
  r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
  r->sq_array = (unsigned *)(sq + p.sq_off.array);
  r->cq_head = (unsigned *)(cq + p.cq_off.head);
  r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
  r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
  r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
  r->sq_entries = p.sq_entries;
  r->generation = atomic_load_explicit(&fork_generation, memory_order_relaxed);
  return r;
}

/* The loop's ring, made (or made again after a fork) on demand. */
static ul__uring *loop_uring(ul_loop *loop) {
  if (loop->uring_off)
    return NULL;
  pthread_once(&atfork_once, install_atfork);
  unsigned gen = atomic_load_explicit(&fork_generation, memory_order_relaxed);
  if (loop->uring != NULL && loop->uring->generation != gen) {
    /* Made by the parent of this process: the parent owns its queue. */
    ul__uring_free(loop->uring);
    loop->uring = NULL;
  }
  if (loop->uring == NULL) {
    loop->uring = uring_new();
    if (loop->uring == NULL)
      loop->uring_off = 1; /* do not ask the kernel again */
  }
  return loop->uring;
}

static void run_one(ul__sockop *op) {
  ssize_t n;
  do
    n = op->recv ? recv(op->fd, op->data, op->len, MSG_DONTWAIT)
                 : send(op->fd, op->data, op->len, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n == -1 && errno == EINTR);
  op->result = n == -1 ? -errno : n;
}

/* Submits ops[0, n) (n <= sq_entries) and collects their completions.
 * Returns 0, or -errno if the ring failed: then *settled says how many
 * ops from the first have their result (an op submitted whose completion
 * cannot be collected gets -EIO); the rest never reached the kernel. */
static int uring_run(ul__uring *r, ul__sockop *ops, unsigned n,
                     unsigned *settled) {
  unsigned tail = *r->sq_tail;
  unsigned mask = *r->sq_mask;
  for (unsigned i = 0; i < n; i++) {
    unsigned idx = (tail + i) & mask;
    struct io_uring_sqe *sqe = &r->sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = ops[i].recv ? IORING_OP_RECV : IORING_OP_SEND;
    sqe->fd = ops[i].fd;
    sqe->addr = (unsigned long)ops[i].data;
    sqe->len = ops[i].len > UINT_MAX ? UINT_MAX : (unsigned)ops[i].len;
    sqe->msg_flags = ops[i].recv ? MSG_DONTWAIT : MSG_NOSIGNAL | MSG_DONTWAIT;
    sqe->user_data = i;
    r->sq_array[idx] = idx;
    ops[i].result = -EINPROGRESS;
  }
  atomic_store_explicit((_Atomic unsigned *)r->sq_tail, tail + n,
                        memory_order_release);
  unsigned done = 0;
  unsigned to_submit = n;
  while (done < n) {
    /* MSG_DONTWAIT completes every op inline: waiting for all of them
     * returns at once. */
    long rc = syscall(SYS_io_uring_enter, r->fd, to_submit, n - done,
                      IORING_ENTER_GETEVENTS, NULL, 0);
    if (rc < 0 && errno == EINTR)
      continue;
    if (rc < 0 || (rc == 0 && to_submit > 0)) {
      int err = rc < 0 ? -errno : -EIO;
      *settled = n - to_submit;
      for (unsigned i = 0; i < *settled; i++)
        if (ops[i].result == -EINPROGRESS)
          ops[i].result = -EIO;
      return err;
    }
    to_submit -= (unsigned)rc < to_submit ? (unsigned)rc : to_submit;
    unsigned head = *r->cq_head;
    unsigned ctail = atomic_load_explicit((_Atomic unsigned *)r->cq_tail,
                                          memory_order_acquire);
    for (; head != ctail; head++) {
      struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
      if (cqe->user_data < n && ops[cqe->user_data].result == -EINPROGRESS) {
        ops[cqe->user_data].result = cqe->res;
        done++;
      }
    }
    atomic_store_explicit((_Atomic unsigned *)r->cq_head, head,
                          memory_order_release);
  }
  return 0;
}

void ul__batch_run(ul_loop *loop, ul__sockop *ops, size_t n) {
  ul__uring *r = n >= 2 ? loop_uring(loop) : NULL;
  size_t i = 0;
  while (r != NULL && i < n) {
    unsigned chunk = n - i < r->sq_entries ? (unsigned)(n - i) : r->sq_entries;
    unsigned settled = 0;
    if (uring_run(r, ops + i, chunk, &settled) < 0) {
      /* The ring is unusable (e.g. the process ran out of memory for it):
       * drop it, with whatever it still holds, and send one by one for
       * good. */
      ul__uring_free(loop->uring);
      loop->uring = NULL;
      loop->uring_off = 1;
      i += settled;
      break;
    }
    i += chunk;
  }
  for (; i < n; i++)
    run_one(&ops[i]);
}
