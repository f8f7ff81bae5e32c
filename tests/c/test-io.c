/* fd watchers: add_reader / add_writer / remove / get. */
#include "test.h"

#include <limits.h>
#include <sys/socket.h>

static int order[64];
static int norder;

static void record(int id) {
  ASSERT_LT(norder, 64);
  order[norder++] = id;
}

static int backend_is_epoll(ul_loop *loop) {
  return strcmp(ul_loop_backend_name(loop), "epoll") == 0;
}

static void test_socketpair(int sv[2]) {
  ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                       sv));
}

/* Reads everything available; returns the byte count (0 at EOF). */
static ssize_t drain(int fd) {
  char buf[4096];
  ssize_t n, total = 0;
  for (;;) {
    n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      total += n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      ASSERT_EQ(EAGAIN, errno);
    return total;
  }
}

/* ------------------------------------------------------------------------ */
/* Generic counting callbacks                                               */

struct watch {
  int calls;
  int last_events;
  int last_fd;
  int read_and_stop;   /* drain the fd, remove the reader, stop */
  int remove_and_stop; /* remove the writer, stop */
};

static void reader_cb(ul_loop *loop, int fd, int events, void *arg) {
  struct watch *w = arg;
  w->calls++;
  w->last_events = events;
  w->last_fd = fd;
  ASSERT_NE(0, events & UL_READABLE);
  if (w->read_and_stop) {
    drain(fd);
    ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
    ASSERT_OK(ul_loop_stop(loop));
  }
}

static void writer_cb(ul_loop *loop, int fd, int events, void *arg) {
  struct watch *w = arg;
  w->calls++;
  w->last_events = events;
  w->last_fd = fd;
  ASSERT_NE(0, events & UL_WRITABLE);
  if (w->remove_and_stop) {
    ASSERT_EQ(1, ul_loop_remove_writer(loop, fd));
    ASSERT_OK(ul_loop_stop(loop));
  }
}

static int never_io_called;

static void never_io_cb(ul_loop *loop, int fd, int events, void *arg) {
  (void)loop;
  (void)fd;
  (void)events;
  (void)arg;
  never_io_called++;
}

/* ------------------------------------------------------------------------ */

TEST_IMPL(io_reader_fires_on_data) {
  ul_loop *loop = test_loop_new();
  struct watch w;
  int fds[2], sv[2];

  /* A pipe. */
  memset(&w, 0, sizeof(w));
  w.read_and_stop = 1;
  test_pipe(fds);
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], reader_cb, &w));
  ASSERT_PTR_EQ(&w, ul_loop_get_reader(loop, fds[0]));
  ASSERT_NULL(ul_loop_get_writer(loop, fds[0]));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, w.calls); /* nothing to read yet */
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, w.calls);
  ASSERT_EQ(fds[0], w.last_fd);
  ASSERT_NE(0, w.last_events & UL_READABLE);
  ASSERT_EQ(0, w.last_events & UL_IO_ERROR);
  ASSERT_NULL(ul_loop_get_reader(loop, fds[0]));
  test_close(fds[0]);
  test_close(fds[1]);

  /* A socketpair, written in both directions. */
  test_socketpair(sv);
  memset(&w, 0, sizeof(w));
  w.read_and_stop = 1;
  ASSERT_OK(ul_loop_add_reader(loop, sv[0], reader_cb, &w));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, w.calls);
  test_write_byte(sv[1]);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, w.calls);
  ASSERT_EQ(sv[0], w.last_fd);

  memset(&w, 0, sizeof(w));
  w.read_and_stop = 1;
  ASSERT_OK(ul_loop_add_reader(loop, sv[1], reader_cb, &w));
  test_write_byte(sv[0]);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, w.calls);
  ASSERT_EQ(sv[1], w.last_fd);
  test_close(sv[0]);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  ASSERT_EQ(1, w.calls);
  return 0;
}

/* Level-triggered: data left unread is reported again each iteration. */
TEST_IMPL(io_reader_level_triggered) {
  ul_loop *loop = test_loop_new();
  struct watch w;
  int fds[2];

  memset(&w, 0, sizeof(w));
  test_pipe(fds);
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], reader_cb, &w));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, w.calls);
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(2, w.calls);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(3, w.calls);
  ASSERT_EQ(1, drain(fds[0]));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(3, w.calls);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fds[0]));
  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(io_writer_fires_when_writable) {
  ul_loop *loop = test_loop_new();
  struct watch w;
  int fds[2];
  char buf[4096];

  memset(&w, 0, sizeof(w));
  w.remove_and_stop = 1;
  test_pipe(fds);
  ASSERT_OK(ul_loop_add_writer(loop, fds[1], writer_cb, &w));
  ASSERT_PTR_EQ(&w, ul_loop_get_writer(loop, fds[1]));
  ASSERT_NULL(ul_loop_get_reader(loop, fds[1]));
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, w.calls);
  ASSERT_EQ(fds[1], w.last_fd);
  ASSERT_NE(0, w.last_events & UL_WRITABLE);
  ASSERT_EQ(0, w.last_events & UL_IO_ERROR);
  ASSERT_NULL(ul_loop_get_writer(loop, fds[1]));

  /* A full pipe is not writable until the reader makes room. */
  memset(buf, 'y', sizeof(buf));
  for (;;) {
    ssize_t n = write(fds[1], buf, sizeof(buf));
    if (n < 0) {
      ASSERT_EQ(EAGAIN, errno);
      break;
    }
  }
  {
    /* Fill the last partial page too. */
    while (write(fds[1], buf, 1) == 1) {
    }
  }
  memset(&w, 0, sizeof(w));
  w.remove_and_stop = 1;
  ASSERT_OK(ul_loop_add_writer(loop, fds[1], writer_cb, &w));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, w.calls);
  ASSERT_GT(drain(fds[0]), 0);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, w.calls);

  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Adding again replaces the callback and the arg. */
TEST_IMPL(io_add_again_replaces) {
  ul_loop *loop = test_loop_new();
  struct watch w1, w2;
  int sv[2];

  memset(&w1, 0, sizeof(w1));
  memset(&w2, 0, sizeof(w2));
  never_io_called = 0;
  test_socketpair(sv);

  ASSERT_OK(ul_loop_add_reader(loop, sv[0], never_io_cb, &w1));
  ASSERT_PTR_EQ(&w1, ul_loop_get_reader(loop, sv[0]));
  ASSERT_OK(ul_loop_add_reader(loop, sv[0], reader_cb, &w2));
  ASSERT_PTR_EQ(&w2, ul_loop_get_reader(loop, sv[0]));

  ASSERT_OK(ul_loop_add_writer(loop, sv[0], never_io_cb, &w2));
  ASSERT_PTR_EQ(&w2, ul_loop_get_writer(loop, sv[0]));
  ASSERT_OK(ul_loop_add_writer(loop, sv[0], writer_cb, &w1));
  ASSERT_PTR_EQ(&w1, ul_loop_get_writer(loop, sv[0]));
  ASSERT_PTR_EQ(&w2, ul_loop_get_reader(loop, sv[0]));

  test_write_byte(sv[1]);
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(0, never_io_called);
  ASSERT_EQ(1, w2.calls); /* the reader */
  ASSERT_EQ(1, w1.calls); /* the writer */
  ASSERT_NE(0, w2.last_events & UL_READABLE);
  ASSERT_NE(0, w1.last_events & UL_WRITABLE);

  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[0]));
  ASSERT_EQ(1, ul_loop_remove_writer(loop, sv[0]));
  ASSERT_EQ(0, ul_loop_remove_reader(loop, sv[0]));
  ASSERT_EQ(0, ul_loop_remove_writer(loop, sv[0]));
  test_close(sv[0]);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_io_called);
  return 0;
}

TEST_IMPL(io_remove_return_values) {
  ul_loop *loop = test_loop_new();
  int fds[2];

  never_io_called = 0;
  test_pipe(fds);
  ASSERT_EQ(0, ul_loop_remove_reader(loop, fds[0]));
  ASSERT_EQ(0, ul_loop_remove_writer(loop, fds[1]));

  ASSERT_OK(ul_loop_add_reader(loop, fds[0], never_io_cb, NULL));
  ASSERT_EQ(0, ul_loop_remove_writer(loop, fds[0])); /* other direction */
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fds[0]));
  ASSERT_EQ(0, ul_loop_remove_reader(loop, fds[0]));

  ASSERT_OK(ul_loop_add_writer(loop, fds[1], never_io_cb, NULL));
  ASSERT_EQ(0, ul_loop_remove_reader(loop, fds[1]));
  ASSERT_EQ(1, ul_loop_remove_writer(loop, fds[1]));
  ASSERT_EQ(0, ul_loop_remove_writer(loop, fds[1]));

  /* fds that were never watched, even impossible ones: 0, no crash. */
  ASSERT_EQ(0, ul_loop_remove_reader(loop, -1));
  ASSERT_EQ(0, ul_loop_remove_writer(loop, -1));
  ASSERT_EQ(0, ul_loop_remove_reader(loop, INT_MAX));
  ASSERT_EQ(0, ul_loop_remove_writer(loop, INT_MAX));
  ASSERT_EQ(0, ul_loop_remove_reader(loop, 100000));
  ASSERT_EQ(-EINVAL, ul_loop_remove_reader(NULL, fds[0]));
  ASSERT_EQ(-EINVAL, ul_loop_remove_writer(NULL, fds[0]));

  /* Removed watchers are really gone. */
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, never_io_called);
  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_io_called);
  return 0;
}

TEST_IMPL(io_get_reader_writer) {
  ul_loop *loop = test_loop_new();
  int sv[2];
  int a, b;

  test_socketpair(sv);
  ASSERT_NULL(ul_loop_get_reader(loop, sv[0]));
  ASSERT_NULL(ul_loop_get_writer(loop, sv[0]));
  ASSERT_NULL(ul_loop_get_reader(loop, -1));
  ASSERT_NULL(ul_loop_get_writer(loop, -1));
  ASSERT_NULL(ul_loop_get_reader(loop, INT_MAX));
  ASSERT_NULL(ul_loop_get_writer(loop, INT_MAX));

  ASSERT_OK(ul_loop_add_reader(loop, sv[0], never_io_cb, &a));
  ASSERT_OK(ul_loop_add_writer(loop, sv[0], never_io_cb, &b));
  ASSERT_PTR_EQ(&a, ul_loop_get_reader(loop, sv[0]));
  ASSERT_PTR_EQ(&b, ul_loop_get_writer(loop, sv[0]));
  ASSERT_NULL(ul_loop_get_reader(loop, sv[1]));
  ASSERT_NULL(ul_loop_get_writer(loop, sv[1]));

  ASSERT_EQ(1, ul_loop_remove_writer(loop, sv[0]));
  ASSERT_PTR_EQ(&a, ul_loop_get_reader(loop, sv[0]));
  ASSERT_NULL(ul_loop_get_writer(loop, sv[0]));
  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[0]));
  ASSERT_NULL(ul_loop_get_reader(loop, sv[0]));

  test_close(sv[0]);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Removing one direction keeps the other working. */
TEST_IMPL(io_remove_one_direction) {
  ul_loop *loop = test_loop_new();
  struct watch r, w;
  int sv[2];

  memset(&r, 0, sizeof(r));
  memset(&w, 0, sizeof(w));
  test_socketpair(sv);
  ASSERT_OK(ul_loop_add_reader(loop, sv[0], reader_cb, &r));
  ASSERT_OK(ul_loop_add_writer(loop, sv[0], writer_cb, &w));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(0, r.calls);
  ASSERT_EQ(1, w.calls);

  ASSERT_EQ(1, ul_loop_remove_writer(loop, sv[0]));
  test_write_byte(sv[1]);
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, r.calls);
  ASSERT_EQ(1, w.calls);
  ASSERT_EQ(1, drain(sv[0]));

  /* Writer back, reader out. */
  ASSERT_OK(ul_loop_add_writer(loop, sv[0], writer_cb, &w));
  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[0]));
  test_write_byte(sv[1]);
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, r.calls);
  ASSERT_EQ(2, w.calls);
  ASSERT_EQ(1, ul_loop_remove_writer(loop, sv[0]));

  test_close(sv[0]);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  return 0;
}

TEST_IMPL(io_bad_fd) {
  ul_loop *loop = test_loop_new();
  int fds[2];
  int closed_fd;

  never_io_called = 0;
  test_pipe(fds);
  closed_fd = fds[0];
  test_close(fds[0]);
  test_close(fds[1]);

  ASSERT_EQ(-EBADF, ul_loop_add_reader(loop, -1, never_io_cb, NULL));
  ASSERT_EQ(-EBADF, ul_loop_add_writer(loop, -1, never_io_cb, NULL));
  ASSERT_EQ(-EBADF, ul_loop_add_reader(loop, -42, never_io_cb, NULL));
  ASSERT_EQ(-EBADF, ul_loop_add_reader(loop, closed_fd, never_io_cb, NULL));
  ASSERT_EQ(-EBADF, ul_loop_add_writer(loop, closed_fd, never_io_cb, NULL));
  ASSERT_EQ(-EBADF, ul_loop_add_reader(loop, INT_MAX, never_io_cb, NULL));
  ASSERT_EQ(-EBADF, ul_loop_add_writer(loop, INT_MAX, never_io_cb, NULL));
  ASSERT_EQ(-EBADF, ul_loop_add_reader(loop, 1 << 20, never_io_cb, NULL));

  ASSERT_NULL(ul_loop_get_reader(loop, closed_fd));
  ASSERT_NULL(ul_loop_get_writer(loop, closed_fd));
  ASSERT_EQ(0, ul_loop_remove_reader(loop, closed_fd));
  ASSERT_EQ(0, ul_loop_remove_writer(loop, closed_fd));

  test_pipe(fds);
  ASSERT_EQ(-EINVAL, ul_loop_add_reader(loop, fds[0], NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_add_writer(loop, fds[1], NULL, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_add_reader(NULL, fds[0], never_io_cb, NULL));
  ASSERT_EQ(-EINVAL, ul_loop_add_writer(NULL, fds[1], never_io_cb, NULL));
  ASSERT_NULL(ul_loop_get_reader(loop, fds[0]));
  ASSERT_NULL(ul_loop_get_writer(loop, fds[1]));
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_io_called);
  return 0;
}

/* A regular file is always ready: the epoll backend refuses it (-EPERM), the
 * poll backend accepts it (the header reserves -EPERM to epoll) and reports
 * it ready. */
TEST_IMPL(io_regular_file) {
  ul_loop *loop = test_loop_new();
  FILE *f = tmpfile();
  int fd;

  ASSERT_NOT_NULL(f);
  fd = fileno(f);
  never_io_called = 0;
  if (backend_is_epoll(loop)) {
    int dir;
    ASSERT_EQ(-EPERM, ul_loop_add_reader(loop, fd, never_io_cb, NULL));
    ASSERT_EQ(-EPERM, ul_loop_add_writer(loop, fd, never_io_cb, NULL));
    ASSERT_NULL(ul_loop_get_reader(loop, fd));
    ASSERT_NULL(ul_loop_get_writer(loop, fd));
    ASSERT_EQ(0, ul_loop_remove_reader(loop, fd));
    ASSERT_EQ(0, ul_loop_remove_writer(loop, fd));

    dir = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(dir, 0);
    ASSERT_EQ(-EPERM, ul_loop_add_reader(loop, dir, never_io_cb, NULL));
    ASSERT_NULL(ul_loop_get_reader(loop, dir));
    test_close(dir);

    /* The loop is still fine. */
    ASSERT_OK(ul_loop_run_once(loop, 0));
    ASSERT_EQ(0, never_io_called);
  } else {
    struct watch r, w;
    memset(&r, 0, sizeof(r));
    memset(&w, 0, sizeof(w));
    ASSERT_STR_EQ("poll", ul_loop_backend_name(loop));
    ASSERT_OK(ul_loop_add_reader(loop, fd, reader_cb, &r));
    ASSERT_OK(ul_loop_add_writer(loop, fd, writer_cb, &w));
    ASSERT_OK(ul_loop_run_once(loop, 1));
    ASSERT_EQ(1, r.calls);
    ASSERT_EQ(1, w.calls);
    ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
    ASSERT_EQ(1, ul_loop_remove_writer(loop, fd));
    ASSERT_OK(ul_loop_run_once(loop, 0));
    ASSERT_EQ(1, r.calls);
  }
  fclose(f);
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Changing watchers from inside callbacks                                  */

static int self_remove_calls;

static void remove_self_reader_cb(ul_loop *loop, int fd, int events,
                                  void *arg) {
  (void)arg;
  ASSERT_NE(0, events & UL_READABLE);
  self_remove_calls++;
  ASSERT_PTR_EQ(&self_remove_calls, ul_loop_get_reader(loop, fd));
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
  ASSERT_NULL(ul_loop_get_reader(loop, fd));
  ASSERT_EQ(0, ul_loop_remove_reader(loop, fd));
}

static void remove_self_writer_cb(ul_loop *loop, int fd, int events,
                                  void *arg) {
  (void)arg;
  ASSERT_NE(0, events & UL_WRITABLE);
  self_remove_calls++;
  ASSERT_EQ(1, ul_loop_remove_writer(loop, fd));
}

TEST_IMPL(io_remove_self_in_callback) {
  ul_loop *loop = test_loop_new();
  int fds[2];

  self_remove_calls = 0;
  test_pipe(fds);
  test_write_byte(fds[1]); /* left unread: still readable afterwards */
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], remove_self_reader_cb,
                               &self_remove_calls));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, self_remove_calls);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, self_remove_calls);

  ASSERT_OK(ul_loop_add_writer(loop, fds[1], remove_self_writer_cb, NULL));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(2, self_remove_calls);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(2, self_remove_calls);

  /* Re-added after removing itself: works again. */
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], remove_self_reader_cb,
                               &self_remove_calls));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(3, self_remove_calls);

  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

static int close_in_cb_calls;

static void remove_and_close_cb(ul_loop *loop, int fd, int events, void *arg) {
  int *peer = arg;
  (void)events;
  close_in_cb_calls++;
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
  test_close(fd);
  test_close(*peer);
}

static void stop_cb(ul_loop *loop, void *arg, int status) {
  (void)arg;
  ASSERT_OK(status);
  ASSERT_OK(ul_loop_stop(loop));
}

/* Remove the watcher and close the fd inside the callback; the loop goes on
 * and the fd number can be watched again. */
TEST_IMPL(io_close_fd_after_remove_in_callback) {
  ul_loop *loop = test_loop_new();
  struct watch w;
  int fds[2], fds2[2];

  close_in_cb_calls = 0;
  test_pipe(fds);
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], remove_and_close_cb, &fds[1]));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, close_in_cb_calls);
  ASSERT(!test_fd_is_open(fds[0]));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(1, close_in_cb_calls);

  /* The freed number comes back for the next pipe. */
  test_pipe(fds2);
  memset(&w, 0, sizeof(w));
  w.read_and_stop = 1;
  ASSERT_OK(ul_loop_add_reader(loop, fds2[0], reader_cb, &w));
  ASSERT_OK(ul_loop_call_later(loop, 0.001, stop_cb, NULL, NULL));
  ASSERT_OK(ul_loop_run(loop)); /* a timer stop: nothing spins or fires */
  ASSERT_EQ(0, w.calls);
  test_write_byte(fds2[1]);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, w.calls);
  ASSERT_EQ(1, close_in_cb_calls);
  test_close(fds2[0]);
  test_close(fds2[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Two fds ready in the same poll: the first callback removes the other's
 * watcher, which must then not be called. */
static int pair_fd[2];     /* the two read ends */
static int pair_peer[2];   /* their write ends */
static int pair_close;     /* also close the other fd */

static void remove_other_cb(ul_loop *loop, int fd, int events, void *arg) {
  int me = (int)(intptr_t)arg;
  int other = 1 - me;
  ASSERT_NE(0, events & UL_READABLE);
  ASSERT_EQ(pair_fd[me], fd);
  record(me);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, pair_fd[other]));
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
  if (pair_close) {
    test_close(pair_fd[other]);
    test_close(pair_peer[other]);
    pair_fd[other] = -1;
  }
}

TEST_IMPL(io_remove_other_in_same_batch) {
  ul_loop *loop = test_loop_new();
  int a[2], b[2];

  for (pair_close = 0; pair_close <= 1; pair_close++) {
    norder = 0;
    test_pipe(a);
    test_pipe(b);
    pair_fd[0] = a[0];
    pair_peer[0] = a[1];
    pair_fd[1] = b[0];
    pair_peer[1] = b[1];
    test_write_byte(a[1]);
    test_write_byte(b[1]);
    ASSERT_OK(ul_loop_add_reader(loop, a[0], remove_other_cb, (void *)0));
    ASSERT_OK(ul_loop_add_reader(loop, b[0], remove_other_cb, (void *)1));
    ASSERT_OK(ul_loop_run_once(loop, 1));
    ASSERT_EQ(1, norder);
    ASSERT_OK(ul_loop_run_once(loop, 0));
    ASSERT_EQ(1, norder);
    for (int i = 0; i < 2; i++) {
      if (pair_fd[i] >= 0) {
        test_close(pair_fd[i]);
        test_close(pair_peer[i]);
      }
    }
  }
  CLOSE_LOOP(loop);
  return 0;
}

/* The reader runs before the writer of the same fd; a reader removing the
 * writer of its fd in the same iteration keeps it from being called. */
static void remove_my_writer_cb(ul_loop *loop, int fd, int events, void *arg) {
  (void)arg;
  ASSERT_NE(0, events & UL_READABLE);
  record(1);
  ASSERT_EQ(1, ul_loop_remove_writer(loop, fd));
}

static void rec_reader_cb(ul_loop *loop, int fd, int events, void *arg) {
  (void)loop;
  (void)fd;
  ASSERT_NE(0, events & UL_READABLE);
  record((int)(intptr_t)arg);
}

static void rec_writer_cb(ul_loop *loop, int fd, int events, void *arg) {
  (void)loop;
  (void)fd;
  ASSERT_NE(0, events & UL_WRITABLE);
  record((int)(intptr_t)arg);
}

TEST_IMPL(io_reader_before_writer) {
  ul_loop *loop = test_loop_new();
  int sv[2];

  test_socketpair(sv);
  test_write_byte(sv[1]);

  /* Writer added first, still the reader runs first. */
  norder = 0;
  ASSERT_OK(ul_loop_add_writer(loop, sv[0], rec_writer_cb, (void *)(intptr_t)2));
  ASSERT_OK(ul_loop_add_reader(loop, sv[0], rec_reader_cb, (void *)(intptr_t)1));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(2, norder);
  ASSERT_EQ(1, order[0]);
  ASSERT_EQ(2, order[1]);

  /* The reader removes the writer: only the reader runs. */
  norder = 0;
  ASSERT_OK(ul_loop_add_reader(loop, sv[0], remove_my_writer_cb, NULL));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, norder);
  ASSERT_EQ(1, order[0]);
  ASSERT_NULL(ul_loop_get_writer(loop, sv[0]));
  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[0]));

  test_close(sv[0]);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* A reader that adds a writer on its fd: the writer fires (in this or the
 * next iteration) and the reader keeps working. */
static struct watch added_writer;

static void add_writer_cb(ul_loop *loop, int fd, int events, void *arg) {
  (void)arg;
  ASSERT_NE(0, events & UL_READABLE);
  record(1);
  drain(fd);
  ASSERT_OK(ul_loop_add_writer(loop, fd, writer_cb, &added_writer));
}

TEST_IMPL(io_add_watcher_in_callback) {
  ul_loop *loop = test_loop_new();
  int sv[2];

  norder = 0;
  memset(&added_writer, 0, sizeof(added_writer));
  test_socketpair(sv);
  test_write_byte(sv[1]);
  ASSERT_OK(ul_loop_add_reader(loop, sv[0], add_writer_cb, NULL));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, norder);
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_GE(added_writer.calls, 1);
  ASSERT_LE(added_writer.calls, 2);
  ASSERT_EQ(1, norder); /* no more data: the reader stays quiet */
  ASSERT_EQ(1, ul_loop_remove_writer(loop, sv[0]));
  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[0]));
  test_close(sv[0]);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Closed fds                                                               */

static int spin_iterations;

static void count_iterations_hook(ul_loop *loop, int timeout_ms, void *arg) {
  (void)loop;
  (void)timeout_ms;
  (void)arg;
  spin_iterations++;
}

static int closed_reader_calls;

static void closed_reader_cb(ul_loop *loop, int fd, int events, void *arg) {
  (void)loop;
  (void)fd;
  (void)events;
  (void)arg;
  closed_reader_calls++;
}

/* An fd closed while still watched: the loop does not spin on it, keeps
 * running, and removing the watcher afterwards works. */
TEST_IMPL(io_fd_closed_while_watched) {
  ul_loop *loop = test_loop_new();
  int fds[2];
  int ran = 0;

  test_pipe(fds);
  spin_iterations = 0;
  closed_reader_calls = 0;
  ASSERT_OK(ul_loop_set_poll_hooks(loop, count_iterations_hook, NULL, NULL));
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], closed_reader_cb, &ran));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  test_close(fds[0]);
  test_close(fds[1]);

  /* 50 ms with nothing to do but wait: a spinning loop does thousands of
   * iterations. */
  ASSERT_OK(ul_loop_call_later(loop, 0.05, stop_cb, NULL, NULL));
  spin_iterations = 0;
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_LE(spin_iterations, 10);
  ASSERT_LE(closed_reader_calls, 10);

  ASSERT_PTR_EQ(&ran, ul_loop_get_reader(loop, fds[0]));
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fds[0]));
  ASSERT_EQ(0, ul_loop_remove_reader(loop, fds[0]));
  ASSERT_NULL(ul_loop_get_reader(loop, fds[0]));

  /* Still a working loop. */
  ASSERT_OK(ul_loop_call_soon(loop, stop_cb, NULL));
  ASSERT_OK(ul_loop_run(loop));
  CLOSE_LOOP(loop);
  return 0;
}

static void ignore_io_cb(ul_loop *loop, int fd, int events, void *arg) {
  (void)loop;
  (void)fd;
  (void)events;
  (void)arg;
}

/* Makes pair[which] have the number `num` (free, or the other end's). */
static void take_number(int pair[2], int which, int num) {
  if (pair[which] == num)
    return;
  if (pair[1 - which] == num) {
    pair[1 - which] = fcntl(num, F_DUPFD_CLOEXEC, num + 1);
    ASSERT_GE(pair[1 - which], 0);
  }
  ASSERT_EQ(num, dup3(pair[which], num, O_CLOEXEC)); /* closes num if open */
  test_close(pair[which]);
  pair[which] = num;
}

/* The classic epoll case: an fd closed while watched, the watcher removed
 * afterwards, the number reused by a new pipe: watching the new pipe works
 * (in both directions). */
TEST_IMPL(io_fd_number_reuse) {
  ul_loop *loop = test_loop_new();
  int fds[2], nfds[2];
  int num;
  struct watch r, w;

  for (int dir = 0; dir < 2; dir++) {
    test_pipe(fds);
    num = dir == 0 ? fds[0] : fds[1];
    /* Registered and polled once, so the backend really knows it. */
    if (dir == 0)
      ASSERT_OK(ul_loop_add_reader(loop, num, ignore_io_cb, NULL));
    else
      ASSERT_OK(ul_loop_add_writer(loop, num, ignore_io_cb, NULL));
    ASSERT_OK(ul_loop_run_once(loop, 0));
    test_close(fds[0]);
    test_close(fds[1]);
    if (dir == 0)
      ASSERT_EQ(1, ul_loop_remove_reader(loop, num));
    else
      ASSERT_EQ(1, ul_loop_remove_writer(loop, num));

    /* A new pipe whose read end (and write end) take the old number. */
    test_pipe(nfds);
    take_number(nfds, 0, num);
    memset(&r, 0, sizeof(r));
    r.read_and_stop = 1;
    ASSERT_OK(ul_loop_add_reader(loop, nfds[0], reader_cb, &r));
    test_write_byte(nfds[1]);
    ASSERT_OK(ul_loop_run(loop));
    ASSERT_EQ(1, r.calls);
    ASSERT_EQ(num, r.last_fd);

    /* And a writer on the same number (another new pipe's write end). */
    test_close(nfds[0]);
    test_close(nfds[1]);
    test_pipe(nfds);
    take_number(nfds, 1, num);
    memset(&w, 0, sizeof(w));
    w.remove_and_stop = 1;
    ASSERT_OK(ul_loop_add_writer(loop, nfds[1], writer_cb, &w));
    ASSERT_OK(ul_loop_run(loop));
    ASSERT_EQ(1, w.calls);
    ASSERT_EQ(num, w.last_fd);
    test_close(nfds[0]);
    test_close(nfds[1]);
  }
  CLOSE_LOOP(loop);
  return 0;
}

/* The same without removing first (the header asks callers to remove the
 * watcher before closing, but asyncio code does not always, and epoll keeps
 * its own view of the fd):
 *  - ENOENT: the watched fd is closed (epoll drops it), its number is reused
 *    by another pipe and watched again: the loop must re-add it;
 *  - EEXIST: the watched fd is closed while a dup keeps the file open (epoll
 *    keeps it), the watcher is removed (epoll_ctl DEL fails with EBADF), the
 *    same file comes back under the same number and is watched again. */
TEST_IMPL(io_fd_reuse_without_remove) {
  ul_loop *loop = test_loop_new();
  int fds[2], nfds[2];
  int num, keep;
  struct watch r;

  /* ENOENT */
  test_pipe(fds);
  num = fds[0];
  ASSERT_OK(ul_loop_add_reader(loop, num, ignore_io_cb, NULL));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  test_close(fds[0]);
  test_close(fds[1]);
  test_pipe(nfds);
  take_number(nfds, 0, num);
  memset(&r, 0, sizeof(r));
  r.read_and_stop = 1;
  ASSERT_OK(ul_loop_add_reader(loop, num, reader_cb, &r));
  ASSERT_PTR_EQ(&r, ul_loop_get_reader(loop, num));
  test_write_byte(nfds[1]);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, r.calls);
  ASSERT_EQ(num, r.last_fd);
  test_close(nfds[0]);
  test_close(nfds[1]);

  /* EEXIST */
  test_pipe(fds);
  num = fds[0];
  keep = fcntl(num, F_DUPFD_CLOEXEC, 0);
  ASSERT_GE(keep, 0);
  ASSERT_OK(ul_loop_add_reader(loop, num, ignore_io_cb, NULL));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  test_close(num);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, num));
  ASSERT_EQ(num, dup3(keep, num, O_CLOEXEC));
  memset(&r, 0, sizeof(r));
  r.read_and_stop = 1;
  ASSERT_OK(ul_loop_add_reader(loop, num, reader_cb, &r));
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_run(loop));
  ASSERT_EQ(1, r.calls);
  ASSERT_EQ(num, r.last_fd);
  test_close(num);
  test_close(keep);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* EOF and hang-up                                                          */

TEST_IMPL(io_eof_is_readable) {
  ul_loop *loop = test_loop_new();
  struct watch r;
  int sv[2];
  char c;

  test_socketpair(sv);
  memset(&r, 0, sizeof(r));
  ASSERT_OK(ul_loop_add_reader(loop, sv[0], reader_cb, &r));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(0, r.calls);
  ASSERT_OK(shutdown(sv[1], SHUT_WR));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, r.calls);
  ASSERT_NE(0, r.last_events & UL_READABLE);
  ASSERT_EQ(0, read(sv[0], &c, 1)); /* EOF */
  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[0]));
  test_close(sv[0]);
  test_close(sv[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* A hang-up (pipe writer gone, socket peer closed) is reported with
 * UL_IO_ERROR and the watched direction's bit; a pipe whose reader is gone
 * reports an error to its writer. */
TEST_IMPL(io_hangup_sets_error_bit) {
  ul_loop *loop = test_loop_new();
  struct watch r, w;
  int fds[2], sv[2];
  char c;

  /* Pipe, write end closed. */
  test_pipe(fds);
  memset(&r, 0, sizeof(r));
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], reader_cb, &r));
  test_close(fds[1]);
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, r.calls);
  ASSERT_NE(0, r.last_events & UL_READABLE);
  ASSERT_NE(0, r.last_events & UL_IO_ERROR);
  ASSERT_EQ(0, read(fds[0], &c, 1));
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fds[0]));
  test_close(fds[0]);

  /* Socket, peer closed. */
  test_socketpair(sv);
  memset(&r, 0, sizeof(r));
  ASSERT_OK(ul_loop_add_reader(loop, sv[0], reader_cb, &r));
  test_close(sv[1]);
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, r.calls);
  ASSERT_NE(0, r.last_events & UL_READABLE);
  ASSERT_NE(0, r.last_events & UL_IO_ERROR);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, sv[0]));
  test_close(sv[0]);

  /* Pipe, read end closed: the writer sees an error. */
  test_pipe(fds);
  memset(&w, 0, sizeof(w));
  test_close(fds[0]);
  ASSERT_OK(ul_loop_add_writer(loop, fds[1], writer_cb, &w));
  ASSERT_OK(ul_loop_run_once(loop, 1));
  ASSERT_EQ(1, w.calls);
  ASSERT_NE(0, w.last_events & UL_WRITABLE);
  ASSERT_NE(0, w.last_events & UL_IO_ERROR);
  ASSERT_EQ(1, ul_loop_remove_writer(loop, fds[1]));
  test_close(fds[1]);

  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Ordering against the ready queue (header: I/O callbacks are step 2, the
 * ready queue step 4; what I/O callbacks schedule is in the queue when step
 * 4 begins). */

static void rec_cb(ul_loop *loop, void *arg, int status) {
  (void)loop;
  ASSERT_OK(status);
  record((int)(intptr_t)arg);
}

static void io_schedules_cb(ul_loop *loop, int fd, int events, void *arg) {
  (void)arg;
  ASSERT_NE(0, events & UL_READABLE);
  record(1);
  ASSERT_EQ(1, ul_loop_remove_reader(loop, fd));
  ASSERT_OK(ul_loop_call_soon(loop, rec_cb, (void *)(intptr_t)3));
}

TEST_IMPL(io_callbacks_before_ready_queue) {
  ul_loop *loop = test_loop_new();
  int fds[2];

  norder = 0;
  test_pipe(fds);
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_call_soon(loop, rec_cb, (void *)(intptr_t)2));
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], io_schedules_cb, NULL));
  ASSERT_OK(ul_loop_run_once(loop, 0));
  ASSERT_EQ(3, norder);
  ASSERT_EQ(1, order[0]);
  ASSERT_EQ(2, order[1]);
  ASSERT_EQ(3, order[2]);
  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* ------------------------------------------------------------------------ */

/* Closing the loop drops watchers without calling them and leaves the fds
 * open. */
TEST_IMPL(io_close_loop_with_watchers) {
  ul_loop *loop = test_loop_new();
  int fds[2];

  never_io_called = 0;
  test_pipe(fds);
  test_write_byte(fds[1]);
  ASSERT_OK(ul_loop_add_reader(loop, fds[0], never_io_cb, NULL));
  ASSERT_OK(ul_loop_add_writer(loop, fds[1], never_io_cb, NULL));
  CLOSE_LOOP(loop);
  ASSERT_EQ(0, never_io_called);
  ASSERT(test_fd_is_open(fds[0]));
  ASSERT(test_fd_is_open(fds[1]));
  ASSERT_EQ(1, drain(fds[0]));

  /* The fds can go to a new loop. */
  loop = test_loop_new();
  {
    struct watch r;
    memset(&r, 0, sizeof(r));
    r.read_and_stop = 1;
    ASSERT_OK(ul_loop_add_reader(loop, fds[0], reader_cb, &r));
    test_write_byte(fds[1]);
    ASSERT_OK(ul_loop_run(loop));
    ASSERT_EQ(1, r.calls);
  }
  test_close(fds[0]);
  test_close(fds[1]);
  CLOSE_LOOP(loop);
  return 0;
}

/* Many fds ready at once: every callback runs exactly once per iteration. */
#define N_PIPES 200

static int many_pipes[N_PIPES][2];
static int many_calls[N_PIPES];

static void many_reader_cb(ul_loop *loop, int fd, int events, void *arg) {
  int i = (int)(intptr_t)arg;
  (void)loop;
  ASSERT_NE(0, events & UL_READABLE);
  ASSERT_EQ(many_pipes[i][0], fd);
  many_calls[i]++;
  ASSERT_EQ(1, drain(fd));
}

/* Runs non-blocking iterations until every pipe i has many_calls[i] ==
 * want(i); a single poll may return only part of them (batching), but each
 * iteration must make progress. */
static void run_until_counts(ul_loop *loop, int odd_want, int even_want) {
  for (int k = 0; k <= N_PIPES; k++) {
    int done = 1;
    for (int i = 0; i < N_PIPES; i++)
      if (many_calls[i] != (i % 2 ? odd_want : even_want))
        done = 0;
    if (done)
      return;
    ASSERT_OK(ul_loop_run_once(loop, 0));
  }
  for (int i = 0; i < N_PIPES; i++)
    ASSERT_EQ(i % 2 ? odd_want : even_want, many_calls[i]);
}

TEST_IMPL(io_many_fds) {
  ul_loop *loop = test_loop_new();
  int i, round;

  for (i = 0; i < N_PIPES; i++) {
    test_pipe(many_pipes[i]);
    ASSERT_OK(ul_loop_add_reader(loop, many_pipes[i][0], many_reader_cb,
                                 (void *)(intptr_t)i));
  }
  for (round = 1; round <= 3; round++) {
    for (i = 0; i < N_PIPES; i++)
      test_write_byte(many_pipes[i][1]);
    ASSERT_OK(ul_loop_run_once(loop, 1));
    run_until_counts(loop, round, round);
  }
  /* Remove every other one, then only the rest fire. */
  for (i = 0; i < N_PIPES; i += 2)
    ASSERT_EQ(1, ul_loop_remove_reader(loop, many_pipes[i][0]));
  for (i = 0; i < N_PIPES; i++)
    test_write_byte(many_pipes[i][1]);
  run_until_counts(loop, 4, 3);
  ASSERT_OK(ul_loop_run_once(loop, 0));
  run_until_counts(loop, 4, 3);
  for (i = 0; i < N_PIPES; i++) {
    if (i % 2)
      ASSERT_EQ(1, ul_loop_remove_reader(loop, many_pipes[i][0]));
    test_close(many_pipes[i][0]);
    test_close(many_pipes[i][1]);
  }
  CLOSE_LOOP(loop);
  return 0;
}
