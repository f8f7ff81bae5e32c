/*
 * internal.h -- what the files of libunixloop share.  Not installed.
 */
#ifndef UL_INTERNAL_H
#define UL_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>

#include "unixloop.h"

/* The longest poll asyncio ever does (MAXIMUM_SELECT_TIMEOUT): one day. */
#define UL__MAX_POLL_MS (24 * 3600 * 1000)

/* ---- ready queue (ready.c) --------------------------------------------- */

/* One queued callback.  `timer` is set when the callback belongs to a timer
 * that became due: the timer may still be cancelled until it runs. */
typedef struct ul__entry {
  ul_cb cb;
  void *arg;
  ul_timer *timer;
} ul__entry;

/* A ring buffer of entries; capacity is a power of two. */
typedef struct ul__ring {
  ul__entry *buf;
  size_t cap;
  size_t head;
  size_t len;
} ul__ring;

int ul__ring_push(ul__ring *ring, ul_cb cb, void *arg, ul_timer *timer);
/* Removes the first entry into *out; the ring must not be empty. */
static inline void ul__ring_pop(ul__ring *ring, ul__entry *out) {
  *out = ring->buf[ring->head];
  ring->head = (ring->head + 1) & (ring->cap - 1);
  ring->len--;
}
void ul__ring_free(ul__ring *ring);

/* ---- timers (timer.c) ---------------------------------------------------- */

enum ul__timer_state {
  UL__TIMER_PENDING,    /* in the heap */
  UL__TIMER_READY,      /* moved to the ready queue */
  UL__TIMER_RUNNING,    /* its callback is running */
  UL__TIMER_CANCELLED   /* cancelled; freed when the loop next meets it */
};

struct ul_timer {
  ul_loop *loop;
  ul_cb cb;
  void *arg;
  double when;
  int state;
  ul_timer *next_free;
};

/* Heap entries carry their key so that sifting never touches the timers. */
typedef struct ul__heap_entry {
  double when;
  uint64_t seq;
  ul_timer *timer;
} ul__heap_entry;

typedef struct ul__heap {
  ul__heap_entry *items;
  size_t len;
  size_t cap;
  size_t cancelled;   /* cancelled timers still in `items` */
  uint64_t next_seq;
} ul__heap;

void ul__timer_free(ul_loop *loop, ul_timer *timer);
void ul__timers_prune(ul_loop *loop);
void ul__timers_move_due(ul_loop *loop, double end_time);
void ul__timers_cancel_all(ul_loop *loop);
void ul__timers_destroy(ul_loop *loop);

/* ---- fd watchers (io.c) -------------------------------------------------- */

typedef struct ul__io {
  ul_io_cb read_cb;
  void *read_arg;
  ul_io_cb write_cb;
  void *write_arg;
  unsigned events;    /* UL_READABLE | UL_WRITABLE wanted */
  unsigned pevents;   /* what the backend has registered */
} ul__io;

void ul__collect_threadsafe(ul_loop *loop);

void ul__io_dispatch(ul_loop *loop, int fd, unsigned revents);
void ul__io_destroy(ul_loop *loop);

/* ---- signals (signal.c) --------------------------------------------------- */

#define UL__NSIG 65   /* Linux: signals 1..64 */

typedef struct ul__signode {
  ul_loop *loop;
  _Atomic(struct ul__signode *) next;
} ul__signode;

/* A loop's signal state, allocated when it first adds a handler. */
typedef struct ul__signals {
  ul_signal_cb cb[UL__NSIG];
  void *arg[UL__NSIG];
  atomic_uint pending[UL__NSIG];  /* deliveries not yet dispatched */
  atomic_int any;                 /* some pending[] may be non-zero */
  ul__signode nodes[UL__NSIG];    /* this loop's place in each list */
} ul__signals;

void ul__signals_dispatch(ul_loop *loop);
void ul__signals_close(ul_loop *loop);

/* ---- transports (stream.c, dgram.c) ----------------------------------------- */

/* The memory the kernel copies received bytes into (the loop's read
 * buffers): page-aligned, for the kernel's copy to a destination that is
 * not on a cache-line boundary costs ~10% more (recv of 100 KiB over
 * loopback TCP: 5.8 us, against 5.2 at a 64-byte boundary).  `size` is a
 * multiple of 4096.  Freed with free(). */
static inline void *ul__recv_area_alloc(size_t size) {
  return aligned_alloc(4096, size);
}

/* asyncio's _set_write_buffer_limits: -1 for high means `dflt` (or 4 x low
 * when low is given), -1 for low means high / 4.  0, or -EINVAL when
 * low > high. */
static inline int ul__water_marks(ssize_t high, ssize_t low, size_t dflt,
                                  size_t *high_out, size_t *low_out) {
  if (high < 0)
    high = low < 0 ? (ssize_t)dflt : 4 * low;
  if (low < 0)
    low = high / 4;
  if (low > high)
    return -EINVAL;
  *high_out = (size_t)high;
  *low_out = (size_t)low;
  return 0;
}

/* ---- batched socket I/O (batch.c) ---------------------------------------- */

/* One non-blocking recv() or send(MSG_NOSIGNAL) of a batch; `result` is
 * set to the byte count or -errno (-EAGAIN: nothing to read / no room). */
typedef struct ul__sockop {
  int fd;
  int recv;
  void *data;
  size_t len;
  ssize_t result;
} ul__sockop;

typedef struct ul__uring ul__uring;

/* Runs the operations, with one system call where io_uring is available. */
void ul__batch_run(ul_loop *loop, ul__sockop *ops, size_t n);
void ul__uring_free(ul__uring *r);

/* ---- streams (stream.c) --------------------------------------------------- */

void ul__streams_close_all(ul_loop *loop);
/* Sends the writes the streams deferred during this iteration. */
void ul__streams_flush(ul_loop *loop);
/* Reads the sockets the poll reported readable, together (ul__batch_run),
 * and hands each its data in the order they were reported. */
void ul__streams_read(ul_loop *loop);

/* ---- datagram transports (dgram.c) ------------------------------------- */

void ul__dgrams_close_all(ul_loop *loop);

/* ---- pipes (pipe.c, stream.c) ------------------------------------------ */

/* Kinds of stream for ul__stream_open (0: ul_stream_open's, from the fd). */
enum ul__stream_kind {
  UL__STREAM_PIPE_READ = 1,       /* read pipe: never writes, EOF closes */
  UL__STREAM_PIPE_WRITE = 2,      /* write pipe: readability = reader gone */
  UL__STREAM_NO_HANGUP_WATCH = 4  /* with PIPE_WRITE: do not watch it */
};

int ul__stream_open(ul_loop *loop, int fd, const ul_stream_protocol *proto,
                    void *ctx, unsigned kind, ul_stream **stream_out);

/* ---- sendfile (sendfile.c) on a stream ---------------------------------- */

struct ul__sendfile;

/* stream.c -> sendfile.c: the write buffer has drained (start sending);
 * the stream is being lost (stop, report `err`). */
void ul__sendfile_run(struct ul__sendfile *req);
void ul__sendfile_abort(struct ul__sendfile *req, int err);

/* sendfile.c -> stream.c: attach a sendfile (returns 1: the buffer is
 * empty, start now; 0: ul__sendfile_run follows once it drains; or an
 * error), detach it when done (`err` != 0 ends the connection), and the
 * one attached (or NULL). */
int ul__stream_sendfile_begin(ul_stream *stream, struct ul__sendfile *req);
void ul__stream_sendfile_end(ul_stream *stream, int err);
struct ul__sendfile *ul__stream_sendfile_current(const ul_stream *stream);

/* ---- connects and servers (net.c) ---------------------------------------- */

struct ul__connect;

/* ul_loop_close(): connects in progress get -ECANCELED (their fd closed),
 * servers still open are closed as by ul_server_close and freed. */
void ul__net_close_all(ul_loop *loop);

/* ---- processes (spawn.c, process.c) -------------------------------------- */

/* pidfd_open(pid, 0): a close-on-exec pidfd, or -1 (errno set). */
int ul__pidfd_open(pid_t pid);

/* ul_loop_close(): processes still running get their exit callback with
 * -ECANCELED and are freed; their children are reaped later. */
void ul__processes_close_all(ul_loop *loop);

/* What the loop's SIGCHLD handler does (safe, fast, multi watchers). */
void ul__process_sigchld(ul_loop *loop);

/* Tests only; NULL otherwise.  Called by ul_process_spawn once the child
 * exists and before it is watched, so that a test can make "the child
 * exited and another loop reaped it meanwhile" happen every time (the
 * fast watcher's zombies) instead of by chance. */
extern void (*ul__spawn_test_hook)(ul_loop *loop, pid_t pid);

/* ---- backends (backend_epoll.c, backend_poll.c) ------------------------- */

typedef struct ul__backend {
  const char *name;
  int (*init)(ul_loop *loop);
  void (*destroy)(ul_loop *loop);
  /* Is this fd something the backend can watch?  0 or -errno. */
  int (*check_fd)(ul_loop *loop, int fd);
  /* Registers `events` (0 = unregister) for fd, which had `old` before. */
  int (*update)(ul_loop *loop, int fd, unsigned old, unsigned events);
  /* Fixes what the next wait reads (may be NULL).  It runs before the
   * before_poll hook, and dispatch after the after_poll hook: between the
   * two, wait touches only what prepare fixed, so that a binding that lets
   * other threads in while the loop waits (Python releases the GIL, and
   * programs add watchers from other threads) cannot race with it. */
  int (*prepare)(ul_loop *loop);
  /* Waits up to timeout_ms (-1 forever) and records what is ready. */
  int (*wait)(ul_loop *loop, int timeout_ms);
  /* Calls ul__io_dispatch() for what the last wait recorded. */
  void (*dispatch)(ul_loop *loop);
} ul__backend;

extern const ul__backend ul__backend_epoll;
extern const ul__backend ul__backend_poll;

/* ---- the loop (loop.c) --------------------------------------------------- */

struct ul_loop {
  const ul__backend *backend;
  void *backend_data;

  ul__ring ready;
  ul__heap timers;
  ul_timer *timer_free_list;
  size_t timer_free_count;

  ul__io *io;          /* indexed by fd */
  int io_cap;
  int io_active;       /* fds with a watcher, the loop's eventfd included */

  /* call_soon_threadsafe: entries queued by other threads. */
  pthread_mutex_t ts_lock;
  ul__ring ts_queue;
  ul__ring ts_spare;   /* an empty ring swapped with ts_queue on collection,
                          so that collecting allocates nothing */
  atomic_int ts_wake_pending;
  atomic_int ts_nonempty;  /* ts_queue has entries: call_soon collects them
                              first, to keep one FIFO order as asyncio's
                              single _ready deque does */
  int wake_fd;         /* eventfd */

  int running;
  int stopping;
  int closing;
  int break_err;
  double clock_resolution;

  ul__signals *signals;  /* NULL until the first signal handler */
  ul_stream *streams;    /* open streams (stream.c) */
  char *read_buf;        /* shared by the streams' reads (stream.c) */
  int in_iteration;      /* running an iteration's callbacks: small stream
                            writes are deferred to its end (stream.c) */
  ul_stream **flush;     /* streams with a deferred write; NULL = removed */
  size_t flush_len;
  size_t flush_cap;
  ul__sockop *flush_ops; /* flush_cap of them, for ul__streams_flush */
  ul_stream **reads;     /* streams the poll reported readable; NULL =
                            removed (stream.c) */
  size_t reads_len;
  size_t reads_cap;
  char *read_slots;      /* their receive areas */
  ul__uring *uring;      /* batch.c: made on demand */
  int uring_off;         /* io_uring refused or disabled: plain sends */
  ul_server *servers;    /* open servers (net.c) */
  struct ul__connect *connects;  /* connects not yet reported (net.c) */
  ul_dgram *dgrams;      /* open datagram transports (dgram.c) */
  char *dgram_buf;       /* their shared receive area (dgram.c) */
  ul_process *processes; /* watched children (process.c) */
  int child_watcher;     /* ul_child_watcher; 0 until first needed */
  int sigchld_on;        /* the loop has its SIGCHLD handler (process.c) */

  ul_error_cb error_cb;
  void *error_arg;
  ul_before_poll_cb before_poll;
  ul_after_poll_cb after_poll;
  void *poll_hook_arg;
  void *data;
};

#endif /* UL_INTERNAL_H */
