/*
 * stream.c -- the stream transport: asyncio's _SelectorSocketTransport.
 *
 * Reads go into one buffer per loop (the data is only valid during
 * data_received), or straight into the protocol's buffer for a buffered
 * protocol, and for one that has both kinds of callback when its last read
 * was big (it spares the copy a binding makes of big reads).  A write to an
 * idle socket made by a callback of the loop is copied and sent at the end
 * of the iteration, together with the other streams' (batch.c: one system
 * call for all); other writes are tried at once.  What the kernel did not
 * take stays in the stream's write buffer, which is flushed when the fd is
 * writable.  pause_writing / resume_writing follow the water marks.
 *
 * Closing is asynchronous: connection_lost always runs from the loop (never
 * from inside a ul_stream_* call), after connection_made, and the stream is
 * freed after it returns.
 */
#include <fcntl.h>
#include <limits.h>
#include <sys/uio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

#define READ_BUFFER_SIZE (256 * 1024)   /* asyncio's max_size per read */
/* A batch of reads gives each socket a 16 KiB slot: all of them fit in
 * the cache as the lone read's buffer does.  A socket that fills its slot
 * has more to give: it is read on into that buffer (read_rest). */
#define READ_SLOT_SIZE (16 * 1024)
#define READ_SLOTS 16                   /* sockets per batch of reads */
/* A readable event reads again while a read fills the buffer, up to this
 * many reads in all (libuv's uv__read does the same): a socket that gets
 * more than one buffer per iteration is otherwise never drained, and over
 * TCP its peer then stalls on a closed window. */
#define READS_PER_EVENT 32
/* Deferring a write copies it (unless it is queued by reference): worth a
 * system call only for small ones. */
#define DEFER_COPY_MAX (16 * 1024)
#define WRITE_IOV 16                    /* buffers per writev from the queue */

/* Bytes queued by reference (ul_stream_write_ref): sent from the caller's
 * memory, then handed back with release(arg). */
typedef struct wref {
  struct wref *next;
  const char *data;    /* unsent bytes are data[0, len) */
  size_t len;
  ul_release_cb release;
  void *arg;
} wref;

struct ul_stream {
  ul_stream *next;     /* the loop's list of open streams */
  ul_stream *prev;
  ul_loop *loop;
  int fd;
  const ul_stream_protocol *proto;
  void *ctx;

  /* The write queue: the references first (in order), then wbuf.  A
   * write is queued by reference only while wbuf is empty, so that nothing
   * overtakes bytes queued before it. */
  wref *refs;
  wref **refs_tail;
  size_t refs_len;     /* unsent bytes in refs */
  char *wbuf;          /* unsent bytes are wbuf[woff, wlen) */
  size_t woff;
  size_t wlen;
  size_t wcap;
  size_t high;
  size_t low;

  unsigned is_socket : 1;
  unsigned made : 1;            /* connection_made has run */
  unsigned paused : 1;          /* pause_reading() */
  unsigned closing : 1;         /* close() or abort() or a fatal error */
  unsigned eof_wanted : 1;      /* write_eof() called */
  unsigned eof_sent : 1;
  unsigned protocol_paused : 1; /* pause_writing() was called */
  unsigned lost_scheduled : 1;
  unsigned reader_on : 1;
  unsigned writer_on : 1;
  unsigned fd_released : 1;     /* ul_stream_release_fd(): not ours to close */
  unsigned write_only : 1;      /* e.g. a pipe's write end */
  unsigned read_only : 1;
  unsigned pipe : 1;            /* a pipe transport (pipe.c, UL__STREAM_PIPE_*) */
  unsigned no_hangup_watch : 1; /* write pipe on a character device: no
                                   reader watch for the peer going away */
  unsigned flush_queued : 1;    /* in loop->flush: sent at the iteration's
                                   end (ul__streams_flush) */
  unsigned read_queued : 1;     /* in loop->reads: read with the other
                                   sockets epoll reported (ul__streams_read) */
  unsigned held_eof : 1;        /* read EOF while paused: see `held` */
  unsigned held_scheduled : 1;  /* held_cb is queued */
  unsigned reads_big : 1;       /* the last read was a slot's worth or more,
                                   or filled the protocol's buffer */
  /* Read in a batch, but pause_reading() was called before its delivery:
   * delivered once reading resumes, as asyncio would have read it then. */
  char *held;
  size_t held_len;
  int lost_err;
  struct ul__sendfile *sendfile;  /* a ul_stream_sendfile() running */
};

/* ---- helpers ------------------------------------------------------------- */

static size_t wbuf_pending(const ul_stream *s) {
  return s->wlen - s->woff;
}

static size_t pending(const ul_stream *s) {
  return s->refs_len + wbuf_pending(s);
}

/* Consumes n sent bytes from the front of the queue. */
static void queue_consume(ul_stream *s, size_t n) {
  while (n > 0 && s->refs != NULL) {
    wref *r = s->refs;
    size_t take = n < r->len ? n : r->len;
    r->data += take;
    r->len -= take;
    s->refs_len -= take;
    n -= take;
    if (r->len > 0)
      break;
    s->refs = r->next;
    if (s->refs == NULL)
      s->refs_tail = &s->refs;
    r->release(r->arg);
    free(r);
  }
  s->woff += n;
}

/* Drops everything queued (abort, fatal error, free). */
static void queue_drop(ul_stream *s) {
  queue_consume(s, s->refs_len);
  s->woff = s->wlen = 0;
}

static void reader_start(ul_stream *s);

/* The loop's lists of streams waiting for a batch (deferred writes,
 * reads): a removed stream leaves a NULL, skipped when the batch runs. */
static void list_remove(ul_stream **list, size_t len, const ul_stream *s) {
  for (size_t i = 0; i < len; i++) {
    if (list[i] == s) {
      list[i] = NULL;
      return;
    }
  }
}

/* Takes s off the loop's list of deferred writes. */
static void flush_unqueue(ul_stream *s) {
  if (!s->flush_queued)
    return;
  s->flush_queued = 0;
  list_remove(s->loop->flush, s->loop->flush_len, s);
}

static void read_unqueue(ul_stream *s);

static void stream_free(ul_stream *s) {
  flush_unqueue(s);
  read_unqueue(s);
  free(s->held);
  if (s->prev != NULL)
    s->prev->next = s->next;
  else
    s->loop->streams = s->next;
  if (s->next != NULL)
    s->next->prev = s->prev;
  if (!s->fd_released)
    close(s->fd);
  queue_drop(s);
  free(s->wbuf);
  free(s);
}

static void lost_cb(ul_loop *loop, void *arg, int status) {
  ul_stream *s = arg;
  (void)loop;
  /* status -ECANCELED: the loop closed before it ran; report that */
  if (s->proto->connection_lost != NULL)
    s->proto->connection_lost(s, status < 0 ? status : s->lost_err, s->ctx);
  stream_free(s);
}

/* ul_loop_close(): streams still open lose their connection with
 * -ECANCELED, so that nothing they own leaks (also those whose
 * connection_made had not run yet). */
void ul__streams_close_all(ul_loop *loop) {
  while (loop->streams != NULL) {
    ul_stream *s = loop->streams;
    if (s->sendfile != NULL) {
      struct ul__sendfile *req = s->sendfile;
      s->sendfile = NULL;
      ul__sendfile_abort(req, -ECANCELED);
    }
    s->closing = 1;
    s->lost_scheduled = 1; /* nothing may schedule it again */
    if (s->proto->connection_lost != NULL)
      s->proto->connection_lost(s, -ECANCELED, s->ctx);
    stream_free(s);
  }
  free(loop->read_buf);
  loop->read_buf = NULL;
  free(loop->read_slots);
  loop->read_slots = NULL;
}

/* Schedules connection_lost once; stops all I/O now. */
static void schedule_lost(ul_stream *s, int err) {
  if (s->sendfile != NULL) {
    /* Stopped now; its callback runs before connection_lost. */
    struct ul__sendfile *req = s->sendfile;
    s->sendfile = NULL;
    ul__sendfile_abort(req, err != 0 ? err : -ECANCELED);
  }
  if (s->reader_on) {
    ul_loop_remove_reader(s->loop, s->fd);
    s->reader_on = 0;
  }
  if (s->writer_on) {
    ul_loop_remove_writer(s->loop, s->fd);
    s->writer_on = 0;
  }
  s->closing = 1;
  if (s->lost_scheduled)
    return;
  s->lost_scheduled = 1;
  s->lost_err = err;
  if (ul_loop_call_soon(s->loop, lost_cb, s) != 0) {
    /* Out of memory (or the loop is closing): report it now rather than
     * leak the fd. */
    lost_cb(s->loop, s, 0);
  }
}

/* An error that ends the connection (asyncio's _fatal_error). */
static void fatal(ul_stream *s, int err) {
  queue_drop(s);
  schedule_lost(s, err);
}

static void maybe_pause_protocol(ul_stream *s) {
  if (pending(s) <= s->high || s->protocol_paused)
    return;
  s->protocol_paused = 1;
  if (s->proto->pause_writing != NULL)
    s->proto->pause_writing(s, s->ctx);
}

static void maybe_resume_protocol(ul_stream *s) {
  if (!s->protocol_paused || pending(s) > s->low)
    return;
  s->protocol_paused = 0;
  if (s->proto->resume_writing != NULL)
    s->proto->resume_writing(s, s->ctx);
}

/* ---- reading ---------------------------------------------------------------- */

static char *loop_read_buffer(ul_loop *loop) {
  if (loop->read_buf == NULL)
    loop->read_buf = ul__recv_area_alloc(READ_BUFFER_SIZE);
  return loop->read_buf;
}

static void on_eof(ul_stream *s) {
  if (s->reader_on) {
    ul_loop_remove_reader(s->loop, s->fd);
    s->reader_on = 0;
  }
  int keep_open = s->proto->eof_received != NULL &&
                  s->proto->eof_received(s, s->ctx);
  /* A read pipe closes at EOF whatever eof_received says (asyncio's
   * _UnixReadPipeTransport). */
  if ((!keep_open || s->pipe) && !s->closing)
    ul_stream_close(s);
}

/* Hands what one read returned (bytes, 0 at EOF, or -errno) to the
 * protocol.  buf is the loop's or, for a buffered protocol, its own. */
static void read_done(ul_stream *s, char *buf, ssize_t n, int buffered) {
  if (n <= 0 && buffered && s->proto->data_received != NULL) {
    /* A protocol of both kinds may let its buffer go (see unixloop.h). */
    s->proto->buffer_updated(s, 0, s->ctx);
    if (s->closing)
      return;
  }
  if (n < 0) {
    if (n != -EAGAIN && n != -EWOULDBLOCK)
      fatal(s, (int)n);
    return;
  }
  if (n == 0) {
    on_eof(s);
    return;
  }
  if (buffered)
    s->proto->buffer_updated(s, (size_t)n, s->ctx);
  else
    s->proto->data_received(s, buf, (size_t)n, s->ctx);
}

/* Whether the next read goes into the protocol's memory (get_buffer) rather
 * than the loop's: always for a buffered protocol; for one that also has
 * data_received, when its last read was big -- small reads then go on
 * being batched and copied by the protocol, big ones cost no copy. */
static int reads_into_protocol(const ul_stream *s) {
  if (s->proto->get_buffer == NULL || s->proto->buffer_updated == NULL)
    return 0;
  return s->proto->data_received == NULL || s->reads_big;
}

/* Whether a stream whose read filled the buffer may read again now: its
 * callbacks did not pause, close or hold it. */
static int may_read_on(const ul_stream *s) {
  return !s->closing && !s->paused && s->reader_on && s->held_len == 0 &&
         !s->held_eof;
}

/* Up to `reads` reads, on while each fills the buffer. */
static void read_now(ul_stream *s, int reads) {
  do {
    char *buf;
    size_t cap;
    int buffered = reads_into_protocol(s);
    if (buffered) {
      buf = s->proto->get_buffer(s, READ_BUFFER_SIZE, &cap, s->ctx);
      if (buf == NULL || cap == 0) {
        fatal(s, -ENOBUFS);
        return;
      }
      if (s->closing)
        return; /* get_buffer closed the transport */
    } else {
      buf = loop_read_buffer(s->loop);
      cap = READ_BUFFER_SIZE;
      if (buf == NULL) {
        fatal(s, -ENOMEM);
        return;
      }
    }
    /* recv() on a socket: read() would go through the VFS layer (file
     * position lock, fsnotify) for nothing. */
    ssize_t n;
    do
      n = s->is_socket ? recv(s->fd, buf, cap, 0) : read(s->fd, buf, cap);
    while (n == -1 && errno == EINTR);
    if (n >= 0) /* a protocol's buffer may be smaller than a slot */
      s->reads_big = n >= READ_SLOT_SIZE || (size_t)n == cap;
    read_done(s, buf, n == -1 ? -errno : n, buffered);
    if (n != (ssize_t)cap)
      return;
  } while (--reads > 0 && may_read_on(s));
}

/* ---- reading many sockets in one system call ----------------------------- */

static void read_unqueue(ul_stream *s) {
  if (!s->read_queued)
    return;
  s->read_queued = 0;
  list_remove(s->loop->reads, s->loop->reads_len, s);
}

/* A socket whose next read goes to data_received joins the iteration's
 * batch of reads (get_buffer must run just before its read).  One whose
 * last read filled a slot is read on its own, at once: its reads are big,
 * and a slot would only split them in two. */
static int read_enqueue(ul_stream *s) {
  ul_loop *loop = s->loop;
  if (!s->is_socket || s->pipe || s->reads_big || reads_into_protocol(s))
    return -EINVAL;
  if (loop->reads_len == loop->reads_cap) {
    size_t cap = loop->reads_cap ? loop->reads_cap * 2 : 64;
    ul_stream **list = realloc(loop->reads, cap * sizeof *list);
    if (list == NULL)
      return -ENOMEM;
    loop->reads = list;
    loop->reads_cap = cap;
  }
  loop->reads[loop->reads_len++] = s;
  s->read_queued = 1;
  return 0;
}

static void held_cb(ul_loop *loop, void *arg, int status);

/* An earlier callback of the batch paused (or closed) this stream after its
 * bytes were read: asyncio would not have read them yet.  Keep them for
 * resume_reading; a closing stream drops them, as its socket would. */
static void read_hold(ul_stream *s, const char *buf, ssize_t n) {
  if (s->closing || n == -EAGAIN || n == -EWOULDBLOCK)
    return;
  if (n < 0) {
    fatal(s, (int)n);
    return;
  }
  if (n == 0) {
    s->held_eof = 1;
    return;
  }
  char *held = realloc(s->held, s->held_len + (size_t)n);
  if (held == NULL) {
    fatal(s, -ENOMEM);
    return;
  }
  memcpy(held + s->held_len, buf, (size_t)n);
  s->held = held;
  s->held_len += (size_t)n;
}

/* Delivers what was held, then reads again; from resume_reading. */
static void held_cb(ul_loop *loop, void *arg, int status) {
  ul_stream *s = arg;
  (void)loop;
  s->held_scheduled = 0;
  if (status != 0 || s->closing || s->paused)
    return;
  char *held = s->held;
  size_t len = s->held_len;
  int eof = s->held_eof;
  s->held = NULL;
  s->held_len = 0;
  s->held_eof = 0;
  if (len > 0)
    s->proto->data_received(s, held, len, s->ctx);
  free(held);
  if (eof && !s->closing) {
    on_eof(s);
    return;
  }
  reader_start(s);
}

static char *loop_read_slots(ul_loop *loop) {
  if (loop->read_slots == NULL)
    loop->read_slots =
        ul__recv_area_alloc((size_t)READ_SLOTS * READ_SLOT_SIZE);
  return loop->read_slots;
}

/* A slot came back full: the socket likely has more, which one read into
 * the loop's big buffer, after the slot's bytes, delivers with them (an
 * EOF or error it meets is left for the next poll to report).  Returns 1
 * if that filled the big buffer too. */
static int read_rest(ul_stream *s, const char *slot) {
  char *buf = loop_read_buffer(s->loop);
  if (buf == NULL) {
    read_done(s, (char *)slot, READ_SLOT_SIZE, 0);
    return 0;
  }
  memcpy(buf, slot, READ_SLOT_SIZE);
  ssize_t n;
  do
    n = recv(s->fd, buf + READ_SLOT_SIZE, READ_BUFFER_SIZE - READ_SLOT_SIZE,
             MSG_DONTWAIT);
  while (n == -1 && errno == EINTR);
  read_done(s, buf, READ_SLOT_SIZE + (n > 0 ? n : 0), 0);
  return n == READ_BUFFER_SIZE - READ_SLOT_SIZE;
}

void ul__streams_read(ul_loop *loop) {
  ul__sockop ops[READ_SLOTS];
  ul_stream *batch[READ_SLOTS];
  int full[READ_SLOTS];
  char *slots = loop->reads_len > 1 ? loop_read_slots(loop) : NULL;
  size_t i = 0;
  while (i < loop->reads_len) {
    size_t n = 0;
    for (; i < loop->reads_len && n < READ_SLOTS; i++) {
      ul_stream *s = loop->reads[i];
      if (s == NULL)
        continue;
      loop->reads[i] = NULL;
      s->read_queued = 0;
      if (s->closing || s->paused || !s->reader_on)
        continue; /* changed by a callback since epoll reported it */
      if (slots == NULL) {
        read_now(s, READS_PER_EVENT); /* one socket (or no memory for slots) */
        continue;
      }
      batch[n] = s;
      ops[n] = (ul__sockop){.fd = s->fd, .recv = 1,
                            .data = slots + n * READ_SLOT_SIZE,
                            .len = READ_SLOT_SIZE};
      n++;
    }
    ul__batch_run(loop, ops, n);
    for (size_t k = 0; k < n; k++) {
      ul_stream *s = batch[k];
      full[k] = 0;
      if (s->closing || s->paused || s->held_len > 0 || s->held_eof)
        read_hold(s, ops[k].data, ops[k].result);
      else if (ops[k].result == READ_SLOT_SIZE) {
        s->reads_big = 1;
        full[k] = read_rest(s, ops[k].data);
      } else
        read_done(s, ops[k].data, ops[k].result, 0);
    }
    /* Then those whose big buffer filled read on, each on its own. */
    for (size_t k = 0; k < n; k++) {
      if (full[k] && may_read_on(batch[k]))
        read_now(batch[k], READS_PER_EVENT - 1);
    }
  }
  loop->reads_len = 0;
}

static void read_ready(ul_loop *loop, int fd, int events, void *arg) {
  ul_stream *s = arg;
  (void)loop;
  (void)events;
  (void)fd;
  if (s->write_only) {
    /* A write end becomes "readable" only when its reader went away.  A
     * write pipe, as asyncio's, reports EPIPE only if bytes were lost. */
    fatal(s, s->pipe && pending(s) == 0 ? 0 : -EPIPE);
    return;
  }
  if (s->read_queued || read_enqueue(s) == 0)
    return;
  read_now(s, READS_PER_EVENT);
}

static void reader_start(ul_stream *s) {
  if (s->reader_on || s->paused || s->closing || !s->made ||
      s->no_hangup_watch)
    return;
  if (ul_loop_add_reader(s->loop, s->fd, read_ready, s) == 0)
    s->reader_on = 1;
  else
    fatal(s, -EBADF);
}

static void made_cb(ul_loop *loop, void *arg, int status) {
  ul_stream *s = arg;
  (void)loop;
  if (status != 0)
    return; /* the loop is closing: ul__streams_close_all frees it */
  s->made = 1;
  if (s->proto->connection_made != NULL)
    s->proto->connection_made(s, s->ctx);
  reader_start(s);
}

/* ---- writing ---------------------------------------------------------------- */

static int wbuf_append(ul_stream *s, const char *data, size_t len) {
  if (s->woff > 0 && s->woff == s->wlen)
    s->woff = s->wlen = 0;
  if (s->wlen + len > s->wcap) {
    /* Slide the unsent bytes down first when that is enough room. */
    if (s->woff > 0 && wbuf_pending(s) + len <= s->wcap) {
      memmove(s->wbuf, s->wbuf + s->woff, wbuf_pending(s));
      s->wlen -= s->woff;
      s->woff = 0;
    } else {
      size_t cap = s->wcap ? s->wcap : 16384;
      while (cap < wbuf_pending(s) + len)
        cap *= 2;
      char *nb = malloc(cap);
      if (nb == NULL)
        return -ENOMEM;
      if (wbuf_pending(s) > 0)
        memcpy(nb, s->wbuf + s->woff, wbuf_pending(s));
      free(s->wbuf);
      s->wbuf = nb;
      s->wcap = cap;
      s->wlen -= s->woff;
      s->woff = 0;
    }
  }
  memcpy(s->wbuf + s->wlen, data, len);
  s->wlen += len;
  return 0;
}

static void send_eof_if_due(ul_stream *s) {
  if (s->eof_wanted && !s->eof_sent && pending(s) == 0 &&
      s->sendfile == NULL) {
    s->eof_sent = 1;
    shutdown(s->fd, SHUT_WR);
  }
}

/* writev(), or sendmsg(MSG_NOSIGNAL) on a socket: a vanished peer is then
 * EPIPE rather than a SIGPIPE that kills a C program.  At most IOV_MAX
 * buffers per call; the caller queues the rest. */
#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

static ssize_t stream_writev(ul_stream *s, const struct iovec *iov,
                             int iovcnt) {
  ssize_t n;
  if (iovcnt > IOV_MAX)
    iovcnt = IOV_MAX;
  if (s->is_socket && iovcnt == 1) {
    /* One buffer (the common case): send() spares the kernel copying in
     * a msghdr and an iovec array. */
    do
      n = send(s->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    while (n == -1 && errno == EINTR);
  } else if (s->is_socket) {
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)iovcnt;
    do
      n = sendmsg(s->fd, &msg, MSG_NOSIGNAL);
    while (n == -1 && errno == EINTR);
  } else {
    do
      n = writev(s->fd, iov, iovcnt);
    while (n == -1 && errno == EINTR);
  }
  return n;
}

static void write_ready(ul_loop *loop, int fd, int events, void *arg);

static void arm_writer(ul_stream *s) {
  if (s->writer_on)
    return;
  if (ul_loop_add_writer(s->loop, s->fd, write_ready, s) != 0) {
    fatal(s, -EBADF);
    return;
  }
  s->writer_on = 1;
}

/* The front of the write queue as an iovec array; returns the count. */
static int queue_iov(const ul_stream *s, struct iovec *iov) {
  int cnt = 0;
  const wref *r = s->refs;
  for (; r != NULL && cnt < WRITE_IOV; r = r->next)
    iov[cnt++] = (struct iovec){.iov_base = (void *)r->data,
                                .iov_len = r->len};
  if (r == NULL && cnt < WRITE_IOV && wbuf_pending(s) > 0)
    iov[cnt++] = (struct iovec){.iov_base = s->wbuf + s->woff,
                                .iov_len = wbuf_pending(s)};
  return cnt;
}

/* A write of the queue's front returned `result` (bytes or -errno). */
static void write_done(ul_stream *s, ssize_t result) {
  if (result < 0) {
    if (result == -EAGAIN || result == -EWOULDBLOCK)
      arm_writer(s);
    else
      fatal(s, (int)result);
    return;
  }
  queue_consume(s, (size_t)result);
  maybe_resume_protocol(s);
  if (s->lost_scheduled)
    return; /* resume_writing aborted the stream */
  if (pending(s) > 0) {
    arm_writer(s);
    return;
  }
  /* Drained.  A pipe's writer stays registered until a writable event
   * finds the queue still empty: a program that writes again at once (the
   * next chunk of a bulk transfer) then costs no epoll_ctl.  A socket's is
   * removed now: once drained its fd may be written by others (asyncio's
   * sendfile adds its own writer). */
  if (!s->pipe && s->writer_on) {
    ul_loop_remove_writer(s->loop, s->fd);
    s->writer_on = 0;
  }
  s->woff = s->wlen = 0;
  if (s->sendfile != NULL) {
    ul__sendfile_run(s->sendfile); /* the buffer was flushed for it */
    return;
  }
  if (s->closing) {
    schedule_lost(s, 0);
    return;
  }
  send_eof_if_due(s);
  if (s->proto->write_drained != NULL)
    s->proto->write_drained(s, s->ctx);
}

/* Writes the front of the queue now. */
static void write_queue(ul_stream *s) {
  struct iovec iov[WRITE_IOV];
  int cnt = queue_iov(s, iov);
  ssize_t n = stream_writev(s, iov, cnt);
  write_done(s, n == -1 ? -errno : n);
}

static void write_ready(ul_loop *loop, int fd, int events, void *arg) {
  ul_stream *s = arg;
  (void)loop;
  (void)events;
  (void)fd;
  if (pending(s) == 0) {
    /* A pipe drained at the last call, nothing queued since: stop. */
    ul_loop_remove_writer(s->loop, s->fd);
    s->writer_on = 0;
    return;
  }
  write_queue(s);
}

/* A deferred write is sent at once after all, as asyncio would have sent
 * it at write(): before an abort drops the queue, and before more writes
 * or new water marks could make the buffer look full. */
static void flush_now(ul_stream *s) {
  if (!s->flush_queued)
    return;
  flush_unqueue(s);
  if (pending(s) > 0 && !s->lost_scheduled)
    write_queue(s);
}

/* Whether a write of `total` bytes to an idle stream may wait for the end
 * of the iteration: a socket, written from a callback of the running
 * loop, with a write small enough that asyncio would not pause the
 * protocol even if none of it were sent, and cheap to keep. */
static int may_defer(const ul_stream *s, size_t total, int by_ref) {
  return s->loop->in_iteration && s->is_socket && !s->pipe && !s->closing &&
         total <= s->high && (by_ref || total <= DEFER_COPY_MAX);
}

static int flush_enqueue(ul_stream *s) {
  ul_loop *loop = s->loop;
  if (loop->flush_len == loop->flush_cap) {
    size_t cap = loop->flush_cap ? loop->flush_cap * 2 : 64;
    ul_stream **list = realloc(loop->flush, cap * sizeof *list);
    if (list == NULL)
      return -ENOMEM;
    loop->flush = list;
    ul__sockop *ops = realloc(loop->flush_ops, cap * sizeof *ops);
    if (ops == NULL)
      return -ENOMEM;
    loop->flush_ops = ops;
    loop->flush_cap = cap;
  }
  loop->flush[loop->flush_len++] = s;
  s->flush_queued = 1;
  return 0;
}

void ul__streams_flush(ul_loop *loop) {
  size_t nops = 0;
  ul__sockop *ops = loop->flush_ops;
  /* Streams whose queue is one buffer (nearly all) go in the batch; any
   * other is written on its own first.  Callbacks run by those writes make
   * no deferred writes: the iteration is over. */
  for (size_t i = 0; i < loop->flush_len; i++) {
    ul_stream *s = loop->flush[i];
    if (s == NULL)
      continue;
    s->flush_queued = 0;
    loop->flush[i] = NULL;
    if (pending(s) == 0 || s->lost_scheduled)
      continue;
    struct iovec iov[WRITE_IOV];
    if (queue_iov(s, iov) != 1) {
      write_queue(s);
      continue;
    }
    loop->flush[nops] = s; /* i >= nops: already visited */
    ops[nops++] = (ul__sockop){.fd = s->fd, .data = iov[0].iov_base,
                               .len = iov[0].iov_len};
  }
  loop->flush_len = 0;
  ul__batch_run(loop, ops, nops);
  for (size_t i = 0; i < nops; i++) {
    ul_stream *s = loop->flush[i];
    loop->flush[i] = NULL;
    /* An earlier stream's callbacks may have aborted this one since. */
    if (s == NULL || s->lost_scheduled || pending(s) == 0)
      continue;
    ssize_t n = ops[i].result;
    write_done(s, n > (ssize_t)pending(s) ? (ssize_t)pending(s) : n);
  }
}

/* ul_stream_writev, and ul_stream_write_ref when `release` is set (one
 * buffer): returns 1 if the rest was queued by reference. */
static int stream_write(ul_stream *s, const struct iovec *iov, int iovcnt,
                        ul_release_cb release, void *arg) {
  /* A socket still flushing after close() takes more bytes, as asyncio's
   * socket transport does (its TLS layer writes the close_notify from
   * resume_writing, called as close() drains the buffer); a pipe does
   * not, as asyncio's pipe transport does not. */
  if (s->eof_wanted || s->read_only || s->lost_scheduled ||
      (s->closing && s->pipe))
    return -EPIPE;
  if (s->sendfile != NULL)
    return -EBUSY;
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++)
    total += iov[i].iov_len;
  if (total == 0)
    return 0;
  if (s->flush_queued && !s->closing && pending(s) + total > s->high) {
    flush_now(s);
    if (s->lost_scheduled)
      return 0; /* the write failed: reported through connection_lost */
  }

  size_t sent = 0;
  int deferred = 0;
  if (pending(s) == 0) {
    if (may_defer(s, total, release != NULL) && flush_enqueue(s) == 0) {
      deferred = 1;
    } else {
      /* Straight to the kernel. */
      ssize_t n = stream_writev(s, iov, iovcnt);
      if (n == -1) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          fatal(s, -errno);
          return 0; /* reported through connection_lost */
        }
        n = 0;
      }
      sent = (size_t)n;
      if (sent == total)
        return 0;
    }
  }
  int kept = 0;
  wref *r = release != NULL && wbuf_pending(s) == 0 ? malloc(sizeof *r) : NULL;
  if (r != NULL) {
    /* Queue the rest by reference (one buffer). */
    r->next = NULL;
    r->data = (const char *)iov[0].iov_base + sent;
    r->len = total - sent;
    r->release = release;
    r->arg = arg;
    *s->refs_tail = r;
    s->refs_tail = &r->next;
    s->refs_len += r->len;
    kept = 1;
  }
  /* Else queue a copy of what is left, skipping what was sent. */
  size_t skip = sent;
  for (int i = 0; i < iovcnt && !kept; i++) {
    size_t len = iov[i].iov_len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    int err = wbuf_append(s, (const char *)iov[i].iov_base + skip,
                          len - skip);
    if (err) {
      if (deferred && pending(s) == 0)
        flush_unqueue(s);
      return err;
    }
    skip = 0;
  }
  if (!s->flush_queued) {
    arm_writer(s);
    if (s->lost_scheduled)
      return kept; /* fatal() released a kept reference */
  }
  maybe_pause_protocol(s);
  return kept;
}

int ul_stream_writev(ul_stream *s, const struct iovec *iov, int iovcnt) {
  if (s == NULL || iovcnt < 0 || (iov == NULL && iovcnt > 0))
    return -EINVAL;
  return stream_write(s, iov, iovcnt, NULL, NULL);
}

int ul_stream_write_ref(ul_stream *s, const void *data, size_t len,
                        ul_release_cb release, void *arg) {
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  if (s == NULL || (data == NULL && len > 0) || release == NULL)
    return -EINVAL;
  return stream_write(s, &iov, 1, release, arg);
}

int ul_stream_write(ul_stream *s, const void *data, size_t len) {
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  if (data == NULL && len > 0)
    return -EINVAL;
  return ul_stream_writev(s, &iov, 1);
}

int ul_stream_can_write_eof(const ul_stream *s) {
  return s != NULL && (s->is_socket || (s->pipe && s->write_only));
}

int ul_stream_write_eof(ul_stream *s) {
  if (s == NULL)
    return -EINVAL;
  if (s->pipe && s->write_only)
    return ul_stream_close(s); /* the reader's EOF is our close */
  if (!s->is_socket || s->pipe)
    return -ENOTSUP;
  if (s->closing || s->eof_wanted)
    return 0;
  s->eof_wanted = 1;
  send_eof_if_due(s);
  return 0;
}

/* ---- life cycle ----------------------------------------------------------- */

int ul_stream_open(ul_loop *loop, int fd, const ul_stream_protocol *proto,
                   void *ctx, ul_stream **stream_out) {
  return ul__stream_open(loop, fd, proto, ctx, 0, stream_out);
}

int ul__stream_open(ul_loop *loop, int fd, const ul_stream_protocol *proto,
                    void *ctx, unsigned kind, ul_stream **stream_out) {
  int is_pipe = (kind & (UL__STREAM_PIPE_READ | UL__STREAM_PIPE_WRITE)) != 0;
  /* A write pipe delivers no data: it needs no data callback. */
  int needs_data = !(kind & UL__STREAM_PIPE_WRITE);
  int err, flags;
  ul_stream *s = NULL;
  if (loop == NULL || proto == NULL || stream_out == NULL ||
      (needs_data && proto->data_received == NULL &&
       (proto->get_buffer == NULL || proto->buffer_updated == NULL))) {
    err = -EINVAL;
    goto fail;
  }
  flags = fd < 0 ? -1 : fcntl(fd, F_GETFL);
  if (flags == -1)
    return -EBADF;
  if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == -1) {
    err = -errno;
    goto fail;
  }
  s = calloc(1, sizeof *s);
  if (s == NULL) {
    err = -ENOMEM;
    goto fail;
  }
  int type;
  socklen_t tlen = sizeof type;
  s->loop = loop;
  s->fd = fd;
  s->proto = proto;
  s->ctx = ctx;
  s->refs_tail = &s->refs;
  s->high = UL_STREAM_HIGH_WATER;
  s->low = UL_STREAM_HIGH_WATER / 4;
  s->is_socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0;
  s->write_only = (flags & O_ACCMODE) == O_WRONLY;
  s->read_only = (flags & O_ACCMODE) == O_RDONLY && !s->is_socket;
  if (is_pipe) {
    s->pipe = 1;
    s->read_only = (kind & UL__STREAM_PIPE_READ) != 0;
    s->write_only = (kind & UL__STREAM_PIPE_WRITE) != 0;
    s->no_hangup_watch = (kind & UL__STREAM_NO_HANGUP_WATCH) != 0;
  }
  err = ul_loop_call_soon(loop, made_cb, s);
  if (err)
    goto fail;
  s->next = loop->streams;
  if (s->next != NULL)
    s->next->prev = s;
  loop->streams = s;
  *stream_out = s;
  return 0;

fail:
  /* ul_stream_open takes the fd even on error; a pipe leaves it to the
   * caller (asyncio's pipe transports raise and keep the pipe open). */
  if (!is_pipe && fd >= 0)
    close(fd);
  free(s);
  return err;
}

int ul_stream_close(ul_stream *s) {
  if (s == NULL)
    return -EINVAL;
  if (s->closing)
    return 0;
  s->closing = 1;
  if (s->reader_on) {
    ul_loop_remove_reader(s->loop, s->fd);
    s->reader_on = 0;
  }
  if (pending(s) == 0 && s->sendfile == NULL)
    schedule_lost(s, 0);
  /* else write_ready (or the sendfile's end) schedules it once the buffer
   * is flushed */
  return 0;
}

int ul_stream_abort(ul_stream *s) {
  if (s == NULL)
    return -EINVAL;
  if (s->lost_scheduled)
    return 0; /* connection_lost is coming (or running) already */
  flush_now(s);
  if (!s->lost_scheduled)
    fatal(s, 0);
  return 0;
}

int ul_stream_pause_reading(ul_stream *s) {
  if (s == NULL)
    return -EINVAL;
  if (s->closing)
    return -ESHUTDOWN;
  if (s->pipe && s->write_only)
    return -ENOTSUP;
  if (s->paused)
    return 0;
  s->paused = 1;
  if (s->reader_on) {
    ul_loop_remove_reader(s->loop, s->fd);
    s->reader_on = 0;
  }
  return 0;
}

int ul_stream_resume_reading(ul_stream *s) {
  if (s == NULL)
    return -EINVAL;
  if (s->closing)
    return -ESHUTDOWN;
  if (s->pipe && s->write_only)
    return -ENOTSUP;
  if (!s->paused)
    return 0;
  s->paused = 0;
  if (s->held_len > 0 || s->held_eof) {
    /* held_cb delivers them, then reads on: nothing may overtake them. */
    if (!s->held_scheduled && ul_loop_call_soon(s->loop, held_cb, s) == 0)
      s->held_scheduled = 1;
    return 0;
  }
  reader_start(s);
  return 0;
}

int ul_stream_is_reading(const ul_stream *s) {
  return s != NULL && !s->paused && !s->closing &&
         !(s->pipe && s->write_only);
}

int ul_stream_is_closing(const ul_stream *s) {
  return s != NULL && s->closing;
}

size_t ul_stream_get_write_buffer_size(const ul_stream *s) {
  return s ? pending(s) : 0;
}

int ul_stream_set_write_buffer_limits(ul_stream *s, ssize_t high,
                                      ssize_t low) {
  if (s == NULL)
    return -EINVAL;
  int err = ul__water_marks(high, low, UL_STREAM_HIGH_WATER, &s->high,
                            &s->low);
  if (err)
    return err;
  if (pending(s) > s->high)
    flush_now(s);
  maybe_pause_protocol(s);
  return 0;
}

void ul_stream_get_write_buffer_limits(const ul_stream *s, size_t *low,
                                       size_t *high) {
  if (s == NULL)
    return;
  if (low != NULL)
    *low = s->low;
  if (high != NULL)
    *high = s->high;
}

int ul_stream_set_protocol(ul_stream *s, const ul_stream_protocol *proto,
                           void *ctx) {
  if (s == NULL || proto == NULL ||
      (!(s->pipe && s->write_only) && proto->data_received == NULL &&
       (proto->get_buffer == NULL || proto->buffer_updated == NULL)))
    return -EINVAL;
  s->proto = proto;
  s->ctx = ctx;
  return 0;
}

int ul_stream_release_fd(ul_stream *s) {
  if (s == NULL)
    return -EINVAL;
  s->fd_released = 1;
  return s->fd;
}

int ul_stream_fileno(const ul_stream *s) {
  return s ? s->fd : -1;
}

ul_loop *ul_stream_get_loop(const ul_stream *s) {
  return s ? s->loop : NULL;
}

void *ul_stream_get_context(const ul_stream *s) {
  return s ? s->ctx : NULL;
}

/* ---- sendfile.c's hooks ------------------------------------------------- */

int ul__stream_sendfile_begin(ul_stream *s, struct ul__sendfile *req) {
  if (s->eof_wanted || s->closing || s->read_only)
    return -EPIPE;
  if (s->sendfile != NULL)
    return -EBUSY;
  s->sendfile = req;
  return pending(s) == 0;
}

struct ul__sendfile *ul__stream_sendfile_current(const ul_stream *s) {
  return s->sendfile;
}

void ul__stream_sendfile_end(ul_stream *s, int err) {
  s->sendfile = NULL;
  if (err != 0 && !s->lost_scheduled)
    fatal(s, err);
  else if (s->closing && !s->lost_scheduled)
    schedule_lost(s, 0);
  else
    send_eof_if_due(s);
}
